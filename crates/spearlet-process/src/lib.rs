//! The process runtime of spearlet: functions that are native programs.
//!
//! - `archive`: a process artifact (one executable, or a zip / tar.gz holding one) unpacked once
//!   per digest into the cache, never escaping its directory.
//! - `sandbox`: how every function process starts: its own process group, a cleared
//!   environment, a per-instance working directory, resource limits; the only `unsafe` code of
//!   the crate (`pre_exec`).
//! - `exec`: mode `exec`, a new process per call (input on stdin, output on stdout).
//! - `runtime_api`: the AWS Lambda Runtime API (2018-06-01) served to one warm worker.
//! - `task`: a process task as its instances run it, and the process environment and argv of
//!   an exec call, built from the runtime-neutral `FunctionCall`.
//! - `lambda_worker`: mode `lambda`, one warm worker process per instance, with its Runtime API
//!   server and its log drain.
//!
//! Architecture invariants:
//! - A guest failure (non-zero exit, signal, timeout, crash, reported error) is an
//!   [`spearlet_core::Outcome`]; `SpearError` is only for artifacts the node cannot use.
//! - Every process the runtime starts is killed with its whole process group and reaped when
//!   its call or worker ends: no zombies, no strays.
pub mod archive;
pub mod exec;
pub mod lambda_worker;
pub mod runtime_api;
pub mod sandbox;
pub mod task;
