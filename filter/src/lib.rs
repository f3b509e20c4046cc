//! sctrace's configuration model (mirrord's config schema) and the traffic filter that
//! decides, for each connection and DNS query, whether it stays local or goes remote.
//!
//! Pure logic: no I/O (except [`load`] and [`resolve`], which read the config file), no
//! async runtime, no unsafe code.
//!
//! ```text
//!  file (JSON/YAML/TOML) ─► document (tree with positions) ─► decode ─► Config ─┐
//!  MIRRORD_*/SCTRACE_* ─► apply_env ─┤                                          │
//!  --target ─► Config::set_target ───┴─► Config::validate ─► OutgoingFilter ◄───┘
//!                                              decide(connection) / decide_dns(name)
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
mod decision;
mod decode;
mod document;
mod entry;
mod error;
mod explain;
mod filter;
mod overrides;
mod sources;

pub use config::{Config, Loaded};
pub use decision::{Decision, Protocol, Route, RuleRef};
pub use document::{Format, Pos};
pub use entry::{EntryError, FilterEntry, HostPattern, ProtocolMatch};
pub use error::{ConfigError, Diagnostic, Origin, Warning};
pub use explain::{explain, ExplainError, ExplainHost, Explanation};
pub use filter::{Connection, OutgoingFilter};
pub use overrides::{apply_env, env_vars};
pub use sources::{load, parse_str, resolve};
