//! The node's integration tests, one test binary: each module starts a real node on 127.0.0.1:0 and talks gRPC or HTTP to it.

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

mod components;
mod dashboard_api;
mod gateway_transport;
mod grpc;
mod grpcurl;
mod health;
mod http;
mod lifecycle;
mod metrics;
mod pools;
mod process;
mod retention;
mod scheduling;
mod security;
mod shutdown;
mod sse;
mod support;
