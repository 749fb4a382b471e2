//! The shutdown grace against a real node: `RunningServer::shutdown` lets a call that fits in
//! `shutdown_grace_ms` finish and records it, ends a longer sync call CANCELLED with an answer to
//! its caller, leaves a longer async call for the next start (which, without retries left, ends
//! it NODE_RESTARTED), and returns within the grace plus a few seconds.

use crate::support;

use std::time::{Duration, Instant};

use spearlet_proto as proto;
use support::*;

const GRACE_MS: u64 = 1500;

async fn running_executions(node: &mut TestNode) -> i32 {
    node.client
        .get_stats(proto::GetStatsRequest {
            include_execution_stats: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution_stats
        .unwrap()
        .running_executions
}

#[tokio::test]
async fn shutdown_finishes_calls_within_the_grace_and_ends_the_rest() {
    let mut node = start_node_with(|config| config.shutdown_grace_ms = GRACE_MS).await;
    let fits_in_grace = {
        let mut client = node.client.clone();
        tokio::spawn(async move { client.invoke_function(invoke("sleep", b"500")).await })
    };
    let longer_than_grace = {
        let mut client = node.client.clone();
        tokio::spawn(async move { client.invoke_function(invoke("sleep", b"60000")).await })
    };
    let async_longer_than_grace = node
        .client
        .invoke_function(asynchronous(invoke("sleep", b"60000")))
        .await
        .unwrap()
        .into_inner()
        .execution_id;
    let deadline = Instant::now() + Duration::from_secs(20);
    while running_executions(&mut node).await < 3 {
        assert!(Instant::now() < deadline, "the three calls never all ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let TestNode {
        server,
        client: _,
        data_dir,
    } = node;
    let shutdown_began = Instant::now();
    server.shutdown().await.unwrap();
    let shutdown_took = shutdown_began.elapsed();
    // A call was still running, so the node used its whole grace, and then ended promptly.
    assert!(
        shutdown_took >= Duration::from_millis(GRACE_MS),
        "{shutdown_took:?}"
    );
    assert!(
        shutdown_took < Duration::from_millis(GRACE_MS) + Duration::from_secs(5),
        "{shutdown_took:?}"
    );

    let finished = fits_in_grace.await.unwrap().unwrap().into_inner();
    assert_eq!(status(&finished), proto::ExecutionStatus::Completed);
    assert_eq!(output(&finished), b"slept 500 ms\n");
    let cut_off = longer_than_grace.await.unwrap().unwrap().into_inner();
    assert_eq!(status(&cut_off), proto::ExecutionStatus::Cancelled);
    assert!(
        result(&cut_off).error_message.contains("shutting down"),
        "{:?}",
        result(&cut_off)
    );

    // What the next start finds on disk.
    let mut restarted =
        start_node_with(|config| config.data_dir = data_dir.path().to_path_buf()).await;
    let recorded = status_of(&mut restarted, &finished.execution_id).await;
    assert_eq!(
        recorded.result.unwrap().status,
        proto::ExecutionStatus::Completed as i32
    );
    let recorded = status_of(&mut restarted, &cut_off.execution_id).await;
    assert_eq!(
        recorded.result.unwrap().status,
        proto::ExecutionStatus::Cancelled as i32
    );
    let recovered = status_of(&mut restarted, &async_longer_than_grace).await;
    let recovered = recovered.result.unwrap();
    assert_eq!(recovered.status, proto::ExecutionStatus::Failed as i32);
    assert_eq!(recovered.error_code, "NODE_RESTARTED");
    drop(data_dir);
}
