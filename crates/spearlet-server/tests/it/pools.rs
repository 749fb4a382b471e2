//! Instance pools, scheduling, the priority queue and autoscaling, checked from outside: a real
//! node on 127.0.0.1:0, the generated client, the bundled example guests.

use crate::support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

async fn create_task(node: &mut TestNode, name: &str, guest: &str, keys: &[(&str, &str)]) {
    node.client
        .create_task(proto::CreateTaskRequest {
            function_name: String::new(),
            task_name: name.into(),
            task_description: String::new(),
            artifact_spec: Some(wasm_artifact(example(guest), keys)),
        })
        .await
        .unwrap();
}

async fn service_stats(node: &mut TestNode) -> proto::ServiceStats {
    node.client
        .get_stats(proto::GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .service_stats
        .unwrap()
}

async fn pool_of(node: &mut TestNode, task_name: &str) -> proto::PoolStats {
    pool_stats(&mut node.client, task_name).await
}

async fn pool_stats(
    client: &mut FunctionServiceClient<Channel>,
    task_name: &str,
) -> proto::PoolStats {
    let stats = client
        .get_stats(proto::GetStatsRequest {
            include_task_stats: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stats
        .pools
        .into_iter()
        .find(|pool| pool.task_name == task_name)
        .unwrap_or_else(|| panic!("no pool for {task_name}"))
}

/// How many calls wait in the task's queue.
async fn pool_waiting(client: &mut FunctionServiceClient<Channel>, task_name: &str) -> i32 {
    pool_stats(client, task_name).await.waiting
}

fn with_priority(
    mut request: proto::InvokeFunctionRequest,
    priority: &str,
) -> proto::InvokeFunctionRequest {
    request
        .invocation_metadata
        .insert("priority".into(), priority.into());
    request
}

#[tokio::test]
async fn two_hundred_calls_share_at_most_four_instances() {
    let mut node = start_node().await;
    create_task(
        &mut node,
        "sleepy",
        "sleep",
        &[("spearlet.pool.max_instances", "4")],
    )
    .await;
    let calls = concurrent_calls(&node, "sleepy", b"10", 200);
    let mut most_instances_seen = 0;
    while !calls.iter().all(|call| call.is_finished()) {
        let pool = pool_of(&mut node, "sleepy").await;
        most_instances_seen = most_instances_seen.max(pool.current_instances);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut instance_ids = HashSet::new();
    let mut waited = 0;
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(status(&response), proto::ExecutionStatus::Completed);
        instance_ids.insert(response.instance_id.clone());
        let queue_wait_ms: f64 = result(&response).metrics["queue_wait_ms"].parse().unwrap();
        if queue_wait_ms > 5.0 {
            waited += 1;
        }
    }
    assert!(most_instances_seen <= 4, "saw {most_instances_seen}");
    assert!(instance_ids.len() <= 4, "{instance_ids:?}");
    assert!(waited > 100, "only {waited} calls waited in the queue");
    let stats = service_stats(&mut node).await;
    let wait = stats.queue_wait.unwrap();
    assert!(wait.max_ms > 50.0, "{wait:?}");
    assert!(wait.p50_ms <= wait.p99_ms);
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_at_once() {
    let mut node = start_node_with(|config| {
        config.max_concurrent_executions = 2;
        config.max_queue_length = 3;
    })
    .await;
    let busy = concurrent_calls(&node, "sleep", b"10000", 5);
    // Two run, three wait: the queue is full.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = service_stats(&mut node).await;
        if stats.queue_length == 3 {
            assert_eq!(stats.max_queue_length, 3);
            break;
        }
        assert!(Instant::now() < deadline, "the queue never filled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = node
        .client
        .invoke_function(invoke("echo", b"one more"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(error.message().contains("max_queue_length"), "{error:?}");
    let retry_after_ms: u64 = error
        .metadata()
        .get("retry-after-ms")
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after_ms >= 10);
    // "At once" means the refusal did not wait for room: when it came, the two 10 s calls were
    // still running and the three queued ones still waiting, so nothing had left the queue.
    assert!(
        busy.iter().all(|call| !call.is_finished()),
        "a busy call ended before the refusal, so the refusal may have waited for it"
    );
    let stats = service_stats(&mut node).await;
    assert_eq!(stats.queue_length, 3, "{stats:?}");
    let health = node
        .client
        .get_health(proto::GetHealthRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, "degraded", "{}", health.message);
    node.server.shutdown().await.unwrap();
    for call in busy {
        let _ = call.await;
    }
}

#[tokio::test]
async fn a_high_priority_call_overtakes_a_hundred_queued_low_priority_calls() {
    let mut node = start_node().await;
    create_task(
        &mut node,
        "single",
        "sleep",
        &[("spearlet.pool.max_instances", "1")],
    )
    .await;
    // Occupies the only instance until the test cancels it, once the queue is full.
    let mut blocker_client = node.client.clone();
    let blocker_request = with_execution_id(invoke("single", b"60000"), "blocker");
    let blocker =
        tokio::spawn(async move { blocker_client.invoke_function(blocker_request).await });
    wait_until_running(&node.client, "blocker").await;
    let mut low_ids = Vec::new();
    for _ in 0..100 {
        let accepted = node
            .client
            .invoke_function(with_priority(asynchronous(invoke("single", b"1")), "low"))
            .await
            .unwrap()
            .into_inner();
        low_ids.push(accepted.execution_id);
    }
    let high = node
        .client
        .invoke_function(with_priority(asynchronous(invoke("single", b"1")), "high"))
        .await
        .unwrap()
        .into_inner();
    let client = node.client.clone();
    wait_until(
        "all 101 async calls waiting for the instance",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move { pool_waiting(&mut client, "single").await == 101 }
        },
    )
    .await;
    let cancelled = node
        .client
        .cancel_execution(proto::CancelExecutionRequest {
            execution_id: "blocker".into(),
            reason: "the queue is full".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success, "{}", cancelled.message);
    let blocked = blocker.await.unwrap().unwrap().into_inner();
    assert_eq!(status(&blocked), proto::ExecutionStatus::Cancelled);
    let high_started = wait_for_status(
        &mut node,
        &high.execution_id,
        proto::ExecutionStatus::Completed,
    )
    .await
    .started_at
    .unwrap();
    let mut started_after_high = 0;
    for execution_id in &low_ids {
        let info =
            wait_for_status(&mut node, execution_id, proto::ExecutionStatus::Completed).await;
        let started = info.started_at.unwrap();
        if (started.seconds, started.nanos) > (high_started.seconds, high_started.nanos) {
            started_after_high += 1;
        }
    }
    assert_eq!(started_after_high, 100, "the high-priority call ran first");
}

#[tokio::test]
async fn min_instances_are_warm_at_load_and_the_pool_shrinks_back_after_idle_timeout() {
    let mut node = start_node_with(|config| config.pool.autoscale_tick_ms = 100).await;
    create_task(
        &mut node,
        "warm",
        "sleep",
        &[
            ("spearlet.pool.min_instances", "2"),
            ("spearlet.pool.idle_timeout_ms", "300"),
            ("spearlet.autoscale.stable_window_ms", "600"),
            ("spearlet.autoscale.panic_window_ms", "300"),
            ("spearlet.autoscale.predictive", "false"),
        ],
    )
    .await;
    let client = node.client.clone();
    wait_until("two warm instances ready", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let pool = pool_stats(&mut client, "warm").await;
            pool.current_instances == 2
                && pool
                    .instances
                    .iter()
                    .all(|instance| instance.state == "ready")
        }
    })
    .await;
    let first = node
        .client
        .invoke_function(invoke("warm", b"1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result(&first).metrics["cold_start"], "false");

    for call in concurrent_calls(&node, "warm", b"300", 6) {
        call.await.unwrap().unwrap();
    }
    assert_eq!(pool_of(&mut node, "warm").await.current_instances, 6);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pool = pool_of(&mut node, "warm").await;
        if pool.current_instances == 2 {
            assert_eq!(pool.desired_instances, 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not shrink: {pool:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reuse_task_keeps_state_across_calls_and_per_call_does_not() {
    let mut node = start_node().await;
    create_task(
        &mut node,
        "counter-reuse",
        "counter",
        &[
            ("spearlet.isolation", "reuse"),
            ("spearlet.pool.max_instances", "1"),
        ],
    )
    .await;
    create_task(&mut node, "counter-fresh", "counter", &[]).await;
    let mut counts = Vec::new();
    for task in ["counter-reuse", "counter-fresh"] {
        let mut outputs = Vec::new();
        for _ in 0..3 {
            let mut request = invoke(task, b"");
            request.function_name = "increment".into();
            let response = node
                .client
                .invoke_function(request)
                .await
                .unwrap()
                .into_inner();
            assert_eq!(status(&response), proto::ExecutionStatus::Completed);
            outputs.push(String::from_utf8(output(&response)).unwrap());
        }
        counts.push(outputs);
    }
    assert_eq!(counts[0], ["1\n", "2\n", "3\n"]);
    assert_eq!(counts[1], ["1\n", "1\n", "1\n"]);

    // A command module cannot be reused; a reuse task cannot run _start.
    let refused = node
        .client
        .create_task(proto::CreateTaskRequest {
            function_name: String::new(),
            task_name: "echo-reuse".into(),
            task_description: String::new(),
            artifact_spec: Some(wasm_artifact(
                example("echo"),
                &[("spearlet.isolation", "reuse")],
            )),
        })
        .await;
    // Not `expect_err`: the Ok value would print the whole module as a data: URL.
    let Err(error) = refused else {
        panic!("a command module was accepted for reuse");
    };
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("spearlet.isolation"), "{error:?}");
    let error = node
        .client
        .invoke_function(invoke("counter-reuse", b""))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("function_name"), "{error:?}");
}

#[tokio::test]
async fn force_new_instance_runs_on_a_fresh_instance_and_bad_keys_are_refused() {
    let mut node = start_node().await;
    create_task(
        &mut node,
        "counter-reuse",
        "counter",
        &[
            ("spearlet.isolation", "reuse"),
            ("spearlet.pool.max_instances", "2"),
        ],
    )
    .await;
    let mut increment = invoke("counter-reuse", b"");
    increment.function_name = "increment".into();
    for _ in 0..2 {
        node.client
            .invoke_function(increment.clone())
            .await
            .unwrap();
    }
    let mut fresh = increment.clone();
    fresh.force_new_instance = true;
    let response = node
        .client
        .invoke_function(fresh)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response), b"1\n", "a fresh instance starts at 0");
    assert_eq!(result(&response).metrics["cold_start"], "true");
    // The warm instance kept its state and the one-shot instance is gone.
    let response = node
        .client
        .invoke_function(increment.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response), b"3\n");
    assert_eq!(
        pool_of(&mut node, "counter-reuse").await.current_instances,
        1
    );

    let error = node
        .client
        .invoke_function(with_priority(invoke("echo", b"x"), "urgent"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("priority"), "{error:?}");
    for (key, value) in [
        ("spearlet.pool.max_size", "4"),
        ("spearlet.scheduler.policy", "fastest"),
        ("spearlet.pool.min_instances", "99"),
    ] {
        let error = node
            .client
            .create_task(proto::CreateTaskRequest {
                function_name: String::new(),
                task_name: "bad-pool".into(),
                task_description: String::new(),
                artifact_spec: Some(wasm_artifact(example("echo"), &[(key, value)])),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{key}");
        assert!(error.message().contains(key), "{key}: {error:?}");
    }
}

#[tokio::test]
async fn periodic_load_is_prewarmed_before_the_burst_arrives() {
    let mut node = start_node_with(|config| config.pool.autoscale_tick_ms = 100).await;
    create_task(
        &mut node,
        "bursty",
        "sleep",
        &[
            ("spearlet.pool.idle_timeout_ms", "100"),
            ("spearlet.autoscale.stable_window_ms", "200"),
            ("spearlet.autoscale.panic_window_ms", "100"),
            ("spearlet.autoscale.predictive", "true"),
        ],
    )
    .await;
    // A burst of 4 calls of 100 ms every 800 ms. Between bursts the reactive autoscaler wants
    // nothing and idle instances go after 100 ms; instances that exist shortly before a burst
    // are there because the autoscaler predicted it.
    let mut prewarmed_samples = Vec::new();
    for burst in 0..12 {
        let burst_started = Instant::now();
        for call in concurrent_calls(&node, "bursty", b"100", 4) {
            call.await.unwrap().unwrap();
        }
        // Sample the quiet gap from 450 ms after the previous burst until the next one. Not
        // synchronisation: the fixed rhythm of bursts is the periodic load under test.
        tokio::time::sleep_until((burst_started + Duration::from_millis(600)).into()).await;
        while burst_started.elapsed() < Duration::from_millis(800) {
            let pool = pool_of(&mut node, "bursty").await;
            if burst >= 6 && pool.active_executions == 0 && pool.waiting == 0 {
                prewarmed_samples.push((pool.current_instances, pool.predicted_instances));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        prewarmed_samples
            .iter()
            .any(|&(current, predicted)| current >= 4 && predicted >= 4),
        "no quiet moment had the burst's instances ready: {prewarmed_samples:?}"
    );
}
