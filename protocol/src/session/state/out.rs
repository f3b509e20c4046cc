//! The session's outgoing bytes: encoded frames waiting for the writer, in order.
//!
//! Small frames (control frames, headers, short payloads) are encoded into one contiguous
//! buffer, so that many of them leave in a single write; a large `Data` payload is queued as
//! its own segment, the very [`Bytes`] its sender read from its socket, so that it is never
//! copied in user space on its way out. The writer hands the segments to the connection as
//! one vectored write.
//!
//! ```text
//!  queue:  [ hdr ping hdr data(64 B) hdr ] [ payload 64 KiB ] [ hdr window-update ]
//!            └──────── one segment ──────┘  └─ the sender's ─┘  └── one segment ──┘
//! ```

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::frame::{put_data_header, EncodeError, Frame, StreamId, HEADER_LEN};

/// `Data` payloads up to this size are copied next to their header (one segment for many
/// small frames); larger ones are queued as segments of their own.
pub(crate) const INLINE_MAX: usize = 2048;

/// Frames encoded and not yet taken by the writer.
#[derive(Default)]
pub(crate) struct OutQueue {
    /// Segments closed by a large payload, oldest first.
    segments: VecDeque<Bytes>,
    /// Frames encoded after the last closed segment.
    open: BytesMut,
    /// Bytes in `segments` and `open`.
    len: usize,
}

impl OutQueue {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Encodes `frame` at the end of the queue. On error nothing is queued.
    pub fn frame(&mut self, frame: &Frame) -> Result<(), EncodeError> {
        let before = self.open.len();
        frame.encode(&mut self.open)?;
        self.len += self.open.len() - before;
        Ok(())
    }

    /// Queues a `Data` frame carrying `payload` (at most `MAX_DATA_CHUNK` bytes, not empty),
    /// without copying it unless it is small.
    pub fn data(&mut self, stream: StreamId, payload: Bytes) {
        put_data_header(&mut self.open, stream, payload.len());
        self.len += HEADER_LEN + payload.len();
        if payload.len() <= INLINE_MAX {
            self.open.extend_from_slice(&payload);
            return;
        }
        if !self.open.is_empty() {
            self.segments.push_back(self.open.split().freeze());
        }
        self.segments.push_back(payload);
    }

    /// Moves everything queued, in order, to the end of `into`.
    pub fn take_into(&mut self, into: &mut VecDeque<Bytes>) {
        into.append(&mut self.segments);
        if !self.open.is_empty() {
            into.push_back(self.open.split().freeze());
        }
        self.len = 0;
        if self.segments.capacity() > 64 {
            // A burst is over: give back the deque's memory.
            self.segments = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    fn drain(q: &mut OutQueue) -> (Vec<Bytes>, BytesMut) {
        let mut segs = VecDeque::new();
        q.take_into(&mut segs);
        let mut all = BytesMut::new();
        for s in &segs {
            all.extend_from_slice(s);
        }
        (segs.into_iter().collect(), all)
    }

    #[test]
    fn small_frames_share_one_segment_and_large_payloads_are_not_copied() {
        let mut q = OutQueue::default();
        q.frame(&Frame::Ping { nonce: 7 }).unwrap();
        q.data(1, Bytes::from_static(b"small"));
        let big = Bytes::from(vec![0xab; INLINE_MAX + 1]);
        let big_ptr = big.as_ptr();
        q.data(3, big);
        q.frame(&Frame::Fin { stream: 3 }).unwrap();
        let expected =
            (HEADER_LEN + 8) + (HEADER_LEN + 5) + (HEADER_LEN + INLINE_MAX + 1) + HEADER_LEN;
        assert_eq!(q.len(), expected);
        let (segs, mut all) = drain(&mut q);
        assert!(q.is_empty());
        assert_eq!(segs.len(), 3, "small frames + header | big payload | fin");
        assert_eq!(segs[1].as_ptr(), big_ptr, "the payload itself, not a copy");
        assert_eq!(all.len(), expected);
        // The segments concatenated are exactly the frames, in order.
        assert_eq!(decode(&mut all).unwrap(), Some(Frame::Ping { nonce: 7 }));
        assert_eq!(
            decode(&mut all).unwrap(),
            Some(Frame::Data {
                stream: 1,
                payload: Bytes::from_static(b"small")
            })
        );
        match decode(&mut all).unwrap() {
            Some(Frame::Data { stream: 3, payload }) => {
                assert_eq!(payload.len(), INLINE_MAX + 1)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode(&mut all).unwrap(), Some(Frame::Fin { stream: 3 }));
        assert!(all.is_empty());
    }

    #[test]
    fn a_payload_at_the_inline_limit_is_inlined() {
        let mut q = OutQueue::default();
        q.data(1, Bytes::from(vec![1; INLINE_MAX]));
        q.data(1, Bytes::from(vec![2; INLINE_MAX]));
        let (segs, all) = drain(&mut q);
        assert_eq!(segs.len(), 1);
        assert_eq!(all.len(), 2 * (HEADER_LEN + INLINE_MAX));
    }

    #[test]
    fn a_frame_that_cannot_be_encoded_leaves_the_queue_as_it_was() {
        let mut q = OutQueue::default();
        q.frame(&Frame::Ping { nonce: 1 }).unwrap();
        let before = q.len();
        assert!(q.frame(&Frame::Fin { stream: 0 }).is_err());
        assert_eq!(q.len(), before);
        let (_, all) = drain(&mut q);
        assert_eq!(all.len(), before);
    }
}
