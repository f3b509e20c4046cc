//! Deterministic payloads and the sink's checksum reply, shared by `sctrace-testsrv` and the
//! tests, so that both ends of a transfer can check every byte without storing it.
//!
//! A payload is identified by a seed: byte `i` of payload `seed` is a fixed function of
//! `(seed, i)` (SplitMix64 of the 8-byte block index), so reordered, repeated, lost or
//! cross-connection bytes are all detected, and any slice can be produced on its own.

use sha2::{Digest, Sha256};

/// The seed `tcp-source` servers send (and `tcp-fetch` expects).
pub const SOURCE_SEED: u64 = 0;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills `buf` with bytes `offset..offset + buf.len()` of payload `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let key = splitmix64(seed ^ 0x5c7a_ce00_0000_0000);
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let block = splitmix64(key ^ (pos / 8)).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&block[start..start + n]);
        i += n;
        pos += n as u64;
    }
}

/// Checks that `data` equals bytes `offset..` of payload `seed`; returns the offset of the
/// first wrong byte.
pub fn check(seed: u64, offset: u64, data: &[u8]) -> Result<(), u64> {
    let mut expected = [0u8; 4096];
    for (k, chunk) in data.chunks(expected.len()).enumerate() {
        let at = offset + (k * expected.len()) as u64;
        let expected = &mut expected[..chunk.len()];
        fill(seed, at, expected);
        if let Some(j) = chunk.iter().zip(expected.iter()).position(|(a, b)| a != b) {
            return Err(at + j as u64);
        }
    }
    Ok(())
}

/// Lowercase hex of a SHA-256 digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of the first `len` bytes of payload `seed`.
pub fn sha256(seed: u64, len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        fill(seed, offset, &mut buf[..n]);
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    hex(&hasher.finalize())
}

/// What `tcp-sink` answers after the client closed its write side: the SHA-256 (hex) and
/// length of everything it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReply {
    /// SHA-256 of the received bytes, lowercase hex.
    pub sha256: String,
    /// Number of received bytes.
    pub bytes: u64,
}

impl SinkReply {
    /// The reply a sink gives for the first `len` bytes of payload `seed`.
    pub fn for_payload(seed: u64, len: u64) -> SinkReply {
        SinkReply {
            sha256: sha256(seed, len),
            bytes: len,
        }
    }

    /// The wire form: `"<sha256 hex> <bytes>\n"`.
    pub fn to_line(&self) -> String {
        format!("{} {}\n", self.sha256, self.bytes)
    }

    /// Parses the wire form (trailing newline optional); `None` if it is not one.
    pub fn parse(line: &str) -> Option<SinkReply> {
        let (sha, bytes) = line.trim_end_matches('\n').split_once(' ')?;
        let valid_sha =
            sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid_sha {
            return None;
        }
        Some(SinkReply {
            sha256: sha.to_string(),
            bytes: bytes.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_slice_equals_the_same_part_of_the_whole() {
        let mut whole = vec![0u8; 1000];
        fill(7, 0, &mut whole);
        for (offset, len) in [(0, 1), (3, 5), (8, 8), (13, 200), (999, 1)] {
            let mut part = vec![0u8; len];
            fill(7, offset as u64, &mut part);
            assert_eq!(
                part,
                whole[offset..offset + len],
                "offset {offset} len {len}"
            );
        }
        assert_eq!(check(7, 0, &whole), Ok(()));
        assert_eq!(check(7, 13, &whole[13..]), Ok(()));
    }

    #[test]
    fn seeds_give_different_payloads() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill(1, 0, &mut a);
        fill(2, 0, &mut b);
        assert_ne!(a, b);
        assert_ne!(sha256(1, 100), sha256(2, 100));
    }

    #[test]
    fn check_reports_the_first_wrong_byte() {
        let mut data = vec![0u8; 10_000];
        fill(3, 0, &mut data);
        data[5000] ^= 1;
        assert_eq!(check(3, 0, &data), Err(5000));
        // Shifted data (a lost byte) is wrong too.
        assert!(check(3, 1, &data[..100]).is_err());
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        // sha256 of the empty string.
        assert_eq!(
            sha256(0, 0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut data = vec![0u8; 200_000];
        fill(9, 0, &mut data);
        assert_eq!(sha256(9, 200_000), hex(&Sha256::digest(&data)));
    }

    #[test]
    fn sink_replies_round_trip_and_bad_ones_are_refused() {
        let reply = SinkReply::for_payload(4, 12345);
        assert_eq!(SinkReply::parse(&reply.to_line()), Some(reply.clone()));
        assert_eq!(SinkReply::parse(reply.to_line().trim_end()), Some(reply));
        for bad in [
            "",
            "abc 12",
            &format!("{} x", "a".repeat(64)),
            &"a".repeat(64),
            &format!("{} 1", "G".repeat(64)),
        ] {
            assert_eq!(SinkReply::parse(bad), None, "{bad:?}");
        }
    }
}
