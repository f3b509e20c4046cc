//! The app's listeners that live in the target (`execute::listener` puts them there): for a
//! port whose clients the app steals whole, with a local agent, the app's listening socket
//! is replaced by a listening socket of the target's own namespace, and the agent's
//! redirect sends the port's clients straight to it — the app accepts them from the kernel,
//! and no part of a stolen connection passes through sctrace or the agent.
//!
//! What this module keeps for each while its subscription lasts:
//! - the addresses the app must see: its listener's `getsockname` shows the address it bound
//!   on this machine, an accepted connection's shows where the client was going (conntrack's
//!   original destination), not the listener's port in the target;
//! - the port on this machine: sctrace keeps the app's own listener listening there, and
//!   brings each local client to the listener in the target through the target's loopback
//!   (the app sees it come from 127.0.0.1 or ::1, as a client on the target's own machine);
//! - whether the app still has the listener: the subscription ends when it closed it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use sctrace_protocol::ListenerPorts;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::procfs::{self, FdLink};
use crate::remote::target_sockets::TargetSockets;
use crate::sockaddr::{canonical, in_family, SockAddr};
use crate::sys::socket as sys;

/// A listening socket of the target made for one of the app's listeners, about to be
/// installed in its place.
pub struct TargetListener {
    /// Its port in the target (what the redirect points to).
    pub port: u16,
    /// Its identity (the socket's inode).
    pub inode: u64,
    /// Where the app will have it: process and fd.
    pub pid: i32,
    /// The app's fd.
    pub fd: i32,
    /// The app's listener's own address on this machine, which its `getsockname` shows.
    pub shown: SocketAddr,
    /// An IPv6 listener (and whether it takes IPv6 clients only).
    pub v6: bool,
    /// With `v6`: IPv6 clients only.
    pub v6_only: bool,
    /// sctrace's copy of the app's own listener on this machine, for local clients.
    pub local: OwnedFd,
    /// Sockets of the target, to bring local clients to the listener.
    pub sockets: Arc<TargetSockets>,
}

impl TargetListener {
    /// The ports the agent redirects each family's clients to.
    pub fn ports(&self) -> ListenerPorts {
        ports_for(self.port, self.v6, self.v6_only)
    }
}

/// The ports each family's clients go to for a listener on `port`: an IPv4 listener takes
/// IPv4 clients, a dual-stack one both, an IPv6-only one IPv6 clients.
fn ports_for(port: u16, v6: bool, v6_only: bool) -> ListenerPorts {
    ListenerPorts {
        ipv4: (!v6 || !v6_only).then_some(port),
        ipv6: v6.then_some(port),
    }
}

/// A listener in place, as the app sees it and as sctrace keeps it.
#[derive(Debug)]
struct Shown {
    /// The listener's identity, and where the app had it: process and fd.
    inode: u64,
    pid: i32,
    fd: i32,
    /// Its address as the app bound it.
    bound: SocketAddr,
    /// The target's port its subscription steals.
    subscribed: u16,
    /// A copy of sctrace's listener on this machine (the app's own), to stop it listening
    /// when the app no longer has the one in the target.
    local: Option<OwnedFd>,
}

/// The listeners in place: their ports in the target → what the app sees.
#[derive(Default)]
pub struct Placed {
    by_port: Mutex<HashMap<u16, Shown>>,
}

impl Placed {
    /// `listener` is in place, for the subscription of the target's port `subscribed`.
    pub fn insert(&self, listener: &TargetListener, subscribed: u16) {
        if let Ok(mut map) = self.by_port.lock() {
            map.insert(
                listener.port,
                Shown {
                    inode: listener.inode,
                    pid: listener.pid,
                    fd: listener.fd,
                    bound: listener.shown,
                    subscribed,
                    local: listener.local.try_clone().ok(),
                },
            );
        }
    }

    /// Forgets the listeners bound to this machine's `port` that the app no longer has,
    /// and stops sctrace's listener there (`shutdown`: it listens no more, and a bind with
    /// SO_REUSEADDR may take the port; the serving task then closes it). Returns the
    /// target's ports their subscriptions steal. Reads /proc: blocking.
    pub fn release_stale(&self, port: u16) -> Vec<u16> {
        let candidates: Vec<(u16, u64, i32, i32)> = match self.by_port.lock() {
            Ok(map) => map
                .iter()
                .filter(|(_, s)| s.bound.port() == port)
                .map(|(&at, s)| (at, s.inode, s.pid, s.fd))
                .collect(),
            Err(_) => return Vec::new(),
        };
        let mut released = Vec::new();
        for (at, inode, pid, fd) in candidates {
            if app_has(inode, pid, fd) {
                continue;
            }
            let Some(shown) = self.by_port.lock().ok().and_then(|mut m| m.remove(&at)) else {
                continue;
            };
            if let Some(local) = &shown.local {
                let _ = sys::shutdown(local.as_fd(), libc::SHUT_RDWR);
            }
            tracing::debug!(
                "the app's listener on {} is gone: port {} of the target is let go now",
                shown.bound,
                shown.subscribed
            );
            released.push(shown.subscribed);
        }
        released
    }

    /// The listener on `port` of the target is gone.
    pub fn remove(&self, port: u16) {
        if let Ok(mut map) = self.by_port.lock() {
            map.remove(&port);
        }
    }

    /// Whether any listener is in the target (else no `getsockname` needs a look).
    pub fn any(&self) -> bool {
        self.by_port.lock().map(|m| !m.is_empty()).unwrap_or(false)
    }

    /// The address the app's listener `inode` shows, if it is one in the target.
    pub fn listener_address(&self, inode: u64) -> Option<SocketAddr> {
        let map = self.by_port.lock().ok()?;
        map.values().find(|s| s.inode == inode).map(|s| s.bound)
    }

    /// The address a connection the app accepted from a listener in the target shows:
    /// where its client was going (the target's address and port, before the redirect), or
    /// — for a client that came through the target's loopback, not redirected — its own
    /// address with the app's port. `None` for any other socket (`of_target`: whether `fd`
    /// is a socket of the target's namespace at all).
    pub fn accepted_address(&self, fd: BorrowedFd<'_>, of_target: bool) -> Option<SocketAddr> {
        if !of_target {
            return None;
        }
        let local = SockAddr::parse(&sys::local_addr(fd).ok()?)?.inet()?;
        let shown = self
            .by_port
            .lock()
            .ok()?
            .get(&local.port())
            .map(|s| s.bound)?;
        let peer = SockAddr::parse(&sys::peer_addr(fd).ok()?)?.inet()?;
        let ipv6_peer = !canonical(peer.ip()).is_ipv4();
        // Conntrack knows connections nothing redirected too: their original destination
        // is the listener's own port.
        let addr = match sys::original_destination(fd, ipv6_peer) {
            Ok(original) if original.port() != local.port() => original,
            _ => SocketAddr::new(local.ip(), shown.port()),
        };
        Some(in_family(addr, local.is_ipv6()))
    }
}

/// Brings the local clients of the app's port on this machine to `listener` in the target,
/// until the returned task is aborted.
pub fn serve_local_clients(listener: &TargetListener) -> Option<tokio::task::JoinHandle<()>> {
    let local = listener.local.try_clone().ok()?;
    let std = std::net::TcpListener::from(local);
    std.set_nonblocking(true).ok()?;
    let accepting = TcpListener::from_std(std).ok()?;
    let sockets = Arc::clone(&listener.sockets);
    let (port, v6, v6_only) = (listener.port, listener.v6, listener.v6_only);
    Some(tokio::spawn(async move {
        loop {
            let (client, from) = match accepting.accept().await {
                Ok(accepted) => accepted,
                // Shut down: the app no longer has the listener in the target.
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return,
                // Out of fds, a client gone before its accept: the next one may do.
                Err(err) => {
                    tracing::debug!("a local client of a listener in the target: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let ipv6_client = !canonical(from.ip()).is_ipv4();
            // The family the kernel would give the app this client in: an IPv4 client of a
            // dual-stack listener comes v4-mapped.
            let via_v6 = v6 && (v6_only || ipv6_client);
            let to = if via_v6 {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            };
            let sockets = Arc::clone(&sockets);
            tokio::spawn(async move {
                if let Err(err) = bring(client, &sockets, via_v6, to).await {
                    tracing::debug!(%from, %to, "a local client of a listener in the target is lost: {err}");
                }
            });
        }
    }))
}

/// Connects one local client to the listener in the target and copies both ways.
async fn bring(
    mut client: TcpStream,
    sockets: &Arc<TargetSockets>,
    v6: bool,
    to: SocketAddr,
) -> std::io::Result<()> {
    let socket = sockets
        .take(v6)
        .await
        .ok_or_else(|| std::io::Error::other("no socket of the target"))?;
    let stream = std::net::TcpStream::from(socket);
    stream.set_nonblocking(true)?;
    let mut target = TcpSocket::from_std_stream(stream).connect(to).await?;
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut target).await?;
    Ok(())
}

/// Whether the app still has the listener `inode` (installed as `fd` of process `pid`, or
/// moved since — `dup2`, a fork), among sctrace's descendants. Reads /proc: blocking.
pub fn app_has(inode: u64, pid: i32, fd: i32) -> bool {
    if procfs::fd_link(pid as u32, fd).ok() == Some(FdLink::Socket(inode)) {
        return true;
    }
    let everyone = procfs::descendants(std::process::id() as i32, &HashSet::new());
    procfs::open_sockets(&everyone).contains_key(&inode)
}

/// The identity of a socket sctrace holds.
pub fn inode_of(fd: BorrowedFd<'_>) -> Option<u64> {
    sys::inode_and_owner(fd).ok().map(|(inode, _)| inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_goes_to_the_listener_that_takes_it() {
        let v4 = ports_for(40000, false, false);
        assert_eq!((v4.ipv4, v4.ipv6), (Some(40000), None));
        let dual = ports_for(40000, true, false);
        assert_eq!((dual.ipv4, dual.ipv6), (Some(40000), Some(40000)));
        let v6_only = ports_for(40000, true, true);
        assert_eq!((v6_only.ipv4, v6_only.ipv6), (None, Some(40000)));
    }

    #[test]
    fn only_sockets_of_the_target_on_a_placed_port_are_shown_otherwise() {
        let placed = Placed::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // Nothing placed: nothing to show.
        assert_eq!(placed.accepted_address(accepted.as_fd(), true), None);
        placed.by_port.lock().unwrap().insert(
            port,
            Shown {
                inode: 1,
                pid: 0,
                fd: -1,
                bound: "0.0.0.0:8000".parse().unwrap(),
                subscribed: 8000,
                local: None,
            },
        );
        // Not a socket of the target.
        assert_eq!(placed.accepted_address(accepted.as_fd(), false), None);
        // Not redirected (no conntrack entry): its own address, the app's port.
        assert_eq!(
            placed.accepted_address(accepted.as_fd(), true),
            Some("127.0.0.1:8000".parse().unwrap())
        );
        // The client's end is on another port.
        assert_eq!(placed.accepted_address(client.as_fd(), true), None);
        assert_eq!(
            placed.listener_address(1),
            Some("0.0.0.0:8000".parse().unwrap())
        );
        assert_eq!(placed.listener_address(2), None);
        placed.remove(port);
        assert!(!placed.any());
    }
}
