//! The names the app resolved in this session and the addresses they gave: filter rules
//! that name hosts match connections to those addresses, and events show the name.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::sockaddr::canonical;

/// Names remembered per address, most recent first.
const NAMES_PER_ADDRESS: usize = 4;
/// Addresses remembered at most; the cache starts over when full.
const MAX_ADDRESSES: usize = 65_536;

/// Address → names the app looked up that resolved to it.
#[derive(Debug, Default)]
pub struct NameCache {
    by_addr: Mutex<HashMap<IpAddr, VecDeque<Resolved>>>,
}

/// One name that resolved to an address, and where it was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    name: String,
    remotely: bool,
}

/// The form names are kept in: lower case, without the root dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl NameCache {
    /// Remembers that `name` resolved to `addrs`, in the target (`remotely`) or locally.
    pub fn record(&self, name: &str, addrs: impl IntoIterator<Item = IpAddr>, remotely: bool) {
        let name = normalize(name);
        let Ok(mut map) = self.by_addr.lock() else {
            return;
        };
        for ip in addrs {
            if map.len() >= MAX_ADDRESSES {
                map.clear();
            }
            let names = map.entry(canonical(ip)).or_default();
            names.retain(|n| n.name != name);
            names.push_front(Resolved {
                name: name.clone(),
                remotely,
            });
            names.truncate(NAMES_PER_ADDRESS);
        }
    }

    /// The names that resolved to `ip`, most recent first.
    pub fn hostnames(&self, ip: IpAddr) -> Vec<String> {
        self.by_addr
            .lock()
            .ok()
            .and_then(|map| {
                map.get(&canonical(ip))
                    .map(|names| names.iter().map(|r| r.name.clone()).collect())
            })
            .unwrap_or_default()
    }

    /// The name `ip` came from when its latest resolution was in the target: a local
    /// connection to it must look the name up again locally.
    pub fn remote_origin(&self, ip: IpAddr) -> Option<String> {
        let map = self.by_addr.lock().ok()?;
        let latest = map.get(&canonical(ip))?.front()?;
        latest.remotely.then(|| latest.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_back_most_recent_first_and_mapped_addresses_match() {
        let cache = NameCache::default();
        let ip: IpAddr = "198.18.0.10".parse().unwrap();
        cache.record("uwu-service.", [ip], true);
        cache.record("UWU.default", [ip], true);
        cache.record("uwu-service", [ip], true);
        assert_eq!(cache.hostnames(ip), ["uwu-service", "uwu.default"]);
        assert_eq!(cache.remote_origin(ip).as_deref(), Some("uwu-service"));
        cache.record("uwu-service", [ip], false);
        assert_eq!(cache.remote_origin(ip), None, "resolved locally last");
        let mapped: IpAddr = "::ffff:198.18.0.10".parse().unwrap();
        assert_eq!(cache.hostnames(mapped), ["uwu-service", "uwu.default"]);
        assert!(cache.hostnames("198.18.0.11".parse().unwrap()).is_empty());
    }

    #[test]
    fn a_busy_address_keeps_only_its_latest_names() {
        let cache = NameCache::default();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        for i in 0..10 {
            cache.record(&format!("n{i}"), [ip], false);
        }
        assert_eq!(cache.hostnames(ip), ["n9", "n8", "n7", "n6"]);
    }
}
