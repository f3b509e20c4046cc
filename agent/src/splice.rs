//! Relaying two TCP sockets kernel to kernel with `splice(2)` through a pipe per direction:
//! the bytes never enter the agent's memory. EOF on one side becomes a FIN (shutdown) on the
//! other; an error resets both (SO_LINGER 0).
//!
//! A direction holds its pipe only while bytes are in flight: once the pipe is empty and the
//! socket has nothing more to read, the pipe goes back to a small shared pool. So an idle
//! connection (a client's pooled connection, say) costs the agent its two sockets, not six
//! files, and the next burst takes a pipe from the pool without a system call.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
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
/// So does a reset that comes after a side's EOF was passed on (a server that closed, then
/// got more bytes from its client): the other side's next send fails, as it would have.
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
            e = reset_after_eof(&a), if a_to_b.is_some() => break Some(e),
            e = reset_after_eof(&b), if b_to_a.is_some() => break Some(e),
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

/// Waits until `side`, whose EOF was passed on, reports an error (a reset): only then does
/// it wake, since a socket past EOF is readable for good.
async fn reset_after_eof(side: &TcpStream) -> io::Error {
    loop {
        if let Err(e) = side.ready(Interest::ERROR).await {
            return e;
        }
        match side.take_error() {
            Ok(Some(e)) | Err(e) => return e,
            // No pending error after all: forget the event and wait for the next.
            Ok(None) => {
                let _ = side.try_io(Interest::ERROR, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
        }
    }
}

/// Empty pipes kept for the next burst of any connection.
static SPARE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// How many empty pipes the pool keeps (two files each); more are closed.
const SPARE_MAX: usize = 32;

/// Closes the pooled pipes, for an agent out of files; returns how many there were.
pub fn drop_spare_pipes() -> usize {
    std::mem::take(&mut *SPARE.lock().unwrap_or_else(|e| e.into_inner())).len()
}

/// A pipe, empty whenever it is in the pool.
struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
}

impl Pipe {
    /// A pipe from the pool, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = SPARE.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(pipe);
        }
        let (rd, wr) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
        // A bigger pipe moves more per call (the default is 64 KiB; the kernel caps the size
        // at /proc/sys/fs/pipe-max-size, 1 MiB by default, which is fine to miss).
        let _ = nix::fcntl::fcntl(wr.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Pipe { rd, wr })
    }

    /// Gives an empty pipe back to the pool (or closes it, the pool being full).
    fn give_back(self) {
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_MAX {
            spare.push(self);
        }
    }
}

/// How a burst of bytes ended.
enum Burst {
    /// The socket has nothing more to read for now; the pipe is empty.
    Idle(u64),
    /// EOF; the pipe is empty.
    Eof(u64),
}

/// Moves bytes from `from` to `to` until EOF, then shuts `to`'s write side.
async fn direction(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // No pipe is held while waiting. Readiness can come before any byte is there: the
        // burst is then empty, and the pipe goes straight back.
        from.readable().await?;
        let pipe = match Pipe::take() {
            Ok(pipe) => pipe,
            Err(e) => {
                crate::files::report_if_exhausted(&e, "a relayed connection was reset");
                return Err(e);
            }
        };
        match burst(from, to, &pipe).await? {
            Burst::Idle(n) => {
                total += n;
                pipe.give_back();
            }
            Burst::Eof(n) => {
                pipe.give_back();
                let _ = SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(total + n);
            }
        }
    }
}

/// Moves what `from` has to read through `pipe` to `to`, until `from` would block or ends.
/// On an error the pipe may hold bytes: the caller drops it.
async fn burst(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<Burst> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // Socket → pipe, without waiting: tokio clears the readiness on EAGAIN.
        let n = match from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), None, pipe.wr.as_fd(), None, CHUNK, flags).map_err(io::Error::from)
        }) {
            Ok(0) => return Ok(Burst::Eof(total)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Idle(total)),
            Err(e) => return Err(e),
        };
        // Pipe → socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe.rd.as_fd(), None, to.as_fd(), None, left, flags)
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
