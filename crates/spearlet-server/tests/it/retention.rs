//! Record retention by the node's settings, against a real node: `execution_ttl_ms` drops a
//! record from an idle node without another call, and `max_execution_records` keeps exactly the
//! newest terminal records.

use crate::support;

use std::time::{Duration, Instant};

use spearlet_proto as proto;
use support::{TestNode, invoke, start_node_with, status};

/// The ids ListExecutions returns now (every record; the tests keep far fewer than the limit).
async fn listed_execution_ids(node: &mut TestNode) -> Vec<String> {
    node.client
        .list_executions(proto::ListExecutionsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .executions
        .into_iter()
        .map(|execution| execution.execution_id)
        .collect()
}

/// GetExecutionStatus: whether the node still knows the execution.
async fn execution_is_found(node: &mut TestNode, execution_id: &str) -> bool {
    node.client
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: execution_id.into(),
            include_result: false,
            include_logs: false,
        })
        .await
        .unwrap()
        .into_inner()
        .found
}

/// One sync call of the bundled `echo` task; returns its execution id.
async fn call_echo(node: &mut TestNode, input: &[u8]) -> String {
    let response = node
        .client
        .invoke_function(invoke("echo", input))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&response), proto::ExecutionStatus::Completed);
    response.execution_id
}

/// The bug this guards against: retention ran only after a write, so on an idle node a record
/// past its TTL stayed listed until the next call arrived. Here nothing but reads follows the one
/// call, and the record must still go.
#[tokio::test]
async fn an_idle_node_drops_a_record_past_its_ttl_without_another_call() {
    let mut node = start_node_with(|config| config.execution_ttl_ms = 1000).await;
    let execution_id = call_echo(&mut node, b"expires").await;

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if !listed_execution_ids(&mut node)
            .await
            .contains(&execution_id)
        {
            assert!(
                !execution_is_found(&mut node, &execution_id).await,
                "a record no longer listed is not found by id either"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{execution_id} is still listed 15 s after it completed with a 1 s TTL on an idle node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `max_execution_records = 3`, eight calls leave exactly the three newest records, by id,
/// once the node has applied retention (on its own, with no further call).
#[tokio::test]
async fn the_record_limit_keeps_exactly_the_newest_terminal_records() {
    const RECORD_LIMIT: usize = 3;
    let mut node = start_node_with(|config| config.max_execution_records = RECORD_LIMIT).await;
    let mut execution_ids = Vec::new();
    for call in 0..8 {
        execution_ids.push(call_echo(&mut node, format!("call {call}").as_bytes()).await);
    }
    let newest: Vec<String> = execution_ids[execution_ids.len() - RECORD_LIMIT..].to_vec();

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut listed = listed_execution_ids(&mut node).await;
    while listed.len() > RECORD_LIMIT {
        assert!(
            Instant::now() < deadline,
            "still {} records listed 15 s after the calls: {listed:?}",
            listed.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        listed = listed_execution_ids(&mut node).await;
    }
    listed.sort();
    let mut expected = newest.clone();
    expected.sort();
    assert_eq!(listed, expected, "the newest {RECORD_LIMIT} calls remain");
    for dropped in &execution_ids[..execution_ids.len() - RECORD_LIMIT] {
        assert!(
            !execution_is_found(&mut node, dropped).await,
            "{dropped} is one of the oldest and must be gone"
        );
    }
    for kept in &newest {
        let kept_status = support::status_of(&mut node, kept).await;
        assert_eq!(
            kept_status.result.unwrap().status,
            proto::ExecutionStatus::Completed as i32
        );
    }
}
