//! Fuzzes the frame decoder: arbitrary bytes, fed whole and in two pieces, must decode to
//! frames or errors without panicking, and every decoded frame must re-encode and decode to
//! itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sctrace_protocol::{decode, decode_eof, Frame};

fn drain(buf: &mut BytesMut, out: &mut Vec<Frame>) -> bool {
    loop {
        match decode(buf) {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut whole = BytesMut::from(data);
    let mut frames = Vec::new();
    if drain(&mut whole, &mut frames) {
        let _ = decode_eof(&mut whole);
    }

    // The same bytes split at a point chosen by the input decode to the same frames.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut split = BytesMut::from(&data[..cut]);
    let mut frames2 = Vec::new();
    let ok = drain(&mut split, &mut frames2);
    if ok {
        split.extend_from_slice(&data[cut..]);
        drain(&mut split, &mut frames2);
    }
    if ok {
        assert_eq!(&frames[..], &frames2[..frames.len().min(frames2.len())]);
    }

    for frame in frames {
        let mut wire = BytesMut::new();
        frame.encode(&mut wire).expect("a decoded frame re-encodes");
        let again = decode(&mut wire).expect("re-encoded frame decodes");
        // Text fields are decoded lossily, so compare after one normalising round trip.
        let mut wire2 = BytesMut::new();
        again.clone().expect("whole frame").encode(&mut wire2).expect("encodes");
        assert_eq!(decode(&mut wire2).ok().flatten(), again);
    }
});
