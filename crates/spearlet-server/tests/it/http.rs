//! The HTTP/JSON gateway against a real node: the curl flow of the issue (upload → create →
//! invoke sync → async → poll → cancel), the error model, streaming, probes, metrics and the
//! OpenAPI document.

use crate::support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{example, start_node, start_node_with};

fn base(node: &support::TestNode) -> String {
    format!("http://{}", node.server.http_addr)
}

async fn json(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// Uploads `bytes` and registers a task on it; returns the task id.
async fn upload_and_create(http: &reqwest::Client, base: &str, name: &str, bytes: &[u8]) -> String {
    let uploaded = http
        .post(format!("{base}/v1/artifacts"))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let uploaded = json(uploaded).await;
    let location = uploaded["location"].as_str().unwrap().to_owned();
    assert!(location.starts_with("artifact://sha256:"), "{uploaded}");
    assert_eq!(uploaded["size_bytes"].as_u64().unwrap(), bytes.len() as u64);
    let created = http
        .post(format!("{base}/v1/tasks"))
        .json(&serde_json::json!({
            "task_name": name,
            "artifact_spec": {"artifact_type": "wasm", "location": location},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(
        created.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/tasks/task-")
    );
    let created = json(created).await;
    assert_eq!(created["task_name"], name);
    created["task_id"].as_str().unwrap().to_owned()
}

async fn wait_for_status(http: &reqwest::Client, url: &str, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = json(http.get(url).send().await.unwrap()).await;
        if record["result"]["status"] == wanted {
            return record;
        }
        assert!(Instant::now() < deadline, "still {record} at the deadline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn upload_create_invoke_poll_and_cancel_over_http() {
    let node = start_node().await;
    let base = base(&node);
    let http = reqwest::Client::new();
    let task_id = upload_and_create(&http, &base, "echo-over-http", example("echo")).await;

    // Sync: the raw output as the body, the id and status in headers.
    let answer = http
        .post(format!("{base}/v1/tasks/echo-over-http/invoke"))
        .header("content-type", "text/plain")
        .body("hello over http")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["x-spear-status"], "COMPLETED");
    assert!(
        answer.headers()["x-spear-execution-id"]
            .to_str()
            .unwrap()
            .starts_with("exec-")
    );
    assert_eq!(answer.bytes().await.unwrap(), "hello over http");

    // Async by task id, with an idempotency key: 202, Location, then poll it.
    let accepted = http
        .post(format!("{base}/v1/tasks/{task_id}/invoke?mode=async"))
        .header("x-spear-execution-id", "http-async-1")
        .body("later")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "/v1/executions/http-async-1");
    assert_eq!(accepted.headers()["x-spear-execution-id"], "http-async-1");
    let accepted = json(accepted).await;
    assert_eq!(accepted["status_endpoint"], location.as_str());
    let record = wait_for_status(
        &http,
        &format!("{base}{location}"),
        "EXECUTION_STATUS_COMPLETED",
    )
    .await;
    // bytes are base64 in the proto3 JSON mapping.
    assert_eq!(record["result"]["output"]["data"], "bGF0ZXI=");

    // Cancel a long async execution; it ends CANCELLED.
    let sleep_task = upload_and_create(&http, &base, "http-sleep", example("sleep")).await;
    let accepted = http
        .post(format!("{base}/v1/tasks/{sleep_task}/invoke?mode=async"))
        .body("60000")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let execution_id = json(accepted).await["execution_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for_status(
        &http,
        &format!("{base}/v1/executions/{execution_id}"),
        "EXECUTION_STATUS_RUNNING",
    )
    .await;
    let cancelled = http
        .post(format!("{base}/v1/executions/{execution_id}/cancel"))
        .json(&serde_json::json!({"reason": "test is done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled = json(cancelled).await;
    assert_eq!(cancelled["success"], true, "{cancelled}");
    assert_eq!(cancelled["final_status"], "EXECUTION_STATUS_CANCELLED");
    let record = wait_for_status(
        &http,
        &format!("{base}/v1/executions/{execution_id}?include_logs=true"),
        "EXECUTION_STATUS_CANCELLED",
    )
    .await;
    assert!(
        record["result"]["error_message"]
            .as_str()
            .unwrap()
            .contains("test is done")
    );

    // Listings.
    let executions = json(
        http.get(format!(
            "{base}/v1/executions?task=echo-over-http&status=completed"
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        executions["executions"].as_array().unwrap().len(),
        2,
        "{executions}"
    );
    let tasks = json(
        http.get(format!("{base}/v1/tasks?prefix=http-"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 2, "{tasks}");
    let task = json(
        http.get(format!(
            "{base}/v1/tasks/echo-over-http?include_executions=true"
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(task["task"]["task_id"], task_id.as_str());
    let stats = json(http.get(format!("{base}/v1/stats")).send().await.unwrap()).await;
    assert!(stats["service_stats"].is_object(), "{stats}");

    // Delete, then it is gone.
    let deleted = http
        .delete(format!(
            "{base}/v1/tasks/echo-over-http?cleanup_executions=true"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let gone = http
        .get(format!("{base}/v1/tasks/echo-over-http"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn guest_failures_and_refusals_map_to_http_statuses_with_json_bodies() {
    let node = start_node_with(|config| config.max_request_bytes = 64 * 1024).await;
    let base = base(&node);
    let http = reqwest::Client::new();

    let failed = http
        .post(format!("{base}/v1/tasks/fail/invoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(failed.headers()["x-spear-status"], "FAILED");
    let body = json(failed).await;
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["error_code"], "EXIT_CODE", "{body}");
    assert!(body["execution_id"].as_str().unwrap().starts_with("exec-"));

    let timed_out = http
        .post(format!("{base}/v1/tasks/spin/invoke?timeout_ms=100"))
        .body("60000")
        .send()
        .await
        .unwrap();
    assert_eq!(timed_out.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(timed_out).await["code"], "DEADLINE_EXCEEDED");

    let cases: [(reqwest::RequestBuilder, StatusCode, &str, &str); 6] = [
        (
            http.post(format!("{base}/v1/tasks/no-such-task/invoke")),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no-such-task",
        ),
        (
            http.post(format!("{base}/v1/tasks/echo/invoke?timeout_ms=soon")),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "timeout_ms",
        ),
        (
            http.post(format!("{base}/v1/tasks/echo/invoke?colour=blue")),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "colour",
        ),
        (
            http.post(format!("{base}/v1/tasks/echo/invoke"))
                .body(vec![b'x'; 64 * 1024 + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "RESOURCE_EXHAUSTED",
            "max_request_bytes",
        ),
        (
            http.post(format!("{base}/v1/tasks"))
                .body("{\"task_name\": 7}"),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "task_name",
        ),
        (
            http.post(format!("{base}/v1/tasks")).json(&serde_json::json!({
                "task_name": "missing-artifact",
                "artifact_spec": {"artifact_type": "wasm", "location": format!("artifact://sha256:{}", "0".repeat(64))},
            })),
            StatusCode::PRECONDITION_FAILED,
            "FAILED_PRECONDITION",
            "upload it first",
        ),
    ];
    for (request, status, code, named) in cases {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), status);
        let body = json(answer).await;
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{body} should name {named}"
        );
    }
    // The node is still serving.
    let answer = http
        .post(format!("{base}/v1/tasks/echo/invoke"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
}

#[tokio::test]
async fn stream_mode_sends_an_event_per_chunk_and_a_final_status() {
    let node = start_node().await;
    let http = reqwest::Client::new();
    let answer = http
        .post(format!(
            "{}/v1/tasks/ticker/invoke?mode=stream",
            base(&node)
        ))
        .body("3")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let execution_id = answer.headers()["x-spear-execution-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = answer.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            (name, serde_json::from_str(&data).unwrap())
        })
        .collect();
    assert_eq!(events.first().unwrap().0, "status");
    let output: String = events
        .iter()
        .filter(|(name, _)| name == "output")
        .map(|(_, data)| data["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(output, "tick 1\ntick 2\ntick 3\n");
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "final");
    assert_eq!(last["status"], "COMPLETED");
    assert_eq!(last["execution_id"], execution_id.as_str());
}

#[tokio::test]
async fn probes_metrics_and_every_documented_route_answer() {
    let node = start_node().await;
    let base = base(&node);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    http.post(format!("{base}/v1/tasks/echo/invoke"))
        .body("x")
        .send()
        .await
        .unwrap();
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .contains("faas_invocations_total{task=\"echo\",function=\"\",status=\"completed\"} 1"),
        "{metrics}"
    );

    // Every path and method of the OpenAPI document reaches a route (never the fallbacks).
    let document: Value = json(
        http.get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(document["openapi"], "3.0.3");
    for (path, operations) in document["paths"].as_object().unwrap() {
        let mut concrete = path
            .replace("{task}", "no-such-task")
            .replace("{execution_id}", "no-such-execution");
        // The live event stream lasts until asked to end: a contract tester asks it to.
        if path == "/v1/events" {
            concrete.push_str("?seconds=1");
        }
        for method in operations.as_object().unwrap().keys() {
            let method =
                reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let answer = http
                .request(method.clone(), format!("{base}{concrete}"))
                .send()
                .await
                .unwrap();
            assert_ne!(
                answer.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let text = answer.text().await.unwrap();
            assert!(!text.contains("no route for"), "{method} {path}: {text}");
        }
    }
    let unknown = http.get(format!("{base}/v2/nothing")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(unknown).await["code"], "NOT_FOUND");
}

#[tokio::test]
async fn readiness_turns_off_when_the_node_shuts_down() {
    let node = start_node().await;
    let base = base(&node);
    let http = reqwest::Client::new();
    node.server.node.manager.begin_shutdown();
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
