//! The `spearlet` binary's integration tests, one test binary: each module starts real nodes with `spearlet serve` and drives them from outside.

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod cli;
mod cluster;
mod dashboard;
mod durability;
mod support;
mod telemetry;
