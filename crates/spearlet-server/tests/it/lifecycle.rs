//! The execution lifecycle from outside: async acceptance and polling, waiting, streaming,
//! cancellation of pending and running work, and records and tasks surviving a restart.

use crate::support;

use std::time::{Duration, Instant};

use spearlet_proto as proto;
use spearlet_server::NodeConfig;
use support::*;
use tonic::Code;

#[tokio::test]
async fn async_invocations_are_accepted_then_polled_to_completion() {
    let mut node = start_node().await;
    let accepted = node
        .client
        .invoke_function(asynchronous(invoke("hello", br#"{"name":"Async"}"#)))
        .await
        .unwrap()
        .into_inner();
    assert!(accepted.success, "{}", accepted.message);
    assert_eq!(status(&accepted), proto::ExecutionStatus::Pending);
    assert_eq!(
        accepted.status_endpoint,
        format!("/v1/executions/{}", accepted.execution_id)
    );
    let result = wait_for_status(
        &mut node,
        &accepted.execution_id,
        proto::ExecutionStatus::Completed,
    )
    .await;
    let output = result.output.unwrap().data;
    assert!(String::from_utf8(output).unwrap().contains("Async"));
    assert_eq!(result.metrics["attempt"], "1");
}

#[tokio::test]
async fn async_with_wait_returns_the_final_state() {
    let mut node = start_node().await;
    let mut request = asynchronous(invoke("echo", b"waited"));
    request.wait = true;
    let response = node
        .client
        .invoke_function(request)
        .await
        .unwrap()
        .into_inner();
    assert!(response.success, "{}", response.message);
    assert_eq!(status(&response), proto::ExecutionStatus::Completed);
    assert_eq!(output(&response), b"waited");

    // A wait that outlasts the client's deadline answers with the current state instead. The
    // execution is known to run before the waiting repeat of it is sent, so the state it
    // answers with is RUNNING however long the start took.
    let slow = with_execution_id(asynchronous(invoke("sleep", b"60000")), "slow-waited");
    node.client.invoke_function(slow.clone()).await.unwrap();
    wait_until_running(&node.client, "slow-waited").await;
    let mut waited_repeat = slow;
    waited_repeat.wait = true;
    let mut grpc_request = tonic::Request::new(waited_repeat);
    grpc_request.set_timeout(Duration::from_millis(500));
    let response = node
        .client
        .invoke_function(grpc_request)
        .await
        .unwrap()
        .into_inner();
    assert!(!response.success);
    assert_eq!(response.execution_id, "slow-waited");
    assert_eq!(status(&response), proto::ExecutionStatus::Running);
    let cancelled = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: "slow-waited".into(),
            reason: "the test is done with it".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success, "{}", cancelled.message);
}

#[tokio::test]
async fn estimated_completion_comes_from_recent_durations() {
    let mut node = start_node().await;
    let first = node
        .client
        .invoke_function(asynchronous(invoke("sleep", b"100")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.estimated_completion_ms, 0, "no history yet");
    wait_for_status(
        &mut node,
        &first.execution_id,
        proto::ExecutionStatus::Completed,
    )
    .await;
    let second = node
        .client
        .invoke_function(asynchronous(invoke("sleep", b"100")))
        .await
        .unwrap()
        .into_inner();
    assert!(
        (80..2000).contains(&second.estimated_completion_ms),
        "{}",
        second.estimated_completion_ms
    );
}

#[tokio::test]
async fn async_idempotency_never_runs_twice() {
    let mut node = start_node().await;
    let mut request = asynchronous(invoke("echo", b"one"));
    request
        .context
        .get_or_insert_with(Default::default)
        .execution_id = "async-once".into();
    let first = node
        .client
        .invoke_function(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = node
        .client
        .invoke_function(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.execution_id, second.execution_id);
    wait_for_status(&mut node, "async-once", proto::ExecutionStatus::Completed).await;
    let listed = node
        .client
        .list_executions(proto::ListExecutionsRequest {
            task_id: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.executions.len(), 1);
}

#[tokio::test]
async fn async_pending_work_has_a_bound() {
    let mut node = start_node_with(|config| {
        config.max_async_pending = 2;
        config.max_concurrent_executions = 1;
    })
    .await;
    for _ in 0..2 {
        node.client
            .invoke_function(asynchronous(with_timeout(invoke("spin", b""), 2000)))
            .await
            .unwrap();
    }
    let error = node
        .client
        .invoke_function(asynchronous(invoke("echo", b"")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(error.message().contains("max_async_pending"));
}

#[tokio::test]
async fn pending_executions_are_cancelled_before_they_run() {
    let mut node = start_node_with(|config| config.max_concurrent_executions = 1).await;
    let blocker = node
        .client
        .invoke_function(asynchronous(invoke("spin", b"")))
        .await
        .unwrap()
        .into_inner();
    wait_for_status(
        &mut node,
        &blocker.execution_id,
        proto::ExecutionStatus::Running,
    )
    .await;
    let queued = node
        .client
        .invoke_function(asynchronous(invoke("echo", b"never")))
        .await
        .unwrap()
        .into_inner();
    let cancelled = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: queued.execution_id.clone(),
            reason: "not needed".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success);
    let status = status_of(&mut node, &queued.execution_id).await;
    let result = status.result.unwrap();
    assert_eq!(result.status, proto::ExecutionStatus::Cancelled as i32);
    assert!(result.started_at.is_none(), "it never ran");
    assert!(result.error_message.contains("not needed"));

    let started = Instant::now();
    let stopped = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: blocker.execution_id.clone(),
            reason: "stop spinning".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stopped.success);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_sleeping_guest_is_cancelled_promptly() {
    let mut node = start_node().await;
    let accepted = node
        .client
        .invoke_function(asynchronous(invoke("sleep", b"")))
        .await
        .unwrap()
        .into_inner();
    wait_for_status(
        &mut node,
        &accepted.execution_id,
        proto::ExecutionStatus::Running,
    )
    .await;
    let started = Instant::now();
    let cancelled = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: accepted.execution_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success);
    assert_eq!(
        cancelled.final_status,
        proto::ExecutionStatus::Cancelled as i32
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn streams_deliver_output_as_it_is_written() {
    let mut node = start_node().await;
    let mut stream = node
        .client
        .stream_function(invoke("ticker", b"4"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, proto::ExecutionStatus::Running as i32);
    assert!(!first.execution_id.is_empty());
    let mut chunk_times = Vec::new();
    let mut text = String::new();
    let final_message = loop {
        let message = stream.message().await.unwrap().expect("a final message");
        if message.is_final {
            break message;
        }
        assert_eq!(
            spearlet_proto::well_known::unpack_bytes(message.chunk_data.as_ref().unwrap()).unwrap(),
            message.data
        );
        text.push_str(&String::from_utf8(message.data).unwrap());
        chunk_times.push(Instant::now());
    };
    assert_eq!(
        final_message.status,
        proto::ExecutionStatus::Completed as i32
    );
    assert_eq!(text, "tick 1\ntick 2\ntick 3\ntick 4\n");
    assert!(chunk_times.len() >= 4);
    // Lines are written ~100 ms apart; all at the end would put them within a millisecond.
    let spread = *chunk_times.last().unwrap() - chunk_times[0];
    assert!(
        spread > Duration::from_millis(150),
        "chunks arrived within {spread:?}"
    );

    // The output is recorded too.
    let recorded = status_of(&mut node, &first.execution_id).await;
    assert_eq!(
        recorded.result.unwrap().output.unwrap().data,
        text.as_bytes()
    );
}

#[tokio::test]
async fn dropping_a_stream_cancels_its_execution() {
    let mut node = start_node().await;
    let mut stream = node
        .client
        .stream_function(invoke("spin", b""))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    drop(stream);
    wait_for_status(
        &mut node,
        &first.execution_id,
        proto::ExecutionStatus::Cancelled,
    )
    .await;
}

#[tokio::test]
async fn stream_mode_on_invoke_function_points_to_stream_function() {
    let mut node = start_node().await;
    let mut request = invoke("echo", b"");
    request.execution_mode = proto::ExecutionMode::Stream as i32;
    let error = node.client.invoke_function(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("StreamFunction"));
}

#[tokio::test]
async fn records_and_tasks_survive_a_clean_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = NodeConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.path().to_path_buf(),
            shutdown_grace_ms: 2000,
            ..NodeConfig::default()
        };
        config.wasm.max_instances = 64;
        config
    };
    let server = spearlet_server::serve(config()).await.unwrap();
    let mut client = connect(server.grpc_addr).await;
    let created = client
        .create_task(proto::CreateTaskRequest {
            function_name: String::new(),
            task_name: "kept".into(),
            task_description: "survives".into(),
            artifact_spec: Some(wasm_artifact(
                example("echo"),
                &[("spearlet.timeout_ms", "5000")],
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let sync = client
        .invoke_function(invoke("kept", b"before"))
        .await
        .unwrap()
        .into_inner();
    let queued = client
        .invoke_function(asynchronous(invoke("kept", b"async before")))
        .await
        .unwrap()
        .into_inner();
    server.shutdown().await.unwrap();

    let server = spearlet_server::serve(config()).await.unwrap();
    let mut client = connect(server.grpc_addr).await;
    let task = client
        .get_task(proto::GetTaskRequest {
            task_id: created.task_id.clone(),
            include_executions: true,
            execution_limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(task.found);
    let info = task.task.unwrap();
    assert_eq!(info.task_name, "kept");
    assert_eq!(info.created_at, created.created_at);
    assert_eq!(info.execution_count, 2);
    assert_eq!(task.executions.len(), 2);
    let before = client
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: sync.execution_id.clone(),
            include_result: true,
            include_logs: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(before.found);
    assert_eq!(before.result.unwrap().output.unwrap().data, b"before");
    // The async one ran (before the shutdown or after the restart) exactly once.
    let started = Instant::now();
    loop {
        let status = client
            .get_execution_status(proto::GetExecutionStatusRequest {
                execution_id: queued.execution_id.clone(),
                include_result: true,
                include_logs: true,
            })
            .await
            .unwrap()
            .into_inner();
        let result = status.result.clone().unwrap();
        if result.status == proto::ExecutionStatus::Completed as i32 {
            assert_eq!(result.output.unwrap().data, b"async before");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{result:?} {:?}",
            status.logs
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New executions continue the sequence: listing stays in submission order.
    let after = client
        .invoke_function(invoke("kept", b"after"))
        .await
        .unwrap()
        .into_inner();
    let listed = client
        .list_executions(proto::ListExecutionsRequest {
            task_id: "kept".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = listed
        .executions
        .into_iter()
        .map(|info| info.execution_id)
        .collect();
    assert_eq!(
        ids,
        vec![sync.execution_id, queued.execution_id, after.execution_id]
    );
    server.shutdown().await.unwrap();
}
