//! Message headers copied out of the app: `struct msghdr` / `struct mmsghdr` (64-bit
//! layouts), the payload an iovec array points to, and where a received message's parts go
//! in the app's memory. Everything is length-capped like the kernel's own copies.

use crate::sys::memory;

use super::Notification;

/// The largest datagram payload sctrace copies to re-issue a send (UDP's own limit is 64 KiB).
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// The kernel's limit on iovec pieces (UIO_MAXIOV) and on `sendmmsg`'s vector length.
pub const MAX_IOV: u64 = 1024;
/// `sizeof(struct msghdr)` on 64-bit ABIs.
pub const MSGHDR_SIZE: usize = 56;
/// `sizeof(struct mmsghdr)` on 64-bit ABIs: a msghdr and the `msg_len` the kernel fills in.
pub const MMSGHDR_SIZE: usize = 64;
/// Largest datagram received on the app's behalf (UDP's own limit).
pub const MAX_DATAGRAM: usize = 65_536;
/// Largest control buffer copied.
const MAX_CONTROL: usize = 4096;

/// Offsets of `struct msghdr`'s fields (x86_64 and aarch64 alike).
const NAME_LEN_AT: u64 = 8;
const CONTROL_LEN_AT: u64 = 40;
const FLAGS_AT: u64 = 48;
/// Offset of `msg_len` in `struct mmsghdr`.
const MSG_LEN_AT: u64 = 56;

/// The fields of a `struct msghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    /// `msg_name`.
    pub name: u64,
    /// `msg_namelen`.
    pub name_len: i32,
    /// `msg_iov`.
    pub iov: u64,
    /// `msg_iovlen`.
    pub iov_len: u64,
    /// `msg_control`.
    pub control: u64,
    /// `msg_controllen`.
    pub control_len: u64,
}

impl MsgHeader {
    /// Decodes the first [`MSGHDR_SIZE`] bytes of `b`; `None` when they are too few.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let i32_at = |o: usize| Some(i32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        Some(Self {
            name: u64_at(0)?,
            name_len: i32_at(8)?,
            iov: u64_at(16)?,
            iov_len: u64_at(24)?,
            control: u64_at(32)?,
            control_len: u64_at(40)?,
        })
    }

    /// Copies the header at `at` out of the app; `None` where the kernel would fault.
    pub fn read(n: &Notification, at: u64) -> Option<Self> {
        memory::read_vec(n.tid(), at, MSGHDR_SIZE)
            .ok()
            .and_then(|b| Self::parse(&b))
    }
}

/// Why a payload was not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSkip {
    /// Over [`MAX_PAYLOAD`] or [`MAX_IOV`] pieces.
    TooLarge,
    /// A pointer the kernel would fault on.
    Unreadable,
}

/// The `(base, len)` pairs of the iovec array at `iov` (`count` pieces).
fn iovec_pieces(n: &Notification, iov: u64, count: u64) -> Option<Vec<(u64, usize)>> {
    if count > MAX_IOV {
        return None;
    }
    let raw = memory::read_vec(n.tid(), iov, count as usize * 16).ok()?;
    raw.chunks_exact(16)
        .map(|c| {
            let base = u64::from_ne_bytes(c[0..8].try_into().ok()?);
            let len = u64::from_ne_bytes(c[8..16].try_into().ok()?);
            Some((base, len as usize))
        })
        .collect()
}

/// Copies the bytes the iovec array at `iov` (`count` pieces) points to.
pub fn copy_iov(n: &Notification, iov: u64, count: u64) -> Result<Vec<Vec<u8>>, PayloadSkip> {
    if count > MAX_IOV {
        return Err(PayloadSkip::TooLarge);
    }
    let pieces = iovec_pieces(n, iov, count).ok_or(PayloadSkip::Unreadable)?;
    let total = pieces
        .iter()
        .fold(0usize, |sum, (_, len)| sum.saturating_add(*len));
    if total > MAX_PAYLOAD {
        return Err(PayloadSkip::TooLarge);
    }
    pieces
        .into_iter()
        .map(|(base, len)| {
            memory::read_vec(n.tid(), base, len).map_err(|_| PayloadSkip::Unreadable)
        })
        .collect()
}

/// Where a message received on the app's behalf goes in the app's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecvBuffers {
    /// (address, length) of each buffer piece.
    pub iov: Vec<(u64, usize)>,
    /// Where the source address goes and the room there (None: not asked).
    pub name: Option<(u64, usize)>,
    /// Where the address length is written (`*addrlen` or `msg_namelen`).
    pub name_len_at: Option<u64>,
    /// Control buffer and its room.
    pub control: Option<(u64, usize)>,
    /// Where `msg_controllen` (u64) goes.
    pub control_len_at: Option<u64>,
    /// Where `msg_flags` (i32) goes.
    pub flags_at: Option<u64>,
    /// Where `msg_len` (u32) goes (recvmmsg).
    pub msg_len_at: Option<u64>,
}

impl RecvBuffers {
    /// The bytes the buffers hold in all (at most one datagram).
    pub fn capacity(&self) -> usize {
        self.iov
            .iter()
            .map(|(_, len)| len)
            .sum::<usize>()
            .min(MAX_DATAGRAM)
    }

    /// The room for control data.
    pub fn control_room(&self) -> usize {
        self.control.map(|(_, len)| len).unwrap_or(0)
    }

    /// `recvfrom(fd, buf, len, flags, src, addrlen)`'s buffers, with `room` read from
    /// `*addrlen` (0 when `addrlen` is NULL).
    pub fn recvfrom(buf: u64, len: usize, src: u64, addrlen: u64, room: i32) -> Self {
        RecvBuffers {
            iov: vec![(buf, len)],
            name: (addrlen != 0).then_some((src, room.max(0) as usize)),
            name_len_at: (addrlen != 0).then_some(addrlen),
            ..RecvBuffers::default()
        }
    }

    /// The buffers of the `struct msghdr` at `at`. `None`: the kernel would fault or refuse
    /// it itself, so it is left to the kernel.
    pub fn msghdr(n: &Notification, at: u64) -> Option<Self> {
        let hdr = MsgHeader::read(n, at)?;
        if hdr.name_len < 0 {
            return None;
        }
        Some(RecvBuffers {
            iov: iovec_pieces(n, hdr.iov, hdr.iov_len)?,
            name: (hdr.name != 0).then_some((hdr.name, hdr.name_len as usize)),
            name_len_at: Some(at + NAME_LEN_AT),
            control: (hdr.control != 0 && hdr.control_len > 0)
                .then_some((hdr.control, (hdr.control_len as usize).min(MAX_CONTROL))),
            control_len_at: Some(at + CONTROL_LEN_AT),
            flags_at: Some(at + FLAGS_AT),
            msg_len_at: None,
        })
    }

    /// Where the kernel writes `msg_len` of entry `i` of the `struct mmsghdr` vector at `vec`.
    pub fn mmsg_len_at(vec: u64, i: usize) -> u64 {
        vec + (i * MMSGHDR_SIZE) as u64 + MSG_LEN_AT
    }

    /// The buffers of the first `struct mmsghdr` at `at` (recvmmsg).
    pub fn mmsghdr(n: &Notification, at: u64) -> Option<Self> {
        let mut buffers = Self::msghdr(n, at)?;
        buffers.msg_len_at = Some(at + MSG_LEN_AT);
        Some(buffers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msghdr_fields_at_their_offsets() {
        let mut b = vec![0u8; MSGHDR_SIZE];
        b[0..8].copy_from_slice(&0x1000u64.to_ne_bytes());
        b[8..12].copy_from_slice(&16i32.to_ne_bytes());
        b[16..24].copy_from_slice(&0x2000u64.to_ne_bytes());
        b[24..32].copy_from_slice(&2u64.to_ne_bytes());
        b[32..40].copy_from_slice(&0x3000u64.to_ne_bytes());
        b[40..48].copy_from_slice(&24u64.to_ne_bytes());
        let h = MsgHeader::parse(&b).unwrap();
        assert_eq!(
            h,
            MsgHeader {
                name: 0x1000,
                name_len: 16,
                iov: 0x2000,
                iov_len: 2,
                control: 0x3000,
                control_len: 24
            }
        );
        assert_eq!(
            MsgHeader::parse(&b[..40]),
            None,
            "short header is not misread"
        );
    }

    #[test]
    fn recvfrom_buffers_follow_the_arguments() {
        let b = RecvBuffers::recvfrom(0x10, 512, 0x20, 0x30, 16);
        assert_eq!(b.iov, [(0x10, 512)]);
        assert_eq!(b.name, Some((0x20, 16)));
        assert_eq!(b.name_len_at, Some(0x30));
        assert_eq!(b.capacity(), 512);
        let none = RecvBuffers::recvfrom(0x10, 1 << 20, 0, 0, 0);
        assert_eq!((none.name, none.name_len_at), (None, None));
        assert_eq!(none.capacity(), MAX_DATAGRAM);
    }
}
