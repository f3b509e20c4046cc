//! The relays that carry remote traffic between the app's sockets and the agent: TCP
//! connections through loopback listeners, UDP datagrams through per-peer relay sockets,
//! DNS queries through one socket per nameserver shared by the whole session.

pub mod nameservers;
pub mod parking;
pub mod tcp;
pub mod udp;
