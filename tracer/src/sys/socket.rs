//! Socket calls made by the supervisor on its copy of one of the app's sockets, with the
//! raw address bytes the app passed. Performing the app's call on a shared copy of its socket
//! gives exactly the kernel's answer (same checks, same order, same errno).
//!
//! All functions return the kernel's errno on failure as `Errno`, never a Rust error: the
//! errno is what the app will see.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::errno::Errno;

fn check(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> Result<usize, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// A pointer to the app's address argument as the supervisor re-creates it: the copied
/// bytes, or NULL when the app's pointer was NULL or unreadable (the kernel then answers
/// EFAULT itself, after the checks that come before the copy).
fn addr_ptr(addr: Option<&[u8]>) -> *const libc::sockaddr {
    match addr {
        Some(bytes) => bytes.as_ptr().cast(),
        None => std::ptr::null(),
    }
}

/// `connect(fd, addr, len)`.
pub fn connect(fd: BorrowedFd<'_>, addr: Option<&[u8]>, len: i32) -> Result<(), Errno> {
    // SAFETY: `addr_ptr` is NULL or points at `addr`, whose length is at least
    // min(len, 128): callers copy up to sizeof(sockaddr_storage) bytes, and the kernel
    // rejects longer lengths before reading.
    check(unsafe { libc::connect(fd.as_raw_fd(), addr_ptr(addr), len as libc::socklen_t) })
        .map(drop)
}

/// `bind(fd, addr, len)`.
pub fn bind(fd: BorrowedFd<'_>, addr: Option<&[u8]>, len: i32) -> Result<(), Errno> {
    // SAFETY: as for `connect`.
    check(unsafe { libc::bind(fd.as_raw_fd(), addr_ptr(addr), len as libc::socklen_t) }).map(drop)
}

/// `listen(fd, backlog)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<(), Errno> {
    // SAFETY: listen takes integers only.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<i32, Errno> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of an int and a socklen_t.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The socket's address family (`SO_DOMAIN`), ENOTSOCK for other files.
pub fn domain(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

/// The socket's protocol (`SO_PROTOCOL`: IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, ...).
pub fn protocol(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)
}

/// Whether an IPv6 socket takes IPv6 peers only (`IPV6_V6ONLY`).
pub fn v6_only(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map(|v| v != 0)
}

/// The socket's type (`SO_TYPE`: SOCK_STREAM, SOCK_DGRAM, ...).
pub fn sock_type(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
}

/// Whether any user's socket may bind the socket's address too (`SO_REUSEADDR`;
/// `SO_REUSEPORT` shares only with the same user).
pub fn reuses_address(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    Ok(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)? != 0)
}

/// Turns `SO_REUSEADDR` off: later binds of the address by other sockets fail (EADDRINUSE);
/// sockets bound to it already stay.
pub fn stop_reusing_address(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    set_option_bytes(
        fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &0i32.to_ne_bytes(),
    )
}

/// The socket's inode number and owner (as /proc/net tables list them).
pub fn inode_and_owner(fd: BorrowedFd<'_>) -> Result<(u64, u32), Errno> {
    let stat = nix::sys::stat::fstat(fd).map_err(|e| Errno(e as i32))?;
    Ok((stat.st_ino, stat.st_uid))
}

/// A new TCP socket of this network namespace (close-on-exec).
pub fn new_tcp_socket(v6: bool) -> Result<std::os::fd::OwnedFd, Errno> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket takes integers only.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the kernel just returned this fd, which nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// A socket option's raw value (at most 64 bytes: ints, `linger`, `timeval`, names).
pub fn option_bytes(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<Vec<u8>, Errno> {
    let mut buf = [0u8; 64];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` and `len` are valid for writes; the kernel writes at most `len` bytes.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}

/// Sets a socket option from its raw value.
pub fn set_option_bytes(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: &[u8],
) -> Result<(), Errno> {
    // SAFETY: `value` is valid for reads of its length for the call's duration.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The cookie of the network namespace the socket lives in (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn netns_cookie(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    const SO_NETNS_COOKIE: i32 = 71;
    let mut value: u64 = 0;
    // The kernel takes exactly a u64's length.
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of a u64 and a socklen_t.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Where a connection a NAT redirect brought was really going (conntrack's
/// `SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` when the peer is IPv6 — an IPv4 peer of an
/// IPv6 socket, v4-mapped, has an IPv4 entry). ENOENT for a connection nothing redirected.
pub fn original_destination(
    fd: BorrowedFd<'_>,
    ipv6_peer: bool,
) -> Result<std::net::SocketAddr, Errno> {
    let socket = socket2::SockRef::from(&fd);
    let addr = if ipv6_peer {
        socket.original_dst_v6()
    } else {
        socket.original_dst_v4()
    }
    .map_err(|e| Errno::from_io(&e))?;
    addr.as_socket().ok_or(Errno(libc::EAFNOSUPPORT))
}

/// `shutdown(fd, how)`: on a listener, it stops listening (and wakes whoever waits in
/// `accept`).
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> Result<(), Errno> {
    // SAFETY: plain call on a valid fd.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map(drop)
}

/// The pending error of a socket (`SO_ERROR`), which reading clears: a finished
/// non-blocking connect's outcome.
pub fn take_error(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
}

/// One datagram to send on the app's behalf: destination bytes and payload pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The destination address bytes (None: no address, or an unreadable pointer).
    pub name: Option<Vec<u8>>,
    /// The address length the app gave.
    pub name_len: u32,
    /// The payload, as the app's iovec pieces.
    pub iov: Vec<Vec<u8>>,
}

/// `sendmsg(fd, msg, flags)` with a message rebuilt from copied data (no control data).
pub fn sendmsg(fd: BorrowedFd<'_>, msg: &OutgoingMessage, flags: i32) -> Result<usize, Errno> {
    let mut iov: Vec<libc::iovec> = msg
        .iov
        .iter()
        .map(|piece| libc::iovec {
            iov_base: piece.as_ptr() as *mut libc::c_void,
            iov_len: piece.len(),
        })
        .collect();
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) message.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = addr_ptr(msg.name.as_deref()) as *mut libc::c_void;
    hdr.msg_namelen = msg.name_len;
    hdr.msg_iov = iov.as_mut_ptr();
    hdr.msg_iovlen = iov.len();
    // SAFETY: `hdr` points at `iov` and at the name bytes, all alive for the call; the
    // kernel only reads them (it rejects a name length over 128 before reading).
    check_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &hdr, flags) })
}

/// The socket's own address (`getsockname`), as raw bytes.
pub fn local_addr(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` and `len` are valid for writes; the kernel writes at most `len` bytes.
    check(unsafe { libc::getsockname(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len) })?;
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}

/// The socket's peer address (`getpeername`), as raw bytes.
pub fn peer_addr(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` and `len` are valid for writes; the kernel writes at most `len` bytes.
    check(unsafe { libc::getpeername(fd.as_raw_fd(), buf.as_mut_ptr().cast(), &mut len) })?;
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}

/// Sets `TCP_SYNCNT`: how many SYN retransmits before a connect gives up with ETIMEDOUT.
pub fn set_syn_count(fd: BorrowedFd<'_>, count: i32) -> Result<(), Errno> {
    // SAFETY: `count` is a valid int for the call's duration.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&count as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The file status flags of the open file description (`F_GETFL`: O_NONBLOCK, ...).
pub fn file_flags(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    // SAFETY: F_GETFL takes no pointer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// Sets the file status flags of the open file description (shared with the app's fd).
pub fn set_file_flags(fd: BorrowedFd<'_>, flags: i32) -> Result<(), Errno> {
    // SAFETY: F_SETFL takes an integer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// The socket's send timeout (`SO_SNDTIMEO`), which also bounds a blocking connect; `None`
/// when unset (wait forever).
pub fn send_timeout(fd: BorrowedFd<'_>) -> Result<Option<std::time::Duration>, Errno> {
    timeout_option(fd, libc::SO_SNDTIMEO)
}

fn timeout_option(fd: BorrowedFd<'_>, name: i32) -> Result<Option<std::time::Duration>, Errno> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` and `len` are valid for writes of a timeval and a socklen_t.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    })?;
    if tv.tv_sec == 0 && tv.tv_usec == 0 {
        return Ok(None);
    }
    Ok(Some(
        std::time::Duration::from_secs(tv.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(tv.tv_usec.max(0) as u64),
    ))
}

/// Registers a socket copy with the tokio reactor to await its readiness.
pub fn watch<T>(
    fd: T,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<T>>
where
    T: std::os::fd::AsRawFd + Into<std::os::fd::OwnedFd>,
{
    // SAFETY: a type that converts into an OwnedFd owns its fd (OwnedFd, std's sockets and
    // files): it is open and keeps referring to the same file description until the value
    // is dropped, which the AsyncFd does only when it is itself dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| e.into_parts().1)
}

/// The socket's inode number (`fstat`'s `st_ino`): what `/proc/PID/fd/N` shows as
/// `socket:[INODE]`, shared by every fd of the socket. sctrace keys the sockets it manages
/// by it, because it can be read without a copy of the socket (see `trap::owned`).
pub fn inode(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    // SAFETY: libc::stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes of a struct stat.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_ino)
}

/// `socket(domain, sock_type, protocol)`: a socket created by sctrace for the app (container
/// mode). `sock_type` carries the app's SOCK_NONBLOCK (a file status flag, shared with the
/// app's fd) and must carry SOCK_CLOEXEC (sctrace's own copy is never inherited).
pub fn new_socket(
    domain: i32,
    sock_type: i32,
    protocol: i32,
) -> Result<std::os::fd::OwnedFd, Errno> {
    // SAFETY: socket takes integers only.
    let fd = check(unsafe { libc::socket(domain, sock_type, protocol) })?;
    // SAFETY: socket just returned this fd; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Another close-on-exec fd for the same open file description (`F_DUPFD_CLOEXEC`).
pub fn duplicate(fd: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd, Errno> {
    fd.try_clone_to_owned().map_err(|e| Errno::from_io(&e))
}

/// The TCP state of a TCP socket (`TCP_INFO`'s `tcpi_state`: `TCP_ESTABLISHED` 1,
/// `TCP_SYN_SENT` 2, `TCP_CLOSE` 7, `TCP_LISTEN` 10, ...); an error for other sockets.
pub fn tcp_state(fd: BorrowedFd<'_>) -> Result<u8, Errno> {
    // The state is the first byte of struct tcp_info; asking for one byte is enough (the
    // kernel copies min(len, sizeof) bytes).
    let mut state: u8 = 0;
    let mut len = 1 as libc::socklen_t;
    // SAFETY: `state` and `len` are valid for writes of one byte and a socklen_t.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut state as *mut u8).cast(),
            &mut len,
        )
    })?;
    Ok(state)
}

/// One datagram received on the app's behalf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The bytes, at most the buffer size asked for.
    pub data: Vec<u8>,
    /// What `recvmsg` returned (the datagram's full length with `MSG_TRUNC`).
    pub returned: usize,
    /// The source address bytes.
    pub name: Vec<u8>,
    /// Control messages, as the kernel wrote them.
    pub control: Vec<u8>,
    /// `msg_flags` (MSG_TRUNC, MSG_CTRUNC, ...).
    pub flags: i32,
}

/// `recvmsg(fd, .., flags)` into a buffer of `len` bytes and a control buffer of
/// `control_len` bytes.
pub fn recvmsg(
    fd: BorrowedFd<'_>,
    len: usize,
    control_len: usize,
    flags: i32,
) -> Result<ReceivedMessage, Errno> {
    // Not zeroed: a resolver's 64 KiB buffer would cost more to clear than the datagram
    // does to receive. Only what the kernel writes becomes part of the vector.
    let mut data: Vec<u8> = Vec::with_capacity(len);
    let mut name = [0u8; 128];
    let mut control = vec![0u8; control_len];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) message.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = name.as_mut_ptr().cast();
    hdr.msg_namelen = name.len() as u32;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if control_len > 0 {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = control.len();
    }
    // SAFETY: every pointer in `hdr` refers to a live buffer of the stated length.
    let returned = check_size(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut hdr, flags) })?;
    // SAFETY: the kernel wrote the first min(returned, len) bytes of the buffer (`returned`
    // may be larger only with MSG_TRUNC, which reports a datagram's full length).
    unsafe { data.set_len(returned.min(len)) };
    control.truncate(hdr.msg_controllen.min(control_len));
    Ok(ReceivedMessage {
        data,
        returned,
        name: name[..(hdr.msg_namelen as usize).min(name.len())].to_vec(),
        control,
        flags: hdr.msg_flags,
    })
}

/// The socket's receive timeout (`SO_RCVTIMEO`); `None` when unset.
pub fn receive_timeout(fd: BorrowedFd<'_>) -> Result<Option<std::time::Duration>, Errno> {
    timeout_option(fd, libc::SO_RCVTIMEO)
}

/// `accept4(fd, ..., flags)`: the new connection and its peer address bytes.
pub fn accept4(fd: BorrowedFd<'_>, flags: i32) -> Result<(std::os::fd::OwnedFd, Vec<u8>), Errno> {
    let mut addr = [0u8; 128];
    let mut len = addr.len() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes; the kernel writes at most `len` bytes.
    let new =
        check(unsafe { libc::accept4(fd.as_raw_fd(), addr.as_mut_ptr().cast(), &mut len, flags) })?;
    // SAFETY: accept4 just returned this fd; nothing else owns it.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new) };
    Ok((owned, addr[..(len as usize).min(addr.len())].to_vec()))
}
