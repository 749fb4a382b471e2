//! Cluster mode against a real `nats-server` (JetStream, `sync_interval: always`) and three real
//! `spearlet serve --cluster-nats` processes on 127.0.0.1:
//! - a task registered on node A runs on node C (sync, stream, async) without being registered
//!   there; the bundled examples have one id cluster-wide; deleting on B removes it everywhere;
//!   every node's GetHealth lists the three; an async output over the cluster's 64 KiB cap is
//!   read whole from any node;
//! - with one instance per node, three concurrent sync calls to A run at once on A, B and C;
//!   with all three busy the next call queues on A (its peers refuse a forwarded call they
//!   cannot grant at once, so it never takes a second hop), and once A's queue is full a call
//!   gets RESOURCE_EXHAUSTED with `retry-after-ms`;
//! - a node killed with `kill -9` leaves routing within seconds, and a call routed to it just
//!   before is retried on another candidate within the same call;
//! - 1,200 async executions through the cluster's queue with a node killed mid-way: every one
//!   ends COMPLETED, visible from both survivors, none ran more often than its recorded
//!   attempts (the function appends `$SPEAR_EXECUTION_ID` to a file), the killed node's ones
//!   completed elsewhere as a visible second attempt, the same client id sent to two nodes at
//!   once is one execution, and the killed node, restarted, re-runs nothing;
//! - a node stopped with SIGSTOP past the ack wait, then resumed, cannot overwrite the result of
//!   the node that took over;
//! - a call spilled to a peer is authorized there by the caller's own token (with nodes that
//!   authenticate to NATS with a token);
//! - nats-server killed with `kill -9` and restarted: an async call during the outage is refused
//!   (UNAVAILABLE, never a lost "accepted"), sync calls still run, health says degraded, the
//!   nodes reconnect by themselves and every acknowledged execution completes.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use support::NodeProcess;
use support::nats::{NatsServer, nats_server_binary};
use tonic::transport::{Channel, Endpoint};

type NodeClient = FunctionServiceClient<Channel>;

/// Heartbeat interval the nodes run with: routing notices a dead node after three of them.
const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// How long the cluster may take to converge on something (a task, a heartbeat).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

struct Cluster {
    nats: NatsServer,
    nodes: Vec<NodeProcess>,
    _directory: tempfile::TempDir,
}

/// Three nodes; `top_level` and `cluster_keys` go into their config file (top level and
/// `[cluster]`).
fn start_cluster(nats_binary: &str, top_level: &str, cluster_keys: &str) -> Cluster {
    start_cluster_with_nats(nats_binary, "", top_level, cluster_keys)
}

/// As [`start_cluster`], with `nats_extra` in nats-server's configuration.
fn start_cluster_with_nats(
    nats_binary: &str,
    nats_extra: &str,
    top_level: &str,
    cluster_keys: &str,
) -> Cluster {
    let directory = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with(nats_binary, directory.path(), -1, nats_extra);
    let config_path = directory.path().join("spearlet.toml");
    std::fs::write(
        &config_path,
        format!(
            "{top_level}\n[cluster]\nheartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}\n\
             {cluster_keys}\n"
        ),
    )
    .unwrap();
    let nodes = (0..3)
        .map(|index| {
            start_node(
                directory.path(),
                &format!("node{index}"),
                &nats.url,
                &config_path,
            )
        })
        .collect();
    Cluster {
        nats,
        nodes,
        _directory: directory,
    }
}

fn start_node(directory: &Path, name: &str, nats_url: &str, config: &Path) -> NodeProcess {
    let data = directory.join(name);
    std::fs::create_dir_all(&data).unwrap();
    NodeProcess::start(
        &data,
        &directory.join(format!("{name}.log")),
        &[
            "--log-level",
            "info",
            "--config",
            config.to_str().unwrap(),
            "--cluster-nats",
            nats_url,
        ],
        &[],
    )
}

async fn connect(node: &NodeProcess) -> NodeClient {
    let address = format!("http://{}", node.grpc_address);
    let channel = Endpoint::from_shared(address.clone())
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connecting to {address}: {error}"));
    FunctionServiceClient::new(channel)
}

async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn task_id_on(client: &mut NodeClient, task_name: &str) -> Option<String> {
    let answer = client
        .get_task(proto::GetTaskRequest {
            task_id: task_name.into(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    answer.task.map(|task| task.task_id)
}

async fn cluster_status(client: &mut NodeClient) -> proto::ClusterStatus {
    client
        .get_stats(proto::GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cluster
        .expect("a node in a cluster reports its cluster section")
}

/// Waits until `count` nodes' heartbeats (as `client`'s node sees them) list the task ready.
async fn wait_until_ready_on(client: &NodeClient, task_name: &str, count: usize) {
    wait_for(&format!("{task_name} ready on {count} nodes"), || {
        let mut client = client.clone();
        async move {
            let status = cluster_status(&mut client).await;
            let ready = status
                .nodes
                .iter()
                .filter(|node| node.tasks.iter().any(|task| task.task_name == task_name))
                .count();
            (ready >= count).then_some(())
        }
    })
    .await;
}

/// A process task from a shell script, inline as a `data:` URL (so peers could never read its
/// location themselves).
fn script_task(name: &str, script: &str, settings: &[(&str, &str)]) -> proto::CreateTaskRequest {
    let encoded = base64::engine::general_purpose::STANDARD.encode(script);
    proto::CreateTaskRequest {
        task_name: name.into(),
        artifact_spec: Some(proto::ArtifactSpec {
            artifact_type: "process".into(),
            location: format!("data:application/octet-stream;base64,{encoded}"),
            metadata: settings
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn invoke(task: &str, mode: proto::ExecutionMode, input: &str) -> proto::InvokeFunctionRequest {
    proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: task.into(),
        execution_mode: mode as i32,
        input: Some(proto::Payload {
            content_type: "text/plain".into(),
            data: input.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

/// `count` concurrent sync calls of `task` to the node behind `client`, each in a task.
fn spawn_sync_calls(
    client: &NodeClient,
    task: &str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<proto::InvokeFunctionResponse, tonic::Status>>> {
    (0..count)
        .map(|_| {
            let mut client = client.clone();
            let request = invoke(task, proto::ExecutionMode::Sync, "");
            tokio::spawn(async move {
                client
                    .invoke_function(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect()
}

fn ran_on(response: &proto::InvokeFunctionResponse) -> String {
    response
        .result
        .as_ref()
        .and_then(|result| result.metrics.get("node_id").cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_registered_on_one_node_runs_on_every_node() {
    let Some(nats_binary) = nats_server_binary() else {
        return;
    };
    let cluster = start_cluster(&nats_binary, "", "");
    let mut a = connect(&cluster.nodes[0]).await;
    let mut b = connect(&cluster.nodes[1]).await;
    let mut c = connect(&cluster.nodes[2]).await;

    // The bundled examples were registered by every node at start: one id cluster-wide.
    let echo_ids: BTreeSet<String> = [
        task_id_on(&mut a, "echo").await,
        task_id_on(&mut b, "echo").await,
        task_id_on(&mut c, "echo").await,
    ]
    .into_iter()
    .map(Option::unwrap)
    .collect();
    assert_eq!(echo_ids.len(), 1, "{echo_ids:?}");

    let created = a
        .create_task(script_task(
            "greeter",
            "#!/bin/sh\nread name\necho \"hello $name from $SPEAR_EXECUTION_ID\"\necho second line\n",
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let on_c = wait_for("greeter on node C", || {
        let mut c = c.clone();
        async move { task_id_on(&mut c, "greeter").await }
    })
    .await;
    assert_eq!(on_c, created.task_id, "one task id cluster-wide");

    // Sync on C.
    let answer = c
        .invoke_function(invoke("greeter", proto::ExecutionMode::Sync, "ada\n"))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.success, "{answer:?}");
    let output = String::from_utf8(answer.result.clone().unwrap().output.unwrap().data).unwrap();
    assert!(
        output.starts_with(&format!("hello ada from {}", answer.execution_id)),
        "{output}"
    );
    assert_eq!(ran_on(&answer), cluster_status(&mut c).await.node_id);

    // Stream on C: RUNNING, the output, then the final COMPLETED.
    let mut messages = c
        .stream_function(invoke("greeter", proto::ExecutionMode::Stream, "bob\n"))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    let mut last = None;
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        streamed.extend_from_slice(&message.data);
        last = Some(message);
    }
    let last = last.unwrap();
    assert!(last.is_final);
    assert_eq!(last.status, proto::ExecutionStatus::Completed as i32);
    assert!(
        String::from_utf8_lossy(&streamed).contains("hello bob"),
        "{streamed:?}"
    );

    // Async on C, waited for.
    let mut request = invoke("greeter", proto::ExecutionMode::Async, "cy\n");
    request.wait = true;
    let answer = c.invoke_function(request).await.unwrap().into_inner();
    assert!(answer.success, "{answer:?}");

    // An output larger than the cluster keeps (64 KiB) comes whole from any node: the rest is
    // read from the node that ran it.
    c.create_task(script_task(
        "big",
        "#!/bin/sh\nhead -c 100000 /dev/zero | tr '\\0' 'x'\n",
        &[],
    ))
    .await
    .unwrap();
    wait_for("big on A", || {
        let mut a = a.clone();
        async move { task_id_on(&mut a, "big").await }
    })
    .await;
    let mut request = invoke("big", proto::ExecutionMode::Async, "");
    request.wait = true;
    let answer = a.invoke_function(request).await.unwrap().into_inner();
    assert!(answer.success, "{answer:?}");
    for client in [&mut a, &mut b, &mut c] {
        let result = status_of(client, &answer.execution_id).await.unwrap();
        assert_eq!(result.output.unwrap().data.len(), 100_000);
        assert!(!result.metrics.contains_key("output_truncated"));
    }

    // Every node sees the other two (membership converges within a few heartbeats).
    for client in [&a, &b, &c] {
        let health = wait_for("three nodes in GetHealth", || {
            let mut client = client.clone();
            async move {
                let health = client
                    .get_health(proto::GetHealthRequest {
                        include_details: false,
                    })
                    .await
                    .ok()?
                    .into_inner();
                let nodes = health.cluster.as_ref()?.nodes.len();
                (nodes == 3).then_some(health)
            }
        })
        .await;
        let cluster_section = health.cluster.unwrap();
        assert!(cluster_section.nats_connected);
        assert_eq!(
            cluster_section
                .nodes
                .iter()
                .filter(|node| node.routable)
                .count(),
            2,
            "{cluster_section:?}"
        );
        assert_eq!(health.status, "healthy", "{}", health.message);
    }

    // A registration that breaks the version rules is refused cluster-wide, from any node.
    let conflicting = b
        .create_task(script_task("greeter", "#!/bin/sh\necho other\n", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        conflicting.code(),
        tonic::Code::AlreadyExists,
        "{conflicting:?}"
    );

    // Deleting on B removes it everywhere.
    b.delete_task(proto::DeleteTaskRequest {
        task_id: created.task_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    for client in [&mut a, &mut c] {
        let client = client.clone();
        wait_for("greeter gone", || {
            let mut client = client.clone();
            async move {
                task_id_on(&mut client, "greeter")
                    .await
                    .is_none()
                    .then_some(())
            }
        })
        .await;
    }
    drop(cluster.nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_spill_to_peers_and_a_killed_node_leaves_routing() {
    let Some(nats_binary) = nats_server_binary() else {
        return;
    };
    let mut cluster = start_cluster(&nats_binary, "max_queue_length = 1", "");
    let mut a = connect(&cluster.nodes[0]).await;
    let a_id = cluster_status(&mut a).await.node_id;
    a.create_task(script_task(
        "sleeper",
        "#!/bin/sh\nsleep 2\necho \"slept on $SPEAR_EXECUTION_ID\"\n",
        &[("spearlet.pool.max_instances", "1")],
    ))
    .await
    .unwrap();
    // Every node has the task ready in its heartbeat.
    wait_until_ready_on(&a, "sleeper", 3).await;

    // Three at once, all sent to A: each node runs one.
    let calls = spawn_sync_calls(&a, "sleeper", 3);
    // Once all three run, a fourth queues on A, and a fifth finds A's queue (1) full.
    wait_for("one call running on each node", || {
        let mut a = a.clone();
        async move {
            let status = cluster_status(&mut a).await;
            status
                .nodes
                .iter()
                .all(|node| node.running == 1)
                .then_some(())
        }
    })
    .await;
    let fourth = spawn_sync_calls(&a, "sleeper", 1).pop().unwrap();
    wait_for("the fourth call queued on A", || {
        let mut a = a.clone();
        async move {
            let stats = a
                .get_stats(proto::GetStatsRequest::default())
                .await
                .ok()?
                .into_inner();
            (stats.service_stats?.queue_length == 1).then_some(())
        }
    })
    .await;
    let fifth = a
        .invoke_function(invoke("sleeper", proto::ExecutionMode::Sync, ""))
        .await
        .unwrap_err();
    assert_eq!(fifth.code(), tonic::Code::ResourceExhausted, "{fifth:?}");
    assert!(
        fifth.metadata().get("retry-after-ms").is_some(),
        "{fifth:?}"
    );

    let mut nodes_that_ran = BTreeSet::new();
    for call in calls {
        let answer = call.await.unwrap().unwrap();
        assert!(answer.success, "{answer:?}");
        nodes_that_ran.insert(ran_on(&answer));
    }
    assert_eq!(nodes_that_ran.len(), 3, "ran on {nodes_that_ran:?}");
    let fourth = fourth.await.unwrap().unwrap();
    assert!(fourth.success, "{fourth:?}");
    assert_eq!(ran_on(&fourth), a_id, "the queued call ran where it queued");

    // kill -9 of C: out of A's routing within a few seconds.
    let c_id = cluster_status(&mut connect(&cluster.nodes[2]).await)
        .await
        .node_id;
    let killed_at = Instant::now();
    cluster.nodes[2].kill_hard();
    // At once, before C can have left routing: three calls to A. One runs on A; the others
    // spill, and one routed to the dead C is retried on another candidate (or queued on A)
    // within the same call.
    let calls = spawn_sync_calls(&a, "sleeper", 3);
    wait_for("C out of routing", || {
        let mut a = a.clone();
        let c_id = c_id.clone();
        async move {
            let status = cluster_status(&mut a).await;
            (!status
                .nodes
                .iter()
                .any(|node| node.node_id == c_id && node.routable))
            .then_some(())
        }
    })
    .await;
    let out_of_routing = killed_at.elapsed();
    assert!(
        out_of_routing < Duration::from_secs(5),
        "C left routing only after {out_of_routing:?}"
    );
    let mut nodes_that_ran = BTreeSet::new();
    for call in calls {
        let answer = call.await.unwrap().unwrap();
        assert!(answer.success, "{answer:?}");
        nodes_that_ran.insert(ran_on(&answer));
    }
    assert!(!nodes_that_ran.contains(&c_id), "{nodes_that_ran:?}");
}

/// Async executions submitted to a node through the cluster's queue, by client id.
async fn submit_async(
    client: &mut NodeClient,
    task: &str,
    execution_id: &str,
    max_retries: i32,
) -> Result<proto::InvokeFunctionResponse, tonic::Status> {
    let mut request = invoke(task, proto::ExecutionMode::Async, "");
    request.context = Some(proto::ExecutionContext {
        execution_id: execution_id.into(),
        max_retries,
        ..Default::default()
    });
    client
        .invoke_function(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn status_of(client: &mut NodeClient, execution_id: &str) -> Option<proto::ExecutionResult> {
    client
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: execution_id.into(),
            include_result: true,
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner()
        .result
}

fn is_terminal(result: &proto::ExecutionResult) -> bool {
    ![
        proto::ExecutionStatus::Pending as i32,
        proto::ExecutionStatus::Running as i32,
        proto::ExecutionStatus::Unknown as i32,
    ]
    .contains(&result.status)
}

/// How many times each execution id appears in the function's run log.
fn runs_per_execution(run_log: &Path) -> std::collections::BTreeMap<String, u32> {
    let mut runs = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(run_log).unwrap_or_default().lines() {
        *runs.entry(line.trim().to_owned()).or_insert(0) += 1;
    }
    runs
}

const ASYNC_EXECUTIONS: usize = 1200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_executions_survive_a_killed_node_and_none_runs_twice_unseen() {
    let Some(nats_binary) = nats_server_binary() else {
        return;
    };
    let mut cluster = start_cluster(&nats_binary, "", "ack_wait_ms = 3000");
    let run_log = cluster._directory.path().join("runs.log");
    let mut a = connect(&cluster.nodes[0]).await;
    let mut b = connect(&cluster.nodes[1]).await;
    let c = connect(&cluster.nodes[2]).await;
    a.create_task(script_task(
        "appender",
        &format!(
            "#!/bin/sh\necho \"$SPEAR_EXECUTION_ID\" >> {}\nsleep 0.05\necho done\n",
            run_log.display()
        ),
        &[("spearlet.pool.max_instances", "8")],
    ))
    .await
    .unwrap();
    wait_until_ready_on(&a, "appender", 3).await;

    // The same client id at two nodes at once: one execution, both callers get it.
    let (mut twin_a, mut twin_b) = (a.clone(), b.clone());
    let (first, second) = tokio::join!(
        submit_async(&mut twin_a, "appender", "twin", 1),
        submit_async(&mut twin_b, "appender", "twin", 1)
    );
    assert_eq!(first.unwrap().execution_id, "twin");
    assert_eq!(second.unwrap().execution_id, "twin");

    // 1,200 async executions spread over the three nodes; C is killed once 300 have run.
    let clients = vec![a.clone(), b.clone(), c.clone()];
    let submitter = tokio::spawn(async move {
        futures::stream::iter(0..ASYNC_EXECUTIONS)
            .map(|index| {
                let clients = clients.clone();
                async move {
                    let id = format!("job-{index}");
                    // A node being killed may refuse or drop the call: the client tries the
                    // next node with the same id (idempotent cluster-wide).
                    for offset in 0..3 {
                        let mut client = clients[(index + offset) % 3].clone();
                        if let Ok(answer) = submit_async(&mut client, "appender", &id, 1).await {
                            assert!(answer.success, "{answer:?}");
                            return id;
                        }
                    }
                    panic!("no node accepted {id}");
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<String>>()
            .await
    });
    wait_for("300 runs before the kill", || {
        let run_log = run_log.clone();
        async move { (runs_per_execution(&run_log).len() >= 300).then_some(()) }
    })
    .await;
    cluster.nodes[2].kill_hard();
    let mut ids = submitter.await.unwrap();
    ids.push("twin".into());

    // Every execution ends, as seen from both survivors.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempts = std::collections::BTreeMap::new();
    for id in &ids {
        let result = loop {
            if let Some(result) = status_of(&mut a, id).await
                && is_terminal(&result)
            {
                break result;
            }
            assert!(Instant::now() < deadline, "{id} did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            result.status,
            proto::ExecutionStatus::Completed as i32,
            "{id}: {result:?}"
        );
        let from_b = status_of(&mut b, id).await.expect("visible from B");
        assert_eq!(from_b.status, result.status, "{id}");
        let attempt: u32 = result.metrics["attempt"].parse().unwrap();
        attempts.insert(id.clone(), attempt);
    }
    // No execution ran more often than its recorded attempts; the ones C held ran again,
    // visibly, elsewhere.
    let runs = runs_per_execution(&run_log);
    for (id, attempt) in &attempts {
        let ran = runs.get(id).copied().unwrap_or(0);
        assert!(ran >= 1, "{id} never ran");
        assert!(
            ran <= *attempt,
            "{id} ran {ran} times in {attempt} attempts"
        );
    }
    let second_attempts = attempts.values().filter(|attempt| **attempt == 2).count();
    assert!(
        second_attempts > 0,
        "no execution was taken over from the killed node"
    );
    assert_eq!(
        runs.get("twin").copied(),
        Some(1),
        "one execution for the twin id"
    );

    // C comes back on its data directory: it re-runs nothing.
    let before = runs_per_execution(&run_log);
    let directory = cluster._directory.path().to_owned();
    let nats_url = cluster.nats.url.clone();
    let restarted = start_node(
        &directory,
        "node2",
        &nats_url,
        &directory.join("spearlet.toml"),
    );
    let mut restarted_client = connect(&restarted).await;
    wait_for("the restarted node in the cluster", || {
        let mut client = restarted_client.clone();
        async move {
            let status = cluster_status(&mut client).await;
            (status.nodes.iter().filter(|node| node.routable).count() == 2).then_some(())
        }
    })
    .await;
    // Nothing happening is the behaviour under test: give a stray re-run time to show up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        runs_per_execution(&run_log),
        before,
        "the restarted node re-ran work"
    );
    let sample = status_of(&mut restarted_client, &ids[0]).await.unwrap();
    assert_eq!(sample.status, proto::ExecutionStatus::Completed as i32);
}

fn signal(node: &NodeProcess, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_past_the_ack_wait_cannot_overwrite_its_successor() {
    let Some(nats_binary) = nats_server_binary() else {
        return;
    };
    let cluster = start_cluster(&nats_binary, "", "ack_wait_ms = 2000");
    let mut a = connect(&cluster.nodes[0]).await;
    a.create_task(script_task(
        "slow",
        "#!/bin/sh\nsleep 4\necho finished\n",
        &[("spearlet.pool.max_instances", "1")],
    ))
    .await
    .unwrap();
    wait_until_ready_on(&a, "slow", 3).await;
    let c_id = cluster_status(&mut connect(&cluster.nodes[2]).await)
        .await
        .node_id;
    // One execution per node (one instance each); find C's.
    for index in 0..3 {
        submit_async(&mut a, "slow", &format!("slow-{index}"), 1)
            .await
            .unwrap();
    }
    let on_c = wait_for("an execution running on C", || {
        let mut a = a.clone();
        let c_id = c_id.clone();
        async move {
            for index in 0..3 {
                let id = format!("slow-{index}");
                let result = status_of(&mut a, &id).await?;
                if result.status == proto::ExecutionStatus::Running as i32
                    && result.metrics.get("node_id") == Some(&c_id)
                {
                    return Some(id);
                }
            }
            None
        }
    })
    .await;
    signal(&cluster.nodes[2], "STOP");
    // Past the ack wait another node takes it over as attempt 2.
    let taken_over = wait_for("another node taking over", || {
        let mut a = a.clone();
        let on_c = on_c.clone();
        let c_id = c_id.clone();
        async move {
            let result = status_of(&mut a, &on_c).await?;
            (result.metrics.get("attempt").map(String::as_str) == Some("2")
                && result.metrics.get("node_id") != Some(&c_id))
            .then_some(result)
        }
    })
    .await;
    let successor = taken_over.metrics["node_id"].clone();
    // C resumes: its attempt 1 ends, and its result must not replace the successor's.
    signal(&cluster.nodes[2], "CONT");
    wait_for("C giving up its superseded result", || {
        let log = cluster.nodes[2].log();
        async move {
            log.contains("the cluster gave this execution to another attempt")
                .then_some(())
        }
    })
    .await;
    let end = wait_for("the successor's attempt ending", || {
        let mut a = a.clone();
        let on_c = on_c.clone();
        async move {
            let result = status_of(&mut a, &on_c).await?;
            is_terminal(&result).then_some(result)
        }
    })
    .await;
    assert_eq!(
        end.status,
        proto::ExecutionStatus::Completed as i32,
        "{end:?}"
    );
    assert_eq!(end.metrics["attempt"], "2");
    assert_eq!(end.metrics["node_id"], successor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_when_nats_is_killed_and_restarted() {
    let Some(nats_binary) = nats_server_binary() else {
        return;
    };
    let mut cluster = start_cluster(&nats_binary, "", "ack_wait_ms = 3000");
    let mut a = connect(&cluster.nodes[0]).await;
    let mut b = connect(&cluster.nodes[1]).await;
    a.create_task(script_task(
        "nap",
        "#!/bin/sh\nsleep 0.2\necho rested\n",
        &[("spearlet.pool.max_instances", "2")],
    ))
    .await
    .unwrap();
    wait_for("nap on B", || {
        let mut b = b.clone();
        async move { task_id_on(&mut b, "nap").await }
    })
    .await;
    let mut acknowledged = Vec::new();
    for index in 0..60 {
        let id = format!("nap-{index}");
        if submit_async(&mut a, "nap", &id, 1).await.is_ok() {
            acknowledged.push(id);
        }
    }
    assert_eq!(acknowledged.len(), 60);
    // kill -9 while most are still queued, then an async call is refused (never a lost "yes"),
    // while a sync call still runs here.
    let port = cluster.nats.port();
    cluster.nats.kill_hard();
    let refused = submit_async(&mut a, "nap", "during-outage", 1).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unavailable);
    let degraded = wait_for("degraded health", || {
        let mut a = a.clone();
        async move {
            let health = a
                .get_health(proto::GetHealthRequest::default())
                .await
                .ok()?
                .into_inner();
            (health.status == "degraded").then_some(health)
        }
    })
    .await;
    assert!(degraded.message.contains("NATS"), "{}", degraded.message);
    let sync = a
        .invoke_function(invoke("nap", proto::ExecutionMode::Sync, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(sync.success, "{sync:?}");
    // The same server, on the same port and store, comes back; the nodes reconnect alone.
    let directory = cluster._directory.path().to_owned();
    cluster.nats = NatsServer::start_on(&nats_binary, &directory, port);
    wait_for("reconnected", || {
        let mut b = b.clone();
        async move {
            let status = cluster_status(&mut b).await;
            status.nats_connected.then_some(())
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &acknowledged {
        loop {
            if let Some(result) = status_of(&mut b, id).await
                && is_terminal(&result)
            {
                assert_eq!(
                    result.status,
                    proto::ExecutionStatus::Completed as i32,
                    "{id}: {result:?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never ended after NATS came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spilled_call_is_authorized_by_the_peer_as_its_caller() {
    let Some(nats_binary) = nats_server_binary() else {
        return;
    };
    const ADMIN: &str = "cluster-admin-token";
    let tokens = format!("[[auth.tokens]]\ntoken = \"{ADMIN}\"\n");
    // NATS requires a token too; the nodes present theirs (`[cluster] token`).
    let cluster = start_cluster_with_nats(
        &nats_binary,
        "authorization { token: \"nats-secret\" }",
        &tokens,
        "token = \"nats-secret\"",
    );
    let a = connect(&cluster.nodes[0]).await;
    let mut b = connect(&cluster.nodes[1]).await;
    // The peers require a token of their own.
    let anonymous = b
        .invoke_function(invoke("echo", proto::ExecutionMode::Sync, "x"))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);

    a.clone()
        .create_task(with_token(
            script_task(
                "held",
                "#!/bin/sh\nsleep 3\necho held\n",
                &[("spearlet.pool.max_instances", "1")],
            ),
            ADMIN,
        ))
        .await
        .unwrap();
    let stats = |client: NodeClient| async move {
        let mut client = client;
        client
            .get_stats(with_token(proto::GetStatsRequest::default(), ADMIN))
            .await
            .ok()
            .map(tonic::Response::into_inner)
    };
    wait_for("held ready on three nodes", || {
        let a = a.clone();
        async move {
            let cluster = stats(a).await?.cluster?;
            let ready = cluster
                .nodes
                .iter()
                .filter(|node| node.tasks.iter().any(|task| task.task_name == "held"))
                .count();
            (ready == 3).then_some(())
        }
    })
    .await;
    let a_id = stats(a.clone()).await.unwrap().cluster.unwrap().node_id;
    // The first call holds A's only instance; the second must run on a peer, which accepts
    // the caller's token.
    let first = {
        let mut a = a.clone();
        tokio::spawn(async move {
            a.invoke_function(with_token(
                invoke("held", proto::ExecutionMode::Sync, ""),
                ADMIN,
            ))
            .await
            .map(tonic::Response::into_inner)
        })
    };
    wait_for("A's instance running", || {
        let a = a.clone();
        async move {
            let cluster = stats(a).await?.cluster?;
            let me = cluster.nodes.iter().find(|node| node.is_self)?;
            (me.running == 1).then_some(())
        }
    })
    .await;
    let spilled = a
        .clone()
        .invoke_function(with_token(
            invoke("held", proto::ExecutionMode::Sync, ""),
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(spilled.success, "{spilled:?}");
    assert_ne!(ran_on(&spilled), a_id, "the second call ran on a peer");
    let first = first.await.unwrap().unwrap();
    assert_eq!(ran_on(&first), a_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joining_with_its_own_tasks_adopts_the_cluster_ids_for_good() {
    let Some(nats_binary) = nats_server_binary() else {
        return;
    };
    let cluster = start_cluster(&nats_binary, "", "");
    let directory = cluster._directory.path().to_owned();
    let config = directory.join("spearlet.toml");
    let mut a = connect(&cluster.nodes[0]).await;
    let cluster_echo = task_id_on(&mut a, "echo").await.unwrap();
    // A node that ran on its own first, with the bundled examples under ids of its own.
    let data = directory.join("loner");
    std::fs::create_dir_all(&data).unwrap();
    let mut alone = NodeProcess::start(&data, &directory.join("loner-1.log"), &[], &[]);
    let own_echo = task_id_on(&mut connect(&alone).await, "echo")
        .await
        .unwrap();
    assert_ne!(own_echo, cluster_echo);
    alone.stop_gracefully();
    // It joins: the cluster's id replaces its own, on disk too, so a further restart restores
    // one `echo` under the cluster's id and nothing fails to restore.
    for round in 0..2 {
        let mut joined = start_node(&directory, "loner", &cluster.nats.url, &config);
        let echo = task_id_on(&mut connect(&joined).await, "echo")
            .await
            .unwrap();
        assert_eq!(echo, cluster_echo, "round {round}");
        assert!(
            !joined.log().contains("could not restore task"),
            "round {round}: {}",
            joined.log()
        );
        joined.stop_gracefully();
    }
}
