//! A real DNS server (Debian's dnsmasq) inside a test namespace, and reading its query log.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns::Netns;
use crate::server::{LogStream, Server};

static NEXT_DNSMASQ: AtomicU32 = AtomicU32::new(0);

/// One query dnsmasq logged (`--log-queries`): `query[AAAA] name from 198.18.0.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// The record type as dnsmasq names it: `A`, `AAAA`, `TXT`, `type=65`, ...
    pub qtype: String,
    /// The queried name, as sent.
    pub name: String,
    /// The client's address.
    pub from: IpAddr,
}

/// The queries in dnsmasq log lines (other lines are ignored), in order.
pub fn parse_dns_queries(lines: &[String]) -> Vec<DnsQuery> {
    lines
        .iter()
        .filter_map(|line| {
            let rest = &line[line.find("query[")? + "query[".len()..];
            let (qtype, rest) = rest.split_once("] ")?;
            let (name, from) = rest.split_once(" from ")?;
            Some(DnsQuery {
                qtype: qtype.to_string(),
                name: name.to_string(),
                from: from.trim().parse().ok()?,
            })
        })
        .collect()
}

impl Netns {
    /// Starts dnsmasq in this namespace, listening on `listen` port 53 (UDP and TCP; add
    /// `--port=N` to `extra_args` for another port). The address must already be on an
    /// interface of the namespace (127.0.0.1 always is; see [`Netns::add_addr`]).
    ///
    /// It answers from `hosts` only (A/AAAA by address family; several entries per name
    /// allowed), never forwards (`--no-resolv`), and says NXDOMAIN for every other name
    /// (`--local=/#/`). Its log — every query included — is the server's [`Server::log`];
    /// [`Server::dns_queries`] parses it. Waits until it has read its hosts file.
    pub fn dnsmasq(&self, listen: IpAddr, hosts: &[(&str, IpAddr)], extra_args: &[&str]) -> Server {
        let n = NEXT_DNSMASQ.fetch_add(1, Ordering::Relaxed);
        let dir = self.scratch_dir();
        let hosts_path = dir.join(format!("dnsmasq-{n}.hosts"));
        let mut text = String::new();
        for (name, addr) in hosts {
            let _ = writeln!(text, "{addr} {name}");
        }
        std::fs::write(&hosts_path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", hosts_path.display()));

        let mut cmd = self.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--local=/#/",
            "--bind-interfaces",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--addn-hosts={}", hosts_path.display()))
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("dnsmasq-{n}.pid")).display()
        ))
        .args(extra_args);
        let ready = format!("read {} - ", hosts_path.display());
        let label = format!("dnsmasq on {listen} in {}", self.name());
        Server::start(label, cmd, LogStream::Stderr, &|line| line.contains(&ready))
    }
}

impl Server {
    /// The DNS queries a dnsmasq server has logged so far.
    pub fn dns_queries(&self) -> Vec<DnsQuery> {
        parse_dns_queries(&self.log())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries_from_file_and_stderr_log_formats() {
        let lines: Vec<String> = [
            "Nov 25 14:20:50 dnsmasq[6339]: query[A] uwu-service.default.svc.cluster.local from 198.18.0.2",
            "Nov 25 14:20:50 dnsmasq[6339]: /run/x/hosts uwu-service.default.svc.cluster.local is 198.18.0.10",
            "dnsmasq[16433]: query[AAAA] laptop.lan from 2001:2:0:1::1",
            "dnsmasq: query[type=65] example from 127.0.0.1",
            "dnsmasq: started, version 2.90 cachesize 150",
        ]
        .map(String::from)
        .to_vec();
        let queries = parse_dns_queries(&lines);
        assert_eq!(
            queries,
            [
                DnsQuery {
                    qtype: "A".into(),
                    name: "uwu-service.default.svc.cluster.local".into(),
                    from: "198.18.0.2".parse().unwrap()
                },
                DnsQuery {
                    qtype: "AAAA".into(),
                    name: "laptop.lan".into(),
                    from: "2001:2:0:1::1".parse().unwrap()
                },
                DnsQuery {
                    qtype: "type=65".into(),
                    name: "example".into(),
                    from: "127.0.0.1".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn malformed_query_lines_are_skipped() {
        let lines: Vec<String> = [
            "query[A",
            "query[A] name",
            "query[A] name from not-an-ip",
            "",
        ]
        .map(String::from)
        .to_vec();
        assert!(parse_dns_queries(&lines).is_empty());
    }
}
