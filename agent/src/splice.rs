//! Relaying two TCP sockets kernel to kernel with `splice(2)` through a pipe per direction:
//! the bytes never enter the agent's memory. EOF on one side becomes a FIN (shutdown) on the
//! other; an error resets both (SO_LINGER 0).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per splice call (the pipe's capacity bounds it).
const CHUNK: usize = 1 << 20;

/// How a spliced pair ended.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes from `a` to `b`.
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
    /// The first error, if the relay ended on one.
    pub error: Option<io::Error>,
}

/// Relays `a` ⇄ `b` until both directions reach EOF or one fails. A failure ends the
/// other direction at once: a peer that reset its connection (an app closing with
/// SO_LINGER 0, say) resets the other side now, rather than when that side next sends.
pub async fn relay(a: TcpStream, b: TcpStream) -> Spliced {
    let one = direction(&a, &b);
    let two = direction(&b, &a);
    tokio::pin!(one, two);
    let (mut a_to_b, mut b_to_a) = (None, None);
    let error = loop {
        tokio::select! {
            done = &mut one, if a_to_b.is_none() => match done {
                Ok(n) => a_to_b = Some(n),
                Err(e) => break Some(e),
            },
            done = &mut two, if b_to_a.is_none() => match done {
                Ok(n) => b_to_a = Some(n),
                Err(e) => break Some(e),
            },
        }
        if a_to_b.is_some() && b_to_a.is_some() {
            break None;
        }
    };
    if error.is_some() {
        let _ = SockRef::from(&a).set_linger(Some(Duration::ZERO));
        let _ = SockRef::from(&b).set_linger(Some(Duration::ZERO));
    }
    Spliced {
        a_to_b: a_to_b.unwrap_or(0),
        b_to_a: b_to_a.unwrap_or(0),
        error,
    }
}

/// Moves bytes from `from` to `to` until EOF, then shuts `to`'s write side. The pipe is made
/// only once bytes (or EOF) arrive: an idle connection holds no pipe, only its two sockets.
async fn direction(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    // Peek rather than wait for readiness, which can be reported before any byte is there.
    from.peek(&mut [0u8; 1]).await?;
    let (pipe_rd, pipe_wr) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    // A bigger pipe moves more per call (the default is 64 KiB; the kernel caps the size at
    // /proc/sys/fs/pipe-max-size, 1 MiB by default, which is fine to miss).
    let _ = nix::fcntl::fcntl(
        pipe_wr.as_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32),
    );
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // Socket → pipe.
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_wr.as_fd(), None, CHUNK, flags)
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            let _ = SockRef::from(to).shutdown(std::net::Shutdown::Write);
            return Ok(total);
        }
        // Pipe → socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe_rd.as_fd(), None, to.as_fd(), None, left, flags)
                        .map_err(io::Error::from)
                })
                .await?;
            if m == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            left -= m;
        }
        total += n as u64;
    }
}

/// Makes a handed-over socket (blocking, as sctrace had it) usable with tokio.
pub fn adopt(fd: OwnedFd) -> io::Result<TcpStream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}
