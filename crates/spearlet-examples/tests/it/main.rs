//! The example guests' integration tests, one test binary: they run the committed builds on wasmtime and check they are reproducible.

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod components;
mod guests_behave;
mod prerequisites;
mod reproducible;
mod streaming_stdout;
