//! The sockets of sctrace's network namespace (the app's) as the kernel lists them in
//! /proc/net/{tcp,tcp6,udp,udp6}: local port, state, owner and inode of each. Used to see
//! whether the app listens on a port, and who else holds the port of an app socket a relay
//! takes datagrams from.

use std::fs;

/// Which table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// /proc/net/tcp and tcp6.
    Tcp,
    /// /proc/net/udp and udp6.
    Udp,
}

/// One socket of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The port the socket is bound to (0: unbound).
    pub local_port: u16,
    /// The kernel's state number (TCP: 0x0A is LISTEN; UDP: 0x07 unconnected, 0x01 connected).
    pub state: u8,
    /// The owner's user id.
    pub uid: u32,
    /// The socket's inode (what /proc/PID/fd links show as `socket:[INODE]`).
    pub inode: u64,
}

/// TCP state LISTEN in the tables.
pub const TCP_LISTEN: u8 = 0x0A;

/// The sockets of `protocol`, IPv4 and IPv6 (unreadable tables count as empty).
pub fn sockets(protocol: Protocol) -> Vec<Entry> {
    let paths = match protocol {
        Protocol::Tcp => ["/proc/net/tcp", "/proc/net/tcp6"],
        Protocol::Udp => ["/proc/net/udp", "/proc/net/udp6"],
    };
    paths
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|text| parse(&text))
        .collect()
}

/// Like [`sockets`], but an error when the IPv4 table can't be read (the IPv6 one is
/// absent where IPv6 is off): for callers that act on a socket's absence.
pub fn sockets_or_error(protocol: Protocol) -> std::io::Result<Vec<Entry>> {
    let (v4, v6) = match protocol {
        Protocol::Tcp => ("/proc/net/tcp", "/proc/net/tcp6"),
        Protocol::Udp => ("/proc/net/udp", "/proc/net/udp6"),
    };
    let mut entries = parse(&fs::read_to_string(v4)?);
    if let Ok(text) = fs::read_to_string(v6) {
        entries.extend(parse(&text));
    }
    Ok(entries)
}

/// The entries of one table's text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines().skip(1).filter_map(entry).collect()
}

/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode`
fn entry(line: &str) -> Option<Entry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let uid = fields.get(7)?.parse().ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some(Entry {
        local_port,
        state,
        uid,
        inode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1
garbage line
";

    #[test]
    fn entries_are_read_and_bad_lines_skipped() {
        let entries = parse(TCP);
        assert_eq!(
            entries,
            vec![
                Entry {
                    local_port: 8080,
                    state: TCP_LISTEN,
                    uid: 1000,
                    inode: 4242
                },
                Entry {
                    local_port: 40000,
                    state: 1,
                    uid: 0,
                    inode: 4243
                },
            ]
        );
    }

    #[test]
    fn own_udp_socket_is_listed() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let uid = nix::unistd::geteuid().as_raw();
        assert!(sockets(Protocol::Udp)
            .iter()
            .any(|e| e.local_port == port && e.uid == uid && e.inode != 0));
    }
}
