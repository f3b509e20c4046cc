//! A UDP flow: datagrams with their addresses between an application's UDP socket on one
//! side and an unconnected UDP socket on the other. Datagrams arriving faster than the user
//! takes them are dropped (as a full socket buffer would), never buffered without bound.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::frame::{Frame, StreamId, MAX_DATAGRAM_LEN};
use crate::session::state::{register, Shared};

/// One UDP flow. Towards the agent, addresses are destinations; from the agent, sources.
/// `send_to` and `recv_from` may run concurrently in two tasks; one task at a time receives.
pub struct UdpFlow {
    shared: Arc<Shared>,
    id: StreamId,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for UdpFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpFlow")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the UDP flow is closed")
}

impl UdpFlow {
    pub(crate) fn new(shared: Arc<Shared>, id: StreamId, local_addr: SocketAddr) -> UdpFlow {
        UdpFlow {
            shared,
            id,
            local_addr,
        }
    }

    /// The flow id within its session.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Local address of the UDP socket on the agent's side.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Datagrams dropped so far because they arrived faster than they were received.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().udp_mut(self.id).map_or(0, |u| u.dropped)
    }

    /// Receives the next datagram and its address (source, on the client side).
    pub fn poll_recv_from(&self, cx: &mut Context<'_>) -> Poll<io::Result<(SocketAddr, Bytes)>> {
        let mut st = self.shared.lock();
        let closed = st.closed.clone();
        let Some(u) = st.udp_mut(self.id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some((addr, payload)) = u.queue.pop_front() {
            u.queued_bytes -= payload.len();
            if u.queue.is_empty() && u.queue.capacity() > 4 {
                u.queue = Default::default();
            }
            return Poll::Ready(Ok((addr, payload)));
        }
        if let Some(errno) = u.reset {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if let Some(reason) = closed {
            return Poll::Ready(Err(reason.to_io_error()));
        }
        register(&mut u.recv_waker, cx.waker());
        Poll::Pending
    }

    /// Async form of [`UdpFlow::poll_recv_from`].
    pub async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        std::future::poll_fn(|cx| self.poll_recv_from(cx)).await
    }

    /// Sends a datagram to `addr` (its destination, on the client side). Waits only while the
    /// session's outgoing buffer is full.
    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        addr: SocketAddr,
        payload: &[u8],
    ) -> Poll<io::Result<()>> {
        if payload.len() > MAX_DATAGRAM_LEN {
            return Poll::Ready(Err(io::Error::from_raw_os_error(90 /* EMSGSIZE */)));
        }
        let mut st = self.shared.lock();
        if let Some(reason) = &st.closed {
            return Poll::Ready(Err(reason.to_io_error()));
        }
        let out_full = st.out_full();
        let Some(u) = st.udp_mut(self.id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(errno) = u.reset {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if out_full {
            register(&mut u.send_waker, cx.waker());
            if !u.waiting_out {
                u.waiting_out = true;
                st.wait_for_out(self.id);
            }
            return Poll::Pending;
        }
        st.queue(&Frame::Datagram {
            stream: self.id,
            addr,
            payload: Bytes::copy_from_slice(payload),
        });
        Poll::Ready(Ok(()))
    }

    /// Async form of [`UdpFlow::poll_send_to`].
    pub async fn send_to(&self, addr: SocketAddr, payload: &[u8]) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_send_to(cx, addr, payload)).await
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.shared.lock().release(self.id, 0);
    }
}
