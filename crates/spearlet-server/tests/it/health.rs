//! GetHealth reports real state: a record store whose commits fail makes the node "unhealthy"
//! with the reason until a commit succeeds again, and `system_info` names the wasmtime version
//! actually linked (read here from Cargo.lock) and the runtimes the node offers.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use spearlet_proto as proto;
use support::*;
use tonic::Code;

async fn health(node: &mut TestNode) -> proto::GetHealthResponse {
    node.client
        .get_health(proto::GetHealthRequest {
            include_details: true,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls GetHealth until its status is `wanted` (30 s at most).
async fn wait_for_health(node: &mut TestNode, wanted: &str) -> proto::GetHealthResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = health(node).await;
        if health.status == wanted {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {wanted:?}; last: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An async echo call with a client-chosen execution id.
fn async_echo(execution_id: &str) -> proto::InvokeFunctionRequest {
    let mut request = asynchronous(invoke("echo", execution_id.as_bytes()));
    request
        .context
        .get_or_insert_with(Default::default)
        .execution_id = execution_id.into();
    request
}

/// While another connection holds the SQLite file's write lock, the store's commits fail (after
/// its busy timeout): an async call, whose PENDING record must be on disk before it is
/// acknowledged, is refused with an error naming the store; GetHealth says "unhealthy" and why;
/// sync calls are still served. Once the lock is released, health returns to "healthy", what
/// was acknowledged before is still there, and the refused acceptance is nowhere (its id can be
/// used again).
#[tokio::test]
async fn health_is_unhealthy_while_the_store_cannot_commit() {
    let mut node = start_node().await;
    node.client
        .invoke_function(async_echo("acknowledged-before-the-lock"))
        .await
        .unwrap();
    wait_for_status(
        &mut node,
        "acknowledged-before-the-lock",
        proto::ExecutionStatus::Completed,
    )
    .await;
    let before = health(&mut node).await;
    assert_eq!(before.status, "healthy", "{before:?}");

    let database = rusqlite::Connection::open(node.data_dir.path().join("spearlet.db")).unwrap();
    database.busy_timeout(Duration::from_secs(30)).unwrap();
    database.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // The durable PENDING write waits out the store's busy timeout, then fails.
    let refused = node
        .client
        .invoke_function(async_echo("submitted-while-locked"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    assert!(
        refused.message().contains("committing a batch"),
        "{}",
        refused.message()
    );
    let unhealthy = wait_for_health(&mut node, "unhealthy").await;
    assert!(
        unhealthy.message.contains("record store cannot commit")
            && unhealthy.message.contains("database is locked"),
        "{}",
        unhealthy.message
    );
    // A sync call needs no durable write before it runs: it is served meanwhile.
    let served = node
        .client
        .invoke_function(invoke("echo", b"served while locked"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&served), b"served while locked");

    database.execute_batch("ROLLBACK").unwrap();
    drop(database);
    let recovered = wait_for_health(&mut node, "healthy").await;
    assert_eq!(recovered.message, "serving");
    node.server.node.manager.store().flush().await.unwrap();
    let acknowledged = status_of(&mut node, "acknowledged-before-the-lock").await;
    assert_eq!(
        acknowledged.result.unwrap().status,
        proto::ExecutionStatus::Completed as i32
    );
    // The refused acceptance left nothing behind: not in the node's answers, not on disk
    // (where a restart would have resumed it), and its id is free to be submitted again.
    let unknown = status_of(&mut node, "submitted-while-locked").await;
    assert!(!unknown.found, "{unknown:?}");
    let database = rusqlite::Connection::open(node.data_dir.path().join("spearlet.db")).unwrap();
    let rows: i64 = database
        .query_row(
            "SELECT COUNT(*) FROM executions WHERE execution_id = 'submitted-while-locked'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "the refused acceptance is not on disk");
    drop(database);
    node.client
        .invoke_function(async_echo("submitted-while-locked"))
        .await
        .unwrap();
    wait_for_status(
        &mut node,
        "submitted-while-locked",
        proto::ExecutionStatus::Completed,
    )
    .await;
    // Async calls are accepted again.
    node.client
        .invoke_function(async_echo("submitted-after-the-lock"))
        .await
        .unwrap();
    wait_for_status(
        &mut node,
        "submitted-after-the-lock",
        proto::ExecutionStatus::Completed,
    )
    .await;
}

/// The version of `package` that the workspace's Cargo.lock pins.
fn locked_version(package: &str) -> String {
    let lock_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    let lock_text = std::fs::read_to_string(&lock_file).unwrap();
    let name_line = format!("name = \"{package}\"");
    let mut versions: Vec<&str> = lock_text
        .split("[[package]]")
        .filter(|entry| entry.lines().any(|line| line.trim() == name_line))
        .filter_map(|entry| {
            entry
                .lines()
                .find_map(|line| line.trim().strip_prefix("version = \""))
                .and_then(|rest| rest.strip_suffix('"'))
        })
        .collect();
    assert_eq!(versions.len(), 1, "{package} in Cargo.lock: {versions:?}");
    versions.remove(0).to_owned()
}

#[tokio::test]
async fn system_info_names_the_linked_wasmtime_and_the_runtimes() {
    let mut node = start_node().await;
    let health = health(&mut node).await;
    let system_info = health.details.unwrap().system_info;
    assert_eq!(
        system_info["wasm_engine"],
        format!("wasmtime {}", locked_version("wasmtime"))
    );
    assert_eq!(system_info["runtimes"], "wasm,process");
    assert_eq!(
        system_info["process_limits"],
        spearlet_process::sandbox::detect_enforcement().description
    );
}
