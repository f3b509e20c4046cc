//! Test harness for sctrace's end-to-end tests.
