//! sctrace's configuration model (mirrord's config schema) and the traffic filter that
//! decides, for each connection and DNS query, whether it stays local or goes remote.
//!
//! Pure logic: no I/O (except [`load`], which reads the config file), no async runtime,
//! no unsafe code.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod document;

pub use document::{Format, Pos};
