//! A multiplexed TCP-like stream: tokio `AsyncRead + AsyncWrite` over the session, with
//! per-stream credit so that a slow consumer only ever stalls its own stream.
//!
//! Closing: `poll_shutdown` sends FIN (the peer reads EOF, like `shutdown(SHUT_WR)`).
//! Dropping a stream that has not both sent and received FIN resets it (like closing a
//! socket with `SO_LINGER` 0): to close gracefully, shut down and read to EOF first.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::frame::{Frame, StreamId, MAX_DATA_CHUNK};
use crate::session::state::{register, Shared};
use crate::session::writer::write_through;

/// One stream of a session (see the module documentation for its closing rules).
pub struct Stream {
    shared: Arc<Shared>,
    id: StreamId,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .field("peer_addr", &self.peer_addr)
            .finish()
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the stream was reset locally")
}

impl Stream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: StreamId,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> Stream {
        Stream {
            shared,
            id,
            local_addr,
            peer_addr,
        }
    }

    /// The stream id within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Local address of the socket on the side that connected (the agent's socket).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address connected to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Takes the next buffered chunk without copying it: `Ok(None)` at EOF (the peer's FIN).
    /// The peer's reset is an error carrying its errno; the session's end is an error of kind
    /// `ConnectionAborted` wrapping [`crate::SessionClosed`].
    pub fn poll_recv_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_take(cx, usize::MAX)
    }

    /// Like [`Stream::poll_recv_chunk`], but takes every chunk already received (at most
    /// `max`, at least one) into `into`, so that they can be written out in one vectored
    /// write: `Ok(true)` when some were taken, `Ok(false)` at EOF.
    pub fn poll_recv_chunks(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Bytes>,
        max: usize,
    ) -> Poll<io::Result<bool>> {
        match self.poll_take(cx, usize::MAX) {
            Poll::Ready(Ok(Some(chunk))) => into.push_back(chunk),
            Poll::Ready(Ok(None)) => return Poll::Ready(Ok(false)),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        while into.len() < max {
            match self.take(usize::MAX, None) {
                Poll::Ready(Ok(Some(chunk))) => into.push_back(chunk),
                // EOF, an error or nothing more: the next call reports it.
                _ => break,
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Async form of [`Stream::poll_recv_chunk`].
    pub async fn recv_chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_recv_chunk(cx)).await
    }

    /// Resets the stream now (abortive close); the peer's user sees `errno` (0: `ECONNRESET`).
    /// Later reads and writes fail.
    pub fn reset(&mut self, errno: i32) {
        let mut st = self.shared.lock();
        if st.remove(self.id).is_some() && st.closed.is_none() {
            st.queue(&Frame::Reset {
                stream: self.id,
                errno,
            });
        }
    }

    fn poll_take(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        self.take(max, Some(cx.waker()))
    }

    /// Takes the next chunk (at most `max` bytes of it); when there is none yet, registers
    /// `waker` (if given) and returns `Pending`.
    fn take(&mut self, max: usize, waker: Option<&Waker>) -> Poll<io::Result<Option<Bytes>>> {
        let mut st = self.shared.lock();
        let threshold = (self.shared.limits.local_window / 4).max(1);
        let closed = st.closed.clone();
        let Some(s) = st.stream_mut(self.id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(errno) = s.reset {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        let chunk = match s.recv.front_mut() {
            Some(front) if front.len() > max => Some(front.split_to(max)),
            Some(_) => s.recv.pop_front(),
            None => None,
        };
        if let Some(chunk) = chunk {
            if s.recv.is_empty() && s.recv.capacity() > 4 {
                // An idle stream holds no buffer memory.
                s.recv = Default::default();
            }
            s.consumed += chunk.len() as u32;
            let mut grant = None;
            if s.consumed >= threshold && !s.fin_received {
                grant = Some(s.consumed);
                s.recv_window += s.consumed;
                s.consumed = 0;
            }
            if let Some(increment) = grant {
                if closed.is_none() {
                    st.queue(&Frame::WindowUpdate {
                        stream: self.id,
                        increment,
                    });
                }
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        if s.fin_received {
            return Poll::Ready(Ok(None));
        }
        if let Some(reason) = closed {
            return Poll::Ready(Err(reason.to_io_error()));
        }
        if let Some(waker) = waker {
            register(&mut s.read_waker, waker);
        }
        Poll::Pending
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let max = buf.remaining();
        match self.poll_take(cx, max) {
            Poll::Ready(Ok(Some(chunk))) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Stream {
    /// Queues a prefix of `data` as `Data` frames without copying it (beyond a few small
    /// ones), as far as the stream's credit and the session's outgoing queue allow, and
    /// removes it from `data`; returns how many bytes were taken. Then writes the queue to
    /// the connection from this task if no one else is writing it. `Pending` (the waker
    /// registered) when nothing could be taken.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let taken = match self.poll_queue(cx, data.len()) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        {
            let mut st = self.shared.lock();
            st.out.data(self.id, data.split_to(taken));
        }
        write_through(&self.shared);
        Poll::Ready(Ok(taken))
    }

    /// How many of `len` bytes may be queued now (credit, room in the outgoing queue), that
    /// many taken from the credit; `Pending` with the waker registered when none.
    fn poll_queue(&self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut st = self.shared.lock();
        if let Some(reason) = &st.closed {
            return Poll::Ready(Err(reason.to_io_error()));
        }
        let out_full = st.out_full();
        let Some(s) = st.stream_mut(id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(errno) = s.reset {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if s.fin_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if s.send_credit == 0 {
            register(&mut s.write_waker, cx.waker());
            return Poll::Pending;
        }
        if out_full {
            register(&mut s.write_waker, cx.waker());
            if !s.waiting_out {
                s.waiting_out = true;
                st.wait_for_out(id);
            }
            return Poll::Pending;
        }
        let n = len.min(s.send_credit as usize).min(MAX_DATA_CHUNK);
        s.send_credit -= n as u32;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Stream {
    /// Queues a copy of (a prefix of) `buf` for the session's writer task, which coalesces
    /// what is queued into few writes; [`AsyncWrite::poll_flush`] writes it out from this
    /// task instead.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = match self.poll_queue(cx, buf.len()) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if n > 0 {
            let mut st = self.shared.lock();
            st.out.data(self.id, Bytes::copy_from_slice(&buf[..n]));
            st.wake_writer();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already queued, in order; send them now if no one else is.
        write_through(&self.shared);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut st = self.shared.lock();
        if let Some(reason) = &st.closed {
            return Poll::Ready(Err(reason.to_io_error()));
        }
        let Some(s) = st.stream_mut(id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(errno) = s.reset {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if !s.fin_sent {
            s.fin_sent = true;
            st.queue(&Frame::Fin { stream: id });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.lock().release(self.id, 0);
    }
}
