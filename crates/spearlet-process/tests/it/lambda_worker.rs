//! A warm Lambda worker driven through the runtime boundary (`FunctionCall` in, `CallReport`
//! out) with a real worker process: a small Python program speaking the Runtime API with the
//! standard library only.
//!
//! The log drain is the subject: a worker that writes to stdout and stderr right before it
//! answers must find both lines in that call's logs, call after call.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spearlet_core::{Outcome, ProcessMode, ProcessSettings};
use spearlet_process::lambda_worker::LambdaWorker;
use spearlet_process::sandbox::ProcessLimits;
use spearlet_process::task::ProcessTask;
use spearlet_runtime::{CallLimits, FunctionCall, TraceContext};
use tokio_util::sync::CancellationToken;

/// Answers every invocation with its event, after writing a long line of filler to stderr and
/// then one line to stdout and one to stderr naming the request (unbuffered `os.write`, so
/// everything is in the pipes before the answer leaves).
const WORKER: &str = r#"
import http.client, os
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
connection = http.client.HTTPConnection(host, int(port))
while True:
    connection.request("GET", "/2018-06-01/runtime/invocation/next")
    invocation = connection.getresponse()
    event = invocation.read()
    request_id = invocation.getheader("Lambda-Runtime-Aws-Request-Id")
    os.write(2, b"x" * 48000 + b"\n")
    os.write(1, ("stdout before answering " + request_id + "\n").encode())
    os.write(2, ("stderr before answering " + request_id + "\n").encode())
    connection.request(
        "POST",
        "/2018-06-01/runtime/invocation/" + request_id + "/response",
        body=event,
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    connection.getresponse().read()
"#;

fn python3() -> PathBuf {
    ["/usr/bin/python3", "/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("python3 is needed by this test (.ci/run checks it is installed)")
}

fn worker_task(directory: &std::path::Path) -> ProcessTask {
    let program = directory.join("worker");
    std::fs::write(&program, format!("#!{}\n{WORKER}", python3().display())).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let workdirs = directory.join("workdirs");
    std::fs::create_dir_all(&workdirs).unwrap();
    ProcessTask {
        root: directory.to_path_buf(),
        entrypoint: program,
        settings: ProcessSettings {
            mode: ProcessMode::Lambda,
            init_timeout_ms: 30_000,
            ..ProcessSettings::default()
        },
        limits: ProcessLimits::default(),
        environment: BTreeMap::new(),
        handler: "worker".into(),
        workdir_base: workdirs,
        task_name: "python-worker".into(),
        version: "$LATEST".into(),
        function_arn: "arn:aws:lambda:spearlet:000000000000:function:python-worker".into(),
        memory_limit_mb: 512,
    }
}

fn call(execution_id: &str, event: &str) -> FunctionCall {
    FunctionCall {
        execution_id: execution_id.into(),
        task_id: "task-python-worker".into(),
        task_name: "python-worker".into(),
        function_name: "worker".into(),
        session_id: String::new(),
        input: Bytes::from(event.to_owned()),
        caller_environment: BTreeMap::new(),
        caller_headers: BTreeMap::new(),
        trace: TraceContext::new_root(),
        limits: CallLimits {
            memory_limit_bytes: 512 << 20,
            max_output_bytes: 1 << 20,
            max_log_bytes: 1 << 20,
        },
        deadline: tokio::time::Instant::now() + Duration::from_secs(30),
        cancellation: CancellationToken::new(),
        output_chunks: None,
        http_response_head: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_written_just_before_the_answer_are_in_that_calls_logs() {
    let directory = tempfile::tempdir().unwrap();
    let task = Arc::new(worker_task(directory.path()));
    let worker = LambdaWorker::start(task, 1 << 20, 1 << 20)
        .await
        .unwrap_or_else(|error| panic!("the worker did not start: {}", error.message));
    for number in 0..200 {
        let execution_id = format!("exec-{number:04}");
        let report = worker
            .invoke(call(&execution_id, &format!("{{\"n\":{number}}}")))
            .await;
        assert_eq!(report.outcome, Outcome::Completed, "call {number}");
        assert_eq!(&report.output[..], format!("{{\"n\":{number}}}").as_bytes());
        assert_eq!(
            report.output_content_type.as_deref(),
            Some("text/plain; charset=utf-8"),
            "the worker's Content-Type travels with its answer"
        );
        assert!(report.instance_still_usable);
        let logs = String::from_utf8_lossy(&report.logs);
        for stream in ["stdout", "stderr"] {
            let line = format!("{stream} before answering {execution_id}\n");
            let tail = &logs[logs.len().saturating_sub(200)..];
            assert!(
                logs.contains(&line),
                "call {number}: {line:?} is missing from its logs (which end {tail:?})"
            );
        }
        assert_eq!(
            report.logs.len(),
            48001 + 2 * format!("stdout before answering {execution_id}\n").len(),
            "call {number} holds all of its own output and nothing else"
        );
    }
}
