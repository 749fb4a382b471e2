//! The `spearlet` binary: parse the command line and hand it to the module that runs it.
//!
//! Architecture invariant: this crate is only the command line and glue (ripgrep's thin
//! `crates/core`). The node is `spearlet-server`; the wire contract is `spearlet-proto`.
//! Modules: `cli` (flags), `serve` (run a node), `telemetry` (logs and span export), `client`
//! (one command per RPC), `bench` (load generator), `output` (tables and JSON).
//!
//! Exit codes: 0 success, 1 a failed request or function, 2 unusable configuration or
//! command line.

#![deny(unsafe_code)]

mod allocator;
mod bench;
mod cli;
mod client;
mod output;
mod serve;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Command, CommandLine};

#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let command_line = CommandLine::parse();
    match run(&command_line).await {
        Ok(exit_code) => exit_code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command_line: &CommandLine) -> anyhow::Result<ExitCode> {
    let json_output = command_line.json_output;
    let node_connection = &client::NodeConnection {
        address: command_line.node_address.clone(),
        token: command_line.token.clone(),
        tls_ca_file: command_line.tls_ca_file.clone(),
    };
    match &command_line.command {
        Command::Serve(arguments) => serve::serve(arguments).await,
        Command::Bench(arguments) => bench::bench(arguments, node_connection, json_output).await,
        Command::EchoServer(arguments) => bench::echo_server(arguments).await,
        Command::Invoke(arguments) => {
            let mut node = client::connect(node_connection).await?;
            client::invoke(&mut node, arguments, json_output).await
        }
        Command::Task(command) => {
            let mut node = client::connect(node_connection).await?;
            client::run_task_command(&mut node, command, json_output).await
        }
        Command::Exec(command) => {
            let mut node = client::connect(node_connection).await?;
            client::run_execution_command(&mut node, command, json_output).await
        }
        Command::Health => {
            let mut node = client::connect(node_connection).await?;
            client::health(&mut node, json_output).await
        }
        Command::Stats(arguments) => {
            let mut node = client::connect(node_connection).await?;
            client::stats(&mut node, arguments, json_output).await
        }
        Command::Cluster(cli::ClusterCommand::Ls) => {
            let mut node = client::connect(node_connection).await?;
            client::cluster_nodes(&mut node, json_output).await
        }
    }
}
