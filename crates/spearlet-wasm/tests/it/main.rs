//! The wasm runtime's integration tests, one test binary: real guests on a real engine.

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod reuse;
mod runtime;
