//! The FunctionService contract, checked from outside: a real node on 127.0.0.1:0, a generated
//! client, real wasm guests (the bundled examples and small WAT modules).

use crate::support;

use std::time::{Duration, Instant};

use spearlet_proto as proto;
use spearlet_proto::well_known;
use support::*;
use tonic::Code;

#[tokio::test]
async fn examples_are_registered_and_echo_round_trips_input() {
    let mut node = start_node().await;
    let response = node
        .client
        .invoke_function(invoke("echo", b"hello spearlet"))
        .await
        .unwrap()
        .into_inner();
    assert!(response.success, "{}", response.message);
    assert_eq!(output(&response), b"hello spearlet");
    assert_eq!(status(&response), proto::ExecutionStatus::Completed);
    assert!(
        result(&response).result.is_none(),
        "input-style calls answer only in output"
    );
    assert!(!response.execution_id.is_empty());
    assert!(!response.instance_id.is_empty());
    let metrics = &result(&response).metrics;
    for key in ["queue_wait_ms", "cold_start", "attempt"] {
        assert!(metrics.contains_key(key), "metrics lack {key}: {metrics:?}");
    }
    // The task was loaded at start, but its pool had no instance yet: this call started one.
    assert_eq!(metrics["cold_start"], "true");
    assert!(metrics.contains_key("instance_start_ms"), "{metrics:?}");
    let started = result(&response).started_at.unwrap();
    let completed = result(&response).completed_at.unwrap();
    assert!((completed.seconds, completed.nanos) >= (started.seconds, started.nanos));

    let again = node
        .client
        .invoke_function(invoke("echo", b"again"))
        .await
        .unwrap()
        .into_inner();
    let metrics = &result(&again).metrics;
    assert_eq!(metrics["cold_start"], "false", "{metrics:?}");
    assert_eq!(
        again.instance_id, response.instance_id,
        "the warm instance served it"
    );
}

#[tokio::test]
async fn old_clients_send_a_bytes_value_parameter_and_get_result_any() {
    let mut node = start_node().await;
    let request = proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: "echo".into(),
        parameters: vec![proto::FunctionParameter {
            name: "input".into(),
            r#type: "bytes".into(),
            value: Some(well_known::bytes_any(b"\x00\x01binary".to_vec())),
            required: true,
            description: String::new(),
        }],
        ..Default::default()
    };
    let response = node
        .client
        .invoke_function(request)
        .await
        .unwrap()
        .into_inner();
    assert!(response.success, "{}", response.message);
    let result = result(&response);
    assert!(
        result.output.is_none(),
        "parameter-style calls answer only in result"
    );
    let any = result.result.as_ref().unwrap();
    assert_eq!(
        well_known::unpack_bytes(any).as_deref(),
        Some(&b"\x00\x01binary"[..])
    );
}

#[tokio::test]
async fn hello_greets_by_name() {
    let mut node = start_node().await;
    let response = node
        .client
        .invoke_function(invoke("hello", br#"{"name":"Ada"}"#))
        .await
        .unwrap()
        .into_inner();
    assert!(
        String::from_utf8(output(&response))
            .unwrap()
            .contains("Hello, Ada!")
    );
}

#[tokio::test]
async fn guest_failures_are_outcomes_not_errors() {
    let mut node = start_node().await;
    let response = node
        .client
        .invoke_function(invoke("fail", b""))
        .await
        .unwrap()
        .into_inner();
    assert!(!response.success);
    assert_eq!(status(&response), proto::ExecutionStatus::Failed);
    assert_eq!(result(&response).error_code, "EXIT_CODE");
    assert!(result(&response).error_message.contains('3'));
    let status_response = node
        .client
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: response.execution_id.clone(),
            include_result: true,
            include_logs: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status_response.found);
    assert!(
        status_response
            .logs
            .iter()
            .any(|line| line.contains("exiting with code 3")),
        "{:?}",
        status_response.logs
    );
}

#[tokio::test]
async fn new_task_from_a_data_url_then_existing_task_by_id() {
    let mut node = start_node_with(|config| config.register_examples = false).await;
    let response = node
        .client
        .invoke_function(new_task(
            "my-echo",
            wasm_artifact(example("echo"), &[]),
            b"first",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(response.success, "{}", response.message);
    assert_eq!(output(&response), b"first");
    assert_eq!(result(&response).metrics["cold_start"], "true");
    let task_id = response.task_id.clone();

    let second = node
        .client
        .invoke_function(invoke(&task_id, b"second"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&second), b"second");
    assert_eq!(second.task_id, task_id);
    assert_eq!(result(&second).metrics["cold_start"], "false");

    // The same NEW_TASK again reuses the task.
    let again = node
        .client
        .invoke_function(new_task(
            "my-echo",
            wasm_artifact(example("echo"), &[]),
            b"x",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.task_id, task_id);
    assert_eq!(result(&again).metrics["cold_start"], "false");

    // Different content under the same (empty) version is refused.
    let error = node
        .client
        .invoke_function(new_task(
            "my-echo",
            wasm_artifact(example("hello"), &[]),
            b"x",
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "{}", error.message());

    // A newer version updates the task in place.
    let mut newer = wasm_artifact(example("hello"), &[]);
    newer.version = "2".into();
    let updated = node
        .client
        .invoke_function(new_task("my-echo", newer, br#"{"name":"v2"}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.task_id, task_id);
    assert!(String::from_utf8(output(&updated)).unwrap().contains("v2"));
}

#[tokio::test]
async fn existing_task_rules() {
    let mut node = start_node_with(|config| config.register_examples = false).await;
    let error = node
        .client
        .invoke_function(invoke("ghost", b""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(error.message().contains("ghost"));

    let mut create = invoke("chosen-id", b"made");
    create.create_if_not_exists = true;
    create.artifact_spec = Some(wasm_artifact(example("echo"), &[]));
    let response = node
        .client
        .invoke_function(create)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.task_id, "chosen-id");
    assert_eq!(output(&response), b"made");

    let mut bad_id = invoke("bad id!", b"");
    bad_id.create_if_not_exists = true;
    bad_id.artifact_spec = Some(wasm_artifact(example("echo"), &[]));
    let error = node.client.invoke_function(bad_id).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);

    let unknown_type = proto::InvokeFunctionRequest {
        task_id: "chosen-id".into(),
        ..Default::default()
    };
    let error = node.client.invoke_function(unknown_type).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("invocation_type"));

    let missing_artifact = proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::NewTask as i32,
        task_name: "x".into(),
        ..Default::default()
    };
    let error = node
        .client
        .invoke_function(missing_artifact)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("artifact_spec"));
}

#[tokio::test]
async fn bad_artifacts_get_specific_errors_and_the_node_keeps_serving() {
    let zero_digest = "0".repeat(64);
    let echo = || wasm_artifact(example("echo"), &[]);
    let with = |change: &dyn Fn(&mut proto::ArtifactSpec)| {
        let mut artifact = echo();
        change(&mut artifact);
        artifact
    };
    // (what is wrong, the artifact, the expected code, a text the message must contain)
    let table: Vec<(&str, proto::ArtifactSpec, Code, &str)> = vec![
        (
            "checksum mismatch",
            with(&|artifact| artifact.checksum = format!("sha256:{zero_digest}")),
            Code::FailedPrecondition,
            &zero_digest,
        ),
        (
            "file outside the allowed roots",
            with(&|artifact| artifact.location = "file:///etc/hostname".into()),
            Code::PermissionDenied,
            "allowed roots",
        ),
        (
            "malformed module",
            wasm_artifact(b"\0asm\x01\0\0\0garbage", &[]),
            Code::InvalidArgument,
            "WebAssembly",
        ),
        (
            "unknown scheme",
            with(&|artifact| artifact.location = "ftp://host/x.wasm".into()),
            Code::InvalidArgument,
            "ftp",
        ),
        (
            "unsupported artifact type",
            with(&|artifact| artifact.artifact_type = "jar".into()),
            Code::InvalidArgument,
            "wasm",
        ),
        (
            "unknown spearlet key",
            wasm_artifact(example("echo"), &[("spearlet.timeout", "5")]),
            Code::InvalidArgument,
            "spearlet.timeout",
        ),
    ];
    let mut node = start_node().await;
    for (case, artifact, code, named) in table {
        let error = node
            .client
            .invoke_function(new_task("bad", artifact, b""))
            .await
            .unwrap_err();
        assert_eq!(error.code(), code, "{case}: {}", error.message());
        assert!(
            error.message().contains(named),
            "{case}: {}",
            error.message()
        );
    }

    // Still serving.
    let response = node
        .client
        .invoke_function(invoke("echo", b"alive"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response), b"alive");
}

#[tokio::test]
async fn files_under_the_data_dir_are_allowed() {
    let mut node = start_node_with(|config| config.register_examples = false).await;
    let path = node.data_dir.path().join("mine.wasm");
    std::fs::write(&path, example("echo")).unwrap();
    let mut artifact = wasm_artifact(b"", &[]);
    artifact.location = format!("file://{}", path.display());
    let response = node
        .client
        .invoke_function(new_task("from-file", artifact, b"ok"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response), b"ok");
}

#[tokio::test]
async fn requests_are_checked_before_any_execution_exists() {
    let mut node = start_node().await;
    let mut request = invoke("echo", b"");
    request.function_name = "no_such_export".into();
    let error = node.client.invoke_function(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("_start"), "{}", error.message());

    let mut request = invoke("echo", b"");
    request.execution_mode = proto::ExecutionMode::Stream as i32;
    let error = node.client.invoke_function(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("StreamFunction"));

    let mut request = invoke("echo", b"");
    request.execution_mode = proto::ExecutionMode::Async as i32;
    request.function_name = "no_such_export".into();
    let error = node.client.invoke_function(request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);

    let listed = node
        .client
        .list_executions(proto::ListExecutionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.executions.is_empty(), "{:?}", listed.executions);
}

#[tokio::test]
async fn spin_times_out_promptly_and_so_does_a_sleeping_guest() {
    let mut node = start_node().await;
    for task in ["spin", "sleep"] {
        let started = Instant::now();
        let response = node
            .client
            .invoke_function(with_timeout(invoke(task, b""), 200))
            .await
            .unwrap()
            .into_inner();
        let elapsed = started.elapsed();
        assert!(!response.success);
        assert_eq!(status(&response), proto::ExecutionStatus::Timeout, "{task}");
        assert_eq!(result(&response).error_code, "TIMEOUT");
        // Generous bound: the behaviour is "stops near its deadline"; tight figures are benchmarks.
        assert!(
            elapsed < Duration::from_millis(2000),
            "{task} took {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn memory_growth_fails_at_the_task_limit() {
    let mut node = start_node_with(|config| config.register_examples = false).await;
    let artifact = wasm_artifact(example("memhog"), &[("spearlet.memory_limit_mb", "32")]);
    let small = node
        .client
        .invoke_function(new_task("hog", artifact.clone(), b"8"))
        .await
        .unwrap()
        .into_inner();
    assert!(small.success, "{}", small.message);
    assert!(result(&small).memory_used_bytes >= 8 << 20);
    let big = node
        .client
        .invoke_function(new_task("hog", artifact, b"64"))
        .await
        .unwrap()
        .into_inner();
    assert!(!big.success);
    assert_eq!(
        result(&big).error_code,
        "MEMORY_LIMIT",
        "{}",
        result(&big).error_message
    );
}

#[tokio::test]
async fn output_beyond_the_cap_is_output_too_large() {
    let mut node = start_node_with(|config| config.register_examples = false).await;
    let artifact = wasm_artifact(example("echo"), &[("spearlet.max_output_bytes", "10")]);
    let response = node
        .client
        .invoke_function(new_task("capped", artifact, &[b'x'; 100]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result(&response).error_code, "OUTPUT_TOO_LARGE");
}

/// Prints its environment (NUL-separated `K=V`) and argv to stdout.
const PRINT_ENVIRONMENT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (func (export "_start")
    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $environ_get (i32.const 1024) (i32.const 8192)))
    (i32.store (i32.const 16) (i32.const 8192))
    (i32.store (i32.const 20) (i32.load (i32.const 4)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 65536)))
    (i32.store (i32.const 16) (i32.const 65536))
    (i32.store (i32.const 20) (i32.load (i32.const 4)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))"#;

#[tokio::test]
async fn guests_see_the_documented_environment_and_argv() {
    let mut node = start_node_with(|config| config.register_examples = false).await;
    let mut request = new_task(
        "env-printer",
        wasm_artifact(
            PRINT_ENVIRONMENT.as_bytes(),
            &[("spearlet.env.FROM_TASK", "task-value")],
        ),
        b"",
    );
    let context = request.context.get_or_insert_with(Default::default);
    context.session_id = "session-7".into();
    context
        .environment
        .insert("FROM_CALL".into(), "call-value".into());
    context.headers.insert("x-request-id".into(), "abc".into());
    let response = node
        .client
        .invoke_function(request)
        .await
        .unwrap()
        .into_inner();
    assert!(response.success, "{}", response.message);
    let text = String::from_utf8(output(&response)).unwrap();
    let entries: Vec<&str> = text.split('\0').collect();
    for expected in [
        "FROM_TASK=task-value".to_owned(),
        "FROM_CALL=call-value".to_owned(),
        "SPEAR_SESSION_ID=session-7".to_owned(),
        "SPEAR_HEADER_X_REQUEST_ID=abc".to_owned(),
        format!("SPEAR_EXECUTION_ID={}", response.execution_id),
        format!("SPEAR_TASK_ID={}", response.task_id),
        "SPEAR_FUNCTION_NAME=".to_owned(),
        "env-printer".to_owned(),
    ] {
        assert!(
            entries.contains(&expected.as_str()),
            "missing {expected:?} in {entries:?}"
        );
    }
}

#[tokio::test]
async fn client_execution_ids_make_calls_idempotent() {
    let mut node = start_node().await;
    let mut first = invoke("echo", b"once");
    first
        .context
        .get_or_insert_with(Default::default)
        .execution_id = "my-exec-1".into();
    let response = node
        .client
        .invoke_function(first.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.execution_id, "my-exec-1");
    let again = node
        .client
        .invoke_function(first)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.execution_id, "my-exec-1");
    assert_eq!(output(&again), b"once");
    let listed = node
        .client
        .list_executions(proto::ListExecutionsRequest {
            task_id: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.executions.len(), 1, "ran exactly once");

    let mut different = invoke("echo", b"other input");
    different
        .context
        .get_or_insert_with(Default::default)
        .execution_id = "my-exec-1".into();
    let error = node.client.invoke_function(different).await.unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn oversized_requests_are_resource_exhausted() {
    let mut node = start_node_with(|config| config.max_request_bytes = 64 * 1024).await;
    let error = node
        .client
        .invoke_function(invoke("echo", &vec![b'x'; 100 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{}", error.message());
    assert!(error.message().contains("max_request_bytes"));
    let response = node
        .client
        .invoke_function(invoke("echo", b"small"))
        .await
        .unwrap()
        .into_inner();
    assert!(response.success);
}

#[tokio::test]
async fn large_payloads_round_trip() {
    let mut node = start_node().await;
    let payload = vec![b'z'; 5 << 20];
    let response = node
        .client
        .invoke_function(invoke("echo", &payload))
        .await
        .unwrap()
        .into_inner();
    assert!(response.success, "{}", response.message);
    assert_eq!(output(&response).len(), payload.len());
}

#[tokio::test]
async fn running_executions_can_be_cancelled_by_id() {
    let mut node = start_node().await;
    let mut spin = invoke("spin", b"");
    spin.context
        .get_or_insert_with(Default::default)
        .execution_id = "to-cancel".into();
    let mut client = node.client.clone();
    let call = tokio::spawn(async move { client.invoke_function(spin).await });
    // Wait until it is running.
    let started = Instant::now();
    loop {
        let status = node
            .client
            .get_execution_status(proto::GetExecutionStatusRequest {
                execution_id: "to-cancel".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if status.found && status.result.unwrap().status == proto::ExecutionStatus::Running as i32 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancel_started = Instant::now();
    let cancelled = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: "to-cancel".into(),
            reason: "test says stop".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success, "{}", cancelled.message);
    assert_eq!(
        cancelled.final_status,
        proto::ExecutionStatus::Cancelled as i32
    );
    assert!(cancel_started.elapsed() < Duration::from_secs(2));
    let response = call.await.unwrap().unwrap().into_inner();
    assert_eq!(status(&response), proto::ExecutionStatus::Cancelled);
    assert_eq!(result(&response).error_code, "CANCELLED");
    assert!(result(&response).error_message.contains("test says stop"));

    let again = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: "to-cancel".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.success);
    assert_eq!(again.final_status, proto::ExecutionStatus::Cancelled as i32);

    let error = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: "never-existed".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test]
async fn a_caller_that_goes_away_cancels_its_execution() {
    let mut node = start_node().await;
    let spin = with_execution_id(invoke("spin", b""), "abandoned");
    let mut client = connect(node.server.grpc_addr).await;
    let call = tokio::spawn(async move { client.invoke_function(spin).await });
    // The caller goes away only once the node runs its call, so the cancellation is of a
    // running guest rather than of a request that never arrived.
    wait_until_running(&node.client, "abandoned").await;
    call.abort();
    let started = Instant::now();
    loop {
        let status = node
            .client
            .get_execution_status(proto::GetExecutionStatusRequest {
                execution_id: "abandoned".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let result = status.result.unwrap();
        if result.status == proto::ExecutionStatus::Cancelled as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still {}",
            result.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn list_tasks_paginates_by_name() {
    let mut node = start_node().await;
    let mut names = Vec::new();
    let mut start_after = String::new();
    loop {
        let page = node
            .client
            .list_tasks(proto::ListTasksRequest {
                limit: 2,
                start_after: start_after.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.tasks.iter().map(|task| task.task_name.clone()));
        if !page.has_more {
            break;
        }
        assert_eq!(page.tasks.len(), 2);
        start_after = page.next_start_after;
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), spearlet_examples::EXAMPLES.len());

    let prefixed = node
        .client
        .list_tasks(proto::ListTasksRequest {
            prefix: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let prefixed: Vec<String> = prefixed
        .tasks
        .into_iter()
        .map(|task| task.task_name)
        .collect();
    assert_eq!(prefixed, vec!["sleep", "spin"]);
}

#[tokio::test]
async fn get_task_reports_real_counts_and_executions() {
    let mut node = start_node().await;
    for _ in 0..3 {
        node.client
            .invoke_function(invoke("echo", b"x"))
            .await
            .unwrap();
    }
    node.client
        .invoke_function(invoke("fail", b""))
        .await
        .unwrap();
    let echo = node
        .client
        .get_task(proto::GetTaskRequest {
            task_id: "echo".into(),
            include_executions: true,
            execution_limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(echo.found);
    let task = echo.task.unwrap();
    assert_eq!(task.execution_count, 3);
    assert_eq!(task.last_status, proto::ExecutionStatus::Completed as i32);
    assert_eq!(echo.executions.len(), 2);
    assert!(task.created_at > 1_600_000_000_000, "Unix milliseconds");
    let fail = node
        .client
        .get_task(proto::GetTaskRequest {
            task_id: "fail".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fail.task.unwrap().last_status,
        proto::ExecutionStatus::Failed as i32
    );
    let missing = node
        .client
        .get_task(proto::GetTaskRequest {
            task_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.found);
}

#[tokio::test]
async fn delete_task_is_idempotent_and_guards_running_work() {
    let mut node = start_node().await;
    node.client
        .invoke_function(invoke("echo", b"x"))
        .await
        .unwrap();
    let deleted = node
        .client
        .delete_task(proto::DeleteTaskRequest {
            task_id: "echo".into(),
            force: false,
            cleanup_executions: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.success && deleted.deleted);
    assert_eq!(deleted.cleaned_executions, 1);
    let again = node
        .client
        .delete_task(proto::DeleteTaskRequest {
            task_id: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.success && !again.deleted);
    let error = node
        .client
        .invoke_function(invoke("echo", b""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    // A running execution blocks deletion unless forced.
    let mut client = node.client.clone();
    let spin = tokio::spawn(async move { client.invoke_function(invoke("spin", b"")).await });
    let started = Instant::now();
    loop {
        let health = node
            .client
            .get_health(proto::GetHealthRequest {
                include_details: true,
            })
            .await
            .unwrap()
            .into_inner();
        if health.details.unwrap().running_executions == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = node
        .client
        .delete_task(proto::DeleteTaskRequest {
            task_id: "spin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    let forced = node
        .client
        .delete_task(proto::DeleteTaskRequest {
            task_id: "spin".into(),
            force: true,
            cleanup_executions: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(forced.deleted);
    let response = spin.await.unwrap().unwrap().into_inner();
    assert_eq!(status(&response), proto::ExecutionStatus::Cancelled);
}

#[tokio::test]
async fn list_executions_filters_and_paginates_in_submission_order() {
    let mut node = start_node().await;
    let mut submitted = Vec::new();
    for index in 0..5 {
        let response = node
            .client
            .invoke_function(invoke("echo", format!("{index}").as_bytes()))
            .await
            .unwrap()
            .into_inner();
        submitted.push(response.execution_id);
        node.client
            .invoke_function(invoke("fail", b""))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut start_after = String::new();
    loop {
        let page = node
            .client
            .list_executions(proto::ListExecutionsRequest {
                task_id: "echo".into(),
                limit: 2,
                start_after: start_after.clone(),
                status_filter: proto::ExecutionStatus::Completed as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.executions.iter().map(|info| info.execution_id.clone()));
        if !page.has_more {
            break;
        }
        start_after = page.next_start_after;
    }
    assert_eq!(seen, submitted);
    let failed = node
        .client
        .list_executions(proto::ListExecutionsRequest {
            status_filter: proto::ExecutionStatus::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.executions.len(), 5);
    assert!(
        failed
            .executions
            .iter()
            .all(|info| info.status == proto::ExecutionStatus::Failed as i32)
    );
}

#[tokio::test]
async fn health_and_stats_move_with_the_calls_made() {
    let mut node = start_node().await;
    let stats_request = proto::GetStatsRequest {
        include_task_stats: true,
        include_execution_stats: true,
        time_range_hours: 0,
    };
    let before = node
        .client
        .get_stats(stats_request)
        .await
        .unwrap()
        .into_inner();
    for _ in 0..4 {
        node.client
            .invoke_function(invoke("echo", b"x"))
            .await
            .unwrap();
    }
    node.client
        .invoke_function(invoke("fail", b""))
        .await
        .unwrap();
    let after = node
        .client
        .get_stats(stats_request)
        .await
        .unwrap()
        .into_inner();
    let service_before = before.service_stats.unwrap();
    let service = after.service_stats.unwrap();
    assert_eq!(
        service.total_executions - service_before.total_executions,
        5
    );
    assert_eq!(
        service.successful_executions - service_before.successful_executions,
        4
    );
    assert_eq!(
        service.failed_executions - service_before.failed_executions,
        1
    );
    assert_eq!(
        service.total_tasks as usize,
        spearlet_examples::EXAMPLES.len()
    );
    assert!(service.total_memory_used > 0);
    assert!(service.artifact_count > 0);
    assert!(service.average_response_time_ms > 0.0);
    let executions = after.execution_stats.unwrap();
    assert_eq!(executions.completed_executions, 4);
    assert_eq!(executions.failed_executions, 1);
    assert!((executions.success_rate_percent - 80.0).abs() < 1e-9);
    assert_eq!(executions.executions_by_function["echo/_start"], 4);
    let tasks = after.task_stats.unwrap();
    assert_eq!(
        tasks.tasks_by_type["wasm"] as usize,
        spearlet_examples::EXAMPLES.len()
    );
    assert_eq!(tasks.most_active_tasks[0].task_name, "echo");
    assert_eq!(tasks.idle_tasks + tasks.active_tasks, service.total_tasks);

    let health = node
        .client
        .get_health(proto::GetHealthRequest {
            include_details: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, "healthy");
    let details = health.details.unwrap();
    assert_eq!(details.total_executions, service.total_executions as i64);
    assert_eq!(details.running_executions, 0);
    assert!(details.system_info.contains_key("version"));
    assert!(details.system_info["runtimes"].contains("wasm"));
}

#[tokio::test]
async fn create_task_registers_without_running() {
    let mut node = start_node_with(|config| config.register_examples = false).await;
    let info = node
        .client
        .create_task(proto::CreateTaskRequest {
            function_name: String::new(),
            task_name: "registered".into(),
            task_description: "only registered".into(),
            artifact_spec: Some(wasm_artifact(example("echo"), &[("team", "a")])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.task_name, "registered");
    assert_eq!(info.execution_count, 0);
    assert_eq!(info.metadata["team"], "a");
    assert!(
        info.artifact_spec
            .unwrap()
            .artifact_id
            .starts_with("sha256:")
    );
    let listed = node
        .client
        .list_executions(proto::ListExecutionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.executions.is_empty());
}

#[tokio::test]
async fn queue_wait_counts_against_the_timeout() {
    let mut node = start_node_with(|config| config.max_concurrent_executions = 1).await;
    let mut client = node.client.clone();
    // The blocker holds the only slot until the test cancels it, however slow the machine.
    let blocker_request = with_execution_id(with_timeout(invoke("spin", b""), 30_000), "blocker");
    let blocker = tokio::spawn(async move { client.invoke_function(blocker_request).await });
    wait_until_running(&node.client, "blocker").await;
    let queued = node
        .client
        .invoke_function(with_timeout(invoke("echo", b"late"), 300))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&queued), proto::ExecutionStatus::Timeout);
    assert!(
        result(&queued).error_message.contains("queue"),
        "{:?}",
        result(&queued).error_message
    );
    let cancelled = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: "blocker".into(),
            reason: "the queued call has timed out".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success, "{}", cancelled.message);
    let blocked = blocker.await.unwrap().unwrap().into_inner();
    assert_eq!(status(&blocked), proto::ExecutionStatus::Cancelled);
}
