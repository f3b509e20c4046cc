//! The local resolv.conf as sctrace reads it: which nameservers the app's resolver will ask
//! (their queries are the ones sctrace answers) and the local search list (which the
//! filter uses to match short names), read the way glibc reads them.

use std::net::IpAddr;

use crate::sockaddr::canonical;

/// Where the local resolver configuration lives.
pub const PATH: &str = "/etc/resolv.conf";

/// The nameservers of a resolv.conf text (glibc uses 127.0.0.1 when there are none).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    let found: Vec<IpAddr> = resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => words.next()?.split('%').next()?.parse().ok(),
                _ => None,
            }
        })
        .map(canonical)
        .collect();
    if found.is_empty() {
        vec![IpAddr::from([127, 0, 0, 1])]
    } else {
        found
    }
}

/// The search domains of a resolv.conf text (the last `search` or `domain` line wins).
pub fn search_domains(resolv_conf: &str) -> Vec<String> {
    let mut domains = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if let Some("search" | "domain") = words.next() {
            domains = words.map(|w| w.trim_end_matches('.').to_string()).collect();
        }
    }
    domains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_read_like_glibc() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch a.example b.example.\noptions ndots:2\n";
        assert_eq!(
            nameservers(text),
            [
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(search_domains(text), ["a.example", "b.example"]);
        assert_eq!(nameservers(""), [IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(search_domains("domain x.example\n"), ["x.example"]);
    }
}
