//! The store's integration tests, one test binary: a real SQLite file in a temporary directory.

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod durable;
mod durable_index_memory;
mod reference_store;
