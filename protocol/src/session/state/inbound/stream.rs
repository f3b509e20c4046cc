//! A TCP-like stream's bytes and flow control: `Data` within the credit we granted,
//! `WindowUpdate` granting us more, and `Fin` ending the peer's direction.

use bytes::Bytes;

use super::violation;
use crate::frame::StreamId;
use crate::session::state::{wake, Slot, State};
use crate::session::task::READ_CHUNK;
use crate::session::CloseReason;

/// Payloads at least this large may stay in the session's read buffer (a sixteenth of a
/// read: a queued payload keeps at most 16 times its size of that buffer alive).
const ZERO_COPY_MIN: usize = READ_CHUNK / 16;

/// A `Data` payload as the stream keeps it. It arrives as a view into the buffer of the read
/// `batch`, which it keeps alive while queued. It stays so (no copy) when it is large and
/// keeps no *other* buffer alive than the stream's queue already does: the queue holds no
/// views (`pinned` is `None`), or only views of this same read (several maximal frames per
/// read in a bulk transfer). Otherwise it is copied out, so that a stalled stream holding
/// pieces of many read buffers cannot keep them all alive: a stream's queue keeps at most
/// one read buffer alive.
fn unpinned(payload: Bytes, batch: u64, pinned: &mut Option<u64>) -> Bytes {
    if payload.len() >= ZERO_COPY_MIN && pinned.is_none_or(|p| p == batch) {
        *pinned = Some(batch);
        payload
    } else {
        Bytes::copy_from_slice(&payload)
    }
}

impl State {
    /// `Data`: bytes for one of our streams, at most the credit the peer has left.
    pub(super) fn on_data(&mut self, stream: StreamId, payload: Bytes) -> Result<(), CloseReason> {
        let s = match self.slots.get_mut(&stream) {
            Some(Slot::Stream(s)) => s,
            other => {
                let wrong_kind = other.is_some();
                return self.stale(stream, wrong_kind, "Data");
            }
        };
        if s.reset.is_some() {
            // The peer reset it; data that crossed the Reset is moot.
            return Ok(());
        }
        if s.fin_received {
            return Err(violation(format!("data after FIN on stream {stream}")));
        }
        let len = payload.len() as u32;
        if len > s.recv_window {
            return Err(violation(format!(
                "stream {stream}: {len} bytes sent with only {} bytes of credit",
                s.recv_window
            )));
        }
        s.recv_window -= len;
        if s.recv.is_empty() {
            // What was queued before has been taken: the reader holds those buffers now.
            s.pinned_batch = None;
        }
        s.recv
            .push_back(unpinned(payload, self.read_batch, &mut s.pinned_batch));
        wake(&mut s.read_waker);
        Ok(())
    }

    /// `WindowUpdate`: the peer grants `increment` more bytes on a stream (2^31 in all at
    /// most).
    pub(super) fn on_window_update(
        &mut self,
        stream: StreamId,
        increment: u32,
    ) -> Result<(), CloseReason> {
        let s = match self.slots.get_mut(&stream) {
            Some(Slot::Stream(s)) => s,
            other => {
                let wrong_kind = other.is_some();
                return self.stale(stream, wrong_kind, "WindowUpdate");
            }
        };
        let credit = u64::from(s.send_credit) + u64::from(increment);
        if credit > u64::from(i32::MAX as u32) {
            return Err(violation(format!(
                "stream {stream}: window grew beyond 2^31 bytes"
            )));
        }
        s.send_credit = credit as u32;
        wake(&mut s.write_waker);
        Ok(())
    }

    /// `Fin`: the peer sends no more bytes on a stream.
    pub(super) fn on_fin(&mut self, stream: StreamId) -> Result<(), CloseReason> {
        match self.slots.get_mut(&stream) {
            Some(Slot::Stream(s)) => {
                s.fin_received = true;
                wake(&mut s.read_waker);
                Ok(())
            }
            other => {
                let wrong_kind = other.is_some();
                self.stale(stream, wrong_kind, "Fin")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_of_one_read_stay_in_its_buffer_and_others_are_copied() {
        let read = Bytes::from(vec![7u8; 3 * ZERO_COPY_MIN]);
        let large = read.slice(..ZERO_COPY_MIN);
        let small = read.slice(..ZERO_COPY_MIN - 1);
        let is_view = |b: &Bytes| b.as_ptr() == read.as_ptr();

        // An empty queue: a large payload is kept as a view, a small one copied.
        let mut pinned = None;
        assert!(is_view(&unpinned(large.clone(), 1, &mut pinned)));
        assert_eq!(pinned, Some(1));
        let mut none = None;
        let copied = unpinned(small.clone(), 1, &mut none);
        assert_eq!(copied, small);
        assert!(!is_view(&copied));
        assert_eq!(none, None, "a copy pins nothing");

        // More large payloads of the same read: views, still one buffer.
        assert!(is_view(&unpinned(large.clone(), 1, &mut pinned)));
        // A payload of a later read while the queue holds views of an earlier one: copied.
        let copied = unpinned(large.clone(), 2, &mut pinned);
        assert_eq!(copied, large);
        assert!(!is_view(&copied));
        assert_eq!(pinned, Some(1));
    }
}
