//! Writing the session's connection: one writer at a time, and preferably the task that
//! produced the bytes.
//!
//! Whoever holds the *write token* (`State::writing`) owns the connection's write half. A
//! stream that has just queued data takes the token when it is free and writes the queue
//! itself ([`write_through`]), so a relayed message leaves in the same task that read it
//! from its socket: no wake-up of the session task, no second poll. When the connection
//! would block, or when someone else holds the token, the session's writer task
//! ([`write_loop`]) takes over and waits for the connection with its own waker.
//!
//! ```text
//!  relay task ──queue──▶ OutQueue ──token free?──▶ write now (noop waker)
//!                           │                          │ would block / partly written
//!                           │                          ▼
//!                           └──token taken──────▶ writer task: waits, writes the rest
//! ```
//!
//! Lock order: the state lock is never taken while the writer lock is held.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, WriteHalf};

use crate::session::state::Shared;
use crate::session::task::BoxIo;
use crate::session::CloseReason;

/// Segments handed to one vectored write at most.
const MAX_SLICES: usize = 64;

/// The connection's write half and what was taken from the queue but not yet written.
pub(crate) struct Writer {
    io: WriteHalf<BoxIo>,
    pending: VecDeque<Bytes>,
    /// Bytes were written since the last flush (TLS keeps records until flushed).
    unflushed: bool,
}

impl Writer {
    pub(crate) fn new(io: WriteHalf<BoxIo>) -> Mutex<Option<Writer>> {
        Mutex::new(Some(Writer {
            io,
            pending: VecDeque::new(),
            unflushed: false,
        }))
    }

    /// Writes `pending` out and flushes; `Ready(Ok)` once nothing is left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.pending.is_empty() {
                if self.unflushed {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        other => return other,
                    }
                }
                if self.pending.capacity() > MAX_SLICES {
                    self.pending = VecDeque::new();
                }
                return Poll::Ready(Ok(()));
            }
            let written = if self.io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for (slot, segment) in slices.iter_mut().zip(self.pending.iter()) {
                    *slot = IoSlice::new(segment);
                    count += 1;
                }
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count])
            } else {
                let Some(front) = self.pending.front() else {
                    continue;
                };
                Pin::new(&mut self.io).poll_write(cx, front)
            };
            let mut n = match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.unflushed = true;
            while n > 0 {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                if front.len() <= n {
                    n -= front.len();
                    self.pending.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
    }
}

fn lock(writer: &Mutex<Option<Writer>>) -> MutexGuard<'_, Option<Writer>> {
    // Nothing panics while holding the lock; should it ever, the writer is still usable.
    writer.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the connection's write half (the session task has ended): together with the read
/// half, which the session task drops, that closes the connection.
pub(crate) fn release(shared: &Shared) {
    lock(&shared.writer).take();
}

/// The connection is gone: nothing can be written.
fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the session's connection is closed",
    )
}

/// Writes what is queued from the calling task, if no one else is writing: as much as the
/// connection takes right now, without waiting. What it does not take is left to the
/// writer task, which is woken for it.
pub(crate) fn write_through(shared: &Arc<Shared>) {
    let mut batch = VecDeque::new();
    {
        let mut st = shared.lock();
        if st.writing || st.closed.is_some() || st.out.is_empty() {
            return;
        }
        st.writing = true;
        st.take_out(&mut batch);
    }
    let result = match lock(&shared.writer).as_mut() {
        Some(w) => {
            w.pending.append(&mut batch);
            // A waker that does nothing: if the connection would block, the writer task polls
            // it again with its own waker (it is woken below), replacing this registration.
            w.poll_drain(&mut Context::from_waker(Waker::noop()))
        }
        None => Poll::Ready(Err(gone())),
    };
    let mut st = shared.lock();
    st.writing = false;
    match result {
        Poll::Ready(Ok(())) => {
            // Frames queued while we wrote, or the session's end: the writer task's turn.
            if !st.out.is_empty() || st.closed.is_some() {
                st.wake_writer();
            }
        }
        Poll::Pending => {
            st.backlog = true;
            st.wake_writer();
        }
        Poll::Ready(Err(e)) => {
            drop(st);
            shared.close(CloseReason::Io(Arc::new(e)), None);
        }
    }
}

/// The session's writer task: takes the write token whenever frames wait and no one else
/// writes them, writes them, and shuts the connection's write side down once the session
/// has ended and everything queued (a last `GoAway`) is out.
pub(crate) async fn write_loop(shared: Arc<Shared>) -> io::Result<()> {
    let mut batch = VecDeque::new();
    loop {
        let finished = poll_fn(|cx| {
            let mut st = shared.lock();
            if st.writing {
                // The holder wakes us if it leaves anything behind.
                st.register_writer(cx.waker());
                return Poll::Pending;
            }
            if st.out.is_empty() && !st.backlog {
                if st.closed.is_some() {
                    return Poll::Ready(true);
                }
                st.register_writer(cx.waker());
                return Poll::Pending;
            }
            st.writing = true;
            st.backlog = false;
            st.take_out(&mut batch);
            Poll::Ready(false)
        })
        .await;
        if finished {
            let _ = poll_fn(|cx| match lock(&shared.writer).as_mut() {
                Some(w) => Pin::new(&mut w.io).poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            })
            .await;
            return Ok(());
        }
        let result = poll_fn(|cx| match lock(&shared.writer).as_mut() {
            Some(w) => {
                w.pending.append(&mut batch);
                w.poll_drain(cx)
            }
            None => Poll::Ready(Err(gone())),
        })
        .await;
        shared.lock().writing = false;
        result?;
    }
}
