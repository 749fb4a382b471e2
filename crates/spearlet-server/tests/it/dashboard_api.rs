//! What the web dashboard reads, through the real HTTP listener and gRPC: the history
//! (`/v1/stats/history`, GetStatsHistory), the live event stream (`/v1/events`), time-ranged
//! and newest-first listings, WhoAmI, and the dashboard's own pages and assets (public, with a
//! strict content security policy) on a node with and without tokens.

use crate::sse::EventReader;
use crate::support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use spearlet_proto as proto;
use spearlet_server::NodeConfig;
use spearlet_server::auth::{Scope, SecretToken};
use spearlet_server::config::TokenConfig;
use support::{TestNode, invoke, start_node, start_node_with};

const ADMIN: &str = "dashboard-admin-token-0123";
const READER: &str = "dashboard-reader-token-0123";

fn with_tokens(config: &mut NodeConfig) {
    config.auth.tokens = vec![
        TokenConfig {
            token: SecretToken::new(ADMIN),
            scopes: vec![Scope::Admin],
            tasks: vec![],
        },
        TokenConfig {
            token: SecretToken::new(READER),
            scopes: vec![Scope::Read],
            tasks: vec![],
        },
    ];
}

fn url(node: &TestNode, path: &str) -> String {
    format!("http://{}{path}", node.server.http_addr)
}

async fn get_json(node: &TestNode, path: &str) -> Value {
    let response = reqwest::get(url(node, path)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

fn number(value: &Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
        .unwrap_or(0)
}

/// The sum of one field over a history answer's points.
fn total(history: &Value, field: &str) -> i64 {
    history["points"].as_array().map_or(0, |points| {
        points.iter().map(|point| number(&point[field])).sum()
    })
}

#[tokio::test]
async fn history_counts_every_ended_call_once_per_task_and_for_the_node() {
    let mut node = start_node().await;
    for _ in 0..4 {
        node.client
            .invoke_function(invoke("hello", b"x"))
            .await
            .unwrap();
    }
    // `fail` exits non-zero: an error in the history as in faas_errors_total.
    node.client
        .invoke_function(invoke("fail", b""))
        .await
        .unwrap();

    let mut node_history = Value::Null;
    for _ in 0..100 {
        node_history = get_json(&node, "/v1/stats/history").await;
        if total(&node_history, "calls") >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(total(&node_history, "calls"), 5, "{node_history}");
    assert_eq!(total(&node_history, "errors"), 1, "{node_history}");
    assert_eq!(node_history["interval_seconds"], 1);
    let points = node_history["points"].as_array().unwrap();
    assert!(
        points
            .iter()
            .any(|point| point["latency_p99_ms"].as_f64().unwrap_or(0.0) > 0.0),
        "a second with calls has a latency: {node_history}"
    );
    assert!(
        points
            .iter()
            .all(|point| point["at"].as_str().is_some_and(|at| at.contains('T'))),
        "every point has an RFC 3339 time: {node_history}"
    );

    let hello = get_json(&node, "/v1/stats/history?task=hello&seconds=900").await;
    assert_eq!(total(&hello, "calls"), 4, "{hello}");
    assert_eq!(total(&hello, "errors"), 0, "{hello}");
    assert_eq!(
        hello["points"].as_array().unwrap().len(),
        node_history["points"].as_array().unwrap().len(),
        "a task's points line up with the node's, idle seconds included"
    );

    // gRPC answers the same.
    let over_grpc = node
        .client
        .get_stats_history(proto::GetStatsHistoryRequest {
            task_name: "fail".into(),
            seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        over_grpc
            .points
            .iter()
            .map(|point| point.errors)
            .sum::<i32>(),
        1
    );

    for (path, status, named) in [
        (
            "/v1/stats/history?seconds=901",
            StatusCode::BAD_REQUEST,
            "seconds",
        ),
        (
            "/v1/stats/history?seconds=-1",
            StatusCode::BAD_REQUEST,
            "seconds",
        ),
        (
            "/v1/stats/history?task=nobody",
            StatusCode::NOT_FOUND,
            "task_name",
        ),
        (
            "/v1/stats/history?window=5",
            StatusCode::BAD_REQUEST,
            "window",
        ),
    ] {
        let response = reqwest::get(url(&node, path)).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn the_event_stream_ticks_every_second_and_ends_when_asked() {
    let mut node = start_node().await;
    let response = reqwest::get(url(&node, "/v1/events?seconds=3"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = EventReader::new(response);
    let first = events.next_event().await.expect("a tick");
    assert_eq!(first.name, "tick");
    let version_before = number(&first.data["executions_version"]);
    assert!(first.data["point"]["at"].is_string(), "{}", first.data);

    node.client
        .invoke_function(invoke("hello", b"x"))
        .await
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), events.remaining_events())
        .await
        .expect("the stream ends after the seconds asked for");
    let (last, ticks) = rest.split_last().expect("more events");
    assert_eq!(last.name, "end", "the last event says why the stream ended");
    assert!(last.data["reason"].as_str().unwrap().contains("seconds"));
    assert!(
        ticks
            .iter()
            .any(|tick| number(&tick.data["executions_version"]) > version_before),
        "a call moves executions_version"
    );
    assert!(
        ticks
            .iter()
            .any(|tick| number(&tick.data["point"]["calls"]) == 1),
        "the call is counted in one tick's point"
    );

    for bad in [
        "/v1/events?seconds=0",
        "/v1/events?seconds=86401",
        "/v1/events?seconds=x",
    ] {
        let response = reqwest::get(url(&node, bad)).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn executions_list_newest_first_and_by_submission_time() {
    let mut node = start_node().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let answer = node
            .client
            .invoke_function(invoke("hello", b"x"))
            .await
            .unwrap()
            .into_inner();
        ids.push(answer.execution_id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page = get_json(&node, "/v1/executions?task=hello&newest_first=true&limit=2").await;
    let listed: Vec<&str> = page["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|execution| execution["execution_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    let next = page["next_start_after"].as_str().unwrap();
    let older = get_json(
        &node,
        &format!("/v1/executions?task=hello&newest_first=true&start_after={next}"),
    )
    .await;
    assert_eq!(older["executions"][0]["execution_id"], ids[0].as_str());

    // The window is on the submission time, which every execution now carries.
    // As a query parameter, an offset's `+` must be escaped (a bare `+` is a space).
    let second_submitted = page["executions"][1]["submitted_at"]
        .as_str()
        .unwrap()
        .replace('+', "%2B");
    let since_second = get_json(
        &node,
        &format!("/v1/executions?task=hello&submitted_after={second_submitted}"),
    )
    .await;
    let since: Vec<&str> = since_second["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|execution| execution["execution_id"].as_str().unwrap())
        .collect();
    assert_eq!(since, [ids[1].as_str(), ids[2].as_str()]);
    let before_all = get_json(
        &node,
        "/v1/executions?submitted_before=2001-01-01T00:00:00Z",
    )
    .await;
    assert!(
        before_all["executions"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );

    // One execution's answer says what the listing says of it, plus its timeline.
    let one = get_json(&node, &format!("/v1/executions/{}", ids[0])).await;
    assert_eq!(one["execution"]["execution_id"], ids[0].as_str());
    assert!(
        one["execution"]["task_id"]
            .as_str()
            .unwrap()
            .starts_with("task-")
    );
    assert!(
        !one["execution"]["instance_id"].as_str().unwrap().is_empty(),
        "{one}"
    );
    let timeline: Vec<&str> = one["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        timeline.last(),
        Some(&"EXECUTION_STATUS_COMPLETED"),
        "{one}"
    );
    assert!(timeline.contains(&"EXECUTION_STATUS_RUNNING"), "{one}");

    let response = reqwest::get(url(&node, "/v1/executions?submitted_after=yesterday"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("submitted_after")
    );

    // Over gRPC, a Timestamp out of range names its field.
    let refused = node
        .client
        .list_executions(proto::ListExecutionsRequest {
            submitted_before: Some(spearlet_proto::pbjson_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("submitted_before"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_dashboard_is_served_publicly_and_its_data_needs_a_token() {
    let node = start_node_with(with_tokens).await;
    let client = reqwest::Client::new();
    for path in ["/ui", "/ui/", "/ui/tasks/hello", "/ui/executions/exec-1"] {
        let response = client.get(url(&node, path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"),
            "{path}"
        );
        assert!(response.text().await.unwrap().contains("/ui/assets/app.js"));
    }
    let script = client
        .get(url(&node, "/ui/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    let etag = script.headers()[reqwest::header::ETAG].clone();
    let revalidated = client
        .get(url(&node, "/ui/assets/app.js"))
        .header(reqwest::header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    let icon = client.get(url(&node, "/favicon.ico")).send().await.unwrap();
    assert_eq!(icon.status(), StatusCode::OK);
    assert_eq!(
        icon.headers()[reqwest::header::CONTENT_TYPE],
        "image/svg+xml"
    );
    let missing = client
        .get(url(&node, "/ui/assets/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // The data is not public.
    for path in [
        "/v1/events?seconds=1",
        "/v1/stats/history",
        "/v1/auth/whoami",
    ] {
        let response = client.get(url(&node, path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let who = |token: &'static str| {
        let client = client.clone();
        let address = url(&node, "/v1/auth/whoami");
        async move {
            client
                .get(address)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let reader = who(READER).await;
    assert_eq!(reader["scope"], "read");
    assert!(
        reader["label"]
            .as_str()
            .unwrap()
            .starts_with("auth.tokens[")
    );
    assert!(
        !reader.to_string().contains(READER),
        "the token is never echoed"
    );
    assert_eq!(who(ADMIN).await["scope"], "admin");
    let events = client
        .get(url(&node, "/v1/events?seconds=1"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        events.status(),
        StatusCode::OK,
        "a read token follows the stream"
    );
}

#[tokio::test]
async fn who_am_i_without_tokens_is_an_anonymous_admin() {
    let mut node = start_node().await;
    let answer = node
        .client
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.label, "anonymous");
    assert_eq!(answer.scope, "admin");
    assert!(answer.tasks.is_empty());
}
