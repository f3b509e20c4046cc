//! Resolver configurations: the local resolv.conf as sctrace reads it — which nameservers
//! the app's resolver will ask (their queries are the ones sctrace answers) and the local
//! search list (which the filter uses to match short names), read the way glibc reads them
//! — and the target's search list and options, which the app's resolver is given.

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

/// The target's resolver configuration, as the agent reported it (`ResolverConf`).
///
/// The app's resolver reads the laptop's resolv.conf, whose search list and `ndots` are not
/// the target's: a short name like `uwu-service` would be asked as it is, and the agent would
/// have to search it and answer under another name than the target's resolver would. glibc
/// and c-ares take a search list and options from the environment (`LOCALDOMAIN`,
/// `RES_OPTIONS`), so the app is given the target's: its resolver then asks exactly the names
/// the target's would (`uwu-service.default.svc.cluster.local`), and gets the target's own
/// answers. (musl and Go's own resolver read only the file; for them the agent searches.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetResolver {
    /// The target's search domains, in order.
    pub search: Vec<String>,
    /// The target's resolver options (`ndots:5`, `timeout:2`, ...).
    pub options: Vec<String>,
}

/// How long sctrace waits for the target's resolver configuration.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl TargetResolver {
    /// Reads `search`/`options` lines.
    pub fn parse(text: &str) -> Self {
        let mut options = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("options") {
                options.extend(words.map(String::from));
            }
        }
        Self {
            search: search_domains(text),
            options,
        }
    }

    /// Asks the agent; an agent that can't say gives the defaults (no search list).
    pub async fn ask(agent: &sctrace_protocol::SessionHandle) -> Self {
        match tokio::time::timeout(ASK_TIMEOUT, agent.resolver_conf()).await {
            Ok(Ok(text)) => Self::parse(&text),
            Ok(Err(err)) => {
                tracing::debug!("cannot read the target's resolver configuration: {err}");
                Self::default()
            }
            Err(_) => {
                tracing::debug!("the target's resolver configuration did not come in time");
                Self::default()
            }
        }
    }

    /// The environment that gives an app's glibc or c-ares resolver this configuration:
    /// `LOCALDOMAIN` (the search list) and `RES_OPTIONS`; nothing for an empty one.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if !self.search.is_empty() {
            vars.push(("LOCALDOMAIN", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            vars.push(("RES_OPTIONS", self.options.join(" ")));
        }
        vars
    }
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

    #[test]
    fn the_targets_configuration_becomes_the_apps_resolver_environment() {
        let target = TargetResolver::parse(
            "search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2 attempts:2\n",
        );
        assert_eq!(
            target.env_vars(),
            [
                (
                    "LOCALDOMAIN",
                    "default.svc.cluster.local svc.cluster.local cluster.local".to_string()
                ),
                ("RES_OPTIONS", "ndots:5 timeout:2 attempts:2".to_string())
            ]
        );
        assert!(TargetResolver::parse("").env_vars().is_empty());
    }
}
