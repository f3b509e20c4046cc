//! Where an app socket waits while its remote connect is still under way, so that a
//! non-blocking connect can return EINPROGRESS at once and report the remote outcome later
//! through the socket itself, as the kernel would:
//!
//! - **waiting**: the socket connects to a *black hole*, a loopback listener whose accept
//!   queue is kept full, so the kernel drops its SYNs: it stays in SYN_SENT, not writable,
//!   exactly like a connect in progress;
//! - **success**: it is disconnected (`connect(AF_UNSPEC)`) and connected to the TCP relay,
//!   which completes at once: the app sees it writable with no error;
//! - **connection refused**: it is disconnected and connected to a bound port with no
//!   listener, whose RST gives ECONNREFUSED through SO_ERROR;
//! - **any other failure**: it is disconnected and connected to the black hole again with
//!   `TCP_SYNCNT` 1, so the kernel gives up with ETIMEDOUT about 3 s later (ENETUNREACH or
//!   EHOSTUNREACH found late are reported as ETIMEDOUT: the kernel can't be made to raise
//!   those on a loopback connection).
//!
//! Between the disconnect and the new connect (a few microseconds) the socket carries
//! ECONNRESET; an app reading SO_ERROR at that exact moment would see it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream as StdTcpStream};

use tokio::net::{TcpListener, TcpSocket};

/// One family's black hole and refusing port.
struct Spots {
    black_hole: SocketAddr,
    refusing: SocketAddr,
    // Kept open: the listener, the connection filling its queue, and the bound socket.
    _listener: TcpListener,
    _filler: StdTcpStream,
    _refuser: TcpSocket,
}

/// The waiting places for both families.
pub struct Parking {
    v4: Spots,
    v6: Option<Spots>,
}

impl Parking {
    /// Sets up the black holes and refusing ports (IPv6 when the machine has ::1).
    pub fn start() -> io::Result<Parking> {
        let v4 = spots((Ipv4Addr::LOCALHOST, 0).into())?;
        let v6 = spots((Ipv6Addr::LOCALHOST, 0).into()).ok();
        Ok(Parking { v4, v6 })
    }

    fn for_family(&self, v6: bool) -> &Spots {
        match (&self.v6, v6) {
            (Some(spots), true) => spots,
            _ => &self.v4,
        }
    }

    /// Where a socket of this family waits.
    pub fn black_hole(&self, v6: bool) -> SocketAddr {
        self.for_family(v6).black_hole
    }

    /// Where a socket of this family is refused.
    pub fn refusing(&self, v6: bool) -> SocketAddr {
        self.for_family(v6).refusing
    }
}

fn spots(any: SocketAddr) -> io::Result<Spots> {
    let socket = if any.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(any)?;
    // Backlog 0: the accept queue is full once it holds one connection, which is never
    // accepted; the kernel then drops further SYNs instead of answering them.
    let listener = socket.listen(0)?;
    let black_hole = listener.local_addr()?;
    let filler = StdTcpStream::connect(black_hole)?;
    let refuser = if any.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    refuser.bind(any)?;
    let refusing = refuser.local_addr()?;
    Ok(Spots {
        black_hole,
        refusing,
        _listener: listener,
        _filler: filler,
        _refuser: refuser,
    })
}
