//! The store's integration tests, one test binary: a real SQLite file in a temporary directory.

mod durable;
mod durable_index_memory;
mod reference_store;
