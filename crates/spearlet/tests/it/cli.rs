//! End-to-end tests of the `spearlet` binary: a real node started with `spearlet serve` on a free
//! loopback port, driven by the client subcommands run as separate processes, with assertions
//! on their stdout, stderr and exit codes. The cases are data; `check` runs one.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support;

use support::{NodeProcess, SPEARLET};

/// A `spearlet serve` child process and the address its clients use, killed when dropped.
struct RunningNode {
    process: NodeProcess,
    address: String,
    /// Holds the data dir and the log for the node's life.
    _data_directory: tempfile::TempDir,
}

impl RunningNode {
    fn start() -> RunningNode {
        RunningNode::start_with(&[], "http")
    }

    /// A node started with extra `serve` flags; `scheme` is what the clients put before the
    /// address (`https` for a TLS node, reached as `localhost` to match its certificate).
    fn start_with(extra_arguments: &[&str], scheme: &str) -> RunningNode {
        let data_directory = tempfile::tempdir().unwrap();
        let mut arguments = vec!["--log-level", "warn"];
        arguments.extend_from_slice(extra_arguments);
        let process = NodeProcess::start(
            &data_directory.path().join("data"),
            &data_directory.path().join("node.log"),
            &arguments,
            &[],
        );
        let address = if scheme == "https" {
            process.grpc_address.replace("127.0.0.1", "localhost")
        } else {
            process.grpc_address.clone()
        };
        RunningNode {
            address: format!("{scheme}://{address}"),
            process,
            _data_directory: data_directory,
        }
    }

    /// Runs `spearlet --addr <node> <arguments>` with `stdin` as its standard input.
    fn run_with_stdin(&self, arguments: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(SPEARLET)
            .arg("--addr")
            .arg(&self.address)
            .args(arguments)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn run(&self, arguments: &[&str]) -> Output {
        Command::new(SPEARLET)
            .arg("--addr")
            .arg(&self.address)
            .args(arguments)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        self.process.log()
    }
}

/// What a command is expected to do.
#[derive(Clone, Copy)]
struct Expect<'a> {
    exit_code: i32,
    /// The exact stdout, when it matters byte for byte.
    stdout_is: Option<&'a str>,
    stdout_contains: &'a [&'a str],
    stderr_contains: &'a [&'a str],
}

const SUCCEEDS: Expect<'static> = Expect {
    exit_code: 0,
    stdout_is: None,
    stdout_contains: &[],
    stderr_contains: &[],
};

fn check(node: &RunningNode, arguments: &[&str], expect: Expect<'_>) -> Output {
    let output = node.run(arguments);
    check_output(node, arguments, &output, &expect);
    output
}

fn check_output(node: &RunningNode, arguments: &[&str], output: &Output, expect: &Expect<'_>) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "spearlet {arguments:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- node log\n{}",
            node.log()
        )
    };
    assert_eq!(
        output.status.code(),
        Some(expect.exit_code),
        "{}",
        context()
    );
    if let Some(exact) = expect.stdout_is {
        assert_eq!(stdout, exact, "{}", context());
    }
    for needle in expect.stdout_contains {
        assert!(
            stdout.contains(needle),
            "stdout lacks {needle:?}: {}",
            context()
        );
    }
    for needle in expect.stderr_contains {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            context()
        );
    }
}

fn example_wasm(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/wasm/{name}.wasm"))
}

#[test]
fn client_commands_against_a_running_node() {
    let node = RunningNode::start();

    let cases: &[(&[&str], Expect<'_>)] = &[
        (
            &["invoke", "echo", "--input", "hello"],
            Expect {
                stdout_is: Some("hello"),
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "hello", "--input", r#"{"name":"Ada"}"#],
            Expect {
                stdout_contains: &["Ada"],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "fail"],
            Expect {
                exit_code: 1,
                stderr_contains: &["error: FAILED EXIT_CODE"],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "nosuchtask", "--input", "x"],
            Expect {
                exit_code: 1,
                stderr_contains: &["error: NotFound", "nosuchtask"],
                ..SUCCEEDS
            },
        ),
        (
            &["task", "ls"],
            Expect {
                stdout_contains: &["NAME", "LAST STATUS", "echo", "hello", "wordcount"],
                ..SUCCEEDS
            },
        ),
        (
            &["task", "get", "echo", "--executions", "5"],
            Expect {
                stdout_contains: &[
                    "NAME:",
                    "echo",
                    "ISOLATION:",
                    "INSTANCES:",
                    "EXECUTION ID",
                    "COMPLETED",
                ],
                ..SUCCEEDS
            },
        ),
        (
            &["task", "get", "nosuchtask"],
            Expect {
                exit_code: 1,
                stderr_contains: &["not found"],
                ..SUCCEEDS
            },
        ),
        (
            &["exec", "ls", "--task", "echo"],
            Expect {
                stdout_contains: &["EXECUTION ID", "COMPLETED"],
                ..SUCCEEDS
            },
        ),
        (
            &["exec", "ls", "--status", "failed"],
            Expect {
                stdout_contains: &["FAILED"],
                ..SUCCEEDS
            },
        ),
        (
            &["exec", "get", "nosuchexecution"],
            Expect {
                exit_code: 1,
                stderr_contains: &["not found"],
                ..SUCCEEDS
            },
        ),
        (
            &["health"],
            Expect {
                stdout_contains: &["healthy"],
                ..SUCCEEDS
            },
        ),
        (
            &["stats", "--hours", "1"],
            Expect {
                stdout_contains: &[
                    "NODE",
                    "QUEUE",
                    "INSTANCES",
                    "COLD STARTS",
                    "POOLS",
                    "EXECUTIONS",
                    "SUCCESS RATE",
                ],
                ..SUCCEEDS
            },
        ),
        (
            &["task", "rm", "wordcount"],
            Expect {
                stdout_contains: &["deleted"],
                ..SUCCEEDS
            },
        ),
    ];
    for (arguments, expect) in cases {
        check(&node, arguments, *expect);
    }

    // Input from a pipe when neither --input nor --input-file is given.
    let piped = node.run_with_stdin(&["invoke", "echo"], b"from stdin");
    check_output(
        &node,
        &["invoke", "echo"],
        &piped,
        &Expect {
            stdout_is: Some("from stdin"),
            ..SUCCEEDS
        },
    );

    // A local artifact is sent inline and becomes a task that can be invoked by name.
    let artifact = example_wasm("echo");
    let artifact = artifact.to_str().unwrap();
    check(
        &node,
        &[
            "task",
            "create",
            "mine",
            "--artifact",
            artifact,
            "--label",
            "team=tests",
        ],
        Expect {
            stdout_contains: &["mine", "team=tests", "data:application/wasm"],
            ..SUCCEEDS
        },
    );
    check(
        &node,
        &["invoke", "mine", "--input", "x"],
        Expect {
            stdout_is: Some("x"),
            ..SUCCEEDS
        },
    );

    // JSON answers parse and carry what the tables show.
    let listing = check(&node, &["task", "ls", "--json"], SUCCEEDS);
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let names: Vec<&str> = listing["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["task_name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"echo") && names.contains(&"mine"),
        "{names:?}"
    );
    assert!(!names.contains(&"wordcount"), "{names:?}");

    let invoked = check(
        &node,
        &["invoke", "echo", "--input", "json me", "--json"],
        SUCCEEDS,
    );
    let invoked: serde_json::Value = serde_json::from_slice(&invoked.stdout).unwrap();
    assert_eq!(invoked["success"], true);
    assert_eq!(invoked["result"]["status"], "COMPLETED");
    assert_eq!(invoked["result"]["output"]["data"], "json me");
    let execution_id = invoked["execution_id"].as_str().unwrap();
    check(
        &node,
        &["exec", "get", execution_id, "--logs"],
        Expect {
            stdout_contains: &["COMPLETED", "OUTPUT:", "json me"],
            ..SUCCEEDS
        },
    );

    // Instance pools (issue #4): `--priority` and `--force-new-instance` reach the node, which
    // checks the priority, and `stats` shows every task's pool.
    let pooled = check(
        &node,
        &[
            "invoke",
            "echo",
            "--input",
            "pooled",
            "--priority",
            "high",
            "--json",
        ],
        SUCCEEDS,
    );
    let pooled: serde_json::Value = serde_json::from_slice(&pooled.stdout).unwrap();
    assert_eq!(pooled["result"]["output"]["data"], "pooled", "{pooled}");
    let fresh = check(
        &node,
        &[
            "invoke",
            "echo",
            "--input",
            "fresh",
            "--force-new-instance",
            "--json",
        ],
        SUCCEEDS,
    );
    let fresh: serde_json::Value = serde_json::from_slice(&fresh.stdout).unwrap();
    assert_eq!(fresh["result"]["output"]["data"], "fresh", "{fresh}");
    assert_ne!(
        fresh["instance_id"], pooled["instance_id"],
        "--force-new-instance ran on the warm instance"
    );
    check(
        &node,
        &["invoke", "echo", "--input", "x", "--priority", "urgent"],
        Expect {
            exit_code: 1,
            stderr_contains: &["error: InvalidArgument", "priority", "urgent"],
            ..SUCCEEDS
        },
    );
    let stats = check(&node, &["stats"], SUCCEEDS);
    let stats_text = String::from_utf8(stats.stdout).unwrap();
    let pool_rows: Vec<&str> = stats_text
        .lines()
        .skip_while(|line| *line != "POOLS")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect();
    assert!(
        pool_rows[0].split_whitespace().eq([
            "TASK",
            "ISOLATION",
            "POLICY",
            "INSTANCES",
            "MIN-MAX",
            "ACTIVE",
            "WAITING",
            "COLD",
            "WARM",
            "PREDICTED"
        ]),
        "{stats_text}"
    );
    assert!(
        pool_rows
            .iter()
            .any(|row| row.split_whitespace().next() == Some("echo")),
        "no pool row for echo:\n{stats_text}"
    );
    let stats = check(&node, &["stats", "--json"], SUCCEEDS);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let echo_pool = stats["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pool| pool["task_name"] == "echo")
        .unwrap_or_else(|| panic!("no pool for echo: {stats}"));
    assert!(
        echo_pool["cold_starts"].as_i64().unwrap() >= 1,
        "{echo_pool}"
    );
    assert!(echo_pool["instances"].is_array(), "{echo_pool}");
    assert!(stats["service_stats"]["cold_starts"].as_i64().unwrap() >= 1);
    assert!(stats["service_stats"]["queue_wait"]["p99_ms"].is_number());

    // A reactor export is called by name.
    check(
        &node,
        &["invoke", "counter", "--function", "increment"],
        Expect {
            stdout_contains: &["1"],
            ..SUCCEEDS
        },
    );
}

#[test]
fn async_and_streaming_invocations() {
    let node = RunningNode::start();

    let cases: &[(&[&str], Expect<'_>)] = &[
        (
            &["invoke", "sleep", "--input", "10", "--async"],
            Expect {
                stdout_contains: &[
                    "EXECUTION ID:",
                    "STATUS:",
                    "PENDING",
                    "STATUS ENDPOINT:",
                    "/v1/executions/",
                ],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "echo", "--input", "waited", "--async", "--wait"],
            Expect {
                stdout_is: Some("waited"),
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "fail", "--async", "--wait", "--max-retries", "1"],
            Expect {
                exit_code: 1,
                stderr_contains: &["error: FAILED EXIT_CODE"],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "ticker", "--input", "3", "--stream"],
            Expect {
                stdout_is: Some("tick 1\ntick 2\ntick 3\n"),
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "fail", "--stream"],
            Expect {
                exit_code: 1,
                stderr_contains: &["error: FAILED EXIT_CODE: "],
                ..SUCCEEDS
            },
        ),
        (
            &[
                "invoke",
                "sleep",
                "--input",
                "5000",
                "--stream",
                "--timeout",
                "50",
            ],
            Expect {
                exit_code: 1,
                stderr_contains: &["error: TIMEOUT TIMEOUT: "],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "echo", "--input", "x", "--wait"],
            Expect {
                exit_code: 2,
                stderr_contains: &["--async"],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "echo", "--input", "x", "--async", "--stream"],
            Expect {
                exit_code: 2,
                stderr_contains: &["cannot be used with"],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "echo", "--input", "x", "--max-retries", "-1"],
            Expect {
                exit_code: 2,
                ..SUCCEEDS
            },
        ),
        // `--quiet` prints only the id of an async acceptance, and refuses every other call.
        (
            &[
                "invoke",
                "sleep",
                "--input",
                "10",
                "--async",
                "-q",
                "--execution-id",
                "cli-quiet-1",
            ],
            Expect {
                stdout_is: Some("cli-quiet-1\n"),
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "echo", "--input", "x", "--quiet"],
            Expect {
                exit_code: 2,
                stdout_is: Some(""),
                stderr_contains: &["--async"],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "echo", "--input", "x", "--async", "--wait", "-q"],
            Expect {
                exit_code: 2,
                stderr_contains: &["cannot be used with"],
                ..SUCCEEDS
            },
        ),
        (
            &["invoke", "echo", "--input", "x", "--async", "-q", "--json"],
            Expect {
                exit_code: 2,
                stderr_contains: &["cannot be used with"],
                ..SUCCEEDS
            },
        ),
    ];
    for (arguments, expect) in cases {
        check(&node, arguments, *expect);
    }

    // The README's script: `id=$(spearlet invoke sleep --input 10 --async -q)`, then `spearlet
    // exec get "$id"` finds the execution the node generated the id for.
    let quiet = check(
        &node,
        &["invoke", "sleep", "--input", "10", "--async", "-q"],
        SUCCEEDS,
    );
    let quiet_stdout = String::from_utf8(quiet.stdout).unwrap();
    let generated_id = quiet_stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no single line: {quiet_stdout:?}"));
    assert!(
        !generated_id.is_empty() && !generated_id.contains(char::is_whitespace),
        "{quiet_stdout:?}"
    );
    check(
        &node,
        &["exec", "get", generated_id],
        Expect {
            stdout_contains: &[generated_id],
            ..SUCCEEDS
        },
    );

    // `--async --json` prints the whole acceptance; the execution then runs on its own.
    let arguments = [
        "invoke",
        "sleep",
        "--input",
        "10",
        "--async",
        "--json",
        "--execution-id",
        "cli-async-1",
        "--max-retries",
        "2",
    ];
    let accepted = check(&node, &arguments, SUCCEEDS);
    let accepted: serde_json::Value = serde_json::from_slice(&accepted.stdout).unwrap();
    assert_eq!(accepted["success"], true, "{accepted}");
    assert_eq!(accepted["execution_id"], "cli-async-1");
    assert_eq!(accepted["status_endpoint"], "/v1/executions/cli-async-1");
    assert_eq!(accepted["result"]["status"], "PENDING");
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let finished = loop {
        let status = check(&node, &["exec", "get", "cli-async-1", "--json"], SUCCEEDS);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        if status["result"]["status"] == "COMPLETED" {
            break status;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "cli-async-1 did not complete within 30 s: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(finished["result"]["output"]["data"], "slept 10 ms\n");
    assert_eq!(finished["result"]["metrics"]["attempt"], "1");

    // `--stream --json` prints one JSON object per stream message, the last one final.
    let streamed = check(
        &node,
        &["invoke", "ticker", "--input", "2", "--stream", "--json"],
        SUCCEEDS,
    );
    let messages: Vec<serde_json::Value> = String::from_utf8(streamed.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let chunks: Vec<&str> = messages
        .iter()
        .filter_map(|message| message["data"]["data"].as_str())
        .collect();
    assert_eq!(chunks.concat(), "tick 1\ntick 2\n", "{messages:?}");
    let last = messages.last().unwrap();
    assert_eq!(
        (&last["is_final"], &last["status"]),
        (&serde_json::json!(true), &serde_json::json!("COMPLETED"))
    );

    // `--stream` writes each chunk as it arrives: the first tick is on stdout while the
    // function is still ticking (5 ticks, 100 ms apart).
    let mut streaming = Command::new(SPEARLET)
        .arg("--addr")
        .arg(&node.address)
        .args(["invoke", "ticker", "--input", "5", "--stream"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut streamed_stdout = BufReader::new(streaming.stdout.take().unwrap());
    let mut first_tick = String::new();
    streamed_stdout.read_line(&mut first_tick).unwrap();
    assert_eq!(first_tick, "tick 1\n");
    assert!(
        streaming.try_wait().unwrap().is_none(),
        "the first chunk arrived only when the call had ended"
    );
    let mut remaining = String::new();
    std::io::Read::read_to_string(&mut streamed_stdout, &mut remaining).unwrap();
    assert_eq!(remaining, "tick 2\ntick 3\ntick 4\ntick 5\n");
    assert!(streaming.wait().unwrap().success());
}

#[test]
fn bench_in_async_mode_counts_acceptances() {
    let node = RunningNode::start();
    check(
        &node,
        &[
            "bench",
            "--mode",
            "async",
            "--task",
            "sleep",
            "--input-text",
            "5",
            "--requests",
            "100",
            "--concurrency",
            "4",
            "--warmup",
            "0",
            "--baseline=in-process",
        ],
        Expect {
            stdout_contains: &[
                "async mode",
                "input \"5\"",
                "baseline (tonic echo, in-process)",
                "spearlet (async)",
                "spearlet/baseline ratios",
            ],
            stderr_contains: &["note: async mode counts acceptances"],
            ..SUCCEEDS
        },
    );
    let bench = check(
        &node,
        &[
            "bench",
            "--mode",
            "async",
            "--requests",
            "40",
            "--warmup",
            "0",
            "--json",
        ],
        SUCCEEDS,
    );
    let bench: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    assert_eq!(bench["mode"], "async");
    assert_eq!(bench["spearlet"]["requests"], 40);
    assert_eq!(bench["spearlet"]["errors"], 0);
}

#[test]
fn bench_with_a_baseline_reports_ratios() {
    let node = RunningNode::start();
    check(
        &node,
        &[
            "bench",
            "--requests",
            "200",
            "--concurrency",
            "4",
            "--warmup",
            "0",
            "--baseline",
        ],
        Expect {
            stdout_contains: &[
                "sync mode",
                "baseline (tonic echo, process)",
                "spearlet (sync)",
                "spearlet/baseline ratios",
            ],
            ..SUCCEEDS
        },
    );
    let bench = check(
        &node,
        &[
            "bench",
            "--requests",
            "50",
            "--concurrency",
            "2",
            "--connections",
            "2",
            "--warmup",
            "0",
            "--json",
        ],
        SUCCEEDS,
    );
    let bench: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    assert_eq!(bench["spearlet"]["requests"], 50);
    assert_eq!(bench["spearlet"]["errors"], 0);
    assert!(bench["baseline"].is_null());
    assert_eq!(
        (&bench["priority"], &bench["force_new_instance"]),
        (&serde_json::Value::Null, &serde_json::json!(false))
    );
    // Cold starts on demand: the report's first line says so.
    check(
        &node,
        &[
            "bench",
            "--requests",
            "10",
            "--concurrency",
            "2",
            "--warmup",
            "0",
            "--priority",
            "high",
            "--force-new-instance",
        ],
        Expect {
            stdout_contains: &["priority high, a new instance per call", "spearlet (sync)"],
            ..SUCCEEDS
        },
    );
}

#[test]
fn a_config_file_with_an_unknown_key_exits_2_naming_the_key() {
    let directory = tempfile::tempdir().unwrap();
    let config_path = directory.path().join("spearlet.toml");
    std::fs::write(&config_path, "grpc_adr = \"127.0.0.1:0\"\n").unwrap();
    let output = Command::new(SPEARLET)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(directory.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("grpc_adr"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn the_client_sends_its_token_and_trusts_the_given_ca_over_tls() {
    let certificates = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_file = certificates.path().join("cert.pem");
    let key_file = certificates.path().join("key.pem");
    std::fs::write(&cert_file, generated.cert.pem()).unwrap();
    std::fs::write(&key_file, generated.signing_key.serialize_pem()).unwrap();
    let node = RunningNode::start_with(
        &[
            "--auth-tokens",
            "cli-secret-1,cli-secret-2",
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
        "https",
    );
    let ca = cert_file.to_str().unwrap();
    check(
        &node,
        &["--tls-ca", ca, "invoke", "echo", "--input", "no token"],
        Expect {
            exit_code: 1,
            stderr_contains: &["Unauthenticated"],
            ..SUCCEEDS
        },
    );
    check(
        &node,
        &[
            "--tls-ca",
            ca,
            "--token",
            "cli-secret-2",
            "invoke",
            "echo",
            "--input",
            "with token",
        ],
        Expect {
            stdout_is: Some("with token"),
            ..SUCCEEDS
        },
    );
    let output = Command::new(SPEARLET)
        .args(["--addr", &node.address, "--tls-ca", ca, "health"])
        .env("SPEARLET_TOKEN", "cli-secret-1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        !node.log().contains("cli-secret"),
        "the node logged a token"
    );
}

#[test]
fn serving_beyond_loopback_without_protection_exits_2_and_says_why() {
    let directory = tempfile::tempdir().unwrap();
    let output = Command::new(SPEARLET)
        .args([
            "serve",
            "--grpc-addr",
            "0.0.0.0:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(directory.path().join("data"))
        .env_remove("SPEARLET_CONFIG")
        .env_remove("SPEARLET_AUTH_TOKENS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("grpc_addr 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
}
