//! Filtered steal: the agent serves the client's connection with a real HTTP implementation
//! (hyper; HTTP/1.x with keep-alive and pipelining, HTTP/2 with prior knowledge) and routes
//! each request by the subscription's filter — a match goes to sctrace on a stream of its
//! own, the rest to the target's own server — so that one keep-alive or HTTP/2 connection
//! can carry requests for both. Bodies stream through; `Upgrade` exchanges (WebSocket) are
//! spliced after their `101`; `Upgrade: h2c` is declined so the connection stays HTTP/1.1.
//! A client that does not speak HTTP gets the target's server, untouched.

pub mod filter;
mod forward;
mod sniff;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::proxy::{pass_through, ClientConn};
use super::Subscriber;
use crate::netns::NetnsSockets;
use forward::{decline_h2c_upgrade, to_sctrace, wants_upgrade, Original};
use sniff::{sniff, Prefixed, Speaks};

/// How long a client may stay silent before the agent decides it is not an HTTP client
/// (server-speaks-first protocols) and hands it to the target's server as it is.
const SNIFF_WAIT: Duration = Duration::from_secs(10);
/// How long an HTTP/1 request's headers may take to arrive, whole: a client that sends them
/// a byte at a time (or stops halfway) does not hold the connection and its task forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves `conn` (from `client` to `server`) for `stealer`, whose filter picks the requests.
pub async fn serve<C: ClientConn + 'static>(
    mut conn: C,
    stealer: Arc<Subscriber>,
    client: SocketAddr,
    server: SocketAddr,
    sockets: NetnsSockets,
) {
    let (speaks, prefix) = match sniff(&mut conn, SNIFF_WAIT).await {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(%client, %server, error = %e, "client connection failed before it said anything");
            return;
        }
    };
    let conn = Prefixed::new(prefix, conn);
    if speaks == Speaks::Other {
        tracing::debug!(%client, %server, "not an HTTP client: passing the connection to the target's server");
        pass_through(conn, server, &sockets).await;
        return;
    }
    let route = Arc::new(Route {
        original: Original::new(server, sockets),
        stealer,
        client,
        server,
    });
    let builder = http_server(HEADER_READ_TIMEOUT);
    let service = service_fn(move |req| {
        let route = route.clone();
        async move { Ok::<_, Infallible>(route.handle(req).await) }
    });
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(conn), service)
        .await
    {
        tracing::debug!(%client, %server, error = %e, "filtered connection ended with an error");
    }
}

/// The HTTP server of filtered connections: HTTP/1.x with keep-alive, half-close and the
/// client's header case kept, its headers due within `header_timeout`; HTTP/2.
fn http_server(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .preserve_header_case(true)
        .half_close(true)
        .auto_date_header(false)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().auto_date_header(false);
    builder
}

/// One client connection's routing.
struct Route {
    original: Original,
    stealer: Arc<Subscriber>,
    client: SocketAddr,
    server: SocketAddr,
}

impl Route {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        decline_h2c_upgrade(req.headers_mut());
        let stolen = self.stealer.is_alive()
            && self
                .stealer
                .filter
                .as_ref()
                .is_some_and(|f| f.matches(req.method(), req.uri(), req.headers()));
        let downstream = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (target, result) = if stolen {
            match to_sctrace(&self.stealer, self.client, self.server, req).await {
                Ok(result) => ("sctrace", result),
                Err(req) => ("target", self.original.send(req).await),
            }
        } else {
            ("target", self.original.send(req).await)
        };
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(client = %self.client, server = %self.server, to = target, error = %chain(&e), "request failed");
                return bad_gateway(target);
            }
        };
        tracing::trace!(client = %self.client, to = target, status = %response.status(), "request routed");
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(downstream) = downstream {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(downstream, upstream));
            }
        }
        response.map(BodyExt::boxed)
    }
}

/// After a `101`, relays the client's and the server's upgraded connections to each other.
async fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
        return;
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

/// An error and its causes, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn bad_gateway(target: &str) -> Response<Body> {
    let text = format!("sctrace-agent: the request could not reach the {target}\n");
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_whose_headers_do_not_arrive_is_cut_off() {
        let (mut client, server) = tokio::io::duplex(4096);
        let serving = tokio::spawn(async move {
            let service = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            http_server(Duration::from_millis(300))
                .serve_connection_with_upgrades(TokioIo::new(server), service)
                .await
                .is_err()
        });
        // Half a request, then nothing.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: target\r\nX-Slow: ")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection was kept open");
        assert!(serving.await.unwrap(), "the server ended it with an error");
        // A whole request is served as before.
        let (mut client, server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = http_server(Duration::from_millis(300))
                .serve_connection_with_upgrades(TokioIo::new(server), service)
                .await;
        });
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}
