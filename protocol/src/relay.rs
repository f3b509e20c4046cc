//! Copies bytes both ways between a [`Stream`] and a local byte stream (a socket), passing on
//! half-closes and resets, and holding no buffer while a direction is idle — so that
//! thousands of idle relayed connections cost little memory.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::session::state::errno::ECONNRESET;
use crate::stream::Stream;

/// Size of the buffer borrowed while reading from the local side.
const CHUNK: usize = 64 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions finished with FIN: close the local socket normally.
    Closed,
    /// The stream failed: the peer reset it (the error carries the peer's errno) or the
    /// session ended. Close the local socket abortively (e.g. `SO_LINGER` 0) so its peer sees
    /// a reset.
    StreamFailed(io::Error),
    /// Reading or writing the local side failed; the stream has been reset with that
    /// error's errno.
    LocalFailed(io::Error),
}

/// What a relay moved, and how it ended.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes read from the local side and sent on the stream.
    pub to_stream: u64,
    /// Bytes received on the stream and written to the local side.
    pub from_stream: u64,
    /// How it ended.
    pub end: RelayEnd,
}

/// Stream → local.
enum Toward {
    /// Moving data; `pending` is what was received but not yet written, in order.
    Open {
        pending: VecDeque<Bytes>,
    },
    /// EOF seen, shutting down the writing side.
    ShuttingDown,
    Done,
}

/// Chunks taken from the stream for one vectored write at most (the stream's window is
/// at most this many maximal `Data` frames in flight by default).
const MAX_WRITE_CHUNKS: usize = 16;

/// Relays until both directions have finished or one side fails. EOF on one side becomes a
/// FIN (`shutdown`) on the other; the other direction keeps flowing.
pub async fn relay<T>(stream: &mut Stream, local: &mut T) -> RelayOutcome
where
    T: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut down = Toward::Open {
        pending: VecDeque::new(),
    };
    let mut up = Up {
        phase: Phase::Open,
        buf: None,
        pending: Bytes::new(),
    };
    let mut to_stream = 0u64;
    let mut from_stream = 0u64;
    let end = poll_fn(|cx| {
        if let Some(end) = poll_down(cx, stream, local, &mut down, &mut from_stream) {
            return Poll::Ready(end);
        }
        if let Some(end) = poll_up(cx, stream, local, &mut up, &mut to_stream) {
            return Poll::Ready(end);
        }
        if matches!(down, Toward::Done) && up.phase == Phase::Done {
            return Poll::Ready(RelayEnd::Closed);
        }
        Poll::Pending
    })
    .await;
    RelayOutcome {
        to_stream,
        from_stream,
        end,
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(ECONNRESET)
}

/// Stream → local.
fn poll_down<T: AsyncWrite + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    local: &mut T,
    state: &mut Toward,
    count: &mut u64,
) -> Option<RelayEnd> {
    loop {
        match state {
            Toward::Done => return None,
            Toward::ShuttingDown => match Pin::new(&mut *local).poll_shutdown(cx) {
                // A local peer already gone makes shutdown fail; the other direction reports.
                Poll::Ready(_) => *state = Toward::Done,
                Poll::Pending => return None,
            },
            Toward::Open { pending } => {
                if !pending.is_empty() {
                    let written = if local.is_write_vectored() {
                        let mut slices = [IoSlice::new(&[]); MAX_WRITE_CHUNKS];
                        for (slot, chunk) in slices.iter_mut().zip(pending.iter()) {
                            *slot = IoSlice::new(chunk);
                        }
                        let count = pending.len().min(MAX_WRITE_CHUNKS);
                        Pin::new(&mut *local).poll_write_vectored(cx, &slices[..count])
                    } else {
                        let front = pending.front().map_or(&[][..], |c| &c[..]);
                        Pin::new(&mut *local).poll_write(cx, front)
                    };
                    match written {
                        Poll::Ready(Ok(0)) => {
                            let e = io::Error::from(io::ErrorKind::WriteZero);
                            stream.reset(ECONNRESET);
                            return Some(RelayEnd::LocalFailed(e));
                        }
                        Poll::Ready(Ok(mut n)) => {
                            *count += n as u64;
                            while n > 0 {
                                let Some(front) = pending.front_mut() else {
                                    break;
                                };
                                if front.len() <= n {
                                    n -= front.len();
                                    pending.pop_front();
                                } else {
                                    front.advance(n);
                                    n = 0;
                                }
                            }
                        }
                        Poll::Ready(Err(e)) => {
                            stream.reset(errno_of(&e));
                            return Some(RelayEnd::LocalFailed(e));
                        }
                        Poll::Pending => return None,
                    }
                    continue;
                }
                if pending.capacity() > MAX_WRITE_CHUNKS {
                    *pending = VecDeque::new();
                }
                match stream.poll_recv_chunks(cx, pending, MAX_WRITE_CHUNKS) {
                    Poll::Ready(Ok(true)) => {}
                    Poll::Ready(Ok(false)) => *state = Toward::ShuttingDown,
                    Poll::Ready(Err(e)) => return Some(RelayEnd::StreamFailed(e)),
                    Poll::Pending => {
                        if let Poll::Ready(Err(e)) = Pin::new(&mut *local).poll_flush(cx) {
                            stream.reset(errno_of(&e));
                            return Some(RelayEnd::LocalFailed(e));
                        }
                        return None;
                    }
                }
            }
        }
    }
}

/// Local → stream. `pending` is what was read and not yet queued on the stream; `buf` the
/// rest of the buffer the last read went into, reused by the next read. Both exist only
/// while data flows: they are dropped whenever the local side has nothing to read.
struct Up {
    phase: Phase,
    buf: Option<BytesMut>,
    pending: Bytes,
}

#[derive(PartialEq)]
enum Phase {
    Open,
    ShuttingDown,
    Done,
}

/// A new read buffer is taken once the current one has less room than this.
const MIN_READ_ROOM: usize = 4096;

fn poll_up<T: AsyncRead + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    local: &mut T,
    up: &mut Up,
    count: &mut u64,
) -> Option<RelayEnd> {
    loop {
        match up.phase {
            Phase::Done => return None,
            Phase::ShuttingDown => match Pin::new(&mut *stream).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => up.phase = Phase::Done,
                Poll::Ready(Err(e)) => return Some(RelayEnd::StreamFailed(e)),
                Poll::Pending => return None,
            },
            Phase::Open => {
                if !up.pending.is_empty() {
                    // Queued as read, without a copy; written out from this task when the
                    // session's connection is free.
                    match stream.poll_write_bytes(cx, &mut up.pending) {
                        Poll::Ready(Ok(n)) => *count += n as u64,
                        Poll::Ready(Err(e)) => return Some(RelayEnd::StreamFailed(e)),
                        Poll::Pending => return None,
                    }
                    continue;
                }
                let b = match &mut up.buf {
                    Some(b) if b.capacity() >= MIN_READ_ROOM => b,
                    // Not zeroed: only the bytes actually read are ever touched.
                    _ => up.buf.insert(BytesMut::with_capacity(CHUNK)),
                };
                match tokio_util::io::poll_read_buf(Pin::new(&mut *local), cx, b) {
                    Poll::Ready(Ok(0)) => {
                        up.buf = None;
                        up.phase = Phase::ShuttingDown;
                    }
                    Poll::Ready(Ok(_)) => up.pending = b.split().freeze(),
                    Poll::Ready(Err(e)) => {
                        stream.reset(errno_of(&e));
                        return Some(RelayEnd::LocalFailed(e));
                    }
                    Poll::Pending => {
                        up.buf = None;
                        return None;
                    }
                }
            }
        }
    }
}
