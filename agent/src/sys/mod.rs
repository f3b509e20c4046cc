//! Every unsafe block of the agent lives below this module: taking ownership of the sockets
//! the kernel passes with `SCM_RIGHTS`, and entering the target's network namespace in a
//! child between fork and exec.
//!
//! Each function is small, takes and returns safe types, and says in a `// SAFETY:` comment
//! why its unsafe block is sound. Callers above `sys` never write `unsafe`.
#![allow(unsafe_code)]

pub mod process;
pub mod scm_rights;
