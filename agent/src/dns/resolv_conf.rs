//! Parsing resolv.conf the way glibc reads it: `nameserver` (first three), `search` /
//! `domain` (the last one wins), and `options ndots: timeout: attempts: rotate use-vc`.
//! Unusable lines are skipped, never fatal: a target with an odd file still resolves. What
//! was skipped is kept as line numbers and reasons, not text: the target wrote the file, and
//! its contents do not belong in the agent's log.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_proto::rr::Name;

/// glibc's MAXNS: nameservers past the third are ignored.
const MAX_NAMESERVERS: usize = 3;
/// glibc caps ndots at 15.
const MAX_NDOTS: u8 = 15;
/// glibc caps the timeout at 30 s (RES_MAXRETRANS) and attempts at 5 (RES_MAXRETRY).
const MAX_TIMEOUT_SECS: u64 = 30;
const MAX_ATTEMPTS: u8 = 5;

/// The resolver configuration of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Nameservers, in order (127.0.0.1 when the file names none, like glibc).
    pub nameservers: Vec<IpAddr>,
    /// Search domains, in order.
    pub search: Vec<Name>,
    /// Names with at least this many dots are tried as they are before the search list.
    pub ndots: u8,
    /// Time to wait for one nameserver's answer.
    pub timeout: Duration,
    /// Rounds over all nameservers.
    pub attempts: u8,
    /// Start each query at the next nameserver.
    pub rotate: bool,
    /// Query over TCP only.
    pub use_vc: bool,
    /// Lines (or options) that were skipped, for the log.
    pub skipped: Vec<Skipped>,
}

/// A line, or an option on an `options` line, that was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub why: &'static str,
}

impl Default for ResolvConf {
    fn default() -> ResolvConf {
        ResolvConf {
            nameservers: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
            rotate: false,
            use_vc: false,
            skipped: Vec::new(),
        }
    }
}

impl ResolvConf {
    /// Parses the text of a resolv.conf.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            ..ResolvConf::default()
        };
        for (index, raw) in text.lines().enumerate() {
            let skip = |why| Skipped {
                line: index + 1,
                why,
            };
            // Comments: glibc only knows them at the start of a line; an inline `#` is taken
            // as one too, which is what every file that has one means.
            let line = raw.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword {
                "nameserver" => match words.next().and_then(parse_nameserver) {
                    Some(ip) if conf.nameservers.len() < MAX_NAMESERVERS => {
                        conf.nameservers.push(ip)
                    }
                    Some(_) => conf.skipped.push(skip("more than 3 nameservers")),
                    None => conf.skipped.push(skip("not a nameserver address")),
                },
                "domain" => {
                    conf.search = words.next().and_then(parse_domain).into_iter().collect();
                }
                "search" => {
                    conf.search = words.filter_map(parse_domain).collect();
                }
                "options" => {
                    for option in words {
                        if !conf.apply_option(option) {
                            conf.skipped.push(skip("an unknown option"));
                        }
                    }
                }
                _ => conf.skipped.push(skip("an unknown keyword")),
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        conf
    }

    fn apply_option(&mut self, option: &str) -> bool {
        let (name, value) = match option.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (option, None),
        };
        let number = || value.and_then(|v| v.parse::<u64>().ok());
        match (name, number()) {
            ("ndots", Some(n)) => self.ndots = n.min(u64::from(MAX_NDOTS)) as u8,
            ("timeout", Some(n)) => {
                self.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT_SECS))
            }
            ("attempts", Some(n)) => self.attempts = n.clamp(1, u64::from(MAX_ATTEMPTS)) as u8,
            ("rotate", None) => self.rotate = true,
            ("use-vc" | "usevc" | "tcp", None) => self.use_vc = true,
            // Known glibc options that change nothing for a forwarding resolver.
            (
                "edns0"
                | "single-request"
                | "single-request-reopen"
                | "no-aaaa"
                | "trust-ad"
                | "no-reload"
                | "no-tld-query"
                | "inet6"
                | "debug",
                _,
            ) => {}
            _ => return false,
        }
        true
    }

    /// The names to try for `name`, in order, as glibc's `res_nsearch` does: the name as it is
    /// first when it has at least `ndots` dots, then each search domain appended, then the
    /// name as it is (if not tried yet). A name already under one of the search domains is
    /// tried as it is only: it comes from a resolver that searched the target's list itself
    /// (sctrace gives glibc and c-ares the list), and searching it again would only ask
    /// names like `a.default.svc.cluster.local.default.svc.cluster.local`.
    pub fn candidates(&self, name: &Name) -> Vec<Name> {
        let mut as_is = name.clone();
        as_is.set_fqdn(true);
        if name.is_root() || self.search.iter().any(|domain| domain.zone_of(name)) {
            return vec![as_is];
        }
        let dots = name.num_labels().saturating_sub(1);
        let searched = self.search.iter().filter_map(|domain| {
            let mut joined = Name::from_labels(name.iter().chain(domain.iter())).ok()?;
            joined.set_fqdn(true);
            Some(joined)
        });
        let mut out = Vec::with_capacity(self.search.len() + 1);
        if dots >= self.ndots {
            out.push(as_is);
            out.extend(searched);
        } else {
            out.extend(searched);
            out.push(as_is);
        }
        out
    }
}

impl ResolvConf {
    /// The `search` and `options` lines an application's resolver needs to search names
    /// as this configuration does (made from the parsed values, never the file's text).
    pub fn resolver_lines(&self) -> String {
        let mut text = String::new();
        if !self.search.is_empty() {
            let domains: Vec<String> = self
                .search
                .iter()
                .map(|d| d.to_ascii().trim_end_matches('.').to_string())
                .collect();
            text.push_str(&format!("search {}\n", domains.join(" ")));
        }
        let mut options = vec![
            format!("ndots:{}", self.ndots),
            format!("timeout:{}", self.timeout.as_secs().max(1)),
            format!("attempts:{}", self.attempts),
        ];
        if self.rotate {
            options.push("rotate".into());
        }
        if self.use_vc {
            options.push("use-vc".into());
        }
        text.push_str(&format!("options {}\n", options.join(" ")));
        text
    }
}

fn parse_nameserver(word: &str) -> Option<IpAddr> {
    // A link-local IPv6 server may carry a zone (`fe80::1%eth0`); the zone is dropped.
    let addr = word.split('%').next()?;
    addr.parse().ok()
}

fn parse_domain(word: &str) -> Option<Name> {
    if word == "." {
        return None;
    }
    let mut name = Name::from_ascii(word.trim_end_matches('.')).ok()?;
    name.set_fqdn(true);
    (!name.is_root()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn resolver_lines_say_what_was_understood() {
        let conf = ResolvConf::parse(
            "nameserver 198.18.0.2\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5 rotate evil$(x)\n",
        );
        assert_eq!(
            conf.resolver_lines(),
            "search default.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:5 attempts:2 rotate\n"
        );
        assert_eq!(
            ResolvConf::default().resolver_lines(),
            "options ndots:1 timeout:5 attempts:2\n"
        );
    }

    #[test]
    fn names_under_a_search_domain_are_not_searched_again() {
        let conf = ResolvConf::parse(
            "search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(
            conf.candidates(&name("uwu-service.default.svc.cluster.local.")),
            [name("uwu-service.default.svc.cluster.local.")]
        );
        assert_eq!(
            conf.candidates(&name("x.Cluster.Local")),
            [name("x.Cluster.Local.")],
            "letter case does not matter"
        );
        assert_eq!(conf.candidates(&name("uwu-service.")).len(), 4);
    }

    #[test]
    fn kubernetes_style() {
        let c = ResolvConf::parse(
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n",
        );
        assert_eq!(c.nameservers, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.search.len(), 3);
        assert_eq!(c.ndots, 5);
        assert!(c.skipped.is_empty());
        let got: Vec<String> = c
            .candidates(&name("uwu-service."))
            .iter()
            .map(|n| n.to_ascii())
            .collect();
        assert_eq!(
            got,
            [
                "uwu-service.default.svc.cluster.local.",
                "uwu-service.svc.cluster.local.",
                "uwu-service.cluster.local.",
                "uwu-service."
            ]
        );
    }

    #[test]
    fn enough_dots_tries_the_name_first() {
        let c = ResolvConf::parse("search corp.example\noptions ndots:2\n");
        let got: Vec<String> = c
            .candidates(&name("a.b.c."))
            .iter()
            .map(|n| n.to_ascii())
            .collect();
        assert_eq!(got, ["a.b.c.", "a.b.c.corp.example."]);
        let got: Vec<String> = c
            .candidates(&name("a.b."))
            .iter()
            .map(|n| n.to_ascii())
            .collect();
        // One dot, fewer than ndots: the search list comes first.
        assert_eq!(got, ["a.b.corp.example.", "a.b."]);
    }

    #[test]
    fn odd_inputs() {
        let c = ResolvConf::parse(
            "# comment\r\n\
             ; another\r\n\
             \tnameserver\t198.18.0.53   # trailing\r\n\
             nameserver not-an-ip\n\
             nameserver fe80::1%eth0\n\
             nameserver ::1\n\
             nameserver 198.18.0.54\n\
             domain first.example\n\
             search  a.example.  b.example   .\n\
             options ndots:100 timeout:0 attempts:99 rotate bogus ndots:x\n\
             options use-vc edns0\n\
             sortlist 1.2.3.4\n\
             nameserver",
        );
        assert_eq!(
            c.nameservers,
            vec![
                "198.18.0.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        // `search` after `domain`: the last one wins; "." is not a domain.
        assert_eq!(c.search, vec![name("a.example."), name("b.example.")]);
        assert_eq!(c.ndots, 15);
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.attempts, 5);
        assert!(c.rotate && c.use_vc);
        let skipped: Vec<(usize, &str)> = c.skipped.iter().map(|s| (s.line, s.why)).collect();
        assert_eq!(
            skipped,
            [
                (4, "not a nameserver address"),
                (7, "more than 3 nameservers"),
                (10, "an unknown option"),
                (10, "an unknown option"),
                (12, "an unknown keyword"),
                (13, "not a nameserver address"),
            ]
        );
    }

    #[test]
    fn domain_after_search_replaces_it() {
        let c = ResolvConf::parse("search a.example b.example\ndomain c.example");
        assert_eq!(c.search, vec![name("c.example.")]);
    }

    #[test]
    fn empty_file_means_local_nameserver_and_defaults() {
        let c = ResolvConf::parse("");
        assert_eq!(c, ResolvConf::default());
        let c = ResolvConf::parse("\n\n   \n");
        assert_eq!(c.nameservers, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(c.candidates(&name("x.")).len(), 1);
    }

    #[test]
    fn binary_garbage_does_not_panic() {
        let text = String::from_utf8_lossy(&[0xff, 0, b'\n', b's', 0xc3, b'\n', b':']).into_owned();
        let c = ResolvConf::parse(&text);
        assert_eq!(c.nameservers.len(), 1);
    }

    #[test]
    fn overlong_search_results_are_skipped() {
        let c = ResolvConf::parse(&format!("search {}.example", "a".repeat(70)));
        // The domain itself is invalid (a label above 63 bytes) and therefore dropped.
        assert!(c.search.is_empty());
        let c = ResolvConf::parse(&format!(
            "search {}.{}.{}.example",
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63)
        ));
        assert_eq!(c.search.len(), 1);
        // Appending it to a long name exceeds 255 bytes: that candidate is skipped.
        let long_name = Name::from_ascii(format!("{}.x.", "e".repeat(60))).unwrap();
        assert_eq!(c.candidates(&long_name).len(), 1);
    }

    #[test]
    fn root_query_is_not_searched() {
        let c = ResolvConf::parse("search a.example\noptions ndots:5");
        assert_eq!(c.candidates(&Name::root()), vec![Name::root()]);
    }
}
