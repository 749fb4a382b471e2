//! The spearlet node: configuration, the task registry, the TaskExecutionManager, the gRPC
//! `spearlet.FunctionService` and the HTTP/JSON gateway in front of the same handler, with
//! authentication, TLS, health, statistics and metrics.
//!
//! Architecture invariants:
//! - The request path reads top-down: `service` decodes → `registry` resolves the task →
//!   `manager` takes an instance of the task's pool (`spearlet-pool`) and runs the call on it
//!   (`instances`, through the runtime crates) → `wire` encodes. No module on that path imports
//!   one above it (the manager imports neither `service` nor `node`).
//! - `errors` is the only place that turns a `SpearError` into a wire status.
//! - Guest failures are records with a status, never transport errors.
//! - Configuration is assembled once (`config`) and passed down; nothing reads the environment
//!   later.

#![deny(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod cluster_link;
pub mod config;
pub mod connection_io;
pub mod dashboard;
pub mod errors;
pub mod exposition;
pub mod gateway;
pub mod history;
pub mod http_route;
pub mod instances;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod observer;
pub mod registry;
pub mod server;
pub mod service;
pub mod stats;
pub mod task_http;
pub mod tls;
pub mod trace_context;
pub mod wire;

pub use config::{ConfigOverrides, LogFormat, NodeConfig};
pub use node::Node;
pub use server::{ClusterConnector, ClusterJoin, RunningServer, serve, serve_in_cluster};
