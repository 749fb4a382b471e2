//! WebAssembly components (WASI 0.2) against a real node: command components with the module
//! ABI and its limits, `wasi:http` handlers over the gateway's `/v1/tasks/{name}/http/` route,
//! over a mapped host name and over InvokeFunction, outbound HTTP allowed and denied, and the
//! refusals at registration. The guests are the Rust examples built for `wasm32-wasip2`
//! (`examples/wasm/p2/`).

use crate::support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use spearlet_proto as proto;
use support::{
    example, invoke, new_task, output, result, start_node, start_node_with, status, status_of,
    wait_until_running, wasm_artifact, with_execution_id, with_timeout,
};

const SPIN: &[u8] = include_bytes!("../../../../examples/wasm/p2/spin.wasm");
const SLEEP: &[u8] = include_bytes!("../../../../examples/wasm/p2/sleep.wasm");
const MEMHOG: &[u8] = include_bytes!("../../../../examples/wasm/p2/memhog.wasm");
const FAIL: &[u8] = include_bytes!("../../../../examples/wasm/p2/fail.wasm");
const TICKER: &[u8] = include_bytes!("../../../../examples/wasm/p2/ticker.wasm");

fn base(node: &support::TestNode) -> String {
    format!("http://{}", node.server.http_addr)
}

async fn register(
    node: &mut support::TestNode,
    name: &str,
    wasm: &[u8],
    metadata: &[(&str, &str)],
) -> Result<proto::InvokeFunctionResponse, tonic::Status> {
    let mut request = new_task(name, wasm_artifact(wasm, metadata), b"");
    request.execution_mode = proto::ExecutionMode::Async as i32;
    node.client
        .invoke_function(request)
        .await
        .map(tonic::Response::into_inner)
}

/// An InvokeFunction of an HTTP handler task: method and path in the invocation metadata.
fn http_invoke(task: &str, method: &str, path: &str, body: &[u8]) -> proto::InvokeFunctionRequest {
    let mut request = invoke(task, body);
    request
        .invocation_metadata
        .insert("http.method".into(), method.into());
    request
        .invocation_metadata
        .insert("http.path".into(), path.into());
    request
}

async fn json(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

#[tokio::test]
async fn a_command_component_echoes_stdin_and_reports_exit_codes() {
    let mut node = start_node().await;
    // The bundled example: the echo guest built for wasm32-wasip2.
    let echoed = node
        .client
        .invoke_function(invoke("echo-component", b"hello, component"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&echoed), proto::ExecutionStatus::Completed);
    assert_eq!(output(&echoed), b"hello, component");
    assert!(result(&echoed).memory_used_bytes > 0);

    register(&mut node, "fail-p2", FAIL, &[]).await.unwrap();
    let failed = node
        .client
        .invoke_function(invoke("fail-p2", b""))
        .await
        .unwrap()
        .into_inner();
    let failed_result = result(&failed);
    assert_eq!(status(&failed), proto::ExecutionStatus::Failed);
    assert_eq!(failed_result.error_code, "EXIT_CODE");
    // Rust's std (1.95) lowers exit(3) to wasi:cli/exit `exit(err)`, which carries failure but
    // no code: WASI 0.2 says that is code 1. (`exit-with-code(n)` keeps n; no guest here uses it.)
    assert!(
        failed_result.error_message.contains("exited with code 1"),
        "{failed_result:?}"
    );
    let record = status_of(&mut node, &failed.execution_id).await;
    assert!(
        record.logs.concat().contains("exiting with code 3"),
        "{record:?}"
    );

    // A command has one entry point: other function names are refused, naming the field.
    let mut wrong_function = invoke("echo-component", b"");
    wrong_function.function_name = "handle".into();
    let refused = node
        .client
        .invoke_function(wrong_function)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("function_name"), "{refused:?}");
}

#[tokio::test]
async fn a_busy_component_times_out_and_a_sleeping_one_is_cancelled() {
    let mut node = start_node().await;
    register(&mut node, "spin-p2", SPIN, &[]).await.unwrap();
    register(&mut node, "sleep-p2", SLEEP, &[]).await.unwrap();

    // No input: spins forever without host calls; the epoch interrupts it.
    let started = Instant::now();
    let timed_out = node
        .client
        .invoke_function(with_timeout(invoke("spin-p2", b""), 300))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&timed_out), proto::ExecutionStatus::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Sleeping an hour in a host call (monotonic-clock subscribe + poll): cancel lands.
    let mut client = node.client.clone();
    let sleeping = tokio::spawn(async move {
        client
            .invoke_function(with_execution_id(
                invoke("sleep-p2", b""),
                "sleeping-component",
            ))
            .await
            .map(tonic::Response::into_inner)
    });
    wait_until_running(&node.client, "sleeping-component").await;
    let cancel_started = Instant::now();
    node.client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: "sleeping-component".into(),
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let cancelled = sleeping.await.unwrap().unwrap();
    assert_eq!(status(&cancelled), proto::ExecutionStatus::Cancelled);
    assert!(cancel_started.elapsed() < Duration::from_secs(5));

    // The node is still serving.
    let echoed = node
        .client
        .invoke_function(invoke("echo-component", b"still up"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&echoed), b"still up");
}

#[tokio::test]
async fn a_component_past_its_memory_limit_fails_memory_limit() {
    let mut node = start_node().await;
    register(
        &mut node,
        "memhog-p2",
        MEMHOG,
        &[("spearlet.memory_limit_mb", "32")],
    )
    .await
    .unwrap();
    let within = node
        .client
        .invoke_function(invoke("memhog-p2", b"8"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(&within),
        proto::ExecutionStatus::Completed,
        "{within:?}"
    );
    let beyond = node
        .client
        .invoke_function(invoke("memhog-p2", b"64"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&beyond), proto::ExecutionStatus::Failed);
    assert_eq!(result(&beyond).error_code, "MEMORY_LIMIT", "{beyond:?}");
}

#[tokio::test]
async fn a_command_components_stdout_streams_chunk_by_chunk() {
    let mut node = start_node().await;
    register(&mut node, "ticker-p2", TICKER, &[]).await.unwrap();
    let mut request = invoke("ticker-p2", b"3");
    request.execution_mode = proto::ExecutionMode::Stream as i32;
    let mut messages = node
        .client
        .stream_function(request)
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    let mut final_status = None;
    while let Some(message) = messages.message().await.unwrap() {
        if message.is_final {
            final_status = Some(message.status);
        } else if !message.data.is_empty() {
            chunks.push(String::from_utf8(message.data).unwrap());
        }
    }
    assert_eq!(final_status, Some(proto::ExecutionStatus::Completed as i32));
    assert_eq!(chunks.concat(), "tick 1\ntick 2\ntick 3\n");
    assert!(chunks.len() >= 3, "{chunks:?}");
}

#[tokio::test]
async fn an_http_handler_answers_through_the_gateway() {
    let node = start_node().await;
    let base = base(&node);
    let http = reqwest::Client::new();

    let hello = http
        .get(format!("{base}/v1/tasks/http-echo/http/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), StatusCode::OK);
    assert_eq!(hello.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(hello.headers()["x-spearlet-example"], "http-echo");
    assert!(
        hello.headers()["x-spear-execution-id"]
            .to_str()
            .unwrap()
            .starts_with("exec-")
    );
    assert_eq!(
        hello.text().await.unwrap(),
        "Hello from a wasi:http component!\n"
    );

    // POST: the body streams back, with the path and query the handler saw.
    let body = "x".repeat(200_000);
    let echoed = http
        .post(format!("{base}/v1/tasks/http-echo/http/echo?a=1&b=two"))
        .header("content-type", "text/csv")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), StatusCode::OK);
    assert_eq!(echoed.headers()["content-type"], "text/csv");
    assert_eq!(echoed.headers()["x-echo-method"], "POST");
    assert_eq!(echoed.headers()["x-echo-path"], "/echo?a=1&b=two");
    assert_eq!(echoed.text().await.unwrap(), body);

    // Request headers reach the handler.
    let headers = http
        .get(format!("{base}/v1/tasks/http-echo/http/headers"))
        .header("x-custom", "forty-two")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(headers.contains("x-custom: forty-two\n"), "{headers}");

    // A 5xx the handler chose is a completed execution, passed through as it is.
    let unavailable = http
        .get(format!("{base}/v1/tasks/http-echo/http/status/503"))
        .send()
        .await
        .unwrap();
    assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    let execution_id = unavailable.headers()["x-spear-execution-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(unavailable.text().await.unwrap(), "status 503\n");
    let record = json(
        http.get(format!("{base}/v1/executions/{execution_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(record["result"]["status"], "EXECUTION_STATUS_COMPLETED");
    assert_eq!(record["result"]["metrics"]["http.status"], "503");

    // No response set, and a trap: 502 with the JSON error; the node stays up.
    let no_response = http
        .get(format!("{base}/v1/tasks/http-echo/http/no-response"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_response.status(), StatusCode::BAD_GATEWAY);
    let no_response = json(no_response).await;
    assert_eq!(
        no_response["error_code"], "HTTP_NO_RESPONSE",
        "{no_response}"
    );
    assert_eq!(no_response["status"], "FAILED");
    let trapped = http
        .get(format!("{base}/v1/tasks/http-echo/http/trap"))
        .send()
        .await
        .unwrap();
    assert_eq!(trapped.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json(trapped).await["error_code"], "TRAP");

    // Not found in the handler is the handler's 404; an unknown task is the node's.
    let missing_route = http
        .get(format!("{base}/v1/tasks/http-echo/http/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_route.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing_route.text().await.unwrap(), "not found: /nowhere\n");
    let missing_task = http
        .get(format!("{base}/v1/tasks/no-such-task/http/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_task.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(missing_task).await["code"], "NOT_FOUND");

    // A task that is not an HTTP handler is refused with a pointer to /invoke.
    let not_a_handler = http
        .get(format!("{base}/v1/tasks/echo/http/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_handler.status(), StatusCode::PRECONDITION_FAILED);
    let not_a_handler = json(not_a_handler).await;
    assert_eq!(not_a_handler["code"], "FAILED_PRECONDITION");
    assert!(
        not_a_handler["message"]
            .as_str()
            .unwrap()
            .contains("/v1/tasks/echo/invoke")
    );
}

#[tokio::test]
async fn an_http_handler_answers_invoke_function_with_its_status_and_headers_as_metrics() {
    let mut node = start_node().await;
    let hello = node
        .client
        .invoke_function(http_invoke("http-echo", "GET", "/hello", b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&hello), proto::ExecutionStatus::Completed);
    assert_eq!(output(&hello), b"Hello from a wasi:http component!\n");
    let metrics = &result(&hello).metrics;
    assert_eq!(metrics["http.status"], "200");
    assert_eq!(
        metrics["http.header.content-type"],
        "text/plain; charset=utf-8"
    );

    // Defaults: POST and /; context.headers are the request headers.
    let mut echo = invoke("http-echo", b"posted body");
    echo.invocation_metadata
        .insert("http.path".into(), "/echo".into());
    echo.context.get_or_insert_with(Default::default).headers =
        [("content-type".to_owned(), "text/plain".to_owned())].into();
    let echoed = node
        .client
        .invoke_function(echo)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&echoed), b"posted body");
    assert_eq!(result(&echoed).metrics["http.header.x-echo-method"], "POST");
    assert_eq!(
        result(&echoed).metrics["http.header.content-type"],
        "text/plain"
    );

    // A malformed method or path is refused naming the metadata key.
    for (method, path, key) in [
        ("GE T", "/", "http.method"),
        ("GET", "no-slash", "http.path"),
    ] {
        let refused = node
            .client
            .invoke_function(http_invoke("http-echo", method, path, b""))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains(key), "{refused:?}");
    }
}

#[tokio::test]
async fn a_hundred_concurrent_http_requests_all_succeed_and_are_recorded() {
    let node = start_node().await;
    let base = base(&node);
    let http = reqwest::Client::new();
    let requests = (0..100).map(|index| {
        let http = http.clone();
        let url = format!("{base}/v1/tasks/http-echo/http/echo");
        async move {
            let response = http
                .post(url)
                .body(format!("request {index}"))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let execution_id = response.headers()["x-spear-execution-id"]
                .to_str()
                .unwrap()
                .to_owned();
            (status, execution_id, response.text().await.unwrap(), index)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let mut execution_ids = std::collections::BTreeSet::new();
    for (status, execution_id, body, index) in answers {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("request {index}"));
        execution_ids.insert(execution_id);
    }
    assert_eq!(execution_ids.len(), 100);
    for execution_id in execution_ids {
        let record = json(
            http.get(format!("{base}/v1/executions/{execution_id}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(record["result"]["status"], "EXECUTION_STATUS_COMPLETED");
    }
}

/// A local HTTP server for outbound requests: answers every GET with `upstream says hi`.
async fn start_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = axum::Router::new().fallback(|| async { "upstream says hi" });
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

#[tokio::test]
async fn outbound_http_goes_only_to_allowed_hosts() {
    let mut node = start_node().await;
    let upstream = start_upstream().await;
    let allowed_rule = format!("http://127.0.0.1:{}", upstream.port());
    register(
        &mut node,
        "fetcher",
        example("http-echo"),
        &[("spearlet.http.allowed_hosts", &allowed_rule)],
    )
    .await
    .unwrap();
    let base = base(&node);
    let http = reqwest::Client::new();
    let target = format!("http%3A%2F%2F127.0.0.1%3A{}%2Fanything", upstream.port());

    let allowed = http
        .get(format!("{base}/v1/tasks/fetcher/http/fetch?url={target}"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(allowed.headers()["x-upstream-status"], "200");
    assert_eq!(allowed.text().await.unwrap(), "upstream says hi");

    // The bundled task allows no host: refused inside the guest, which answers 502 itself.
    let denied = http
        .get(format!("{base}/v1/tasks/http-echo/http/fetch?url={target}"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::BAD_GATEWAY);
    let execution_id = denied.headers()["x-spear-execution-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let denied_body = denied.text().await.unwrap();
    assert!(denied_body.contains("HttpRequestDenied"), "{denied_body}");
    let record = status_of(&mut node, &execution_id).await;
    assert_eq!(
        record.result.as_ref().unwrap().status,
        proto::ExecutionStatus::Completed as i32
    );
    assert!(record.logs.concat().contains("denied"), "{record:?}");
}

#[tokio::test]
async fn a_host_name_can_serve_one_handler_at_its_root() {
    let node = start_node_with(|config| {
        config
            .http_task_hosts
            .insert("echo.localhost".into(), "http-echo".into());
    })
    .await;
    let http = reqwest::Client::new();
    let hello = http
        .get(format!("{}/hello", base(&node)))
        .header("host", "echo.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), StatusCode::OK);
    assert_eq!(
        hello.text().await.unwrap(),
        "Hello from a wasi:http component!\n"
    );
    // Every path of that host is the task's, the node's public ones (the dashboard, the
    // probes) included: the handler answers them (its 404), not the node.
    for path in ["/ui/tasks", "/healthz"] {
        let answer = http
            .get(format!("{}{path}", base(&node)))
            .header("host", "echo.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(
            answer.headers().contains_key("x-spear-execution-id"),
            "{path} ran as an execution of the handler"
        );
    }
    // Other host names still reach the API.
    let health = http
        .get(format!("{}/healthz", base(&node)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn components_with_unsupported_imports_or_reuse_are_refused_at_registration() {
    let mut node = start_node().await;
    let foreign_import =
        br#"(component (import "example:made-up/thing@1.0.0" (instance (export "f" (func)))))"#;
    // (task name, component, configuration keys, what the refusal must name)
    type RefusedRegistration<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)], &'a str);
    let cases: [RefusedRegistration; 3] = [
        (
            "foreign",
            foreign_import,
            &[],
            "example:made-up/thing@1.0.0",
        ),
        (
            "reused-component",
            example("echo-component"),
            &[("spearlet.isolation", "reuse")],
            "spearlet.isolation",
        ),
        (
            "bad-hosts",
            example("http-echo"),
            &[("spearlet.http.allowed_hosts", "ftp://example.com")],
            "spearlet.http.allowed_hosts",
        ),
    ];
    for (name, bytes, config, named) in cases {
        let refused = register(&mut node, name, bytes, config).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(refused.message().contains(named), "{name}: {refused:?}");
    }
}

/// Where `scripts/build-polyglot-components.sh` put the Python and JavaScript components
/// (`$SPEARLET_POLYGLOT_DIR`, which `.ci/run` sets), or `None` after saying why the test skips.
fn polyglot_component(file_name: &str) -> Option<std::path::PathBuf> {
    let Some(directory) = std::env::var_os("SPEARLET_POLYGLOT_DIR") else {
        support::missing_prerequisite(
            "$SPEARLET_POLYGLOT_DIR",
            "run scripts/build-polyglot-components.sh DIR and export SPEARLET_POLYGLOT_DIR=DIR",
        );
        return None;
    };
    let path = std::path::PathBuf::from(directory).join(file_name);
    if !path.is_file() {
        support::missing_prerequisite(
            &path.display().to_string(),
            "scripts/build-polyglot-components.sh could not build it; its log says why",
        );
        return None;
    }
    Some(path)
}

async fn register_file(
    node: &mut support::TestNode,
    name: &str,
    path: &std::path::Path,
) -> proto::InvokeFunctionResponse {
    let mut artifact = wasm_artifact(b"", &[]);
    artifact.location = format!("file://{}", path.display());
    let mut request = new_task(name, artifact, b"");
    request.execution_mode = proto::ExecutionMode::Async as i32;
    node.client
        .invoke_function(request)
        .await
        .unwrap_or_else(|status| panic!("registering {name}: {status:?}"))
        .into_inner()
}

#[tokio::test]
async fn python_and_javascript_http_handlers_answer() {
    let (Some(python), Some(javascript)) = (
        polyglot_component("python-http-hello.wasm"),
        polyglot_component("js-http-hello.wasm"),
    ) else {
        return;
    };
    let directory = python.parent().unwrap().to_path_buf();
    let mut node = start_node_with(|config| config.artifacts.allowed_roots.push(directory)).await;
    register_file(&mut node, "python-hello", &python).await;
    register_file(&mut node, "js-hello", &javascript).await;
    let base = base(&node);
    let http = reqwest::Client::new();
    for (task, greeting) in [
        ("python-hello", "Hello from Python!\n"),
        ("js-hello", "Hello from JavaScript!\n"),
    ] {
        for _ in 0..3 {
            let hello = http
                .get(format!("{base}/v1/tasks/{task}/http/hello"))
                .send()
                .await
                .unwrap();
            assert_eq!(hello.status(), StatusCode::OK, "{task}");
            assert_eq!(hello.text().await.unwrap(), greeting, "{task}");
        }
        let echoed = http
            .post(format!("{base}/v1/tasks/{task}/http/echo"))
            .header("content-type", "application/json")
            .body(r#"{"a":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(echoed.status(), StatusCode::OK, "{task}");
        assert_eq!(
            echoed.headers()["content-type"],
            "application/json",
            "{task}"
        );
        assert_eq!(echoed.text().await.unwrap(), r#"{"a":1}"#, "{task}");
        let missing = http
            .get(format!("{base}/v1/tasks/{task}/http/elsewhere"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND, "{task}");
    }
}

#[tokio::test]
async fn a_python_command_component_greets_and_fails_with_exit_code_1() {
    let Some(command) = polyglot_component("python-command.wasm") else {
        return;
    };
    let directory = command.parent().unwrap().to_path_buf();
    let mut node = start_node_with(|config| config.artifacts.allowed_roots.push(directory)).await;
    register_file(&mut node, "python-command", &command).await;
    let greeted = node
        .client
        .invoke_function(invoke("python-command", b"Ada"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(&greeted),
        proto::ExecutionStatus::Completed,
        "{greeted:?}"
    );
    assert_eq!(output(&greeted), b"Hello, Ada! (from Python)\n");
    let failed = node
        .client
        .invoke_function(invoke("python-command", b"fail"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&failed), proto::ExecutionStatus::Failed);
    assert_eq!(result(&failed).error_code, "EXIT_CODE", "{failed:?}");
}

/// The wasmtime CLI to compare against: `$WASMTIME`, else `wasmtime` on the PATH. CI does not
/// build it (a 20-minute `cargo install wasmtime-cli@48.0.8`), so its absence skips the test
/// even under CI, saying so.
fn wasmtime_cli() -> Option<std::path::PathBuf> {
    let candidate = std::env::var_os("WASMTIME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|directory| directory.join("wasmtime"))
                    .find(|binary| binary.is_file())
            })
        });
    if candidate.is_none() {
        eprintln!(
            "SKIPPED the wasmtime serve comparison: no wasmtime CLI ($WASMTIME or PATH; \
             cargo install wasmtime-cli@48.0.8)"
        );
    }
    candidate
}

/// What a response is made of, for comparing two servers: status, the headers the handler sets
/// (not the servers' own, such as `date` or `x-spear-execution-id`) and body.
async fn comparable(response: reqwest::Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name == "content-type" || (name.starts_with("x-") && !name.starts_with("x-spear-"))
        })
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_handler_answers_the_same_under_wasmtime_serve_and_spearlet() {
    let Some(wasmtime) = wasmtime_cli() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let component = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/wasm/p2/http-echo.wasm"
    );
    let mut wasmtime_serve = tokio::process::Command::new(wasmtime)
        .args([
            "serve",
            "-S",
            "cli",
            "--addr",
            &format!("127.0.0.1:{port}"),
            component,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let wasmtime_base = format!("http://127.0.0.1:{port}");
    let ready_by = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("{wasmtime_base}/hello"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < ready_by, "wasmtime serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = start_node_with(|config| {
        config
            .http_task_hosts
            .insert("app.localhost".into(), "http-echo".into());
    })
    .await;
    let prefixed = format!("{}/v1/tasks/http-echo/http", base(&node));
    let host_root = base(&node);
    let requests: [(&str, &str, &[u8]); 5] = [
        ("GET", "/hello", b""),
        ("POST", "/echo?x=1", b"some body bytes"),
        ("PUT", "/echo", b"put body"),
        ("GET", "/status/503", b""),
        ("GET", "/nowhere", b""),
    ];
    for (method, path, body) in requests {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let send = |url: String, host: Option<&str>| {
            let mut request = http
                .request(method.clone(), url)
                .header("content-type", "text/plain")
                .body(body.to_vec());
            if let Some(host) = host {
                request = request.header("host", host);
            }
            request.send()
        };
        let under_wasmtime =
            comparable(send(format!("{wasmtime_base}{path}"), None).await.unwrap()).await;
        let under_prefix = comparable(send(format!("{prefixed}{path}"), None).await.unwrap()).await;
        let under_host = comparable(
            send(format!("{host_root}{path}"), Some("app.localhost"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            under_prefix, under_wasmtime,
            "{method} {path} under the prefix"
        );
        assert_eq!(
            under_host, under_wasmtime,
            "{method} {path} at the host's root"
        );
    }
    wasmtime_serve.kill().await.unwrap();
}
