//! Linux capabilities, by number, as the profile's grants and `--with-cap` name them.

/// A capability's number (`CAP_SYS_PTRACE` is 19).
pub type Cap = u8;

/// Every capability Linux defines, in number order, without the `CAP_` prefix.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

// The capabilities the profile's grants name.
pub const DAC_READ_SEARCH: Cap = 2;
pub const SYS_MODULE: Cap = 16;
pub const SYS_RAWIO: Cap = 17;
pub const SYS_CHROOT: Cap = 18;
pub const SYS_PTRACE: Cap = 19;
pub const SYS_PACCT: Cap = 20;
pub const SYS_ADMIN: Cap = 21;
pub const SYS_BOOT: Cap = 22;
pub const SYS_NICE: Cap = 23;
pub const SYS_TIME: Cap = 25;
pub const SYS_TTY_CONFIG: Cap = 26;
pub const SYSLOG: Cap = 34;
pub const PERFMON: Cap = 38;
pub const BPF: Cap = 39;

/// A set of capabilities, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// What Docker gives a container unless told otherwise (`docker run` without
    /// `--cap-add`/`--cap-drop`/`--privileged`; moby's `caps.DefaultCapabilities`).
    pub fn docker_default() -> CapSet {
        let mut set = CapSet::default();
        for name in [
            "CHOWN",
            "DAC_OVERRIDE",
            "FSETID",
            "FOWNER",
            "MKNOD",
            "NET_RAW",
            "SETGID",
            "SETUID",
            "SETFCAP",
            "SETPCAP",
            "NET_BIND_SERVICE",
            "SYS_CHROOT",
            "KILL",
            "AUDIT_WRITE",
        ] {
            set.add(parse(name).expect("a known capability"));
        }
        set
    }

    /// Adds `cap`.
    pub fn add(&mut self, cap: Cap) {
        self.0 |= 1 << cap;
    }

    /// Whether `cap` is in the set.
    pub fn has(self, cap: Cap) -> bool {
        self.0 & (1 << cap) != 0
    }
}

/// `SYS_PTRACE`, `CAP_SYS_PTRACE` or `sys_ptrace` → 19.
pub fn parse(name: &str) -> Option<Cap> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as Cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree() {
        assert_eq!(parse("SYS_PTRACE"), Some(SYS_PTRACE));
        assert_eq!(parse("cap_sys_admin"), Some(SYS_ADMIN));
        assert_eq!(parse("CAP_BPF"), Some(BPF));
        assert_eq!(parse("NET_ADMIN"), Some(12));
        assert_eq!(parse("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(parse("PTRACE"), None);
        for (cap, name) in [
            (DAC_READ_SEARCH, "DAC_READ_SEARCH"),
            (SYS_MODULE, "SYS_MODULE"),
            (SYS_RAWIO, "SYS_RAWIO"),
            (SYS_CHROOT, "SYS_CHROOT"),
            (SYS_PACCT, "SYS_PACCT"),
            (SYS_BOOT, "SYS_BOOT"),
            (SYS_NICE, "SYS_NICE"),
            (SYS_TIME, "SYS_TIME"),
            (SYS_TTY_CONFIG, "SYS_TTY_CONFIG"),
            (SYSLOG, "SYSLOG"),
            (PERFMON, "PERFMON"),
        ] {
            assert_eq!(NAMES[cap as usize], name);
        }
    }

    #[test]
    fn docker_gives_chroot_but_not_ptrace_or_admin() {
        let caps = CapSet::docker_default();
        assert!(caps.has(SYS_CHROOT));
        assert!(!caps.has(SYS_PTRACE));
        assert!(!caps.has(SYS_ADMIN));
        assert_eq!(caps.0.count_ones(), 14);
    }
}
