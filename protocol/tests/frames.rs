//! Property tests of the frame codec: every valid frame survives encode → decode at any
//! split point, and arbitrary bytes never make the decoder panic or over-read.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sctrace_protocol::frame::{MAX_DATAGRAM_LEN, MAX_DATA_CHUNK, MAX_PAYLOAD_LEN};
use sctrace_protocol::{
    decode, decode_eof, DecodeError, DnsFailureKind, DnsTransport, Families, Frame, HttpFilter,
    IncomingKind, IncomingMode, ListenerPorts, RefuseReason, SubscribeFailureKind,
};

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<u128>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(ip, port, f, s)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, f, s))
        }),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 :é✓]{0,40}"
}

fn stream() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u32>(), bytes(64)).prop_map(|(a, b, w, token)| {
            Frame::Hello {
                min_version: a.min(b),
                max_version: a.max(b),
                stream_window: w,
                token,
            }
        }),
        (any::<u16>(), any::<u32>()).prop_map(|(version, stream_window)| Frame::Welcome {
            version,
            stream_window
        }),
        (1u8..=6, text()).prop_map(|(c, message)| Frame::Refused {
            reason: match c {
                1 => RefuseReason::BadToken,
                2 => RefuseReason::UnsupportedVersion,
                3 => RefuseReason::Busy,
                4 => RefuseReason::BadHandshake,
                c => RefuseReason::Other(c),
            },
            message
        }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        text().prop_map(|message| Frame::GoAway { message }),
        (stream(), socket_addr(), any::<u32>(), any::<bool>()).prop_map(
            |(stream, addr, timeout_ms, attach)| Frame::ConnectTcp {
                stream,
                addr,
                timeout_ms,
                attach,
            }
        ),
        (stream(), socket_addr()).prop_map(|(stream, bind)| Frame::OpenUdp { stream, bind }),
        (stream(), socket_addr()).prop_map(|(stream, local)| Frame::Opened { stream, local }),
        (stream(), any::<i32>()).prop_map(|(stream, errno)| Frame::OpenFailed { stream, errno }),
        (stream(), prop::collection::vec(any::<u8>(), 1..3000)).prop_map(|(stream, p)| {
            Frame::Data {
                stream,
                payload: Bytes::from(p),
            }
        }),
        (stream(), 1..=u32::MAX)
            .prop_map(|(stream, increment)| Frame::WindowUpdate { stream, increment }),
        stream().prop_map(|stream| Frame::Fin { stream }),
        (stream(), any::<i32>()).prop_map(|(stream, errno)| Frame::Reset { stream, errno }),
        (stream(), socket_addr(), bytes(2000)).prop_map(|(stream, addr, payload)| {
            Frame::Datagram {
                stream,
                addr,
                payload,
            }
        }),
        (stream(), any::<bool>(), bytes(600)).prop_map(|(stream, tcp, message)| {
            Frame::DnsQuery {
                stream,
                transport: if tcp {
                    DnsTransport::Tcp
                } else {
                    DnsTransport::Udp
                },
                message,
            }
        }),
        (stream(), bytes(600)).prop_map(|(stream, message)| Frame::DnsAnswer { stream, message }),
        (stream(), 1u8..=9, text()).prop_map(|(stream, c, message)| Frame::DnsFailed {
            stream,
            kind: match c {
                1 => DnsFailureKind::Timeout,
                2 => DnsFailureKind::BadQuery,
                3 => DnsFailureKind::Unreachable,
                4 => DnsFailureKind::Unavailable,
                c => DnsFailureKind::Other(c),
            },
            message
        }),
        stream().prop_map(|stream| Frame::EnvQuery { stream }),
        (
            stream(),
            prop::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,12}", "[ -~]{0,40}"), 0..12),
            any::<bool>()
        )
            .prop_map(|(stream, vars, more)| Frame::EnvVars {
                stream,
                vars: vars
                    .into_iter()
                    .map(|(n, v)| (Bytes::from(n), Bytes::from(v)))
                    .collect(),
                more,
            }),
        (stream(), text()).prop_map(|(stream, message)| Frame::EnvFailed { stream, message }),
        (
            stream(),
            1..=u16::MAX,
            any::<bool>(),
            prop::sample::select(vec![Families::IPV4, Families::IPV6, Families::BOTH]),
            prop::option::of((any::<u16>(), any::<u16>())),
            prop::option::of(http_filter())
        )
            .prop_map(|(stream, port, steal, families, listeners, filter)| {
                Frame::Subscribe {
                    stream,
                    port,
                    mode: if steal {
                        IncomingMode::Steal
                    } else {
                        IncomingMode::Mirror
                    },
                    families,
                    listeners: listeners.map(|(v4, v6)| ListenerPorts {
                        ipv4: (v4 != 0).then_some(v4),
                        ipv6: (v6 != 0).then_some(v6),
                    }),
                    filter,
                }
            }),
        stream().prop_map(|stream| Frame::Subscribed { stream }),
        (stream(), 1u8..=9, text()).prop_map(|(stream, c, message)| Frame::SubscribeFailed {
            stream,
            kind: match c {
                1 => SubscribeFailureKind::PortInUse,
                2 => SubscribeFailureKind::BadFilter,
                3 => SubscribeFailureKind::Unsupported,
                4 => SubscribeFailureKind::Failed,
                c => SubscribeFailureKind::Other(c),
            },
            message
        }),
        (stream(), stream(), 0u8..3, socket_addr(), socket_addr()).prop_map(
            |(stream, subscription, k, client, server)| Frame::IncomingTcp {
                stream,
                subscription,
                kind: [
                    IncomingKind::Stolen,
                    IncomingKind::Mirrored,
                    IncomingKind::HttpRequest
                ][k as usize],
                client,
                server,
            }
        ),
        (stream(), socket_addr()).prop_map(|(stream, addr)| Frame::RouteQuery { stream, addr }),
        stream().prop_map(|stream| Frame::ResolverQuery { stream }),
        (stream(), text()).prop_map(|(stream, text)| Frame::ResolverConf { stream, text }),
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(nonce, proof)| Frame::AuthChallenge { nonce, proof }),
        any::<[u8; 32]>().prop_map(|proof| Frame::AuthProof { proof }),
    ]
}

/// Filters as the config builds them: conditions, and lists of them nested a few levels.
fn http_filter() -> impl Strategy<Value = HttpFilter> {
    let leaf = prop_oneof![
        "[a-z^$.*: -]{1,30}".prop_map(HttpFilter::Header),
        "[a-z/^$.*]{1,30}".prop_map(HttpFilter::Path),
        "[A-Z]{1,7}".prop_map(HttpFilter::Method),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..5).prop_map(HttpFilter::AllOf),
            prop::collection::vec(inner, 1..5).prop_map(HttpFilter::AnyOf),
        ]
    })
}

proptest! {
    #[test]
    fn round_trip(frames in prop::collection::vec(frame(), 1..8)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf).unwrap();
        }
        let mut decoded = Vec::new();
        while let Some(f) = decode(&mut buf).unwrap() {
            decoded.push(f);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn any_split_point_decodes_the_same(frames in prop::collection::vec(frame(), 1..4), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        let cut = cut.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..cut]);
        let mut decoded = Vec::new();
        while let Some(f) = decode(&mut buf).unwrap() {
            decoded.push(f);
        }
        buf.extend_from_slice(&wire[cut..]);
        while let Some(f) = decode(&mut buf).unwrap() {
            decoded.push(f);
        }
        prop_assert_eq!(decode_eof(&mut buf), Ok(None));
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn truncation_is_reported_at_eof(f in frame(), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        f.encode(&mut wire).unwrap();
        let cut = cut.index(wire.len());
        if cut > 0 {
            let mut buf = BytesMut::from(&wire[..cut]);
            let truncated = matches!(decode_eof(&mut buf), Err(DecodeError::Truncated { .. }));
            prop_assert!(truncated);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut buf = BytesMut::from(&data[..]);
        loop {
            let before = buf.len();
            match decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) => { let _ = decode_eof(&mut buf); break }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn plausible_headers_with_random_payloads(kind in 0u8..0x58, flags in 0u8..2, stream in 0u32..4, payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&[kind, flags]);
        buf.extend_from_slice(&stream.to_be_bytes());
        buf.extend_from_slice(&payload);
        match decode(&mut buf) {
            Ok(Some(f)) => {
                // Whatever decodes re-encodes to the same bytes.
                let mut again = BytesMut::new();
                f.encode(&mut again).unwrap();
                let mut expect = BytesMut::new();
                expect.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                expect.extend_from_slice(&[kind, flags]);
                expect.extend_from_slice(&stream.to_be_bytes());
                expect.extend_from_slice(&payload);
                // Lossy text decoding may differ for invalid UTF-8 messages.
                if !matches!(f, Frame::Refused { .. } | Frame::GoAway { .. } | Frame::DnsFailed { .. } | Frame::EnvFailed { .. } | Frame::SubscribeFailed { .. } | Frame::ResolverConf { .. }) {
                    prop_assert_eq!(again, expect);
                }
            }
            Ok(None) => prop_assert!(false, "a whole frame was buffered"),
            Err(_) => {}
        }
    }
}

#[test]
fn encode_refuses_what_decode_would_reject() {
    let mut buf = BytesMut::new();
    let big = Frame::Data {
        stream: 1,
        payload: Bytes::from(vec![0u8; MAX_DATA_CHUNK + 1]),
    };
    assert!(big.encode(&mut buf).is_err());
    assert!(buf.is_empty(), "nothing appended on error");
    let big = Frame::Datagram {
        stream: 1,
        addr: "[::1]:1".parse().unwrap(),
        payload: Bytes::from(vec![0u8; MAX_DATAGRAM_LEN + 1]),
    };
    assert!(big.encode(&mut buf).is_err());
    assert!(Frame::Fin { stream: 0 }.encode(&mut buf).is_err());
    let max = Frame::Datagram {
        stream: 1,
        addr: "[::1]:1".parse().unwrap(),
        payload: Bytes::from(vec![0u8; MAX_DATAGRAM_LEN]),
    };
    max.encode(&mut buf).unwrap();
    assert!(buf.len() <= 10 + MAX_PAYLOAD_LEN);
    assert_eq!(decode(&mut buf).unwrap(), Some(max));
}

#[test]
fn encode_refuses_subscriptions_decode_would_reject() {
    let mut buf = BytesMut::new();
    let subscribe = |port, filter| Frame::Subscribe {
        stream: 1,
        port,
        mode: IncomingMode::Steal,
        families: Families::BOTH,
        listeners: None,
        filter,
    };
    assert!(subscribe(0, None).encode(&mut buf).is_err());
    assert!(subscribe(80, Some(HttpFilter::AnyOf(vec![])))
        .encode(&mut buf)
        .is_err());
    assert!(subscribe(80, Some(HttpFilter::Header(String::new())))
        .encode(&mut buf)
        .is_err());
    // 256 conditions of 4 KiB each: valid shape, but larger than a frame.
    let huge = HttpFilter::AnyOf(vec![HttpFilter::Path("a".repeat(4096)); 256]);
    assert!(matches!(
        subscribe(80, Some(huge)).encode(&mut buf),
        Err(sctrace_protocol::EncodeError::TooLarge { .. })
    ));
    let incoming = Frame::IncomingTcp {
        stream: 2,
        subscription: 0,
        kind: IncomingKind::Stolen,
        client: "198.18.1.2:5000".parse().unwrap(),
        server: "198.18.1.1:80".parse().unwrap(),
    };
    assert!(incoming.encode(&mut buf).is_err());
    assert!(buf.is_empty(), "nothing appended on error");
}

#[test]
fn data_payloads_are_decoded_without_a_copy() {
    let mut buf = BytesMut::new();
    let payload = Bytes::from(vec![9u8; 40_000]);
    Frame::Data {
        stream: 3,
        payload: payload.clone(),
    }
    .encode(&mut buf)
    .unwrap();
    Frame::Fin { stream: 3 }.encode(&mut buf).unwrap();
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    match decode(&mut buf).unwrap() {
        Some(Frame::Data {
            stream: 3,
            payload: got,
        }) => {
            assert_eq!(got, payload);
            let at = got.as_ptr() as usize;
            assert!(at > start && at < end, "a view into the read buffer");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decode(&mut buf).unwrap(), Some(Frame::Fin { stream: 3 }));
    // An empty Data frame is still malformed.
    let mut empty = BytesMut::from(&[0u8, 0, 0, 0, 0x20, 0, 0, 0, 0, 1][..]);
    assert!(matches!(
        decode(&mut empty),
        Err(DecodeError::Malformed { .. })
    ));
}
