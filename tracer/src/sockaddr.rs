//! Socket addresses: parsing the raw `struct sockaddr` bytes copied from the app's memory
//! and encoding them back, the forms one address takes (IPv4 or v4-mapped IPv6, wildcard or
//! loopback), naming families and socket types, and formatting addresses for events
//! (`198.18.0.10:80`, `[::1]:53`, `/run/app.sock`, `@abstract-name`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A socket address from the app, decoded as far as sctrace cares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SockAddr {
    /// An IPv4 or IPv6 address with port.
    Inet(SocketAddr),
    /// A Unix socket path (bytes up to the first NUL).
    UnixPath(Vec<u8>),
    /// A Linux abstract Unix socket name (without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// An unnamed Unix address (autobind or unbound peer).
    UnixUnnamed,
    /// `AF_UNSPEC`: for connect, "dissolve the association".
    Unspec,
    /// Any other family, or bytes too short for their family.
    Other {
        /// The `sa_family` value.
        family: u16,
    },
}

impl SockAddr {
    /// Decodes `bytes` (the first `min(addrlen, 128)` bytes the app pointed at).
    pub fn parse(bytes: &[u8]) -> Option<SockAddr> {
        let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
        let addr = match i32::from(family) {
            libc::AF_INET if bytes.len() >= 8 => {
                let port = u16::from_be_bytes([bytes[2], bytes[3]]);
                let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
                SockAddr::Inet(SocketAddr::V4(SocketAddrV4::new(ip, port)))
            }
            libc::AF_INET6 if bytes.len() >= 24 => {
                let port = u16::from_be_bytes([bytes[2], bytes[3]]);
                let flowinfo = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes[8..24]);
                let scope = match bytes.get(24..28) {
                    Some(s) => u32::from_ne_bytes([s[0], s[1], s[2], s[3]]),
                    None => 0,
                };
                let ip = Ipv6Addr::from(octets);
                SockAddr::Inet(SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope)))
            }
            libc::AF_UNIX => {
                let path = &bytes[2..];
                match path.first() {
                    None => SockAddr::UnixUnnamed,
                    Some(0) => SockAddr::UnixAbstract(path[1..].to_vec()),
                    Some(_) => {
                        let end = path.iter().position(|b| *b == 0).unwrap_or(path.len());
                        SockAddr::UnixPath(path[..end].to_vec())
                    }
                }
            }
            libc::AF_UNSPEC => SockAddr::Unspec,
            _ => SockAddr::Other { family },
        };
        Some(addr)
    }

    /// The inet address, if this is one.
    pub fn inet(&self) -> Option<SocketAddr> {
        match self {
            SockAddr::Inet(addr) => Some(*addr),
            _ => None,
        }
    }

    /// Encodes an inet address as the kernel's `sockaddr_in`/`sockaddr_in6` bytes.
    pub fn encode_inet(addr: SocketAddr) -> Vec<u8> {
        match addr {
            SocketAddr::V4(a) => {
                let mut out = vec![0u8; 16];
                out[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                out[2..4].copy_from_slice(&a.port().to_be_bytes());
                out[4..8].copy_from_slice(&a.ip().octets());
                out
            }
            SocketAddr::V6(a) => {
                let mut out = vec![0u8; 28];
                out[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                out[2..4].copy_from_slice(&a.port().to_be_bytes());
                out[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
                out[8..24].copy_from_slice(&a.ip().octets());
                out[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
                out
            }
        }
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Inet(SocketAddr::V6(a)) if a.scope_id() != 0 => {
                write!(f, "[{}%{}]:{}", a.ip(), a.scope_id(), a.port())
            }
            SockAddr::Inet(a) => write!(f, "{a}"),
            SockAddr::UnixPath(p) => f.write_str(&String::from_utf8_lossy(p)),
            SockAddr::UnixAbstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            SockAddr::UnixUnnamed => f.write_str("(unnamed)"),
            SockAddr::Unspec => f.write_str("(unspec)"),
            SockAddr::Other { family } => write!(f, "(family {family})"),
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4: filter rules, nameserver lists and the name cache
/// are written for the address, whichever socket family the app used.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// [`canonical`] for a socket address (the agent takes destinations in this form).
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// `addr` as a socket of one family shows it: v4-mapped on an IPv6 socket (`v6`), IPv4 on
/// an IPv4 socket; an IPv6 address that is not v4-mapped stays as it is.
pub fn in_family(addr: SocketAddr, v6: bool) -> SocketAddr {
    match (addr.ip(), v6) {
        (IpAddr::V6(ip), false) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        (IpAddr::V4(ip), true) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        _ => addr,
    }
}

/// Where a socket bound to `bound` is reached from this machine, and the address a peer on
/// loopback sees it by: a wildcard address becomes the loopback address of its family.
pub fn loopback_if_wildcard(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// The wildcard address of a family (`0.0.0.0:0` or `[::]:0`).
pub fn wildcard(v6: bool) -> SocketAddr {
    if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// The events name of an address family (`SO_DOMAIN` value).
pub fn family_name(family: i32) -> String {
    match family {
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_UNIX => "unix".into(),
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        libc::AF_UNSPEC => "unspec".into(),
        libc::AF_VSOCK => "vsock".into(),
        other => format!("af{other}"),
    }
}

/// The events name of a socket type (`SO_TYPE` value).
pub fn sock_type_name(sock_type: i32) -> String {
    match sock_type {
        libc::SOCK_STREAM => "stream".into(),
        libc::SOCK_DGRAM => "dgram".into(),
        libc::SOCK_RAW => "raw".into(),
        libc::SOCK_SEQPACKET => "seqpacket".into(),
        libc::SOCK_RDM => "rdm".into(),
        other => format!("type{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_round_trip() {
        for text in [
            "198.18.0.10:80",
            "[::1]:53",
            "[::ffff:1.2.3.4]:8080",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let bytes = SockAddr::encode_inet(addr);
            assert_eq!(SockAddr::parse(&bytes), Some(SockAddr::Inet(addr)));
            assert_eq!(SockAddr::Inet(addr).to_string(), text);
        }
    }

    #[test]
    fn unix_forms() {
        let mut path = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        path.extend_from_slice(b"/run/app.sock\0garbage");
        assert_eq!(SockAddr::parse(&path).unwrap().to_string(), "/run/app.sock");

        let mut abs = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0name");
        assert_eq!(SockAddr::parse(&abs).unwrap().to_string(), "@name");

        let unnamed = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        assert_eq!(SockAddr::parse(&unnamed), Some(SockAddr::UnixUnnamed));
    }

    #[test]
    fn short_or_odd_input_never_panics() {
        assert_eq!(SockAddr::parse(&[]), None);
        assert_eq!(SockAddr::parse(&[2]), None);
        // An AF_INET family with too few bytes is reported, not misread.
        let short = (libc::AF_INET as u16).to_ne_bytes();
        assert_eq!(SockAddr::parse(&short), Some(SockAddr::Other { family: 2 }));
        let odd = 12345u16.to_ne_bytes();
        assert_eq!(
            SockAddr::parse(&odd),
            Some(SockAddr::Other { family: 12345 })
        );
    }

    #[test]
    fn address_forms() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (v4, mapped, v6) = (
            at("198.18.0.10:53"),
            at("[::ffff:198.18.0.10]:53"),
            at("[2001:2::1]:53"),
        );
        assert_eq!(in_family(mapped, false), v4);
        assert_eq!(in_family(v4, true), mapped);
        assert_eq!(in_family(v6, true), v6);
        assert_eq!(in_family(v6, false), v6);
        assert_eq!(in_family(v4, false), v4);
        assert_eq!(canonical_addr(mapped), v4);
        assert_eq!(
            canonical(at("[2001:2::1]:0").ip()),
            at("[2001:2::1]:0").ip()
        );
    }

    #[test]
    fn wildcards_are_reached_through_loopback() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            loopback_if_wildcard(at("0.0.0.0:4000")),
            at("127.0.0.1:4000")
        );
        assert_eq!(loopback_if_wildcard(at("[::]:4000")), at("[::1]:4000"));
        assert_eq!(
            loopback_if_wildcard(at("127.0.0.5:4000")),
            at("127.0.0.5:4000")
        );
        assert_eq!(
            loopback_if_wildcard(at("198.18.0.1:80")),
            at("198.18.0.1:80")
        );
    }

    #[test]
    fn scoped_v6_shows_its_scope() {
        let addr = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, 2));
        assert_eq!(SockAddr::Inet(addr).to_string(), "[fe80::1%2]:80");
    }
}
