//! The example guests' integration tests, one test binary: they run the committed builds on wasmtime and check they are reproducible.

mod guests_behave;
mod prerequisites;
mod reproducible;
mod streaming_stdout;
