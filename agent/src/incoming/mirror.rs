//! Mirroring: a copy of each connection's client bytes goes to every mirror subscriber, on an
//! `IncomingTcp` stream of kind `Mirrored`, while the connection itself is served as usual
//! (by the target's server, or by a stealer).
//!
//! The copy is best effort and never slows the real connection: the bytes are queued for the
//! subscriber, and a subscriber that falls [`COPY_QUEUE`] chunks behind loses its copy (its
//! stream is reset) instead of holding the client up.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use sctrace_protocol::IncomingKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::proxy::ClientConn;
use super::Subscriber;
use tokio::net::TcpStream;

/// Chunks (one per read of the client socket, up to 64 KiB each) a copy may lag behind.
const COPY_QUEUE: usize = 32;
/// How long a finished copy waits for sctrace to close its side.
const LINGER: Duration = Duration::from_secs(30);

enum CopyMsg {
    Data(Bytes),
    /// The client finished sending (FIN).
    Fin,
}

/// The sending end of one subscriber's copy.
struct CopySink {
    tx: Option<mpsc::Sender<CopyMsg>>,
}

impl CopySink {
    fn send(&mut self, msg: CopyMsg) {
        if let Some(tx) = &self.tx {
            if tx.try_send(msg).is_err() {
                // Too far behind (or gone): this copy ends with a reset.
                self.tx = None;
            }
        }
    }
}

/// Starts copying a connection from `client` to `server` for `subscriber`; returns the sink
/// the connection's reads feed.
fn start_copy(subscriber: Arc<Subscriber>, client: SocketAddr, server: SocketAddr) -> CopySink {
    let (tx, rx) = mpsc::channel(COPY_QUEUE);
    tokio::spawn(copy_to_sctrace(subscriber, client, server, rx));
    CopySink { tx: Some(tx) }
}

async fn copy_to_sctrace(
    subscriber: Arc<Subscriber>,
    client: SocketAddr,
    server: SocketAddr,
    mut rx: mpsc::Receiver<CopyMsg>,
) {
    let opened = subscriber
        .session
        .open_incoming(
            subscriber.subscription,
            IncomingKind::Mirrored,
            client,
            server,
        )
        .await;
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%client, %server, error = %e, "sctrace declined a mirrored connection");
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Whatever sctrace writes back (the app's answers) is read and dropped, so that its
    // window never fills.
    let drain = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        rd
    };
    let feed = async move {
        loop {
            match rx.recv().await {
                Some(CopyMsg::Data(bytes)) => {
                    if wr.write_all(&bytes).await.is_err() {
                        return (wr, false);
                    }
                }
                Some(CopyMsg::Fin) => {
                    let _ = wr.shutdown().await;
                    return (wr, true);
                }
                // The connection ended without FIN, or this copy fell behind.
                None => return (wr, false),
            }
        }
    };
    let mut drain = std::pin::pin!(drain);
    let (wr, clean) = tokio::select! {
        result = feed => result,
        _ = &mut drain => {
            // sctrace closed or reset its side: nothing more to send.
            return;
        }
    };
    if clean {
        // Sent FIN: wait (bounded) for sctrace's FIN, so the stream closes cleanly.
        let _ = tokio::time::timeout(LINGER, &mut drain).await;
    }
    // Dropping both halves closes the stream; one that did not end cleanly both ways is
    // reset.
    drop(wr);
}

/// A connection's client socket, copying every byte read from it to the mirror subscribers.
pub struct Tee<T> {
    inner: T,
    sinks: Vec<CopySink>,
}

impl<T> Tee<T> {
    /// Wraps `inner`, copying to each of `mirrors`.
    pub fn new(
        inner: T,
        mirrors: &[Arc<Subscriber>],
        client: SocketAddr,
        server: SocketAddr,
    ) -> Tee<T> {
        Tee {
            inner,
            sinks: mirrors
                .iter()
                .map(|m| start_copy(m.clone(), client, server))
                .collect(),
        }
    }
}

impl ClientConn for Tee<TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tee<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            if !this.sinks.is_empty() {
                let new = &buf.filled()[before..];
                if new.is_empty() && had_room {
                    for sink in &mut this.sinks {
                        sink.send(CopyMsg::Fin);
                        sink.tx = None;
                    }
                } else if !new.is_empty() {
                    let bytes = Bytes::copy_from_slice(new);
                    for sink in &mut this.sinks {
                        sink.send(CopyMsg::Data(bytes.clone()));
                    }
                }
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tee<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
