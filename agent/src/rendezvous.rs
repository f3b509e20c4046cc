//! Where sockets handed over for a stream meet the connect request waiting for them, by
//! stream id: from sctrace's handoff channel (a local agent) or from data connections (an
//! agent reached over TCP). Whichever comes first waits for the other, at most [`WAIT`]: a
//! socket no request took by then is closed when the next one comes or goes.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a connected stream waits for its socket before giving up.
pub const WAIT: Duration = Duration::from_secs(10);

/// Sockets and the requests waiting for them.
#[derive(Default)]
pub struct Rendezvous {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    arrived: HashMap<u32, (OwnedFd, Instant)>,
    waiting: HashMap<u32, oneshot::Sender<OwnedFd>>,
}

impl Rendezvous {
    /// Waits (at most [`WAIT`]) for the socket handed over for stream `id`.
    pub async fn take(&self, id: u32) -> Option<OwnedFd> {
        let rx = {
            let mut st = self.state.lock().ok()?;
            st.expire();
            if let Some((fd, _)) = st.arrived.remove(&id) {
                return Some(fd);
            }
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(id, tx);
            rx
        };
        let got = tokio::time::timeout(WAIT, rx)
            .await
            .ok()
            .and_then(Result::ok);
        if got.is_none() {
            if let Ok(mut st) = self.state.lock() {
                st.waiting.remove(&id);
            }
        }
        got
    }

    /// Hands over the socket of stream `id`, to its waiting request or to the one to come.
    pub fn deliver(&self, id: u32, fd: OwnedFd) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.expire();
        match st.waiting.remove(&id) {
            Some(tx) => {
                // A waiter that gave up drops the socket, which closes it.
                let _ = tx.send(fd);
            }
            None => {
                st.arrived.insert(id, (fd, Instant::now()));
            }
        }
    }
}

impl State {
    /// Closes the sockets that waited longer than [`WAIT`] for their request.
    fn expire(&mut self) {
        self.arrived.retain(|_, (_, since)| since.elapsed() < WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_socket() -> OwnedFd {
        std::os::unix::net::UnixStream::pair().unwrap().0.into()
    }

    #[tokio::test]
    async fn a_socket_meets_its_request_whichever_comes_first() {
        let r = std::sync::Arc::new(Rendezvous::default());
        r.deliver(1, a_socket());
        assert!(r.take(1).await.is_some(), "arrived first");
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.take(2).await }
        });
        tokio::task::yield_now().await;
        r.deliver(2, a_socket());
        assert!(waiting.await.unwrap().is_some(), "waited first");
    }
}
