//! sctrace runs a program with its socket calls intercepted by seccomp user notification.
//!
//! ```text
//!  cli ─▶ session ─▶ launch (fork, filter, exec) ─▶ app
//!            │                                        │ trapped socket calls
//!            │          ┌─────────── supervisor ◀─────┘
//!            │          │  ① receive (notification loop thread)
//!            │          │  ② handlers: copy args, check id, decide → Action
//!            │          │  ③ answer now, or defer to the tokio runtime and answer later
//!            │          └──▶ events (JSON lines / human lines)
//!            └─▶ lifecycle: forward signals, reap, clean up, exit status
//! ```
//!
//! All unsafe code lives in [`sys`]; everything else is safe Rust.
#![deny(unsafe_code)]

pub mod action;
pub mod agent_link;
pub mod cli;
pub mod dns;
pub mod env;
pub mod errno;
pub mod events;
pub mod handlers;
pub mod launch;
pub mod lifecycle;
pub mod procfs;
pub mod progress;
pub mod relay;
pub mod remote;
pub mod session;
pub mod sockaddr;
pub mod supervisor;
pub mod sys;
