//! The `spearlet` binary's integration tests, one test binary: each module starts real nodes with `spearlet serve` and drives them from outside.

mod cli;
mod durability;
mod support;
mod telemetry;
