//! The core crate's integration tests, one test binary.

mod tidy;
