//! The seccomp BPF program installed on the app: which system calls reach the supervisor.
//!
//! ```text
//!   load arch ──── not the native ABI ────────────────────────────▶ KILL_PROCESS
//!      │
//!   load nr ────── nr ≥ 0x40000000 (x32 ABI, x86_64 only) ─────────▶ KILL_PROCESS
//!      │
//!      ├── io_uring_setup ─────────────────────────────────────────▶ ERRNO(ENOSYS)
//!      ├── connect bind listen accept accept4
//!      │   sendmsg sendmmsg ───────────────────────────────────────▶ USER_NOTIF
//!      ├── sendto ─────── arg 4 (the address) ≠ NULL ──────────────▶ USER_NOTIF
//!      │                  └─ NULL ─────────────────────────────────▶ ALLOW
//!      ├── recvmsg recvmmsg getpeername getsockname
//!      │                                     (sessions that relay) ▶ USER_NOTIF
//!      ├── recvfrom ───── arg 4 ≠ NULL       (sessions that relay) ▶ USER_NOTIF
//!      ├── epoll_create epoll_create1   (sessions that hand sockets of
//!      │                                  the target over) ────────▶ USER_NOTIF
//!      ├── socket ─────── arg 0 (the domain) is AF_INET or AF_INET6
//!      │                                           (container mode) ▶ USER_NOTIF
//!      │                  └─ any other domain ─────────────────────▶ ALLOW
//!      └── anything else ──────────────────────────────────────────▶ ALLOW
//! ```
//!
//! Why each branch:
//! - Only the native ABI is allowed. A 32-bit (i386/arm) or x32 program could make socket
//!   calls under other numbers (even through `socketcall`) that this program doesn't know,
//!   so they must never slip past: such a process is killed with SIGSYS at its first system
//!   call, and sctrace reports why.
//! - io_uring's connect/sendmsg never pass through seccomp; with `io_uring_setup` failing
//!   with ENOSYS, runtimes fall back to ordinary system calls.
//! - `sendto`/`recvfrom` without an address (the common case on connected sockets) stay in
//!   the kernel at full speed. `sendmsg`/`recvmsg` can't be filtered the same way: their
//!   address sits inside a struct the filter can't dereference.
//! - The receive side (`recvfrom` with an address, `recvmsg`, `recvmmsg`) and the address
//!   queries (`getpeername`, `getsockname`) are trapped only when the session relays
//!   traffic: then sctrace must show replies as coming from the remote peer, and a relayed
//!   socket's addresses as they are in the target. An observe-only session (`sctrace
//!   trace`) has nothing to do on them, and trapping them would cost a round trip to the
//!   supervisor on every `recvmsg` of every socket (see docs/benchmarks.md).
//! - `socket` is trapped only in container mode (where `pidfd_getfd` is refused, see
//!   `trap::owned`): sctrace then creates the app's inet sockets itself, to hold a copy of
//!   each. The kernel reads the domain as an `int`, so only the low half of argument 0 is
//!   compared. Unix, netlink and other sockets are created by the kernel as usual.
//! - `epoll_create`/`epoll_create1` are trapped only when sockets of the target may replace
//!   the app's (a local agent, see `execute::direct`): a socket an epoll instance watches
//!   must not be replaced, and knowing each instance as it is made spares reading the whole
//!   fd table on every connect (see `epolls`). They are rare calls.
//! - Everything else depends only on the system call number, so the kernel's seccomp action
//!   cache (5.11+) lets it through without running this program at all.

/// The seccomp return values used (include/uapi/linux/seccomp.h).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// Classic BPF opcodes (include/uapi/linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// The native ABI this build supports and how its calls are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abi {
    /// `AUDIT_ARCH_*` of the native ABI.
    pub audit_arch: u32,
    /// Whether numbers with the x32 bit (0x40000000) must be refused.
    pub reject_x32: bool,
    /// Syscalls always sent to the supervisor.
    pub notify: &'static [i64],
    /// Syscalls sent to the supervisor only when their address (argument 1) could be an
    /// inet one: its length (argument 2) is at least [`MIN_INET_ADDR_LEN`].
    pub notify_if_inet_length: &'static [i64],
    /// Syscalls sent to the supervisor only when they carry a destination (argument 4, an
    /// address, is non-NULL) that could be an inet one (its length, argument 5, is at least
    /// [`MIN_INET_ADDR_LEN`]).
    pub notify_if_destination: &'static [i64],
    /// Receive calls sent to the supervisor when the session relays traffic.
    pub receive: &'static [i64],
    /// Receive calls sent when the session relays traffic and argument 4 is non-NULL.
    pub receive_if_arg4: &'static [i64],
    /// Syscalls refused with ENOSYS.
    pub enosys: &'static [i64],
    /// `socket`, sent to the supervisor in container mode for inet domains.
    pub socket: i64,
    /// The calls that make epoll instances, sent when sockets of the target are handed over.
    pub epoll: &'static [i64],
}

/// The system calls trapped on every ABI (numbers from libc for the build target).
const NOTIFY: &[i64] = &[
    libc::SYS_connect,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
];
const NOTIFY_IF_INET_LENGTH: &[i64] = &[libc::SYS_bind];
const NOTIFY_IF_DESTINATION: &[i64] = &[libc::SYS_sendto];
/// The shortest inet address (`struct sockaddr_in`; `sockaddr_in6` is longer). A shorter
/// one is a netlink (12 bytes), short Unix or other address, or an inet one the kernel
/// refuses with EINVAL itself: such binds and sends are left to the kernel unseen (glibc's
/// `getaddrinfo` binds and sends on a netlink socket at every lookup).
pub const MIN_INET_ADDR_LEN: u32 = 16;
const RECEIVE: &[i64] = &[
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_getpeername,
    libc::SYS_getsockname,
];
const RECEIVE_IF_ADDRESS: &[i64] = &[libc::SYS_recvfrom];
const ENOSYS: &[i64] = &[libc::SYS_io_uring_setup];
#[cfg(target_arch = "x86_64")]
const EPOLL: &[i64] = &[libc::SYS_epoll_create, libc::SYS_epoll_create1];
#[cfg(target_arch = "aarch64")]
const EPOLL: &[i64] = &[libc::SYS_epoll_create1];

/// The ABI of this build.
#[cfg(target_arch = "x86_64")]
pub const NATIVE: Abi = Abi {
    audit_arch: 0xc000_003e, // AUDIT_ARCH_X86_64
    reject_x32: true,
    notify: NOTIFY,
    notify_if_inet_length: NOTIFY_IF_INET_LENGTH,
    notify_if_destination: NOTIFY_IF_DESTINATION,
    receive: RECEIVE,
    receive_if_arg4: RECEIVE_IF_ADDRESS,
    enosys: ENOSYS,
    socket: libc::SYS_socket,
    epoll: EPOLL,
};

/// The ABI of this build.
#[cfg(target_arch = "aarch64")]
pub const NATIVE: Abi = Abi {
    audit_arch: 0xc000_00b7, // AUDIT_ARCH_AARCH64
    reject_x32: false,
    notify: NOTIFY,
    notify_if_inet_length: NOTIFY_IF_INET_LENGTH,
    notify_if_destination: NOTIFY_IF_DESTINATION,
    receive: RECEIVE,
    receive_if_arg4: RECEIVE_IF_ADDRESS,
    enosys: ENOSYS,
    socket: libc::SYS_socket,
    epoll: EPOLL,
};

/// Where a jump goes, resolved when the program is assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Next,
    Kill,
    Enosys,
    Notify,
    CheckArg4,
    CheckDomain,
    CheckInetLength,
    CheckDestination,
    CheckDestinationLength,
}

#[derive(Debug, Clone, Copy)]
enum Insn {
    Load(u32),
    JumpIfEqual(u32, Target),
    JumpIfAtLeast(u32, Target),
    JumpIfNotEqual(u32, Target),
    Return(u32),
    Label(Target),
}

/// Which optional groups of calls a session traps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traps {
    /// The receive side (`recvfrom` with an address, `recvmsg`, `recvmmsg`) and the
    /// address queries (`getpeername`, `getsockname`), which relaying sessions emulate.
    pub receives: bool,
    /// `socket` for the inet domains, which container mode carries out itself.
    pub sockets: bool,
    /// `epoll_create`/`epoll_create1`, which sessions handing sockets over carry out.
    pub epolls: bool,
}

/// Builds the filter program for `abi`.
pub fn build(abi: &Abi, traps: Traps) -> Vec<libc::sock_filter> {
    use Insn::*;
    let mut prog = vec![
        Load(OFF_ARCH),
        JumpIfNotEqual(abi.audit_arch, Target::Kill),
        Load(OFF_NR),
    ];
    if abi.reject_x32 {
        prog.push(JumpIfAtLeast(0x4000_0000, Target::Kill));
    }
    for &nr in abi.enosys {
        prog.push(JumpIfEqual(nr as u32, Target::Enosys));
    }
    for &nr in abi.notify {
        prog.push(JumpIfEqual(nr as u32, Target::Notify));
    }
    for &nr in abi.notify_if_inet_length {
        prog.push(JumpIfEqual(nr as u32, Target::CheckInetLength));
    }
    for &nr in abi.notify_if_destination {
        prog.push(JumpIfEqual(nr as u32, Target::CheckDestination));
    }
    if traps.receives {
        for &nr in abi.receive {
            prog.push(JumpIfEqual(nr as u32, Target::Notify));
        }
        for &nr in abi.receive_if_arg4 {
            prog.push(JumpIfEqual(nr as u32, Target::CheckArg4));
        }
    }
    if traps.sockets {
        prog.push(JumpIfEqual(abi.socket as u32, Target::CheckDomain));
    }
    if traps.epolls {
        for &nr in abi.epoll {
            prog.push(JumpIfEqual(nr as u32, Target::Notify));
        }
    }
    prog.push(Return(RET_ALLOW));
    if traps.sockets {
        // The domain is an int: the kernel ignores the high half of the register.
        prog.extend([
            Label(Target::CheckDomain),
            Load(OFF_ARGS),
            JumpIfEqual(libc::AF_INET as u32, Target::Notify),
            JumpIfEqual(libc::AF_INET6 as u32, Target::Notify),
            Return(RET_ALLOW),
        ]);
    }
    // Argument 4 is a 64-bit pointer: notify if either half is non-zero. Both supported ABIs
    // are little-endian, so the low half comes first. Address lengths are ints (socklen_t):
    // the low half only; a negative one is a large unsigned value, so still notified.
    let arg = |i: u32| OFF_ARGS + i * 8;
    let arg4_not_null = |then: Target| {
        [
            Load(arg(4)),
            JumpIfNotEqual(0, then),
            Load(arg(4) + 4),
            JumpIfNotEqual(0, then),
            Return(RET_ALLOW),
        ]
    };
    let inet_length_at = |i: u32| {
        [
            Load(arg(i)),
            JumpIfAtLeast(MIN_INET_ADDR_LEN, Target::Notify),
            Return(RET_ALLOW),
        ]
    };
    prog.push(Label(Target::CheckInetLength));
    prog.extend(inet_length_at(2));
    prog.push(Label(Target::CheckDestination));
    prog.extend(arg4_not_null(Target::CheckDestinationLength));
    prog.push(Label(Target::CheckDestinationLength));
    prog.extend(inet_length_at(5));
    prog.push(Label(Target::CheckArg4));
    prog.extend(arg4_not_null(Target::Notify));
    prog.extend([
        Label(Target::Notify),
        Return(RET_USER_NOTIF),
        Label(Target::Enosys),
        Return(RET_ERRNO | libc::ENOSYS as u32),
        Label(Target::Kill),
        Return(RET_KILL_PROCESS),
    ]);
    assemble(&prog)
}

/// Resolves labels into the forward jump offsets classic BPF uses.
fn assemble(prog: &[Insn]) -> Vec<libc::sock_filter> {
    // Index of each label in the emitted program (labels emit nothing).
    let mut emitted = 0usize;
    let mut labels = Vec::new();
    for insn in prog {
        match insn {
            Insn::Label(t) => labels.push((*t, emitted)),
            _ => emitted += 1,
        }
    }
    let at = |t: Target| {
        labels
            .iter()
            .find(|(l, _)| *l == t)
            .map(|(_, i)| *i)
            .unwrap_or_else(|| panic!("BPF label {t:?} is used but not defined"))
    };
    let mut out = Vec::with_capacity(emitted);
    for insn in prog {
        let pc = out.len();
        // A jump offset counts instructions after the jump itself.
        let off = |t: Target| -> u8 {
            if t == Target::Next {
                return 0;
            }
            let rel = at(t) - pc - 1;
            u8::try_from(rel).unwrap_or_else(|_| panic!("BPF jump too far ({rel})"))
        };
        let (code, jt, jf, k) = match *insn {
            Insn::Label(_) => continue,
            Insn::Load(off) => (BPF_LD_W_ABS, 0, 0, off),
            Insn::JumpIfEqual(k, t) => (BPF_JEQ_K, off(t), 0, k),
            Insn::JumpIfAtLeast(k, t) => (BPF_JGE_K, off(t), 0, k),
            Insn::JumpIfNotEqual(k, t) => (BPF_JEQ_K, 0, off(t), k),
            Insn::Return(k) => (BPF_RET_K, 0, 0, k),
        };
        out.push(libc::sock_filter { code, jt, jf, k });
    }
    out
}

#[cfg(test)]
mod tests {
    //! The program is checked by running it in a small classic-BPF interpreter over the
    //! inputs that matter: every trapped call, others, foreign ABIs, x32, NULL addresses.
    use super::*;

    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    fn run(prog: &[libc::sock_filter], d: &Data) -> u32 {
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&d.nr.to_le_bytes());
        bytes[4..8].copy_from_slice(&d.arch.to_le_bytes());
        for (i, a) in d.args.iter().enumerate() {
            bytes[16 + i * 8..24 + i * 8].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = prog[pc];
            match insn.code {
                BPF_LD_W_ABS => {
                    let o = insn.k as usize;
                    acc = u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
                    pc += 1;
                }
                BPF_JEQ_K => {
                    pc += 1 + if acc == insn.k { insn.jt } else { insn.jf } as usize;
                }
                BPF_JGE_K => {
                    pc += 1 + if acc >= insn.k { insn.jt } else { insn.jf } as usize;
                }
                BPF_RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn call(nr: i64, args: [u64; 6]) -> Data {
        Data {
            nr: nr as u32,
            arch: NATIVE.audit_arch,
            args,
        }
    }

    const ALL: Traps = Traps {
        receives: true,
        sockets: true,
        epolls: true,
    };
    const RELAY: Traps = Traps {
        receives: true,
        sockets: false,
        epolls: false,
    };

    #[test]
    fn trapped_calls_reach_the_supervisor() {
        for traps in [Traps::default(), ALL] {
            let prog = build(&NATIVE, traps);
            for &nr in NOTIFY {
                assert_eq!(run(&prog, &call(nr, [0; 6])), RET_USER_NOTIF, "nr {nr}");
            }
        }
        let prog = build(&NATIVE, ALL);
        for &nr in RECEIVE {
            assert_eq!(run(&prog, &call(nr, [0; 6])), RET_USER_NOTIF, "nr {nr}");
        }
    }

    #[test]
    fn receives_stay_in_the_kernel_unless_the_session_relays() {
        let prog = build(&NATIVE, Traps::default());
        for nr in [
            libc::SYS_recvmsg,
            libc::SYS_recvmmsg,
            libc::SYS_recvfrom,
            libc::SYS_getpeername,
            libc::SYS_getsockname,
        ] {
            assert_eq!(
                run(&prog, &call(nr, [3, 0x1000, 10, 0, 0x7fff_0000_1000, 16])),
                RET_ALLOW,
                "nr {nr}"
            );
        }
    }

    #[test]
    fn binds_and_sends_only_with_an_address_that_could_be_inet() {
        let prog = build(&NATIVE, ALL);
        let bind = |len: u64| call(libc::SYS_bind, [3, 0x1000, len, 0, 0, 0]);
        for len in [16, 28, 110, 0xffff_ffff, 0xdead_beef_0000_0010] {
            assert_eq!(run(&prog, &bind(len)), RET_USER_NOTIF, "bind len {len:#x}");
        }
        // Netlink (12), a short Unix path, nothing: the kernel's.
        for len in [0, 3, 12, 15, 0xdead_beef_0000_000c] {
            assert_eq!(run(&prog, &bind(len)), RET_ALLOW, "bind len {len:#x}");
        }
        let sendto = |dest: u64, len: u64| call(libc::SYS_sendto, [3, 0x1000, 10, 0, dest, len]);
        for dest in [0x7fff_0000_1000, 0x1_0000_0000] {
            assert_eq!(run(&prog, &sendto(dest, 16)), RET_USER_NOTIF);
            assert_eq!(run(&prog, &sendto(dest, 28)), RET_USER_NOTIF);
            assert_eq!(run(&prog, &sendto(dest, 0xffff_ffff)), RET_USER_NOTIF);
            assert_eq!(run(&prog, &sendto(dest, 12)), RET_ALLOW, "netlink");
        }
        assert_eq!(run(&prog, &sendto(0, 16)), RET_ALLOW, "no destination");
    }

    #[test]
    fn recvfrom_only_with_an_address() {
        let prog = build(&NATIVE, ALL);
        for &nr in RECEIVE_IF_ADDRESS {
            assert_eq!(run(&prog, &call(nr, [3, 0x1000, 10, 0, 0, 0])), RET_ALLOW);
            assert_eq!(
                run(&prog, &call(nr, [3, 0x1000, 10, 0, 0x7fff_0000_1000, 16])),
                RET_USER_NOTIF
            );
            // An address above 4 GiB with a zero low half still counts.
            assert_eq!(
                run(&prog, &call(nr, [3, 0x1000, 10, 0, 0x1_0000_0000, 16])),
                RET_USER_NOTIF
            );
        }
    }

    #[test]
    fn other_calls_run_in_the_kernel() {
        let prog = build(&NATIVE, ALL);
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_close,
            libc::SYS_getsockopt,
        ] {
            assert_eq!(run(&prog, &call(nr, [0; 6])), RET_ALLOW, "nr {nr}");
        }
    }

    #[test]
    fn inet_sockets_are_trapped_in_container_mode_only() {
        let socket = |domain: u64| call(libc::SYS_socket, [domain, 1, 0, 0, 0, 0]);
        let container = build(&NATIVE, ALL);
        for domain in [libc::AF_INET, libc::AF_INET6] {
            assert_eq!(run(&container, &socket(domain as u64)), RET_USER_NOTIF);
            // The kernel reads an int: garbage in the high half is still this domain.
            let high = 0xdead_beef_0000_0000 | domain as u64;
            assert_eq!(run(&container, &socket(high)), RET_USER_NOTIF);
            assert_eq!(
                run(&build(&NATIVE, RELAY), &socket(domain as u64)),
                RET_ALLOW
            );
        }
        for domain in [
            libc::AF_UNIX,
            libc::AF_NETLINK,
            libc::AF_PACKET,
            libc::AF_VSOCK,
        ] {
            assert_eq!(
                run(&container, &socket(domain as u64)),
                RET_ALLOW,
                "{domain}"
            );
        }
        // socketpair stays in the kernel (only AF_UNIX makes pairs).
        let pair = call(libc::SYS_socketpair, [libc::AF_INET as u64, 1, 0, 0, 0, 0]);
        assert_eq!(run(&container, &pair), RET_ALLOW);
    }

    #[test]
    fn epoll_instances_are_trapped_only_when_sockets_are_handed_over() {
        let handing_over = build(&NATIVE, ALL);
        let relaying = build(&NATIVE, RELAY);
        for &nr in EPOLL {
            assert_eq!(
                run(&handing_over, &call(nr, [0; 6])),
                RET_USER_NOTIF,
                "nr {nr}"
            );
            assert_eq!(run(&relaying, &call(nr, [0; 6])), RET_ALLOW, "nr {nr}");
        }
        // Registering and waiting stay in the kernel either way.
        for nr in [libc::SYS_epoll_ctl, libc::SYS_epoll_pwait] {
            assert_eq!(run(&handing_over, &call(nr, [0; 6])), RET_ALLOW, "nr {nr}");
        }
    }

    #[test]
    fn io_uring_gets_enosys() {
        let prog = build(&NATIVE, ALL);
        assert_eq!(
            run(&prog, &call(libc::SYS_io_uring_setup, [0; 6])),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn foreign_abis_are_killed() {
        let prog = build(&NATIVE, ALL);
        let i386 = Data {
            nr: 102,
            arch: 0x4000_0003,
            args: [0; 6],
        }; // socketcall on i386
        assert_eq!(run(&prog, &i386), RET_KILL_PROCESS);
        if NATIVE.reject_x32 {
            let x32 = call(0x4000_0000 + 42, [0; 6]);
            assert_eq!(run(&prog, &x32), RET_KILL_PROCESS);
        }
    }

    #[test]
    fn program_fits_the_kernel_limits() {
        let prog = build(&NATIVE, ALL);
        assert!(prog.len() < 64, "{} instructions", prog.len());
    }
}
