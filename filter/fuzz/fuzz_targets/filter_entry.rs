//! Fuzzes the filter-entry grammar and the decisions made with whatever it accepts: the
//! parser must never panic, must keep the text as written, and every decision must be made
//! without panicking.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use sctrace_filter::config::{FilterList, ListKind, NetworkConfig};
use sctrace_filter::{explain, Config, FilterEntry, OutgoingFilter, Protocol};

fuzz_target!(|data: &[u8]| {
    // Bytes after the first 0 byte choose the destination probed with the entry.
    let (text, probe) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let parsed = text.parse::<FilterEntry>();
    let Ok(entry) = parsed else {
        return;
    };
    assert_eq!(entry.text(), text);
    // What parses once parses the same way again.
    assert_eq!(text.parse::<FilterEntry>().as_ref(), Ok(&entry));

    let mut bytes = [0u8; 19];
    for (slot, b) in bytes.iter_mut().zip(probe.iter()) {
        *slot = *b;
    }
    let port = u16::from_be_bytes([bytes[0], bytes[1]]);
    let v4 = Ipv4Addr::new(bytes[2], bytes[3], bytes[4], bytes[5]);
    let mut v6 = [0u8; 16];
    v6.copy_from_slice(&bytes[3..19]);
    let v6 = Ipv6Addr::from(v6);
    let name = std::str::from_utf8(probe.get(19..).unwrap_or(&[])).unwrap_or("db");

    for kind in [ListKind::Local, ListKind::Remote] {
        let Ok(list) = FilterList::parse(kind, "feature.network.outgoing.filter", [text]) else {
            panic!("an entry that parses alone must parse in a list");
        };
        let mut network = NetworkConfig::default();
        network.outgoing.filter = Some(list);
        let filter = OutgoingFilter::new(&network).with_search_domains(["svc.cluster.local"]);
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            for ip in [IpAddr::V4(v4), IpAddr::V6(v6), IpAddr::V6(v4.to_ipv6_mapped())] {
                let decision = filter.decide(protocol, SocketAddr::new(ip, port), &[name, text]);
                let _ = decision.to_string();
            }
        }
        let _ = filter.decide_dns(name).to_string();
        let _ = filter.decide_dns(text);
        let mut config = Config::default();
        config.feature.network = network;
        if let Ok(explanation) = explain(&config, text, Protocol::Tcp) {
            let _ = explanation.to_string();
        }
    }
});
