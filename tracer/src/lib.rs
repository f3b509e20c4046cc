//! sctrace runs a program with its socket calls intercepted by seccomp user notification.
//!
//! ```text
//!  cli ─▶ session ─▶ launch (fork, filter, exec) ─▶ app
//!            │                                        │ trapped socket calls
//!            │          ┌─────────── supervisor ◀─────┘
//!            │          │  ① receive (notification loop thread) → trap::Notification
//!            │          │  ② handlers: copy args, check id, decide → plan::Plan
//!            │          │  ③ execute: carry the plan out (the only code acting on app sockets)
//!            │          │  ④ answer now, or defer to the tokio runtime and answer later
//!            │          └──▶ events (JSON lines / human lines)
//!            └─▶ lifecycle: forward signals, reap, clean up, exit status
//! ```
//!
//! Arrows point one way: supervisor → handlers → plan, supervisor → execute → plan, and
//! all of them → trap (the copied-out call), remote (the relaying session's state), sys.
//!
//! All unsafe code lives in [`sys`]; everything else is safe Rust.
#![deny(unsafe_code)]

pub mod agent_link;
pub mod cli;
pub mod dns;
pub mod doctor;
pub mod env;
pub mod epolls;
pub mod errno;
pub mod events;
pub mod execute;
pub mod features;
pub mod handlers;
pub mod launch;
pub mod lifecycle;
pub mod plan;
pub mod procfs;
pub mod progress;
pub mod relay;
pub mod remote;
pub mod route;
pub mod session;
pub mod sockaddr;
pub mod socket_table;
pub mod supervisor;
pub mod sys;
pub mod trap;
