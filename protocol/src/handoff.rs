//! The words and address layout of the handoff channel between sctrace and an agent it
//! started on the same machine (a Unix socket of its own, next to the session; the agent's
//! `handoff` module describes its messages). Both ends use these, so they can't drift apart.

use std::net::{IpAddr, SocketAddr};

/// The bit of a word from sctrace that makes it a socket request (stream ids never have it).
pub const REQUEST: u32 = 1 << 31;
/// The bit of a socket request that asks for IPv6.
pub const REQUEST_V6: u32 = 1 << 30;
/// The bits of a socket request that tag it, echoed in the answer.
pub const REQUEST_TAG: u32 = REQUEST_V6 - 1;
/// Socket request tags stay below this, so that no request word is a control word.
pub const TAG_END: u32 = REQUEST_TAG - 2;
/// Starts a stolen connection handed over (agent → sctrace); no answer tag is this.
pub const OFFER: u32 = u32::MAX;
/// Starts a stolen connection given back (sctrace → agent). (`u32::MAX - 1` was an earlier
/// version's verdict on an offer: not reused, so two builds that differ fail plainly.)
pub const GIVEN_BACK: u32 = u32::MAX - 2;

const _: () = assert!(OFFER & REQUEST != 0 && OFFER & REQUEST_TAG == REQUEST_TAG);
const _: () = assert!(GIVEN_BACK == REQUEST | REQUEST_V6 | TAG_END);

/// Bytes of one address: family byte (4 or 6), 16 address bytes (IPv4 in the first 4),
/// port (big-endian).
pub const ADDR_LEN: usize = 19;

/// Appends `addr` as [`ADDR_LEN`] bytes.
pub fn encode_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let mut ip = [0u8; 16];
    let family = match addr.ip() {
        IpAddr::V4(v4) => {
            ip[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            ip.copy_from_slice(&v6.octets());
            6
        }
    };
    out.push(family);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads an address written by [`encode_addr`]; `None` when short or of no known family.
pub fn decode_addr(bytes: &[u8]) -> Option<SocketAddr> {
    let ip: [u8; 16] = bytes.get(1..17)?.try_into().ok()?;
    let port = u16::from_be_bytes([*bytes.get(17)?, *bytes.get(18)?]);
    let ip = match bytes.first()? {
        4 => IpAddr::from([ip[0], ip[1], ip[2], ip[3]]),
        6 => IpAddr::from(ip),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_family_address_and_port_and_bad_ones_are_refused() {
        let mut out = Vec::new();
        encode_addr(&mut out, "198.18.0.17:8004".parse().unwrap());
        encode_addr(&mut out, "[2001:2::15]:443".parse().unwrap());
        assert_eq!(out.len(), 2 * ADDR_LEN);
        assert_eq!(out[0], 4);
        assert_eq!(&out[1..5], &[198, 18, 0, 17]);
        assert_eq!(&out[5..17], &[0; 12]);
        assert_eq!(&out[17..19], &8004u16.to_be_bytes());
        assert_eq!(out[19], 6);
        assert_eq!(&out[20..22], &[0x20, 0x01]);
        assert_eq!(&out[36..38], &443u16.to_be_bytes());
        let v4 = decode_addr(&out[..ADDR_LEN]);
        assert_eq!(v4, Some("198.18.0.17:8004".parse().unwrap()));
        let v6 = decode_addr(&out[ADDR_LEN..]);
        assert_eq!(v6, Some("[2001:2::15]:443".parse().unwrap()));
        let mut bad = out[..ADDR_LEN].to_vec();
        bad[0] = 5;
        assert_eq!(decode_addr(&bad), None, "no family 5");
        assert_eq!(decode_addr(&out[..ADDR_LEN - 1]), None, "short");
    }
}
