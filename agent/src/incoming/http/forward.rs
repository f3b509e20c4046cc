//! Where one request of a filtered connection goes: to sctrace, on a stream of its own, or to
//! the target's own server, over one upstream connection per client connection. Both speak
//! the client's HTTP version, keep header case (HTTP/1) and pass bodies through as they
//! stream.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sctrace_protocol::{IncomingKind, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Mutex;

use crate::incoming::proxy::connect_original;
use crate::incoming::Subscriber;
use crate::netns::NetnsSockets;

/// How long a request's stream to sctrace waits for sctrace to close its side after the
/// agent closed its own.
const LINGER: Duration = Duration::from_secs(5);

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Connecting to the target's own server failed.
    #[error("cannot connect to the target's server {server}")]
    Connect {
        /// Where.
        server: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// HTTP failed on the way (handshake, request, response).
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
}

/// The target's own server, as one client connection's requests reach it.
pub struct Original {
    server: SocketAddr,
    sockets: NetnsSockets,
    h1: Mutex<Option<http1::SendRequest<Incoming>>>,
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
}

impl Original {
    /// Requests go to `server`, from inside the target namespace.
    pub fn new(server: SocketAddr, sockets: NetnsSockets) -> Original {
        Original {
            server,
            sockets,
            h1: Mutex::new(None),
            h2: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<TokioIo<tokio::net::TcpStream>, ForwardError> {
        connect_original(&self.sockets, self.server)
            .await
            .map(TokioIo::new)
            .map_err(|source| ForwardError::Connect {
                server: self.server,
                source,
            })
    }

    /// Sends `req` over the connection for its HTTP version, opening it (again) if needed.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, ForwardError> {
        if req.version() == Version::HTTP_2 {
            let mut sender = {
                let mut slot = self.h2.lock().await;
                match slot.as_ref() {
                    Some(s) if !s.is_closed() => s.clone(),
                    _ => {
                        let (s, conn) = http2::Builder::new(TokioExecutor::new())
                            .handshake(self.connect().await?)
                            .await?;
                        tokio::spawn(conn);
                        *slot = Some(s.clone());
                        s
                    }
                }
            };
            sender.ready().await?;
            return Ok(sender.send_request(req).await?);
        }
        // HTTP/1: the client's requests come one after the other, so one connection serves
        // them in turn, like a keep-alive connection straight to the server would.
        let mut slot = self.h1.lock().await;
        let mut sender = match slot.take() {
            Some(mut s) if !s.is_closed() => match s.ready().await {
                Ok(()) => s,
                // The server closed the idle connection meanwhile.
                Err(_) => h1_handshake(self.connect().await?).await?,
            },
            _ => h1_handshake(self.connect().await?).await?,
        };
        sender.ready().await?;
        let response = sender.send_request(req);
        *slot = Some(sender);
        drop(slot);
        Ok(response.await?)
    }
}

async fn h1_handshake<T>(io: T) -> Result<http1::SendRequest<Incoming>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .preserve_header_case(true)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream HTTP/1 connection failed");
        }
    });
    Ok(sender)
}

/// Sends `req` to sctrace on a stream of its own (kind `HttpRequest`). Gives the request back
/// if sctrace declines the stream, so it can go to the target's server instead.
pub async fn to_sctrace(
    stealer: &Arc<Subscriber>,
    client: SocketAddr,
    server: SocketAddr,
    req: Request<Incoming>,
) -> Result<Result<Response<Incoming>, ForwardError>, Request<Incoming>> {
    let opened = stealer
        .session
        .open_incoming(
            stealer.subscription,
            IncomingKind::HttpRequest,
            client,
            server,
        )
        .await;
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%client, %server, error = %e, "sctrace declined a stolen request; the target's server gets it");
            return Err(req);
        }
    };
    let answered = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Lingering::new(stream, answered.clone()));
    let result = exchange(io, req).await;
    answered.store(true, Ordering::Release);
    Ok(result)
}

async fn exchange(
    io: TokioIo<Lingering>,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, ForwardError> {
    // Dropping the sender once the response head is in lets the connection close after the
    // response body: the stream carries exactly one exchange.
    if req.version() == Version::HTTP_2 {
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await?;
        tokio::spawn(conn);
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    } else {
        let mut sender = h1_handshake(io).await?;
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }
}

/// Whether `req` asks to switch protocols (WebSocket and the like) on HTTP/1.
pub fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && has_token(req.headers(), "upgrade")
}

/// Declines an `Upgrade: h2c` (RFC 9113 §3.1 lets a server ignore it): the headers that ask
/// for it are removed, so the exchange stays HTTP/1.1 and every request of the connection
/// still passes the filter. Returns whether there was one.
pub fn decline_h2c_upgrade(headers: &mut HeaderMap) -> bool {
    let h2c = headers.get_all(UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
    });
    if !h2c {
        return false;
    }
    headers.remove(UPGRADE);
    headers.remove("http2-settings");
    let kept: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_string)
        .collect();
    headers.remove(CONNECTION);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(CONNECTION, v);
        }
    }
    true
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A request's stream to sctrace. hyper may ask to shut the writing side down as soon as a
/// request is written (a `Connection: close` or HTTP/1.0 request), and an app server that
/// closes when its client half-closes would then drop the request unanswered; so until the
/// response has arrived (`answered`) the FIN waits, and is sent when hyper is done with the
/// stream (drop). After the response — an upgraded connection's half-close — it passes at
/// once. Once the agent's side is closed the stream is read until sctrace closes too
/// (bounded by [`LINGER`]), so the app's side sees a clean close rather than a reset.
pub struct Lingering {
    stream: Option<Stream>,
    answered: Arc<AtomicBool>,
    shut_down: bool,
}

impl Lingering {
    fn new(stream: Stream, answered: Arc<AtomicBool>) -> Lingering {
        Lingering {
            stream: Some(stream),
            answered,
            shut_down: false,
        }
    }

    fn stream(&mut self) -> io::Result<&mut Stream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.answered.load(Ordering::Acquire) {
            // Deferred to drop (see the type's documentation).
            return Poll::Ready(Ok(()));
        }
        let result = match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Poll::Ready(Ok(())) = result {
            self.shut_down = true;
        }
        result
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let shut_down = self.shut_down;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if !shut_down && stream.shutdown().await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(LINGER, async {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2c_upgrades_are_declined() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, "h2c".parse().unwrap());
        h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
        h.insert(
            CONNECTION,
            "Upgrade, HTTP2-Settings, keep-alive".parse().unwrap(),
        );
        h.insert("x-user", "alice".parse().unwrap());
        assert!(decline_h2c_upgrade(&mut h));
        assert!(!h.contains_key(UPGRADE));
        assert!(!h.contains_key("http2-settings"));
        assert_eq!(h.get(CONNECTION).unwrap(), "keep-alive");
        assert_eq!(h.get("x-user").unwrap(), "alice");

        let mut ws = HeaderMap::new();
        ws.insert(UPGRADE, "websocket".parse().unwrap());
        ws.insert(CONNECTION, "Upgrade".parse().unwrap());
        assert!(!decline_h2c_upgrade(&mut ws));
        assert_eq!(ws.get(UPGRADE).unwrap(), "websocket");
        let mut req = Request::new(());
        *req.headers_mut() = ws;
        assert!(wants_upgrade(&req));
        *req.version_mut() = Version::HTTP_2;
        assert!(!wants_upgrade(&req));
    }
}
