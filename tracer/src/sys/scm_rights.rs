//! Receiving a file descriptor passed over a Unix socket (`SCM_RIGHTS`), as an owned fd:
//! the sockets of the target a local agent hands to sctrace.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

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

/// One `recvmsg(2)` on `conn` into `buf` with room for one passed fd: the bytes read (0 at
/// end of file) and the fd that came with them, if one did and the kernel could install it
/// here (close-on-exec). Extra fds are closed.
pub fn recv_with_fd(conn: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fd = None;
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for raw in raw {
                // SAFETY: the kernel just installed this fd in our table for this message;
                // nothing else refers to it, so taking ownership is sound.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    Ok((msg.bytes, fd))
}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, Read, Write};

    use nix::sys::socket::{sendmsg, ControlMessage};

    use super::*;

    #[test]
    fn a_passed_socket_arrives_owned_and_usable() {
        let (tx, rx) = UnixStream::pair().unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let fds = [theirs.as_raw_fd()];
        sendmsg::<()>(
            tx.as_raw_fd(),
            &[IoSlice::new(&[1, 2, 3])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(theirs);
        let mut buf = [0u8; 8];
        let (n, fd) = recv_with_fd(&rx, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[1, 2, 3]);
        let mut received = UnixStream::from(fd.unwrap());
        received.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        ours.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");

        drop(tx);
        assert_eq!(recv_with_fd(&rx, &mut buf).unwrap().0, 0, "end of file");
    }

    #[test]
    fn waiting_to_read_ends_with_input_or_the_end() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            tx.write_all(b"x").unwrap();
            tx
        });
        wait_readable(&rx).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(recv_with_fd(&rx, &mut buf).unwrap().0, 1);
        drop(writer.join().unwrap());
        wait_readable(&rx).unwrap();
        assert_eq!(recv_with_fd(&rx, &mut buf).unwrap().0, 0, "end of file");
    }
}
