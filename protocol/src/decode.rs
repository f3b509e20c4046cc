//! The frame decoder: a pure function from buffered bytes to frames that rejects malformed,
//! truncated, unknown and oversized input without panicking or trusting a length it has not
//! checked.

use bytes::{Buf, Bytes, BytesMut};

use crate::auth::{NONCE_LEN, PROOF_LEN};
use crate::frame::{
    get_addr, kind, DnsFailureKind, DnsTransport, Frame, RefuseReason, FLAG_ATTACH, FLAG_DNS_TCP,
    FLAG_ENV_MORE, FLAG_LISTENERS, HEADER_LEN, MAGIC, MAX_DATAGRAM_LEN, MAX_DATA_CHUNK,
    MAX_DNS_MESSAGE_LEN, MAX_PAYLOAD_LEN, MAX_TOKEN_LEN,
};
use crate::incoming::{
    tag, Families, HttpFilter, IncomingKind, IncomingMode, ListenerPorts, SubscribeFailureKind,
    MAX_FILTER_DEPTH, MAX_FILTER_LIST_LEN, MAX_FILTER_TEXT_LEN,
};

/// Why bytes could not be decoded into a frame. Any of these ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header declares a payload above [`MAX_PAYLOAD_LEN`] (checked before waiting for it).
    #[error("frame type {kind:#04x} declares a {len}-byte payload, above the limit of {max}")]
    Oversized {
        /// Frame type code.
        kind: u8,
        /// Declared payload length.
        len: u32,
        /// The limit for this frame type.
        max: usize,
    },
    /// The type code is not one this protocol version defines.
    #[error("unknown frame type {kind:#04x}")]
    UnknownType {
        /// Frame type code.
        kind: u8,
    },
    /// The header or payload does not have the shape the frame type requires.
    #[error("malformed {frame} frame: {problem}")]
    Malformed {
        /// Frame name.
        frame: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// The byte stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes received of the frame.
        have: usize,
        /// Bytes the frame needs (at least the header).
        need: usize,
    },
}

/// Decodes one frame from the front of `buf`, removing its bytes. Returns `Ok(None)` when
/// `buf` holds only part of a frame (the caller reads more and calls again); nothing is
/// consumed then. Errors leave `buf` in an unspecified state: the session must end.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let kind = buf[4];
    let flags = buf[5];
    let stream = u32::from_be_bytes([buf[6], buf[7], buf[8], buf[9]]);
    let (name, max) = describe(kind).ok_or(DecodeError::UnknownType { kind })?;
    // Checked before anything waits for or allocates the payload.
    if len as usize > max {
        return Err(DecodeError::Oversized { kind, len, max });
    }
    let len = len as usize;
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let control = matches!(
        kind,
        kind::HELLO
            | kind::WELCOME
            | kind::REFUSED
            | kind::PING
            | kind::PONG
            | kind::GO_AWAY
            | kind::AUTH_CHALLENGE
            | kind::AUTH_PROOF
    );
    let malformed = |problem| DecodeError::Malformed {
        frame: name,
        problem,
    };
    if control && stream != 0 {
        return Err(malformed("control frame on a non-zero stream"));
    }
    if !control && stream == 0 {
        return Err(malformed("stream frame on stream 0"));
    }
    let allowed_flags = match kind {
        kind::DNS_QUERY => FLAG_DNS_TCP,
        kind::ENV_VARS => FLAG_ENV_MORE,
        kind::CONNECT_TCP => FLAG_ATTACH,
        kind::SUBSCRIBE => FLAG_LISTENERS,
        _ => 0,
    };
    if flags & !allowed_flags != 0 {
        return Err(malformed("unknown flags"));
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(len);
    if kind == kind::DATA {
        // The payload is handed on as it lies in the read buffer, not copied: a relayed
        // byte is copied in user space only where the session's user needs it.
        if payload.is_empty() {
            return Err(malformed("empty data"));
        }
        return Ok(Some(Frame::Data {
            stream,
            payload: payload.freeze(),
        }));
    }
    parse(kind, flags, stream, &payload)
        .map_err(malformed)
        .map(Some)
}

/// Like [`decode`], for when the byte stream has ended: leftover bytes that do not make a whole
/// frame are an error rather than `Ok(None)`.
pub fn decode_eof(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    match decode(buf)? {
        Some(frame) => Ok(Some(frame)),
        None if buf.is_empty() => Ok(None),
        None => {
            let need = if buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                HEADER_LEN + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
            };
            Err(DecodeError::Truncated {
                have: buf.len(),
                need,
            })
        }
    }
}

/// The name of frame type `kind`, if this version defines it.
pub(crate) fn frame_name(kind: u8) -> Option<&'static str> {
    describe(kind).map(|(name, _)| name)
}

/// Name and payload limit of each known frame type.
fn describe(kind: u8) -> Option<(&'static str, usize)> {
    let addr_max = crate::frame::ADDR_V6_LEN;
    Some(match kind {
        kind::HELLO => ("Hello", 12 + MAX_TOKEN_LEN),
        kind::WELCOME => ("Welcome", 10),
        kind::REFUSED => ("Refused", MAX_PAYLOAD_LEN),
        kind::PING => ("Ping", 8),
        kind::PONG => ("Pong", 8),
        kind::GO_AWAY => ("GoAway", MAX_PAYLOAD_LEN),
        kind::CONNECT_TCP => ("ConnectTcp", addr_max + 4),
        kind::OPEN_UDP => ("OpenUdp", addr_max),
        kind::OPENED => ("Opened", addr_max),
        kind::OPEN_FAILED => ("OpenFailed", 4),
        kind::DATA => ("Data", MAX_DATA_CHUNK),
        kind::WINDOW_UPDATE => ("WindowUpdate", 4),
        kind::FIN => ("Fin", 0),
        kind::RESET => ("Reset", 4),
        kind::DATAGRAM => ("Datagram", MAX_DATAGRAM_LEN + addr_max),
        kind::DNS_QUERY => ("DnsQuery", MAX_DNS_MESSAGE_LEN),
        kind::DNS_ANSWER => ("DnsAnswer", MAX_DNS_MESSAGE_LEN),
        kind::DNS_FAILED => ("DnsFailed", MAX_PAYLOAD_LEN),
        kind::ENV_QUERY => ("EnvQuery", 0),
        kind::ENV_VARS => ("EnvVars", MAX_PAYLOAD_LEN),
        kind::ENV_FAILED => ("EnvFailed", MAX_PAYLOAD_LEN),
        kind::SUBSCRIBE => ("Subscribe", MAX_PAYLOAD_LEN),
        kind::SUBSCRIBED => ("Subscribed", 0),
        kind::SUBSCRIBE_FAILED => ("SubscribeFailed", MAX_PAYLOAD_LEN),
        kind::INCOMING_TCP => ("IncomingTcp", 5 + 2 * addr_max),
        kind::ROUTE_QUERY => ("RouteQuery", addr_max),
        kind::RESOLVER_QUERY => ("ResolverQuery", 0),
        kind::RESOLVER_CONF => ("ResolverConf", MAX_PAYLOAD_LEN),
        kind::AUTH_CHALLENGE => ("AuthChallenge", NONCE_LEN + PROOF_LEN),
        kind::AUTH_PROOF => ("AuthProof", PROOF_LEN),
        _ => return None,
    })
}

/// A cursor over a payload; every read is bounds-checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err(what);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, &'static str> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, &'static str> {
        Ok(self.u32(what)? as i32)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, &'static str> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn addr(&mut self) -> Result<std::net::SocketAddr, &'static str> {
        let (addr, used) = get_addr(self.0)?;
        self.0 = &self.0[used..];
        Ok(addr)
    }
    fn magic(&mut self) -> Result<(), &'static str> {
        if self.take(4, "missing magic")? != MAGIC {
            return Err("wrong magic (not an sctrace peer)");
        }
        Ok(())
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.rest()).into_owned()
    }
    /// An HTTP filter node at nesting `depth` (1 for the outermost), with the rules of
    /// [`HttpFilter::check`]; recursion is bounded by [`MAX_FILTER_DEPTH`].
    fn filter(&mut self, depth: usize) -> Result<HttpFilter, &'static str> {
        let tag = self.u8("missing filter tag")?;
        match tag {
            tag::HEADER | tag::PATH | tag::METHOD => {
                let len = self.u16("truncated filter text length")? as usize;
                if len == 0 {
                    return Err("empty filter text");
                }
                if len > MAX_FILTER_TEXT_LEN {
                    return Err("filter text too long");
                }
                let text = std::str::from_utf8(self.take(len, "truncated filter text")?)
                    .map_err(|_| "filter text is not UTF-8")?
                    .to_string();
                Ok(match tag {
                    tag::HEADER => HttpFilter::Header(text),
                    tag::PATH => HttpFilter::Path(text),
                    _ => HttpFilter::Method(text),
                })
            }
            tag::ALL_OF | tag::ANY_OF => {
                if depth > MAX_FILTER_DEPTH {
                    return Err("filter nested too deeply");
                }
                let count = self.u16("truncated filter list length")? as usize;
                if count == 0 {
                    return Err("empty filter list");
                }
                if count > MAX_FILTER_LIST_LEN {
                    return Err("filter list too long");
                }
                // Each member takes at least 3 bytes, so the payload bounds this vector.
                let mut list = Vec::new();
                for _ in 0..count {
                    list.push(self.filter(depth + 1)?);
                }
                Ok(if tag == tag::ALL_OF {
                    HttpFilter::AllOf(list)
                } else {
                    HttpFilter::AnyOf(list)
                })
            }
            _ => Err("unknown filter tag"),
        }
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn end(&self) -> Result<(), &'static str> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}

fn parse(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Frame, &'static str> {
    let mut c = Cursor(payload);
    let frame = match kind {
        kind::HELLO => {
            c.magic()?;
            let min_version = c.u16("truncated version")?;
            let max_version = c.u16("truncated version")?;
            let stream_window = c.u32("truncated window")?;
            let token = Bytes::copy_from_slice(c.rest());
            if min_version > max_version {
                return Err("empty version range");
            }
            Frame::Hello {
                min_version,
                max_version,
                stream_window,
                token,
            }
        }
        kind::WELCOME => {
            c.magic()?;
            Frame::Welcome {
                version: c.u16("truncated version")?,
                stream_window: c.u32("truncated window")?,
            }
        }
        kind::REFUSED => {
            c.magic()?;
            Frame::Refused {
                reason: RefuseReason::from_code(c.u8("missing reason")?),
                message: c.text(),
            }
        }
        kind::PING => Frame::Ping {
            nonce: c.u64("truncated nonce")?,
        },
        kind::PONG => Frame::Pong {
            nonce: c.u64("truncated nonce")?,
        },
        kind::GO_AWAY => Frame::GoAway { message: c.text() },
        kind::CONNECT_TCP => Frame::ConnectTcp {
            stream,
            addr: c.addr()?,
            timeout_ms: c.u32("truncated timeout")?,
            attach: flags & FLAG_ATTACH != 0,
        },
        kind::OPEN_UDP => Frame::OpenUdp {
            stream,
            bind: c.addr()?,
        },
        kind::OPENED => Frame::Opened {
            stream,
            local: c.addr()?,
        },
        kind::OPEN_FAILED => Frame::OpenFailed {
            stream,
            errno: c.i32("truncated errno")?,
        },
        // `decode` takes `Data` apart itself, without copying the payload.
        kind::DATA => {
            let payload = c.rest();
            if payload.is_empty() {
                return Err("empty data");
            }
            Frame::Data {
                stream,
                payload: Bytes::copy_from_slice(payload),
            }
        }
        kind::WINDOW_UPDATE => {
            let increment = c.u32("truncated increment")?;
            if increment == 0 {
                return Err("zero increment");
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::FIN => Frame::Fin { stream },
        kind::RESET => Frame::Reset {
            stream,
            errno: c.i32("truncated errno")?,
        },
        kind::DATAGRAM => {
            let addr = c.addr()?;
            let payload = c.rest();
            if payload.len() > MAX_DATAGRAM_LEN {
                return Err("datagram too large");
            }
            Frame::Datagram {
                stream,
                addr,
                payload: Bytes::copy_from_slice(payload),
            }
        }
        kind::DNS_QUERY => Frame::DnsQuery {
            stream,
            transport: if flags & FLAG_DNS_TCP != 0 {
                DnsTransport::Tcp
            } else {
                DnsTransport::Udp
            },
            message: Bytes::copy_from_slice(c.rest()),
        },
        kind::DNS_ANSWER => Frame::DnsAnswer {
            stream,
            message: Bytes::copy_from_slice(c.rest()),
        },
        kind::DNS_FAILED => Frame::DnsFailed {
            stream,
            kind: DnsFailureKind::from_code(c.u8("missing failure code")?),
            message: c.text(),
        },
        kind::ENV_QUERY => Frame::EnvQuery { stream },
        kind::ENV_VARS => {
            let mut vars = Vec::new();
            while !c.0.is_empty() {
                let len = c.u32("truncated name length")? as usize;
                let name = c.take(len, "truncated name")?;
                let len = c.u32("truncated value length")? as usize;
                let value = c.take(len, "truncated value")?;
                if name.is_empty() || name.contains(&b'=') || name.contains(&0) {
                    return Err("variable name empty or containing '=' or NUL");
                }
                if value.contains(&0) {
                    return Err("variable value containing NUL");
                }
                vars.push((Bytes::copy_from_slice(name), Bytes::copy_from_slice(value)));
            }
            Frame::EnvVars {
                stream,
                vars,
                more: flags & FLAG_ENV_MORE != 0,
            }
        }
        kind::ENV_FAILED => Frame::EnvFailed {
            stream,
            message: c.text(),
        },
        kind::SUBSCRIBE => {
            let port = c.u16("truncated port")?;
            if port == 0 {
                return Err("port 0");
            }
            let mode = IncomingMode::from_code(c.u8("missing mode")?).ok_or("unknown mode")?;
            let families =
                Families::from_code(c.u8("missing families")?).ok_or("unknown families")?;
            let listeners = if flags & FLAG_LISTENERS != 0 {
                let ipv4 = c.u16("truncated listener ports")?;
                let ipv6 = c.u16("truncated listener ports")?;
                Some(ListenerPorts::from_wire(ipv4, ipv6))
            } else {
                None
            };
            let filter = if c.0.is_empty() {
                None
            } else {
                Some(c.filter(1)?)
            };
            Frame::Subscribe {
                stream,
                port,
                mode,
                families,
                listeners,
                filter,
            }
        }
        kind::SUBSCRIBED => Frame::Subscribed { stream },
        kind::SUBSCRIBE_FAILED => Frame::SubscribeFailed {
            stream,
            kind: SubscribeFailureKind::from_code(c.u8("missing failure code")?),
            message: c.text(),
        },
        kind::INCOMING_TCP => {
            let subscription = c.u32("truncated subscription")?;
            if subscription == 0 {
                return Err("subscription 0");
            }
            let kind = IncomingKind::from_code(c.u8("missing kind")?).ok_or("unknown kind")?;
            Frame::IncomingTcp {
                stream,
                subscription,
                kind,
                client: c.addr()?,
                server: c.addr()?,
            }
        }
        kind::ROUTE_QUERY => Frame::RouteQuery {
            stream,
            addr: c.addr()?,
        },
        kind::RESOLVER_QUERY => Frame::ResolverQuery { stream },
        kind::RESOLVER_CONF => Frame::ResolverConf {
            stream,
            text: c.text(),
        },
        kind::AUTH_CHALLENGE => Frame::AuthChallenge {
            nonce: c.array("truncated nonce")?,
            proof: c.array("truncated proof")?,
        },
        kind::AUTH_PROOF => Frame::AuthProof {
            proof: c.array("truncated proof")?,
        },
        _ => return Err("unknown type"),
    };
    c.end()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn header(len: u32, kind: u8, flags: u8, stream: u32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(len);
        b.put_u8(kind);
        b.put_u8(flags);
        b.put_u32(stream);
        b
    }

    #[test]
    fn partial_header_waits() {
        let mut b = BytesMut::from(&[0u8, 0, 0][..]);
        assert_eq!(decode(&mut b), Ok(None));
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn oversized_is_rejected_from_the_header_alone() {
        let mut b = header(u32::MAX, kind::DATA, 0, 1);
        assert!(matches!(
            decode(&mut b),
            Err(DecodeError::Oversized { len: u32::MAX, .. })
        ));
        let mut b = header(9, kind::PING, 0, 0);
        assert!(matches!(decode(&mut b), Err(DecodeError::Oversized { .. })));
    }

    #[test]
    fn unknown_type_is_rejected() {
        let mut b = header(0, 0x7f, 0, 1);
        assert_eq!(decode(&mut b), Err(DecodeError::UnknownType { kind: 0x7f }));
    }

    #[test]
    fn stream_rules() {
        let mut b = header(0, kind::FIN, 0, 0);
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
        let mut b = header(8, kind::PING, 0, 3);
        b.put_u64(1);
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn unknown_flags_rejected() {
        let mut b = header(0, kind::FIN, 0x80, 1);
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn bad_address_family() {
        let mut b = header(7, kind::OPENED, 0, 1);
        b.put_slice(&[5, 1, 2, 3, 4, 0, 80]);
        assert_eq!(
            decode(&mut b),
            Err(DecodeError::Malformed {
                frame: "Opened",
                problem: "unknown address family"
            })
        );
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut b = header(8, kind::OPENED, 0, 1);
        b.put_slice(&[4, 1, 2, 3, 4, 0, 80, 9]);
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn empty_data_and_zero_window_rejected() {
        let mut b = header(0, kind::DATA, 0, 1);
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
        let mut b = header(4, kind::WINDOW_UPDATE, 0, 1);
        b.put_u32(0);
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn wrong_magic_rejected() {
        let mut b = header(10, kind::WELCOME, 0, 0);
        b.put_slice(b"HTTP");
        b.put_u16(1);
        b.put_u32(1);
        assert!(matches!(
            decode(&mut b),
            Err(DecodeError::Malformed {
                frame: "Welcome",
                ..
            })
        ));
    }

    #[test]
    fn truncated_at_eof() {
        let mut b = header(4, kind::RESET, 0, 1);
        b.put_u8(0);
        assert_eq!(
            decode_eof(&mut b),
            Err(DecodeError::Truncated { have: 11, need: 14 })
        );
        let mut b = BytesMut::from(&[1u8][..]);
        assert_eq!(
            decode_eof(&mut b),
            Err(DecodeError::Truncated { have: 1, need: 10 })
        );
        let mut b = BytesMut::new();
        assert_eq!(decode_eof(&mut b), Ok(None));
    }

    #[test]
    fn env_vars_are_checked() {
        let frame = |vars: &[(&[u8], &[u8])]| {
            let mut payload = BytesMut::new();
            for (n, v) in vars {
                payload.put_u32(n.len() as u32);
                payload.put_slice(n);
                payload.put_u32(v.len() as u32);
                payload.put_slice(v);
            }
            let mut b = header(payload.len() as u32, kind::ENV_VARS, 0x01, 3);
            b.put_slice(&payload);
            decode(&mut b)
        };
        assert_eq!(
            frame(&[(b"A", b"1=2"), (b"EMPTY", b"")]),
            Ok(Some(Frame::EnvVars {
                stream: 3,
                vars: vec![
                    (Bytes::from_static(b"A"), Bytes::from_static(b"1=2")),
                    (Bytes::from_static(b"EMPTY"), Bytes::new())
                ],
                more: true
            }))
        );
        for bad in [
            &[(&b""[..], &b"x"[..])][..],
            &[(b"A=B", b"x")],
            &[(b"A\0", b"x")],
            &[(b"A", b"x\0y")],
        ] {
            assert!(
                matches!(
                    frame(bad),
                    Err(DecodeError::Malformed {
                        frame: "EnvVars",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        // A length running past the payload.
        let mut b = header(6, kind::ENV_VARS, 0, 3);
        b.put_u32(9);
        b.put_slice(b"AB");
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
        // EnvQuery carries nothing; EnvVars has only the "more" flag.
        let mut b = header(1, kind::ENV_QUERY, 0, 3);
        b.put_u8(0);
        assert!(matches!(decode(&mut b), Err(DecodeError::Oversized { .. })));
        let mut b = header(0, kind::ENV_VARS, 0x02, 3);
        assert!(matches!(decode(&mut b), Err(DecodeError::Malformed { .. })));
    }

    fn subscribe_payload(port: u16, mode: u8, filter: &[u8]) -> BytesMut {
        subscribe_payload_for(port, mode, 3, filter)
    }

    fn subscribe_payload_for(port: u16, mode: u8, families: u8, filter: &[u8]) -> BytesMut {
        let mut b = header(4 + filter.len() as u32, kind::SUBSCRIBE, 0, 1);
        b.put_u16(port);
        b.put_u8(mode);
        b.put_u8(families);
        b.put_slice(filter);
        b
    }

    fn leaf(tag: u8, text: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(text.len() as u16).to_be_bytes());
        v.extend_from_slice(text);
        v
    }

    fn list(tag: u8, members: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(members.len() as u16).to_be_bytes());
        for m in members {
            v.extend_from_slice(m);
        }
        v
    }

    #[test]
    fn subscribe_frames_are_checked() {
        let header_leaf = leaf(tag::HEADER, b"^x-user: alice$");
        let ok = list(
            tag::ALL_OF,
            &[header_leaf.clone(), leaf(tag::METHOD, b"GET")],
        );
        assert_eq!(
            decode(&mut subscribe_payload(80, 2, &ok)),
            Ok(Some(Frame::Subscribe {
                stream: 1,
                port: 80,
                mode: IncomingMode::Steal,
                families: Families::BOTH,
                listeners: None,
                filter: Some(HttpFilter::AllOf(vec![
                    HttpFilter::Header("^x-user: alice$".into()),
                    HttpFilter::Method("GET".into())
                ]))
            }))
        );
        assert_eq!(
            decode(&mut subscribe_payload(8080, 1, &[])),
            Ok(Some(Frame::Subscribe {
                stream: 1,
                port: 8080,
                mode: IncomingMode::Mirror,
                families: Families::BOTH,
                listeners: None,
                filter: None
            }))
        );
        assert_eq!(
            decode(&mut subscribe_payload_for(8080, 2, 2, &[])),
            Ok(Some(Frame::Subscribe {
                stream: 1,
                port: 8080,
                mode: IncomingMode::Steal,
                families: Families::IPV6,
                listeners: None,
                filter: None
            }))
        );
        // Version 4: flag `listeners`, then a port per family (0: none).
        let with_listeners = |ports: &[u8]| {
            let mut b = header(4 + ports.len() as u32, kind::SUBSCRIBE, FLAG_LISTENERS, 1);
            b.put_u16(8080);
            b.put_u8(2);
            b.put_u8(3);
            b.put_slice(ports);
            b
        };
        assert_eq!(
            decode(&mut with_listeners(&[0x9c, 0x40, 0, 0])),
            Ok(Some(Frame::Subscribe {
                stream: 1,
                port: 8080,
                mode: IncomingMode::Steal,
                families: Families::BOTH,
                listeners: Some(ListenerPorts {
                    ipv4: Some(40000),
                    ipv6: None
                }),
                filter: None
            }))
        );
        assert_eq!(
            decode(&mut with_listeners(&[0x9c, 0x40, 0])),
            Err(DecodeError::Malformed {
                frame: "Subscribe",
                problem: "truncated listener ports"
            })
        );
        for families in [0, 4, 0xff] {
            assert_eq!(
                decode(&mut subscribe_payload_for(80, 2, families, &[])),
                Err(DecodeError::Malformed {
                    frame: "Subscribe",
                    problem: "unknown families"
                }),
                "{families}"
            );
        }
        let mut deep = header_leaf.clone();
        for _ in 0..=MAX_FILTER_DEPTH {
            deep = list(tag::ANY_OF, &[deep]);
        }
        let bad: Vec<(u16, u8, Vec<u8>, &str)> = vec![
            (0, 2, vec![], "port 0"),
            (80, 3, vec![], "unknown mode"),
            (80, 2, vec![9, 0, 1, b'x'], "unknown filter tag"),
            (80, 2, leaf(tag::PATH, b""), "empty filter text"),
            (
                80,
                2,
                leaf(tag::PATH, &[0xff, 0xfe]),
                "filter text is not UTF-8",
            ),
            (80, 2, list(tag::ALL_OF, &[]), "empty filter list"),
            (80, 2, deep, "filter nested too deeply"),
            // The list promises two members and holds one.
            (
                80,
                2,
                {
                    let mut v = list(tag::ANY_OF, std::slice::from_ref(&header_leaf));
                    v[2] = 2;
                    v
                },
                "missing filter tag",
            ),
            // A text length running past the payload.
            (
                80,
                2,
                vec![tag::HEADER, 0x10, 0, b'a'],
                "truncated filter text",
            ),
            // Two filters: the second is trailing bytes.
            (
                80,
                2,
                [header_leaf.clone(), header_leaf.clone()].concat(),
                "trailing bytes",
            ),
        ];
        for (port, mode, filter, problem) in bad {
            assert_eq!(
                decode(&mut subscribe_payload(port, mode, &filter)),
                Err(DecodeError::Malformed {
                    frame: "Subscribe",
                    problem
                }),
                "{problem}"
            );
        }
        // A list of 65535 members is refused from its count, before reading any.
        let mut b = subscribe_payload(80, 2, &[tag::ALL_OF, 0xff, 0xff]);
        assert_eq!(
            decode(&mut b),
            Err(DecodeError::Malformed {
                frame: "Subscribe",
                problem: "filter list too long"
            })
        );
    }

    #[test]
    fn incoming_frames_are_checked() {
        let frame = |subscription: u32, kind: u8| {
            let mut b = header(5 + 7 + 7, kind::INCOMING_TCP, 0, 2);
            b.put_u32(subscription);
            b.put_u8(kind);
            b.put_slice(&[4, 198, 18, 1, 2, 0x13, 0x88]);
            b.put_slice(&[4, 198, 18, 1, 1, 0, 80]);
            decode(&mut b)
        };
        assert_eq!(
            frame(1, 3),
            Ok(Some(Frame::IncomingTcp {
                stream: 2,
                subscription: 1,
                kind: IncomingKind::HttpRequest,
                client: "198.18.1.2:5000".parse().unwrap(),
                server: "198.18.1.1:80".parse().unwrap(),
            }))
        );
        assert!(matches!(
            frame(0, 1),
            Err(DecodeError::Malformed {
                problem: "subscription 0",
                ..
            })
        ));
        assert!(matches!(
            frame(1, 7),
            Err(DecodeError::Malformed {
                problem: "unknown kind",
                ..
            })
        ));
        let mut b = header(1, kind::SUBSCRIBED, 0, 1);
        b.put_u8(0);
        assert!(matches!(decode(&mut b), Err(DecodeError::Oversized { .. })));
    }

    #[test]
    fn http_request_is_not_a_frame() {
        // Someone pointing a browser at the agent's port.
        let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(decode(&mut b).is_err());
    }
}
