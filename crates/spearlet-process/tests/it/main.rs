//! The process runtime's integration tests, one test binary: real processes, archives and Lambda workers.

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod archive;
mod exec;
mod lambda_worker;
mod runtime_api;
