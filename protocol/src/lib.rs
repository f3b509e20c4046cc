//! The wire protocol between the tracer (`sctrace`) and `sctrace-agent`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
