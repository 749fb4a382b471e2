//! The node's integration tests, one test binary: each module starts a real node on 127.0.0.1:0 and talks gRPC or HTTP to it.

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
