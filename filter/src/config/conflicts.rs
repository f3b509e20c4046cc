//! A cross-key check: host names the outgoing filter sends one way while `dns.filter`
//! resolves them on the other side, so the app may get an address it cannot reach from
//! where it connects. Reported as warnings by [`Config::validate`](super::Config::validate).

use super::{ListKind, NetworkConfig};
use crate::entry::Target;

/// A host name that the outgoing list sends one way while `dns.filter` resolves it on the
/// other side.
pub(crate) struct DnsConflict {
    pub key: String,
    pub message: String,
}

/// The conflicts between the outgoing list and `dns.filter`, in the outgoing list's order.
pub(crate) fn dns_conflicts(network: &NetworkConfig) -> Vec<DnsConflict> {
    let (Some(outgoing), Some(dns)) = (&network.outgoing.filter, &network.dns.filter) else {
        return Vec::new();
    };
    if !network.dns.enabled || outgoing.kind == dns.kind {
        return Vec::new();
    }
    let mut conflicts = Vec::new();
    for listed in &outgoing.entries {
        let Some(name) = listed.entry.name() else {
            continue;
        };
        let names = [name];
        let target = Target {
            protocol: None,
            ip: None,
            port: None,
            names: &names,
            search: &[],
        };
        if let Some(other) = dns
            .entries
            .iter()
            .find(|d| d.entry.name().is_some() && d.entry.host_matches(&target))
        {
            let (connect, resolve) = match outgoing.kind {
                ListKind::Local => ("locally", "remotely"),
                ListKind::Remote => ("remotely", "locally"),
            };
            conflicts.push(DnsConflict {
                key: listed.key.to_string(),
                message: format!(
                    "connections to {name:?} are made {connect}, but {} resolves it {resolve}: the address the app gets may not be reachable from where it connects",
                    other.key
                ),
            });
        }
    }
    conflicts
}
