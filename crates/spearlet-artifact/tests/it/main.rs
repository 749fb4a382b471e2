//! The artifact crate's integration tests, one test binary.

mod fetch;
