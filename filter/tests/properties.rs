//! Property tests for the filter grammar and matching.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use sctrace_filter::config::{FilterList, ListKind, NetworkConfig};
use sctrace_filter::{FilterEntry, HostPattern, OutgoingFilter, Protocol, ProtocolMatch, Route};

fn filter_with(kind: ListKind, entries: &[&str]) -> OutgoingFilter {
    let mut network = NetworkConfig::default();
    network.outgoing.filter = Some(
        FilterList::parse(
            kind,
            "feature.network.outgoing.filter",
            entries.iter().copied(),
        )
        .unwrap_or_else(|e| panic!("{entries:?}: {e}")),
    );
    OutgoingFilter::new(&network)
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9_][a-z0-9_-]{0,15}"
        .prop_filter("not all digits", |l| !l.chars().all(|c| c.is_ascii_digit()))
}

fn hostname() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|labels| labels.join("."))
}

fn mix_case(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The parser never panics, and what it accepts displays as written.
    #[test]
    fn parser_total(text in "\\PC{0,40}") {
        if let Ok(entry) = text.parse::<FilterEntry>() {
            prop_assert_eq!(entry.text(), text.as_str());
        }
    }

    /// Entries built from parts parse back into those parts.
    #[test]
    fn grammar_round_trip(
        proto in prop_oneof![Just(""), Just("tcp://"), Just("UDP://"), Just("any://")],
        v4 in any::<u32>(),
        prefix in proptest::option::of(0u8..=32),
        port in proptest::option::of(1u16..),
    ) {
        let ip = Ipv4Addr::from(v4);
        let text = format!(
            "{proto}{ip}{}{}",
            prefix.map(|p| format!("/{p}")).unwrap_or_default(),
            port.map(|p| format!(":{p}")).unwrap_or_default(),
        );
        let entry: FilterEntry = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let want_proto = match proto {
            "tcp://" => ProtocolMatch::Tcp,
            "UDP://" => ProtocolMatch::Udp,
            _ => ProtocolMatch::Any,
        };
        prop_assert_eq!(entry.protocol(), want_proto);
        prop_assert_eq!(entry.port(), port);
        match prefix {
            None => prop_assert_eq!(entry.host(), &HostPattern::Addr(IpAddr::V4(ip))),
            Some(p) => prop_assert_eq!(
                entry.host(),
                &HostPattern::Subnet(ipnet::Ipv4Net::new(ip, p).unwrap().trunc().into())
            ),
        }
    }

    /// A subnet entry matches exactly the addresses with the same leading `prefix` bits, in
    /// IPv4 and in its IPv4-mapped IPv6 form.
    #[test]
    fn subnet_membership(net in any::<u32>(), prefix in 0u8..=32, probe in any::<u32>(), proto in protocol()) {
        let entry = format!("{}/{prefix}", Ipv4Addr::from(net));
        let f = filter_with(ListKind::Local, &[&entry]);
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        let inside = net & mask == probe & mask;
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(probe)), 443);
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::from(probe).to_ipv6_mapped()), 443);
        let expected = if inside { Route::Local } else { Route::Remote };
        // Loopback destinations are subject to the same filter (no listener, no ignore_localhost).
        prop_assert_eq!(f.decide(proto, v4, &[]).route, expected);
        prop_assert_eq!(f.decide(proto, mapped, &[]).route, expected);
    }

    /// IPv6 subnets: membership by leading bits.
    #[test]
    fn ipv6_subnet_membership(net in any::<u128>(), prefix in 0u8..=128, probe in any::<u128>()) {
        let net_addr = Ipv6Addr::from(net);
        prop_assume!(net_addr.to_ipv4_mapped().is_none() || prefix < 96);
        let probe_addr = Ipv6Addr::from(probe);
        prop_assume!(probe_addr.to_ipv4_mapped().is_none());
        let entry = format!("[{net_addr}]/{prefix}");
        let f = filter_with(ListKind::Remote, &[&entry]);
        let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
        let expected = if net & mask == probe & mask { Route::Remote } else { Route::Local };
        prop_assert_eq!(f.decide(Protocol::Tcp, SocketAddr::new(IpAddr::V6(probe_addr), 1), &[]).route, expected);
    }

    /// An address entry and its IPv4-mapped form are the same rule.
    #[test]
    fn mapped_addresses_are_equivalent(v4 in any::<u32>(), written_mapped in any::<bool>(), probe_mapped in any::<bool>()) {
        let ip = Ipv4Addr::from(v4);
        prop_assume!(!ip.is_unspecified());
        let entry = if written_mapped { format!("[{}]", ip.to_ipv6_mapped()) } else { ip.to_string() };
        let f = filter_with(ListKind::Local, &[&entry]);
        let probe = if probe_mapped { IpAddr::V6(ip.to_ipv6_mapped()) } else { IpAddr::V4(ip) };
        prop_assert_eq!(f.decide(Protocol::Udp, SocketAddr::new(probe, 53), &[]).route, Route::Local);
    }

    /// Name entries ignore letter case and one trailing dot on either side, and match only
    /// the whole name.
    #[test]
    fn names_match_whole_names_case_insensitively(
        name in hostname(),
        entry_mask in any::<u64>(),
        probe_mask in any::<u64>(),
        entry_dot in any::<bool>(),
        probe_dot in any::<bool>(),
        other in hostname(),
    ) {
        let entry = format!("{}{}", mix_case(&name, entry_mask), if entry_dot { "." } else { "" });
        let probe = format!("{}{}", mix_case(&name, probe_mask), if probe_dot { "." } else { "" });
        let f = filter_with(ListKind::Local, &[&entry]);
        let to = SocketAddr::from(([198, 18, 0, 1], 80));
        prop_assert_eq!(f.decide(Protocol::Tcp, to, &[&probe]).route, Route::Local);
        prop_assert_eq!(f.decide_dns(&probe).route, Route::Local);
        let longer = format!("{other}.{name}");
        prop_assert_eq!(f.decide(Protocol::Tcp, to, &[&longer]).route, Route::Remote);
        if !other.eq_ignore_ascii_case(&name) {
            prop_assert_eq!(f.decide(Protocol::Tcp, to, &[&other]).route, Route::Remote);
            prop_assert_eq!(f.decide_dns(&other).route, Route::Remote);
        }
    }

    /// A port entry matches its port only; protocol prefixes pick the transport.
    #[test]
    fn ports_and_protocols(port in 1u16.., probe in 1u16.., proto in protocol(), written in 0usize..3) {
        let prefix = ["", "tcp://", "udp://"][written];
        let entry = format!("{prefix}:{port}");
        let f = filter_with(ListKind::Remote, &[&entry]);
        let proto_ok = match written {
            1 => proto == Protocol::Tcp,
            2 => proto == Protocol::Udp,
            _ => true,
        };
        let expected = if proto_ok && port == probe { Route::Remote } else { Route::Local };
        prop_assert_eq!(f.decide(proto, SocketAddr::from(([198, 18, 0, 1], probe)), &[]).route, expected);
    }
}
