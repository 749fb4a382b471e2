//! The process runtime's integration tests, one test binary: real processes, archives and Lambda workers.

mod archive;
mod exec;
mod lambda_worker;
mod runtime_api;
