//! `lambda-echo`: a native AWS Lambda function, built on the official `lambda_runtime` crate, that
//! tests point spearlet's Lambda Runtime API at.
//!
//! Started as a warm worker (spearlet mode `lambda`, artifact type `process`), it reads
//! `AWS_LAMBDA_RUNTIME_API` and loops on `GET /2018-06-01/runtime/invocation/next`, answering
//! each event with `POST …/invocation/<id>/response` or `…/error`. Everything it does is visible
//! from outside, so a test can tell warm reuse, header and environment passing, failures and
//! timeouts apart:
//!
//! - The event is any JSON value. If it is an object, these keys are honoured, in this order:
//!   - `"sleep_ms": N` — sleep N milliseconds first (to test deadlines and concurrency).
//!   - `"exit": N` — exit the process with code N without answering (to test worker crashes).
//!   - `"fail": "message"` — answer with an error: `/error` carries
//!     `{"errorType": "EchoFailure", "errorMessage": "message"}` (a non-string value is sent as
//!     its JSON text).
//! - Otherwise the answer is
//!   `{"echo": <event>, "pid": <process id>, "invocations": <events this process has handled,
//!   this one included>, "request_id": <Lambda-Runtime-Aws-Request-Id>, "deadline_ms":
//!   <Lambda-Runtime-Deadline-Ms>, "invoked_function_arn": <Lambda-Runtime-Invoked-Function-Arn>,
//!   "xray_trace_id": <Lambda-Runtime-Trace-Id or null>, "function_name":
//!   <$AWS_LAMBDA_FUNCTION_NAME or "">, "handler": <$_HANDLER or "">}`.
//!   Every handled event counts, failing ones too.
//! - If `LAMBDA_ECHO_FAIL_INIT` is set, the function never polls for events: it posts
//!   `/2018-06-01/runtime/init/error` (`errorType` `Runtime.InitError`, `errorMessage` the
//!   variable's value) and exits with code 1.
//!
//! `lambda_runtime` panics at start unless `AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`,
//! `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (an integer) and `AWS_LAMBDA_FUNCTION_VERSION` are set, and
//! on any `/next` response without `Lambda-Runtime-Aws-Request-Id` and
//! `Lambda-Runtime-Deadline-Ms` headers.

use std::process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use lambda_runtime_api_client::body::Body;
use serde_json::{Value, json};

/// Events handled by this process so far; shows that one warm worker served many calls.
static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

/// One thread is plenty: the runtime handles one event at a time, and a light worker keeps the
/// cost of many warm instances down.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    if let Some(message) = std::env::var_os("LAMBDA_ECHO_FAIL_INIT") {
        report_init_error(&message.to_string_lossy()).await;
        process::exit(1);
    }
    lambda_runtime::run(service_fn(handle)).await
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let invocations = INVOCATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    let LambdaEvent { payload, context } = event;

    if let Some(sleep_ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    }
    if let Some(code) = payload.get("exit").and_then(Value::as_i64) {
        process::exit(i32::try_from(code).unwrap_or(1));
    }
    if let Some(fail) = payload.get("fail") {
        let error_message = match fail {
            Value::String(message) => message.clone(),
            other => other.to_string(),
        };
        return Err(Diagnostic {
            error_type: "EchoFailure".to_owned(),
            error_message,
        });
    }

    Ok(json!({
        "echo": payload,
        "pid": process::id(),
        "invocations": invocations,
        "request_id": context.request_id,
        "deadline_ms": context.deadline,
        "invoked_function_arn": context.invoked_function_arn,
        "xray_trace_id": context.xray_trace_id,
        "function_name": env_or_empty("AWS_LAMBDA_FUNCTION_NAME"),
        "handler": env_or_empty("_HANDLER"),
    }))
}

fn env_or_empty(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Posts `/runtime/init/error` the way `lambda_runtime` does for its own init failures (it has no
/// public API for a function's), so the server sees a proper init error rather than only an exit.
async fn report_init_error(error_message: &str) {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        eprintln!("lambda-echo: init failed ({error_message}); AWS_LAMBDA_RUNTIME_API is not set");
        return;
    }
    let body =
        json!({ "errorType": "Runtime.InitError", "errorMessage": error_message }).to_string();
    let request = lambda_runtime_api_client::build_request()
        .method("POST")
        .uri("/2018-06-01/runtime/init/error")
        .header("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")
        .header("Content-Type", "application/json")
        .body(Body::from(body));
    let request = match request {
        Ok(request) => request,
        Err(err) => {
            eprintln!("lambda-echo: cannot build the init error request: {err}");
            return;
        }
    };
    let client = lambda_runtime_api_client::PooledClient::builder().build();
    match client.call(request).await {
        Ok(response) => eprintln!(
            "lambda-echo: init failed ({error_message}); /init/error answered {}",
            response.status()
        ),
        Err(err) => {
            eprintln!("lambda-echo: init failed ({error_message}); /init/error failed: {err}")
        }
    }
}
