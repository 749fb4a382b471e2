//! Shared helpers for the gRPC integration tests: a real node on 127.0.0.1:0 with a temporary
//! data directory, a connected client, request builders, and [`missing_prerequisite`] for tests
//! that need a tool or privilege the machine may lack.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use spearlet_server::{NodeConfig, RunningServer};
use tonic::transport::Channel;

pub struct TestNode {
    pub server: RunningServer,
    pub client: FunctionServiceClient<Channel>,
    pub data_dir: tempfile::TempDir,
}

pub async fn start_node() -> TestNode {
    start_node_with(|_| {}).await
}

pub async fn start_node_with(configure: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_path_buf(),
        shutdown_grace_ms: 1000,
        ..NodeConfig::default()
    };
    config.wasm.max_instances = 128;
    configure(&mut config);
    let server = spearlet_server::serve(config).await.unwrap();
    let client = connect(server.grpc_addr).await;
    TestNode {
        server,
        client,
        data_dir,
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> FunctionServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    FunctionServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// An EXISTING_TASK sync invocation with raw `input`.
pub fn invoke(task: &str, input: &[u8]) -> proto::InvokeFunctionRequest {
    proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: task.into(),
        execution_mode: proto::ExecutionMode::Sync as i32,
        input: Some(proto::Payload {
            content_type: "application/octet-stream".into(),
            data: input.to_vec(),
        }),
        ..Default::default()
    }
}

pub fn with_timeout(
    mut request: proto::InvokeFunctionRequest,
    timeout_ms: i64,
) -> proto::InvokeFunctionRequest {
    request
        .context
        .get_or_insert_with(Default::default)
        .timeout_ms = timeout_ms;
    request
}

pub fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:application/wasm;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn wasm_artifact(bytes: &[u8], metadata: &[(&str, &str)]) -> proto::ArtifactSpec {
    proto::ArtifactSpec {
        artifact_type: "wasm".into(),
        location: data_url(bytes),
        metadata: metadata
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

pub fn new_task(
    name: &str,
    artifact: proto::ArtifactSpec,
    input: &[u8],
) -> proto::InvokeFunctionRequest {
    proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::NewTask as i32,
        task_name: name.into(),
        artifact_spec: Some(artifact),
        execution_mode: proto::ExecutionMode::Sync as i32,
        input: Some(proto::Payload {
            content_type: String::new(),
            data: input.to_vec(),
        }),
        ..Default::default()
    }
}

pub fn example(name: &str) -> &'static [u8] {
    spearlet_examples::EXAMPLES
        .iter()
        .find(|example| example.name == name)
        .unwrap()
        .wasm
}

pub fn result(response: &proto::InvokeFunctionResponse) -> &proto::ExecutionResult {
    response.result.as_ref().expect("response carries a result")
}

pub fn output(response: &proto::InvokeFunctionResponse) -> Vec<u8> {
    result(response)
        .output
        .as_ref()
        .map(|payload| payload.data.clone())
        .unwrap_or_default()
}

pub fn status(response: &proto::InvokeFunctionResponse) -> proto::ExecutionStatus {
    proto::ExecutionStatus::try_from(result(response).status).unwrap()
}

/// The same request in ASYNC mode.
pub fn asynchronous(mut request: proto::InvokeFunctionRequest) -> proto::InvokeFunctionRequest {
    request.execution_mode = proto::ExecutionMode::Async as i32;
    request
}

/// GetExecutionStatus with the result and logs.
pub async fn status_of(
    node: &mut TestNode,
    execution_id: &str,
) -> proto::GetExecutionStatusResponse {
    node.client
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: execution_id.into(),
            include_result: true,
            include_logs: true,
        })
        .await
        .unwrap()
        .into_inner()
}

/// `count` concurrent sync calls of `task` with `input`, each on a clone of the node's client.
pub fn concurrent_calls(
    node: &TestNode,
    task: &str,
    input: &[u8],
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<proto::InvokeFunctionResponse, tonic::Status>>> {
    (0..count)
        .map(|_| {
            let mut client = node.client.clone();
            let request = invoke(task, input);
            tokio::spawn(async move {
                client
                    .invoke_function(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect()
}

/// Polls until the execution has `wanted` status (30 s at most).
pub async fn wait_for_status(
    node: &mut TestNode,
    execution_id: &str,
    wanted: proto::ExecutionStatus,
) -> proto::ExecutionResult {
    let started = Instant::now();
    loop {
        let status = status_of(node, execution_id).await;
        if let Some(result) = status.result
            && result.status == wanted as i32
        {
            return result;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{execution_id} never reached {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// One definition for every test crate that has prerequisites (the examples' tests own it).
#[path = "../../../../spearlet-examples/tests/it/prerequisites.rs"]
mod prerequisites;
pub use prerequisites::missing_prerequisite;

/// Whether the test process runs as root (effective uid 0), which `run_as` needs: switching to
/// another user is a privilege. Read from `/proc/self`, which belongs to the effective uid.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|metadata| metadata.uid() == 0)
}

/// Polls `condition` every 10 ms until it returns true; fails the test with `description` (what
/// did not happen) when `deadline` has passed first. The condition builds a fresh future each
/// time, so it can clone a client into it: `|| { let mut client = client.clone(); async move {…} }`.
pub async fn wait_until<Condition, Check>(
    description: &str,
    deadline: Duration,
    mut condition: Condition,
) where
    Condition: FnMut() -> Check,
    Check: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < deadline,
            "waited {deadline:?}, but {description} did not happen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (30 s at most) until the execution is RUNNING, through GetExecutionStatus on a clone of
/// `client`, so a test can act on a call it knows is in progress.
pub async fn wait_until_running(client: &FunctionServiceClient<Channel>, execution_id: &str) {
    wait_until(
        &format!("execution {execution_id} reaching RUNNING"),
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            let execution_id = execution_id.to_owned();
            async move {
                let status = client
                    .get_execution_status(proto::GetExecutionStatusRequest {
                        execution_id,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                status
                    .result
                    .is_some_and(|result| result.status == proto::ExecutionStatus::Running as i32)
            }
        },
    )
    .await;
}

/// The same request with a client-chosen execution id, so the test can look the call up while
/// it runs.
pub fn with_execution_id(
    mut request: proto::InvokeFunctionRequest,
    execution_id: &str,
) -> proto::InvokeFunctionRequest {
    request
        .context
        .get_or_insert_with(Default::default)
        .execution_id = execution_id.into();
    request
}
