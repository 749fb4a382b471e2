//! Cluster mode against a real `nats-server` (JetStream, `sync_interval: always`) and three real
//! `spearlet serve --cluster-nats` processes on 127.0.0.1:
//! - a task registered on node A runs on node C (sync, stream, async) without being registered
//!   there; the bundled examples have one id cluster-wide; deleting on B removes it everywhere;
//!   every node's GetHealth lists the three;
//! - with one instance per node, three concurrent sync calls to A run at once on A, B and C;
//!   with all three busy the next call queues on A (its peers refuse a forwarded call they
//!   cannot grant at once, so it never takes a second hop), and once A's queue is full a call
//!   gets RESOURCE_EXHAUSTED with `retry-after-ms`;
//! - a node killed with `kill -9` leaves routing within seconds, and calls then spill only to
//!   the survivor.

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

fn start_cluster(nats_binary: &str, extra_config: &str) -> Cluster {
    let directory = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(nats_binary, directory.path());
    let config_path = directory.path().join("spearlet.toml");
    std::fs::write(
        &config_path,
        format!("{extra_config}\n[cluster]\nheartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}\n"),
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
    let cluster = start_cluster(&nats_binary, "");
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
    let mut cluster = start_cluster(&nats_binary, "max_queue_length = 1");
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
    wait_for("sleeper ready on three nodes", || {
        let mut a = a.clone();
        async move {
            let status = cluster_status(&mut a).await;
            let ready = status
                .nodes
                .iter()
                .filter(|node| node.tasks.iter().any(|task| task.task_name == "sleeper"))
                .count();
            (ready == 3).then_some(())
        }
    })
    .await;

    // Three at once, all sent to A: each node runs one.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut a = a.clone();
            tokio::spawn(async move {
                a.invoke_function(invoke("sleeper", proto::ExecutionMode::Sync, ""))
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
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
    let fourth = {
        let mut a = a.clone();
        tokio::spawn(async move {
            a.invoke_function(invoke("sleeper", proto::ExecutionMode::Sync, ""))
                .await
                .map(tonic::Response::into_inner)
        })
    };
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
    // Two at once to A now run on A and B only.
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let mut a = a.clone();
            tokio::spawn(async move {
                a.invoke_function(invoke("sleeper", proto::ExecutionMode::Sync, ""))
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut nodes_that_ran = BTreeSet::new();
    for call in calls {
        let answer = call.await.unwrap().unwrap();
        assert!(answer.success, "{answer:?}");
        nodes_that_ran.insert(ran_on(&answer));
    }
    assert!(!nodes_that_ran.contains(&c_id), "{nodes_that_ran:?}");
}
