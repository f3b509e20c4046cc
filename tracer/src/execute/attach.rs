//! Data connections (protocol version 3, `sctrace_protocol::data`) for remote TCP connects
//! through an agent reached over plain TCP: once the agent has connected to the destination,
//! the app's own socket is connected to the agent and proves which stream it carries; the
//! agent splices it to the target's socket. No byte of the connection passes through
//! sctrace, and the app keeps its socket (fd, options, flags, epoll registrations).
//!
//! A socket that cannot reach the agent as it is (an IPv4 socket and an agent on IPv6, an
//! IPv6-only socket and an agent on IPv4, a socket bound to a particular address) keeps the
//! relay; so does a non-blocking connect whose outcome comes after its call returned (the
//! relay then makes the data connection itself, see `DataRoute::open`).

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use sctrace_protocol::data::{ANSWER_LEN, PREAMBLE_LEN};
use sctrace_protocol::StreamId;
use tokio::io::unix::AsyncFd;

use crate::agent_link::data::ATTACH_TIMEOUT;
use crate::agent_link::DataRoute;
use crate::errno::Errno;
use crate::sockaddr::{in_family, SockAddr};
use crate::sys::socket::{self as sys, OutgoingMessage};

use super::outgoing::{connect_once, start_connect};

/// The agent's address as the app socket (`v6`: of family AF_INET6) connects to it, if it
/// can reach it as it is.
pub fn reachable(route: &DataRoute, fd: BorrowedFd<'_>, v6: bool) -> Option<SocketAddr> {
    let agent = route.agent;
    if agent.is_ipv6() && !v6 {
        return None;
    }
    if agent.is_ipv4() && v6 && sys::v6_only(fd).unwrap_or(true) {
        return None;
    }
    // Bound to an address of its own: it may not reach the agent from there.
    let bound = SockAddr::parse(&sys::local_addr(fd).ok()?).and_then(|a| a.inet())?;
    if !bound.ip().is_unspecified() {
        return None;
    }
    Some(in_family(agent, v6))
}

/// Connects the app's socket `fd` (sctrace's copy) to the agent at `agent` and attaches it
/// to `stream`: the preamble out, the agent's proof in, exactly, so that the app's first
/// read is the destination's first byte. The app's call is held meanwhile.
pub async fn attach_app_socket(
    fd: BorrowedFd<'_>,
    agent: SocketAddr,
    route: &DataRoute,
    stream: StreamId,
) -> Result<(), Errno> {
    let attaching = async {
        let _turn = route.turn().await;
        attach_inner(fd, agent, route, stream).await
    };
    tokio::time::timeout(ATTACH_TIMEOUT, attaching)
        .await
        .unwrap_or(Err(Errno(libc::ETIMEDOUT)))
}

async fn attach_inner(
    fd: BorrowedFd<'_>,
    agent: SocketAddr,
    route: &DataRoute,
    stream: StreamId,
) -> Result<(), Errno> {
    start_connect(fd, agent)?;
    // Readiness through a copy of the fd (the registration goes with it).
    let watched = sys::watch(
        sys::duplicate(fd)?,
        tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
    )
    .map_err(|e| Errno::from_io(&e))?;
    wait(&watched, tokio::io::Interest::WRITABLE).await?;
    match sys::take_error(fd)? {
        0 => {}
        errno => return Err(Errno(errno)),
    }
    // Asked again, the kernel marks the socket connected (not still connecting), so that
    // the app's own next connect gets EISCONN, as after a connect that returned 0.
    match connect_once(fd, agent) {
        Ok(()) | Err(Errno(libc::EISCONN)) => {}
        Err(err) => return Err(err),
    }
    let preamble = OutgoingMessage {
        iov: vec![route.keys.preamble(stream).to_vec()],
        ..OutgoingMessage::default()
    };
    // A new connection's send buffer takes the whole preamble at once.
    let sent = sys::sendmsg(fd, &preamble, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)?;
    if sent != PREAMBLE_LEN {
        return Err(Errno(libc::ECONNRESET));
    }
    let mut answer = Vec::with_capacity(ANSWER_LEN);
    while answer.len() < ANSWER_LEN {
        wait(&watched, tokio::io::Interest::READABLE).await?;
        match sys::recvmsg(fd, ANSWER_LEN - answer.len(), 0, libc::MSG_DONTWAIT) {
            Ok(got) if got.data.is_empty() => return Err(Errno(libc::ECONNRESET)),
            Ok(got) => answer.extend_from_slice(&got.data),
            Err(Errno(libc::EAGAIN)) => clear(&watched, tokio::io::Interest::READABLE).await,
            Err(err) => return Err(err),
        }
    }
    if route.keys.verify_answer(stream, &answer) {
        Ok(())
    } else {
        tracing::warn!("the agent at {agent} answered a data connection without its proof");
        Err(Errno(libc::ECONNRESET))
    }
}

/// Waits until `watched` is ready for `interest`.
async fn wait(
    watched: &AsyncFd<std::os::fd::OwnedFd>,
    interest: tokio::io::Interest,
) -> Result<(), Errno> {
    watched
        .ready(interest)
        .await
        .map(|mut guard| guard.retain_ready())
        .map_err(|e| Errno::from_io(&e))
}

/// Forgets a readiness that turned out to be spurious.
async fn clear(watched: &AsyncFd<std::os::fd::OwnedFd>, interest: tokio::io::Interest) {
    if let Ok(mut guard) = watched.ready(interest).await {
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_socket_reaches_the_agent_only_as_it_can() {
        let token = sctrace_protocol::Token::new("attach-test-token-0123456789").unwrap();
        let keys = test_keys(&token);
        let v4_agent = DataRoute::new("198.18.0.1:9000".parse().unwrap(), keys);
        let v6_agent = DataRoute::new("[2001:2::1]:9000".parse().unwrap(), keys);
        let s4 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let s6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        s6.set_only_v6(false).unwrap();
        assert_eq!(
            reachable(&v4_agent, s4.as_fd(), false),
            Some("198.18.0.1:9000".parse().unwrap())
        );
        assert_eq!(reachable(&v6_agent, s4.as_fd(), false), None);
        assert_eq!(
            reachable(&v4_agent, s6.as_fd(), true),
            Some("[::ffff:198.18.0.1]:9000".parse().unwrap())
        );
        s6.set_only_v6(true).unwrap();
        assert_eq!(reachable(&v4_agent, s6.as_fd(), true), None);
        // Bound to an address of its own.
        s4.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        assert_eq!(reachable(&v4_agent, s4.as_fd(), false), None);
    }

    fn test_keys(token: &sctrace_protocol::Token) -> sctrace_protocol::data::DataKeys {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let config = sctrace_protocol::Config::default();
            let (client, _server) = tokio::join!(
                sctrace_protocol::Session::client(a, token, config.clone()),
                sctrace_protocol::Session::server(b, token, config)
            );
            *client.unwrap().handle.data_keys().unwrap()
        })
    }
}
