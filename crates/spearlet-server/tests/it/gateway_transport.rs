//! The HTTP gateway's transports against a real node: HTTP/2 over cleartext (prior knowledge)
//! and over TLS (negotiated by ALPN), and `max_requests_per_connection` over one HTTP/2
//! connection: calls beyond the limit wait for a slot on that connection while another
//! connection is served at once.

use crate::support;

use std::time::{Duration, Instant};

use reqwest::{StatusCode, Version};
use spearlet_proto as proto;
use spearlet_server::NodeConfig;
use spearlet_server::config::TlsConfig;
use support::{TestNode, start_node, start_node_with};

/// An echo call over `http`: answers 200 with the input over HTTP/2.
async fn echo_over_http2(http: &reqwest::Client, url: &str) {
    let answer = http.post(url).body("over h2").send().await.unwrap();
    assert_eq!(answer.version(), Version::HTTP_2);
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "over h2");
}

#[tokio::test]
async fn the_gateway_speaks_http2_over_cleartext_with_prior_knowledge() {
    let node = start_node().await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("http://{}/v1/tasks/echo/invoke", node.server.http_addr);
    echo_over_http2(&http, &url).await;
}

#[tokio::test]
async fn the_gateway_negotiates_http2_over_tls_by_alpn() {
    let directory = tempfile::tempdir().unwrap();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_file = directory.path().join("cert.pem");
    let key_file = directory.path().join("key.pem");
    std::fs::write(&cert_file, generated.cert.pem()).unwrap();
    std::fs::write(&key_file, generated.signing_key.serialize_pem()).unwrap();
    let config = NodeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: directory.path().join("data"),
        tls: Some(TlsConfig {
            cert_file,
            key_file,
        }),
        shutdown_grace_ms: 500,
        ..NodeConfig::default()
    };
    let server = spearlet_server::serve(config).await.unwrap();
    assert!(server.tls);

    // No prior knowledge: the client offers h2 and http/1.1 by ALPN and the node picks h2.
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", server.http_addr)
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/v1/tasks/echo/invoke",
        server.http_addr.port()
    );
    echo_over_http2(&http, &url).await;
    server.shutdown().await.unwrap();
}

/// When the execution ran, from its record, in seconds since the Unix epoch.
async fn run_interval(node: &mut TestNode, execution_id: &str) -> (f64, f64) {
    let result = support::status_of(node, execution_id).await.result.unwrap();
    let seconds = |timestamp: Option<spearlet_proto::pbjson_types::Timestamp>| {
        let timestamp = timestamp.expect("a finished record has both timestamps");
        timestamp.seconds as f64 + f64::from(timestamp.nanos) / 1e9
    };
    (seconds(result.started_at), seconds(result.completed_at))
}

/// The most intervals that contain one instant.
fn most_overlapping(intervals: &[(f64, f64)]) -> usize {
    intervals
        .iter()
        .map(|&(start, _)| {
            intervals
                .iter()
                .filter(|&&(other_start, other_end)| other_start <= start && start < other_end)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// `max_requests_per_connection = 2`: four slow calls on one HTTP/2 connection all complete,
/// never more than two of them running at once (the rest wait for a slot on that connection,
/// as the docs say, rather than being refused), and a call on a second connection is answered
/// while the first connection is full.
#[tokio::test]
async fn calls_beyond_the_per_connection_limit_wait_for_a_slot_on_that_connection() {
    const LIMIT: usize = 2;
    const SLOW_CALL_MS: u64 = 2000;
    let mut node = start_node_with(|config| config.max_requests_per_connection = LIMIT).await;
    let http_addr = node.server.http_addr;
    let url = move |task: &str| format!("http://{http_addr}/v1/tasks/{task}/invoke");
    let one_connection = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // Opens the connection, so the concurrent calls below share it rather than race to dial.
    echo_over_http2(&one_connection, &url("echo")).await;

    let slow_calls: Vec<_> = (0..2 * LIMIT)
        .map(|_| {
            let http = one_connection.clone();
            let url = url("sleep");
            tokio::spawn(async move {
                let answer = http
                    .post(url)
                    .body(SLOW_CALL_MS.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.version(), Version::HTTP_2);
                assert_eq!(answer.status(), StatusCode::OK);
                let execution_id = answer.headers()["x-spear-execution-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(
                    answer.text().await.unwrap(),
                    format!("slept {SLOW_CALL_MS} ms\n")
                );
                (execution_id, Instant::now())
            })
        })
        .collect();

    // Once the first two run, a call on another connection is answered without waiting for them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = node
            .client
            .get_stats(proto::GetStatsRequest {
                include_execution_stats: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let running = stats.execution_stats.unwrap().running_executions;
        if running >= LIMIT as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "the slow calls never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let another_connection = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    echo_over_http2(&another_connection, &url("echo")).await;
    let other_connection_answered = Instant::now();

    let mut finished = Vec::new();
    for call in slow_calls {
        finished.push(call.await.unwrap());
    }
    let first_slow_call_answered = finished.iter().map(|(_, at)| *at).min().unwrap();
    assert!(
        other_connection_answered < first_slow_call_answered,
        "the second connection waited for the first connection's calls"
    );
    let mut intervals = Vec::new();
    for (execution_id, _) in &finished {
        intervals.push(run_interval(&mut node, execution_id).await);
    }
    assert_eq!(
        most_overlapping(&intervals),
        LIMIT,
        "at most {LIMIT} calls of one connection run at once: {intervals:?}"
    );
}
