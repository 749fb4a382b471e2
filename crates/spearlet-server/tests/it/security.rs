//! Bearer tokens with scopes, TLS on both listeners, and the refusal to expose an unprotected
//! node, against a real node over gRPC and HTTP.

use crate::support;

use std::time::Duration;

use reqwest::StatusCode;
use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use spearlet_server::NodeConfig;
use spearlet_server::auth::{Scope, SecretToken};
use spearlet_server::config::{TlsConfig, TokenConfig};
use support::{invoke, start_node_with, with_execution_id};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";
const TEAM_A: &str = "team-a-invoker-0123456789";

fn token(token: &str, scopes: &[Scope], tasks: &[&str]) -> TokenConfig {
    TokenConfig {
        token: SecretToken::new(token),
        scopes: scopes.to_vec(),
        tasks: tasks.iter().map(|task| (*task).to_owned()).collect(),
    }
}

fn with_tokens(config: &mut NodeConfig) {
    config.auth.tokens = vec![
        token(ADMIN, &[Scope::Admin], &[]),
        token(READER, &[Scope::Read], &[]),
        token(TEAM_A, &[Scope::Invoke], &["team-a-*"]),
    ];
}

fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn grpc_calls_need_a_valid_token_and_the_right_scope() {
    let mut node = start_node_with(with_tokens).await;
    let client = &mut node.client;

    let refused = client
        .invoke_function(invoke("echo", b"x"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = client
        .invoke_function(with_bearer(invoke("echo", b"x"), "wrong-token"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(!refused.message().contains("wrong-token"));

    // read scope: may look, may not invoke.
    let denied = client
        .invoke_function(with_bearer(invoke("echo", b"x"), READER))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("invoke"), "{}", denied.message());
    client
        .list_tasks(with_bearer(proto::ListTasksRequest::default(), READER))
        .await
        .unwrap();

    // admin: registers team-a-echo; the team-a token may invoke it, not `echo`, and may not
    // create tasks.
    let echo = support::example("echo");
    client
        .create_task(with_bearer(
            proto::CreateTaskRequest {
                task_name: "team-a-echo".into(),
                artifact_spec: Some(support::wasm_artifact(echo, &[])),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap();
    let answer = client
        .invoke_function(with_bearer(invoke("team-a-echo", b"ok"), TEAM_A))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::output(&answer), b"ok");
    let denied = client
        .invoke_function(with_bearer(invoke("echo", b"x"), TEAM_A))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("\"echo\""),
        "{}",
        denied.message()
    );
    let denied = client
        .create_task(with_bearer(
            proto::CreateTaskRequest {
                task_name: "team-a-new".into(),
                artifact_spec: Some(support::wasm_artifact(echo, &[])),
                ..Default::default()
            },
            TEAM_A,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // A token limited to some tasks sees only those.
    let listed = client
        .list_tasks(with_bearer(proto::ListTasksRequest::default(), TEAM_A))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed
        .tasks
        .iter()
        .map(|task| task.task_name.as_str())
        .collect();
    assert_eq!(names, ["team-a-echo"]);
    let read_by_reader = client
        .get_execution_status(with_bearer(
            proto::GetExecutionStatusRequest {
                execution_id: answer.execution_id.clone(),
                ..Default::default()
            },
            READER,
        ))
        .await;
    let read = read_by_reader
        .expect("an unrestricted reader may read any execution")
        .into_inner();
    assert!(read.found, "{}", read.message);
    assert_eq!(
        read.result.map(|result| result.status),
        Some(proto::ExecutionStatus::Completed as i32),
        "the reader sees the team's completed execution"
    );

    // The health service answers without a token (probes cannot send one).
    let channel = Channel::from_shared(format!("http://{}", node.server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "spearlet.FunctionService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn http_routes_need_a_valid_token_and_the_right_scope() {
    let node = start_node_with(with_tokens).await;
    let base = format!("http://{}", node.server.http_addr);
    let http = reqwest::Client::new();

    let refused = http
        .post(format!("{base}/v1/tasks/echo/invoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHENTICATED");
    let refused = http
        .get(format!("{base}/metrics"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let denied = http
        .post(format!("{base}/v1/tasks/echo/invoke"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["code"], "PERMISSION_DENIED");
    let denied = http
        .post(format!("{base}/v1/artifacts"))
        .bearer_auth(TEAM_A)
        .body("bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);

    let allowed = http
        .post(format!("{base}/v1/tasks/echo/invoke"))
        .bearer_auth(ADMIN)
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    let metrics = http
        .get(format!("{base}/metrics"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    // Probes and the API document need no token.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let answer = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn tls_serves_grpc_and_http_with_a_generated_certificate() {
    let directory = tempfile::tempdir().unwrap();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_file = directory.path().join("cert.pem");
    let key_file = directory.path().join("key.pem");
    std::fs::write(&cert_file, generated.cert.pem()).unwrap();
    std::fs::write(&key_file, generated.signing_key.serialize_pem()).unwrap();
    let tls = TlsConfig {
        cert_file,
        key_file,
    };
    let data_dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_path_buf(),
        tls: Some(tls),
        shutdown_grace_ms: 500,
        ..NodeConfig::default()
    };
    let server = spearlet_server::serve(config).await.unwrap();
    assert!(server.tls);

    let channel = Endpoint::from_shared(format!("https://localhost:{}", server.grpc_addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(generated.cert.pem()))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = FunctionServiceClient::new(channel);
    let answer = client
        .invoke_function(invoke("echo", b"over tls"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::output(&answer), b"over tls");

    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", server.http_addr)
        .build()
        .unwrap();
    let answer = http
        .post(format!(
            "https://localhost:{}/v1/tasks/echo/invoke",
            server.http_addr.port()
        ))
        .body("https too")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "https too");
    // Plaintext to the TLS port gets no answer.
    let plaintext = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.http_addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plaintext.is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unprotected_node_refuses_to_listen_beyond_loopback() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        grpc_addr: "0.0.0.0:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_path_buf(),
        ..NodeConfig::default()
    };
    let error = spearlet_server::serve(config.clone()).await.err().unwrap();
    assert_eq!(error.kind, spearlet_core::ErrorKind::InvalidArgument);
    assert!(error.message.contains("grpc_addr"), "{}", error.message);
    assert!(error.message.contains("--insecure"), "{}", error.message);
    let insecure = spearlet_server::serve(NodeConfig {
        insecure: true,
        ..config.clone()
    })
    .await
    .unwrap();
    insecure.shutdown().await.unwrap();
    let mut with_token = config;
    with_tokens(&mut with_token);
    let protected = spearlet_server::serve(with_token).await.unwrap();
    protected.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_connection_cannot_take_more_than_its_share_of_requests() {
    let node = start_node_with(|config| config.max_requests_per_connection = 1).await;
    // Two long calls on one connection (clones of one client share its connection). They end
    // only when the test cancels them, so no timing decides what the test sees.
    let execution_ids = ["connection-call-a", "connection-call-b"];
    let calls: Vec<_> = execution_ids
        .iter()
        .map(|execution_id| {
            let mut client = node.client.clone();
            let request = with_execution_id(invoke("sleep", b"60000"), execution_id);
            tokio::spawn(async move { client.invoke_function(request).await })
        })
        .collect();
    // The observer uses a connection of its own, so its lookups are not held behind the limit.
    let observer = support::connect(node.server.grpc_addr).await;
    let first_running = first_running_of(&observer, &execution_ids).await;
    let second = execution_ids
        .into_iter()
        .find(|execution_id| *execution_id != first_running)
        .unwrap();

    // Another connection is served while the first connection's slot is taken…
    let mut other = support::connect(node.server.grpc_addr).await;
    let echoed = other
        .invoke_function(invoke("echo", b"x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(support::output(&echoed), b"x");
    // …while the second call on the first connection has not even reached the node.
    assert_eq!(
        lookup(&observer, first_running)
            .await
            .map(|result| result.status),
        Some(proto::ExecutionStatus::Running as i32)
    );
    assert_eq!(
        lookup(&observer, second).await,
        None,
        "the second call on the connection should wait for the first"
    );

    // Once the first call ends, the second one runs.
    cancel(&observer, first_running).await;
    support::wait_until_running(&observer, second).await;
    cancel(&observer, second).await;
    for call in calls {
        let response = call.await.unwrap().unwrap().into_inner();
        assert_eq!(
            support::status(&response),
            proto::ExecutionStatus::Cancelled
        );
    }
}

/// Which of `execution_ids` the node runs first (waits up to 30 s for one to run).
async fn first_running_of<'a>(
    observer: &FunctionServiceClient<Channel>,
    execution_ids: &[&'a str],
) -> &'a str {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for execution_id in execution_ids {
            if lookup(observer, execution_id)
                .await
                .map(|result| result.status)
                == Some(proto::ExecutionStatus::Running as i32)
            {
                return execution_id;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "none of {execution_ids:?} started running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The execution's result, or `None` when the node has no such execution.
async fn lookup(
    observer: &FunctionServiceClient<Channel>,
    execution_id: &str,
) -> Option<proto::ExecutionResult> {
    let status = observer
        .clone()
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: execution_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    if !status.found {
        return None;
    }
    status.result
}

async fn cancel(observer: &FunctionServiceClient<Channel>, execution_id: &str) {
    let cancelled = observer
        .clone()
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: execution_id.into(),
            reason: "the test is done with it".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success, "{execution_id}: {}", cancelled.message);
}
