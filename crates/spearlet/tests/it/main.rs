//! The `spearlet` binary's integration tests, one test binary: each module starts real nodes with `spearlet serve` and drives them from outside.

mod support;
mod cli;
mod durability;
mod telemetry;
