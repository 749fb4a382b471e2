//! The wasm runtime's integration tests, one test binary: real guests on a real engine.

mod reuse;
mod runtime;
