//! Lambda mode from outside: a real spearlet node runs this package's `lambda-echo` binary (built
//! on the official `lambda_runtime` crate) as warm workers and is called over gRPC; and a Python
//! function the same way under the `awslambdaric` Python client (required under CI; skipped,
//! saying so, elsewhere when it is not installed).

// Integration tests time real nodes, processes and guests: std's clock is the right one here,
// and nothing in them runs on a paused tokio clock.
#![allow(clippy::disallowed_types)]

#[path = "../../../crates/spearlet-server/tests/it/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use spearlet_proto as proto;
use support::*;
use tonic::Code;

const WORKER: &str = env!("CARGO_BIN_EXE_lambda-echo");

async fn node_allowing(directory: &Path) -> TestNode {
    let directory = directory.to_path_buf();
    start_node_with(move |config| config.artifacts.allowed_roots.push(directory)).await
}

async fn create_lambda_task(node: &mut TestNode, name: &str, metadata: &[(&str, &str)]) {
    let mut keys: Vec<(&str, &str)> = vec![
        ("spearlet.process.mode", "lambda"),
        ("spearlet.process.format", "exe"),
        ("spearlet.process.entrypoint", "lambda-echo"),
    ];
    keys.extend_from_slice(metadata);
    node.client
        .create_task(proto::CreateTaskRequest {
            task_name: name.into(),
            function_name: "echo.handler".into(),
            artifact_spec: Some(proto::ArtifactSpec {
                artifact_type: "process".into(),
                location: format!("file://{WORKER}"),
                metadata: keys
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn call(node: &mut TestNode, task: &str, event: &str) -> proto::InvokeFunctionResponse {
    node.client
        .invoke_function(invoke(task, event.as_bytes()))
        .await
        .unwrap()
        .into_inner()
}

fn answer(response: &proto::InvokeFunctionResponse) -> Value {
    serde_json::from_slice(&output(response)).unwrap_or_else(|error| {
        panic!("not JSON ({error}): {response:?}");
    })
}

#[tokio::test]
async fn one_warm_worker_serves_a_thousand_calls() {
    let worker_directory = Path::new(WORKER).parent().unwrap();
    let mut node = node_allowing(worker_directory).await;
    create_lambda_task(&mut node, "echo-lambda", &[]).await;
    let first = call(&mut node, "echo-lambda", r#"{"n": 0}"#).await;
    assert_eq!(
        status(&first),
        proto::ExecutionStatus::Completed,
        "{first:?}"
    );
    let first = answer(&first);
    assert_eq!(first["echo"]["n"], 0);
    assert_eq!(first["function_name"], "echo-lambda");
    assert_eq!(first["handler"], "echo.handler");
    assert!(
        first["invoked_function_arn"]
            .as_str()
            .unwrap()
            .ends_with(":function:echo-lambda")
    );
    let pid = first["pid"].clone();
    for n in 1..1000 {
        let response = call(&mut node, "echo-lambda", &format!(r#"{{"n": {n}}}"#)).await;
        let answer = answer(&response);
        assert_eq!(answer["pid"], pid, "call {n} went to another process");
        assert_eq!(answer["invocations"], n + 1);
        assert_eq!(answer["request_id"], response.execution_id.as_str());
    }

    // A warm worker serves one handler.
    let mut other = invoke("echo-lambda", b"{}");
    other.function_name = "other.handler".into();
    let error = node.client.invoke_function(other).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("echo.handler"), "{error:?}");
}

#[tokio::test]
async fn the_callers_trace_reaches_the_worker_as_an_xray_trace_id() {
    let worker_directory = Path::new(WORKER).parent().unwrap();
    let mut node = node_allowing(worker_directory).await;
    create_lambda_task(&mut node, "echo-lambda", &[]).await;
    let mut request = tonic::Request::new(invoke("echo-lambda", b"{}"));
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let traced = node
        .client
        .invoke_function(request)
        .await
        .unwrap()
        .into_inner();
    let trace_id = answer(&traced)["xray_trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace id: {traced:?}"))
        .to_owned();
    let parent = trace_id
        .strip_prefix("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=")
        .and_then(|rest| rest.strip_suffix(";Sampled=1"))
        .unwrap_or_else(|| panic!("not the caller's trace: {trace_id}"));
    assert_eq!(parent.len(), 16, "{trace_id}");
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "the execution has a span of its own"
    );

    // Without a traceparent the call still carries a trace id: a new root.
    let untraced = answer(&call(&mut node, "echo-lambda", "{}").await);
    let root = untraced["xray_trace_id"].as_str().unwrap();
    assert!(root.starts_with("Root=1-"), "{root}");
    assert!(!root.contains("4bf92f35"), "{root}");
}

#[tokio::test]
async fn errors_crashes_timeouts_and_init_failures_are_outcomes() {
    let worker_directory = Path::new(WORKER).parent().unwrap();
    let mut node = node_allowing(worker_directory).await;
    create_lambda_task(&mut node, "echo-lambda", &[("spearlet.timeout_ms", "1500")]).await;

    let failed = call(&mut node, "echo-lambda", r#"{"fail": "no such order"}"#).await;
    assert_eq!(status(&failed), proto::ExecutionStatus::Failed);
    let failed_result = result(&failed);
    assert_eq!(failed_result.error_code, "FUNCTION_ERROR");
    assert_eq!(failed_result.error_message, "no such order");
    assert_eq!(failed_result.metrics["error_type"], "EchoFailure");

    // The worker dies mid-call: that call fails, the next one gets a fresh worker.
    let before = answer(&call(&mut node, "echo-lambda", "{}").await)["pid"].clone();
    let crashed = call(&mut node, "echo-lambda", r#"{"sleep_ms": 100, "exit": 9}"#).await;
    assert_eq!(status(&crashed), proto::ExecutionStatus::Failed);
    assert_eq!(result(&crashed).error_code, "WORKER_CRASHED", "{crashed:?}");
    let after = answer(&call(&mut node, "echo-lambda", "{}").await);
    assert_ne!(after["pid"], before);
    assert_eq!(after["invocations"], 1);

    // Killed from outside mid-call (kill -9): the same; with a retry left, the call runs again
    // on a fresh worker and completes.
    for max_retries in [0, 1] {
        let victim = answer(&call(&mut node, "echo-lambda", "{}").await)["pid"]
            .as_u64()
            .unwrap();
        let execution_id = format!("killed-mid-call-{max_retries}");
        let mut request = with_execution_id(
            invoke("echo-lambda", br#"{"sleep_ms": 500}"#),
            &execution_id,
        );
        request
            .context
            .get_or_insert_with(Default::default)
            .max_retries = max_retries;
        let mut client = node.client.clone();
        let pending =
            tokio::spawn(
                async move { client.invoke_function(request).await.unwrap().into_inner() },
            );
        // The kill lands once the node runs the call, not after a guessed delay.
        wait_until_running(&node.client, &execution_id).await;
        let killed = std::process::Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let killed_call = pending.await.unwrap();
        if max_retries == 0 {
            assert_eq!(
                result(&killed_call).error_code,
                "WORKER_CRASHED",
                "{killed_call:?}"
            );
        } else {
            assert_eq!(
                status(&killed_call),
                proto::ExecutionStatus::Completed,
                "{killed_call:?}"
            );
            assert_eq!(result(&killed_call).metrics["attempt"], "2");
            assert_ne!(answer(&killed_call)["pid"].as_u64().unwrap(), victim);
        }
    }
    let after = answer(&call(&mut node, "echo-lambda", "{}").await);

    // Past its deadline the call ends TIMEOUT and the stuck worker is replaced.
    let started = Instant::now();
    let slow = call(&mut node, "echo-lambda", r#"{"sleep_ms": 60000}"#).await;
    assert_eq!(status(&slow), proto::ExecutionStatus::Timeout);
    assert!(started.elapsed() < Duration::from_secs(10));
    let fresh = answer(&call(&mut node, "echo-lambda", "{}").await);
    assert_ne!(fresh["pid"], after["pid"]);

    // A worker that reports an init error fails the call waiting for it.
    create_lambda_task(
        &mut node,
        "broken-init",
        &[("spearlet.env.LAMBDA_ECHO_FAIL_INIT", "missing config")],
    )
    .await;
    let broken = call(&mut node, "broken-init", "{}").await;
    assert_eq!(status(&broken), proto::ExecutionStatus::Failed);
    assert_eq!(result(&broken).error_code, "INIT_FAILED");
    assert!(
        result(&broken).error_message.contains("missing config"),
        "{broken:?}"
    );
}

/// The Python runtime interface client, when installed: `AWSLAMBDARIC_PYTHON` names a Python
/// that can `import awslambdaric` (`.ci/run` installs one into a virtualenv).
#[tokio::test]
async fn a_python_function_runs_under_awslambdaric() {
    let Ok(python) = std::env::var("AWSLAMBDARIC_PYTHON") else {
        return missing_prerequisite(
            "a Python with awslambdaric (AWSLAMBDARIC_PYTHON)",
            "set AWSLAMBDARIC_PYTHON to a python3 that can `import awslambdaric`; .ci/run makes \
             a virtualenv with awslambdaric==4.2.2",
        );
    };
    let artifact_directory = tempfile::tempdir().unwrap();
    let bootstrap = artifact_directory.path().join("bootstrap");
    std::fs::write(
        &bootstrap,
        format!(
            "#!/bin/sh\ncd \"$LAMBDA_TASK_ROOT\"\nexec {python} -m awslambdaric \"$_HANDLER\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        artifact_directory.path().join("handler.py"),
        "import os\n\ndef handler(event, context):\n    return {\"echo\": event, \"pid\": os.getpid(), \"request_id\": context.aws_request_id}\n",
    )
    .unwrap();
    let archive = tar_gz_of(artifact_directory.path(), &["bootstrap", "handler.py"]);
    let mut node = start_node().await;
    node.client
        .create_task(proto::CreateTaskRequest {
            task_name: "py-echo".into(),
            function_name: "handler.handler".into(),
            artifact_spec: Some(proto::ArtifactSpec {
                artifact_type: "process".into(),
                location: data_url(&archive),
                metadata: [("spearlet.process.mode".to_string(), "lambda".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = call(&mut node, "py-echo", r#"{"hello": "python"}"#).await;
    assert_eq!(
        status(&first),
        proto::ExecutionStatus::Completed,
        "{first:?}"
    );
    let first = answer(&first);
    assert_eq!(first["echo"]["hello"], "python");
    let second = call(&mut node, "py-echo", "[1, 2]").await;
    let second_answer = answer(&second);
    assert_eq!(second_answer["pid"], first["pid"], "the same warm worker");
    assert_eq!(second_answer["request_id"], second.execution_id.as_str());
}

/// A tar.gz of `names` inside `directory`, with their modes, made by the system `tar`.
fn tar_gz_of(directory: &Path, names: &[&str]) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        directory.join(names[0]),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let archive = directory.join("artifact.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(directory)
        .args(names)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(archive).unwrap()
}
