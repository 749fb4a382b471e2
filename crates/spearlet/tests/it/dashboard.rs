//! The web dashboard in a real browser: two `spearlet serve` nodes (one open, with 10,000
//! executions in its store; one requiring tokens) and headless Chromium driven by
//! `tests/dashboard/dashboard.test.mjs` through playwright-core. The script does the clicking
//! and asserting (see its header); this test starts the nodes, fills the store, runs the script
//! with a time limit and fails with its output.
//!
//! A third node, in a one-node cluster on a real nats-server, shows the cluster view.
//!
//! Prerequisites: Node.js, Chromium (`$CHROMIUM`, or `chromium` on PATH), the script's pinned
//! playwright-core (`npm ci` in `tests/dashboard`) and nats-server (`$NATS_SERVER`); `.ci/run`
//! installs all four.
//! Screenshots land in `target/dashboard-screenshots/` (not committed; `docs/screenshots/` holds
//! the committed ones).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;

use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use support::NodeProcess;
use support::prerequisites::missing_prerequisite;

const ADMIN_TOKEN: &str = "dashboard-test-admin-token-4f1c";
const READ_TOKEN: &str = "dashboard-test-read-token-9a2e";
/// The overview must render in under a second with this many executions stored.
const STORED_EXECUTIONS: usize = 10_000;
const SCRIPT_TIME_LIMIT: Duration = Duration::from_secs(300);

/// A node child process with both of its addresses.
struct BrowserTestNode {
    process: NodeProcess,
    http_url: String,
    _directory: tempfile::TempDir,
}

impl BrowserTestNode {
    fn start(config: Option<&str>) -> BrowserTestNode {
        BrowserTestNode::start_with(config, &[])
    }

    fn start_with(config: Option<&str>, extra_arguments: &[&str]) -> BrowserTestNode {
        let directory = tempfile::tempdir().unwrap();
        let config_path = directory.path().join("spearlet.toml");
        let mut arguments = vec!["--log-level", "warn"];
        let config_argument;
        if let Some(config) = config {
            std::fs::write(&config_path, config).unwrap();
            config_argument = config_path.display().to_string();
            arguments.extend(["--config", config_argument.as_str()]);
        }
        arguments.extend_from_slice(extra_arguments);
        let mut process = NodeProcess::start(
            &directory.path().join("data"),
            &directory.path().join("node.log"),
            &arguments,
            &[],
        );
        let http_line = process.read_stdout_line();
        let http_url = http_line
            .trim()
            .strip_prefix("spearlet listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected second line {http_line:?}"))
            .to_owned();
        BrowserTestNode {
            process,
            http_url,
            _directory: directory,
        }
    }
}

fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    })
}

fn node_js_available() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn script_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// Fills the node's store with `count` executions of `echo`, 32 calls at a time over gRPC.
async fn fill_store(grpc_address: &str, count: usize) {
    let client = FunctionServiceClient::connect(format!("http://{grpc_address}"))
        .await
        .unwrap();
    let mut calls = futures::stream::iter(0..count)
        .map(|index| {
            let mut client = client.clone();
            async move {
                client
                    .invoke_function(proto::InvokeFunctionRequest {
                        invocation_type: proto::InvocationType::ExistingTask as i32,
                        task_id: "echo".into(),
                        input: Some(proto::Payload {
                            content_type: "text/plain".into(),
                            data: format!("call {index}").into_bytes(),
                        }),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32);
    use futures::StreamExt as _;
    while let Some(answer) = calls.next().await {
        answer.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    if !node_js_available() {
        return missing_prerequisite("Node.js (`node`)", "apt-get install nodejs");
    }
    let Some(chromium) = chromium() else {
        return missing_prerequisite(
            "Chromium",
            "apt-get install chromium, or set CHROMIUM to its path",
        );
    };
    if !script_directory()
        .join("node_modules/playwright-core")
        .is_dir()
    {
        return missing_prerequisite(
            "playwright-core for tests/dashboard",
            "npm ci --prefix crates/spearlet/tests/dashboard",
        );
    }

    let open_node = BrowserTestNode::start(None);
    let filling = Instant::now();
    fill_store(&open_node.process.grpc_address, STORED_EXECUTIONS).await;
    eprintln!(
        "stored {STORED_EXECUTIONS} executions in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    let token_node = BrowserTestNode::start(Some(&format!(
        "[[auth.tokens]]\ntoken = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\"]\n\n\
         [[auth.tokens]]\ntoken = \"{READ_TOKEN}\"\nscopes = [\"read\"]\n"
    )));

    // A node in a cluster (one node is enough for the cluster view) when nats-server is here;
    // under CI it must be (`nats_server_binary` fails the test naming it).
    let nats_directory = tempfile::tempdir().unwrap();
    let cluster = support::nats::nats_server_binary().map(|binary| {
        let nats = support::nats::NatsServer::start(&binary, nats_directory.path());
        let node = BrowserTestNode::start_with(
            Some("[cluster]\nheartbeat_interval_ms = 500\n"),
            &["--cluster-nats", &nats.url],
        );
        (nats, node)
    });

    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let mut script = tokio::process::Command::new("node");
    script
        .arg("dashboard.test.mjs")
        .current_dir(script_directory())
        .env("SPEARLET_URL", &open_node.http_url)
        .env("SPEARLET_AUTH_URL", &token_node.http_url)
        .env("SPEARLET_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SPEARLET_READ_TOKEN", READ_TOKEN)
        .env("CHROMIUM", &chromium)
        .env(
            "SPEARLET_CLUSTER_URL",
            cluster
                .as_ref()
                .map_or("", |(_, node)| node.http_url.as_str()),
        )
        .env("SCREENSHOT_DIR", &screenshots)
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(SCRIPT_TIME_LIMIT, script.output())
        .await
        .unwrap_or_else(|_| panic!("the browser test ran over {SCRIPT_TIME_LIMIT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}\n-- open node log:\n{}\n-- token node log:\n{}",
        output.status,
        open_node.process.log(),
        token_node.process.log()
    );
    assert!(
        stdout.contains("checks passed"),
        "the script ended without its summary:\n{stdout}\n{stderr}"
    );
    let log = token_node.process.log();
    for token in [ADMIN_TOKEN, READ_TOKEN] {
        assert!(!log.contains(token), "a token reached the node's log");
    }
}
