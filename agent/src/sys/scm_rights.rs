//! Passing file descriptors over a Unix socket (`SCM_RIGHTS`): receiving them as owned
//! fds, and sending one with a message.
//!
//! Kernel facts: the kernel installs each passed fd in our table when the message is read
//! (close-on-exec here, `MSG_CMSG_CLOEXEC`); fds that do not fit (no room in the control
//! buffer, or our fd limit reached) are dropped by the kernel and the message is flagged
//! `MSG_CTRUNC`, while its bytes are still read.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::os::fd::BorrowedFd;

/// Sends all of `bytes` on `conn`, with `fd` attached to the first part (the receiver gets
/// its own fd for the same open file).
pub fn send_with_fd(conn: &UnixStream, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let raw = fd.map(|fd| [fd.as_raw_fd()]);
    let mut sent = 0;
    while sent < bytes.len() {
        let iov = [io::IoSlice::new(&bytes[sent..])];
        let cmsgs: Vec<ControlMessage<'_>> = match (&raw, sent) {
            (Some(raw), 0) => vec![ControlMessage::ScmRights(raw)],
            _ => Vec::new(),
        };
        match sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Waits until `conn` has something to read (or its end, or an error). A reader should wait
/// here rather than block in `recvmsg`: one blocked there is woken whenever the peer reads
/// what this side sent (the kernel wakes the socket's sleepers for write space too), while
/// `poll` wakes for input only.
pub fn wait_readable(conn: &UnixStream) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// One `recvmsg(2)` on `conn` into `buf` with room for one passed fd: the number of bytes
/// read (0 at end of file) and the fds that arrived with them (none when there were none, or
/// when the kernel could not install them).
pub fn recv_with_fds(conn: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    // An error here is MSG_CTRUNC: the fd could not be installed; the bytes are still read.
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds in our table for this message;
            // nothing else refers to them, so taking ownership is sound.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, Read, Write};

    use nix::sys::socket::{sendmsg, ControlMessage};

    use super::*;

    fn send(conn: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
        let iov = [IoSlice::new(bytes)];
        let cmsgs: Vec<_> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
    }

    #[test]
    fn a_passed_socket_arrives_owned_and_usable() {
        let (tx, rx) = UnixStream::pair().unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        send(&tx, &[0, 0, 0, 7], &[theirs.as_raw_fd()]);
        drop(theirs);

        let mut buf = [0u8; 4];
        let (bytes, fds) = recv_with_fds(&rx, &mut buf).unwrap();
        assert_eq!((bytes, buf, fds.len()), (4, [0, 0, 0, 7], 1));
        let mut received = UnixStream::from(fds.into_iter().next().unwrap());
        received.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        ours.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn bytes_without_fds_and_end_of_file() {
        let (tx, rx) = UnixStream::pair().unwrap();
        send(&tx, &[1, 2], &[]);
        drop(tx);
        let mut buf = [0u8; 4];
        let (bytes, fds) = recv_with_fds(&rx, &mut buf).unwrap();
        assert_eq!((bytes, fds.len()), (2, 0));
        let (bytes, fds) = recv_with_fds(&rx, &mut buf).unwrap();
        assert_eq!((bytes, fds.len()), (0, 0));
    }
}
