//! Telling an HTTP client from anything else by the first bytes it sends, and putting those
//! bytes back in front of the connection for whoever serves it next.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::incoming::proxy::ClientConn;

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most bytes read before deciding (a request line and some headers).
const MAX_SNIFF: usize = 8 * 1024;

/// What the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.x, or HTTP/2 with prior knowledge.
    Http,
    /// Something else (TLS, a database protocol, …), or nothing within the wait.
    Other,
}

/// Decides from `buf` alone, or `None` when more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Speaks> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Speaks::Http);
    }
    let could_be_h2 = H2_PREFACE.starts_with(buf);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            Some(Speaks::Http)
        }
        // The request line is whole and valid; the headers follow.
        Ok(httparse::Status::Partial) if buf.contains(&b'\n') && !could_be_h2 => Some(Speaks::Http),
        Ok(httparse::Status::Partial) => None,
        Err(_) if could_be_h2 => None,
        Err(_) => Some(Speaks::Other),
    }
}

/// Reads from `conn` until [`classify`] decides, the client stops sending for `wait`, or it
/// closes. Returns the verdict and the bytes read.
pub async fn sniff<C: AsyncRead + Unpin>(
    conn: &mut C,
    wait: Duration,
) -> io::Result<(Speaks, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let verdict = tokio::time::timeout(wait, async {
        loop {
            if let Some(v) = classify(&buf) {
                return Ok(v);
            }
            if buf.len() >= MAX_SNIFF {
                // Still a valid, unfinished request line: an enormous URI is still HTTP.
                return Ok(Speaks::Http);
            }
            if conn.read_buf(&mut buf).await? == 0 {
                return Ok(Speaks::Other);
            }
        }
    })
    .await;
    match verdict {
        Ok(Ok(v)) => Ok((v, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok((Speaks::Other, buf)),
    }
}

/// A connection with bytes already read from it put back in front.
pub struct Prefixed<C> {
    prefix: BytesMut,
    inner: C,
}

impl<C> Prefixed<C> {
    /// `prefix` is read first, then `inner`.
    pub fn new(prefix: BytesMut, inner: C) -> Prefixed<C> {
        Prefixed { prefix, inner }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Prefixed<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Prefixed<C> {
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
}

impl<C: ClientConn> ClientConn for Prefixed<C> {
    fn socket(&self) -> &TcpStream {
        self.inner.socket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /x HTTP/1.1\r\n"), Some(Speaks::Http));
        assert_eq!(
            classify(b"POST /uwu HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Speaks::Http)
        );
        assert_eq!(classify(b"GET /x HTTP/1.0\r\nHo"), Some(Speaks::Http));
        // "P" and "PRI * HTTP/2.0" could still be the HTTP/2 preface.
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Speaks::Http));
        // A TLS ClientHello, a PostgreSQL startup message, binary noise.
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Speaks::Other)
        );
        assert_eq!(classify(&[0, 0, 0, 8, 4, 210, 22, 47]), Some(Speaks::Other));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Speaks::Other));
        assert_eq!(classify(b"GET /\x01 HTTP/1.1\r\n"), Some(Speaks::Other));
    }

    #[tokio::test]
    async fn sniffing_keeps_the_bytes() {
        let (mut a, b) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .await
            .unwrap();
        drop(a);
        let mut b = b;
        let (speaks, prefix) = sniff(&mut b, Duration::from_secs(1)).await.unwrap();
        assert_eq!(speaks, Speaks::Http);
        let mut again = Prefixed::new(prefix, b);
        let mut all = Vec::new();
        again.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest");
    }

    #[tokio::test]
    async fn silence_is_not_http() {
        let (_a, mut b) = tokio::io::duplex(1024);
        let (speaks, prefix) = sniff(&mut b, Duration::from_millis(50)).await.unwrap();
        assert_eq!(speaks, Speaks::Other);
        assert!(prefix.is_empty());
    }
}
