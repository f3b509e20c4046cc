//! Starting a helper program inside the target's network namespace.
//!
//! Kernel facts: `setns(2)` with `CLONE_NEWNET` moves only the calling thread; done in the
//! child between fork and exec, the program runs in that namespace from its first
//! instruction while the agent's own threads stay where they are.

use std::fs::File;
use std::io;

use nix::sched::{setns, CloneFlags};
use tokio::process::Command;

/// Makes `cmd`'s child enter the network namespace `ns` (an open namespace file) before it
/// executes the program. `ns` moves into the command and is closed with it.
pub fn enter_netns_before_exec(cmd: &mut Command, ns: File) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: setns(2) is a single system call on a file
    // descriptor opened before the fork, and nix's wrapper neither allocates nor locks.
    unsafe {
        cmd.pre_exec(move || setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
    }
}
