//! The node's integration tests, one test binary: each module starts a real node on 127.0.0.1:0 and talks gRPC or HTTP to it.

mod grpc;
mod grpcurl;
mod health;
mod http;
mod lifecycle;
mod metrics;
mod pools;
mod process;
mod security;
mod support;
