//! Where a connection or datagram goes, and why: the outcome of routing one destination
//! through the filter, as plain data (made by `remote`, recorded by `events`, acted on by
//! `execute`).

/// Where one connection goes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Where.
    pub to: Destination,
    /// The rule that decided (`None` for DNS interception).
    pub rule: Option<String>,
    /// The name the app resolved the address from, if any.
    pub host: Option<String>,
    /// For a local connection to an address that came from a remote DNS answer: the name
    /// to look up again locally (as mirrord does), since the address means nothing here.
    pub reresolve: Option<String>,
}

/// The three ways a connection can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Made on this machine as the app asked.
    Local,
    /// Made in the target through the agent.
    Remote,
    /// A nameserver of the local resolv.conf: sctrace's DNS responder answers.
    Dns,
}

impl Routed {
    /// A socket of a protocol sctrace does not relay (ICMP, UDP-Lite, SCTP, raw): it stays
    /// on this machine, whatever the filter says about its destination.
    pub fn not_relayed() -> Routed {
        Routed {
            to: Destination::Local,
            rule: Some(NOT_RELAYED.to_string()),
            host: None,
            reresolve: None,
        }
    }
}

/// The `rule` of events for sockets that are neither TCP nor UDP.
pub const NOT_RELAYED: &str = "not tcp or udp";
