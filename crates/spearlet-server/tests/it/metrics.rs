//! The Prometheus metrics, checked from outside: calls on a real node move the counters by
//! exactly their number, cold starts are counted once per instance, and `promtool check metrics`
//! accepts the text (promtool is required under CI; elsewhere its check is skipped, saying so).

use crate::support;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use spearlet_proto as proto;
use support::*;

/// Renders the node's metrics.
fn render(node: &TestNode) -> String {
    spearlet_server::exposition::render_prometheus(&node.server.node)
}

/// Samples by `name{labels}` exactly as written, e.g. `faas_timeouts_total{task="a",function=""}`.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            (series.to_owned(), value.parse().expect("a sample value"))
        })
        .collect()
}

/// The value of one series. A series that is absent fails the test with its name: a counter
/// the test expects at zero must still be exported.
fn value(text: &str, series: &str) -> f64 {
    samples(text)
        .get(series)
        .copied()
        .unwrap_or_else(|| panic!("series {series} is not exported\n{text}"))
}

/// Fails unless the series is absent, e.g. a labelled counter before its first event.
fn assert_absent(text: &str, series: &str) {
    assert!(
        !samples(text).contains_key(series),
        "series {series} is exported but should not be yet\n{text}"
    );
}

/// Runs `promtool check metrics` on the text (`PROMTOOL`, else `promtool` from PATH). Without
/// promtool the check fails under CI and is skipped elsewhere, saying so.
fn check_with_promtool(text: &str) {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            return missing_prerequisite(
                "promtool",
                &format!(
                    "cannot run {promtool:?}: {error}; install Debian's prometheus package or \
                     set PROMTOOL to its path"
                ),
            );
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {} {complaints}\n{text}",
        output.status
    );
}

async fn call(
    node: &mut TestNode,
    request: proto::InvokeFunctionRequest,
) -> proto::ExecutionResult {
    let response = node
        .client
        .invoke_function(request)
        .await
        .unwrap()
        .into_inner();
    result(&response).clone()
}

#[tokio::test]
async fn counters_move_with_calls_and_promtool_accepts_the_text() {
    let mut node = start_node().await;
    let before = render(&node);
    let echo_completed = r#"faas_invocations_total{task="echo",function="",status="completed"}"#;
    // A task's series appear with its first call.
    assert_absent(&before, echo_completed);

    let mut instances_started = 0;
    for round in 0..5 {
        let result = call(&mut node, invoke("echo", format!("{round}").as_bytes())).await;
        assert_eq!(result.status, proto::ExecutionStatus::Completed as i32);
        instances_started += usize::from(result.metrics.contains_key("instance_start_ms"));
    }
    for _ in 0..2 {
        let result = call(&mut node, invoke("fail", b"")).await;
        assert_eq!(result.error_code, "EXIT_CODE");
    }
    let result = call(&mut node, with_timeout(invoke("sleep", b"10000"), 100)).await;
    assert_eq!(result.status, proto::ExecutionStatus::Timeout as i32);
    node.server.node.manager.store().flush().await.unwrap();

    let text = render(&node);
    let expected = [
        (echo_completed, 5.0),
        (
            r#"faas_invocations_total{task="echo",function="",status="failed"}"#,
            0.0,
        ),
        (
            r#"faas_invoke_duration_seconds_count{task="echo",function=""}"#,
            5.0,
        ),
        (
            r#"faas_invoke_duration_seconds_bucket{task="echo",function="",le="+Inf"}"#,
            5.0,
        ),
        (
            r#"faas_coldstarts_total{task="echo",function=""}"#,
            instances_started as f64,
        ),
        (
            r#"faas_init_duration_seconds_count{task="echo"}"#,
            instances_started as f64,
        ),
        (
            r#"faas_invocations_total{task="fail",function="",status="failed"}"#,
            2.0,
        ),
        (
            r#"faas_errors_total{task="fail",function="",error_code="EXIT_CODE"}"#,
            2.0,
        ),
        (r#"faas_timeouts_total{task="fail",function=""}"#, 0.0),
        (
            r#"faas_invocations_total{task="sleep",function="",status="timeout"}"#,
            1.0,
        ),
        (r#"faas_timeouts_total{task="sleep",function=""}"#, 1.0),
        // Every call above was granted an instance.
        ("spearlet_queue_wait_seconds_count", 8.0),
        ("spearlet_queue_length", 0.0),
        ("spearlet_executions_running", 0.0),
        ("spearlet_async_pending", 0.0),
    ];
    for (series, wanted) in expected {
        assert_eq!(value(&text, series), wanted, "{series}\n{text}");
    }
    // A timeout is not an error: no error series exists for it, not even at zero.
    assert_absent(
        &text,
        r#"faas_errors_total{task="sleep",function="",error_code="TIMEOUT"}"#,
    );
    assert!(
        instances_started >= 1,
        "the first echo call starts its instance"
    );
    let samples = samples(&text);
    for state in [
        "creating",
        "ready",
        "running",
        "draining",
        "terminated",
        "failed",
    ] {
        let series = format!(r#"spearlet_instances{{task="echo",state="{state}"}}"#);
        assert!(samples.contains_key(&series), "{series}\n{text}");
    }
    // The examples were read from their files into the cache when the node started.
    assert!(value(&text, "spearlet_artifact_cache_misses_total") >= 1.0);
    assert!(value(&text, "spearlet_artifact_cache_bytes_total") > 0.0);
    // The flush committed at least the batch holding the terminal records.
    assert!(value(&text, "spearlet_store_write_duration_seconds_count") >= 1.0);
    assert_eq!(
        value(&text, "spearlet_store_write_duration_seconds_count"),
        value(&text, "spearlet_store_batch_size_count")
    );
    check_with_promtool(&text);
}

#[tokio::test]
async fn a_reuse_task_counts_one_cold_start_per_instance() {
    let mut node = start_node().await;
    node.client
        .create_task(proto::CreateTaskRequest {
            function_name: String::new(),
            task_name: "counter-reuse".into(),
            task_description: String::new(),
            artifact_spec: Some(wasm_artifact(
                example("counter"),
                &[
                    ("spearlet.isolation", "reuse"),
                    ("spearlet.pool.max_instances", "2"),
                ],
            )),
        })
        .await
        .unwrap();
    let mut increment = invoke("counter-reuse", b"");
    increment.function_name = "increment".into();
    for _ in 0..4 {
        let result = call(&mut node, increment.clone()).await;
        assert_eq!(result.status, proto::ExecutionStatus::Completed as i32);
    }
    let coldstarts = r#"faas_coldstarts_total{task="counter-reuse",function="increment"}"#;
    let init_count = r#"faas_init_duration_seconds_count{task="counter-reuse"}"#;
    let completed =
        r#"faas_invocations_total{task="counter-reuse",function="increment",status="completed"}"#;
    let text = render(&node);
    assert_eq!(value(&text, completed), 4.0, "{text}");
    assert_eq!(
        value(&text, coldstarts),
        1.0,
        "one instance served 4 calls\n{text}"
    );
    assert_eq!(value(&text, init_count), 1.0, "{text}");

    // A call on a fresh instance is the second instance started: one more cold start.
    let mut fresh = increment.clone();
    fresh.force_new_instance = true;
    let result = call(&mut node, fresh).await;
    assert_eq!(result.metrics["cold_start"], "true");
    let text = render(&node);
    assert_eq!(value(&text, completed), 5.0, "{text}");
    assert_eq!(value(&text, coldstarts), 2.0, "{text}");
    assert_eq!(value(&text, init_count), 2.0, "{text}");
    check_with_promtool(&text);
}
