//! The `spearlet serve` child process the binary's integration tests start: free loopback
//! ports, stderr in a log file, no `SPEARLET_*` variables inherited from the caller, and the
//! gRPC address read from the node's first stdout line (text, or a JSON log line with
//! `--log-format json`). Killed (SIGKILL) and reaped when
//! dropped, so a failing assertion never leaves a node running.

#![allow(dead_code)]

pub mod nats;
#[path = "../../../../spearlet-examples/tests/it/prerequisites.rs"]
pub mod prerequisites;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const SPEARLET: &str = env!("CARGO_BIN_EXE_spearlet");

/// The gRPC address (`127.0.0.1:PORT`) on the node's first stdout line: `spearlet listening on
/// grpc://ADDRESS` with text logs, or with JSON logs a JSON object whose `fields.grpc` is
/// `grpc://ADDRESS`.
fn grpc_address_from_listening_line(line: &str) -> Option<String> {
    let line = line.trim();
    if let Some(address) = line.strip_prefix("spearlet listening on grpc://") {
        return Some(address.to_owned());
    }
    let object: serde_json::Value = serde_json::from_str(line).ok()?;
    let url = object.get("fields")?.get("grpc")?.as_str()?;
    url.strip_prefix("grpc://").map(str::to_owned)
}

pub struct NodeProcess {
    pub child: Child,
    /// `127.0.0.1:PORT` of the gRPC listener.
    pub grpc_address: String,
    pub log_path: PathBuf,
    /// The node's first stdout line, which says where it listens.
    pub listening_line: String,
    /// The rest of stdout, kept open so the node never writes into a closed pipe.
    stdout: BufReader<ChildStdout>,
}

impl NodeProcess {
    /// Runs `spearlet serve --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --data-dir
    /// <data_directory> <arguments>` with `environment`, logging to `log_path`, and waits until
    /// it listens.
    pub fn start(
        data_directory: &Path,
        log_path: &Path,
        arguments: &[&str],
        environment: &[(&str, &str)],
    ) -> NodeProcess {
        let log_file = std::fs::File::create(log_path).unwrap();
        let mut command = Command::new(SPEARLET);
        command
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_directory)
            .args(arguments);
        for (name, _) in std::env::vars() {
            if name.starts_with("SPEARLET_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).unwrap();
        let Some(address) = grpc_address_from_listening_line(&first_line) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "unexpected first line {first_line:?}; node log:\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
        };
        NodeProcess {
            child,
            grpc_address: address,
            log_path: log_path.to_owned(),
            listening_line: first_line,
            stdout,
        }
    }

    /// The next line the node writes to stdout (the second says where HTTP listens).
    pub fn read_stdout_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// What the node wrote to stdout after its first line, up to its end: call it once the node
    /// has exited (it reads until the pipe closes).
    pub fn stdout_after_listening_line(&mut self) -> String {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        rest
    }

    /// `kill -9`: no graceful shutdown, no flushing.
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits (up to 20 s) for a clean exit.
    pub fn stop_gracefully(&mut self) {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(signalled.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}; node log:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not stop; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
