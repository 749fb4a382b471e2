//! Async executions survive `kill -9`: the real `spearlet serve` binary is started on a fresh data
//! directory, given 300 async `sleep 20 ms` executions with client-chosen ids, killed with
//! SIGKILL while some of them are still in flight, and restarted on the same directory. Every
//! execution must then end exactly as the retry policy says: completed, retried once (even ids,
//! `max_retries = 1`, with the restart visible in its logs), or failed `NODE_RESTARTED` (odd ids,
//! `max_retries = 0`, interrupted while running). Tasks must survive too.
//!
//! How the kill lands "after at least 50 completed, before all have": the first wave of
//! executions is submitted and the test waits until 50 of them are COMPLETED; then the second
//! wave is submitted all at once and the node is killed the moment the last acceptance arrives.
//! Each execution sleeps 20 ms, so the last accepted ones cannot have finished by then. The
//! restarted node runs with `--no-examples`, so `sleep` can only come back from the durable
//! store, under the same task id.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::NodeProcess;

use futures::StreamExt;
use spearlet_proto as proto;
use spearlet_proto::function_service_client::FunctionServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Executions submitted in total, `dur-0` to `dur-299`.
const EXECUTION_COUNT: usize = 300;
/// Executions submitted before waiting for completions; the rest go in the second wave.
const FIRST_WAVE_COUNT: usize = 100;
/// Completed executions required before the second wave and the kill.
const COMPLETED_BEFORE_KILL: usize = 50;
/// Requests in flight while submitting the first wave; the second wave goes all at once.
const FIRST_WAVE_CONCURRENCY: usize = 16;
/// Input of the `sleep` example: milliseconds to sleep.
const SLEEP_MILLISECONDS: &str = "20";
/// What `sleep` prints for that input.
const SLEEP_OUTPUT: &str = "slept 20 ms";
/// How long the first wave may take to reach [`COMPLETED_BEFORE_KILL`].
const FIRST_WAVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the restarted node may take to end every execution.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between polls of the execution listing.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// The log line recovery adds to an execution it retries (see `log_lines_with_attempts`).
const RESTART_RETRY_LOG_TEXT: &str = "interrupted by a node restart";

type NodeClient = FunctionServiceClient<Channel>;

/// Starts `spearlet serve --log-level info` over `data_directory`, logging to `log_path`.
fn start_node(data_directory: &Path, log_path: &Path, extra_arguments: &[&str]) -> NodeProcess {
    let mut arguments = vec!["--log-level", "info"];
    arguments.extend_from_slice(extra_arguments);
    NodeProcess::start(data_directory, log_path, &arguments, &[])
}

async fn connect(node: &NodeProcess) -> NodeClient {
    let address = format!("http://{}", node.grpc_address);
    let channel = Endpoint::from_shared(address.clone())
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connecting to {address}: {error}"));
    FunctionServiceClient::new(channel)
}

fn execution_id(index: usize) -> String {
    format!("dur-{index}")
}

/// Even ids may be retried once after a restart; odd ids may not be retried at all.
fn max_retries_of(index: usize) -> i32 {
    if index.is_multiple_of(2) { 1 } else { 0 }
}

fn index_of(execution_id: &str) -> Option<usize> {
    execution_id.strip_prefix("dur-")?.parse().ok()
}

fn status_name(status: i32) -> &'static str {
    proto::ExecutionStatus::try_from(status)
        .unwrap_or(proto::ExecutionStatus::Unknown)
        .as_str_name()
}

fn is_terminal(status: i32) -> bool {
    ![
        proto::ExecutionStatus::Unknown,
        proto::ExecutionStatus::Pending,
        proto::ExecutionStatus::Running,
    ]
    .map(|status| status as i32)
    .contains(&status)
}

fn unix_microseconds(timestamp: Option<&spearlet_proto::pbjson_types::Timestamp>) -> Option<i64> {
    timestamp.map(|timestamp| timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos) / 1000)
}

fn now_unix_microseconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Submits `dur-<index>` for every index, `concurrency` requests at a time, and checks that
/// each one was accepted under its own id.
async fn submit_async_executions(
    client: &NodeClient,
    indexes: std::ops::Range<usize>,
    concurrency: usize,
) {
    let answers: Vec<(usize, Result<proto::InvokeFunctionResponse, tonic::Status>)> =
        futures::stream::iter(indexes)
            .map(|index| {
                let mut client = client.clone();
                async move {
                    let request = proto::InvokeFunctionRequest {
                        invocation_type: proto::InvocationType::ExistingTask as i32,
                        task_id: "sleep".into(),
                        execution_mode: proto::ExecutionMode::Async as i32,
                        wait: false,
                        input: Some(proto::Payload {
                            content_type: "text/plain".into(),
                            data: SLEEP_MILLISECONDS.as_bytes().to_vec(),
                        }),
                        context: Some(proto::ExecutionContext {
                            execution_id: execution_id(index),
                            max_retries: max_retries_of(index),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    let answer = client
                        .invoke_function(request)
                        .await
                        .map(tonic::Response::into_inner);
                    (index, answer)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
    for (index, answer) in answers {
        let response = answer.unwrap_or_else(|status| {
            panic!("submitting {} failed: {status:?}", execution_id(index))
        });
        assert!(
            response.success && response.execution_id == execution_id(index),
            "submitting {} was not accepted: {response:?}",
            execution_id(index)
        );
        assert_eq!(
            response.status_endpoint,
            format!("/v1/executions/{}", execution_id(index))
        );
    }
}

/// The `dur-*` executions of the `sleep` task, by id, as the listing reports them.
async fn list_test_executions(
    client: &mut NodeClient,
    status_filter: proto::ExecutionStatus,
) -> BTreeMap<String, proto::ExecutionInfo> {
    let mut executions = BTreeMap::new();
    let mut start_after = String::new();
    loop {
        let page = client
            .list_executions(proto::ListExecutionsRequest {
                task_id: "sleep".into(),
                limit: 1000,
                start_after: start_after.clone(),
                status_filter: status_filter as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for execution in page.executions {
            if index_of(&execution.execution_id).is_some() {
                let previous = executions.insert(execution.execution_id.clone(), execution);
                assert!(
                    previous.is_none(),
                    "the listing holds {:?} twice",
                    previous.unwrap().execution_id
                );
            }
        }
        if !page.has_more {
            return executions;
        }
        start_after = page.next_start_after;
    }
}

/// The task id of `sleep` according to ListTasks.
async fn sleep_task_id(client: &mut NodeClient) -> Option<String> {
    let tasks = client
        .list_tasks(proto::ListTasksRequest {
            prefix: "sleep".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    tasks
        .into_iter()
        .find(|task| task.task_name == "sleep")
        .map(|task| task.task_id)
}

/// One execution's final state as the restarted node reports it.
#[derive(Debug)]
struct FinalState {
    index: usize,
    status: i32,
    error_code: String,
    attempt: u32,
    output: String,
    started_at_us: Option<i64>,
    completed_at_us: Option<i64>,
    logs: Vec<String>,
}

impl FinalState {
    fn mentions_the_restart(&self) -> bool {
        self.logs
            .iter()
            .any(|line| line.contains(RESTART_RETRY_LOG_TEXT))
    }
}

async fn final_state(client: &mut NodeClient, index: usize) -> FinalState {
    let response = client
        .get_execution_status(proto::GetExecutionStatusRequest {
            execution_id: execution_id(index),
            include_result: true,
            include_logs: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        response.found,
        "{} vanished after the restart: {}",
        execution_id(index),
        response.message
    );
    let result = response.result.unwrap_or_default();
    let attempt = result
        .metrics
        .get("attempt")
        .and_then(|attempt| attempt.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{} has no attempt metric: {result:?}, logs {:?}",
                execution_id(index),
                response.logs
            )
        });
    FinalState {
        index,
        status: result.status,
        error_code: result.error_code.clone(),
        attempt,
        output: String::from_utf8_lossy(
            &result
                .output
                .as_ref()
                .map(|payload| payload.data.clone())
                .unwrap_or_default(),
        )
        .into_owned(),
        started_at_us: unix_microseconds(result.started_at.as_ref()),
        completed_at_us: unix_microseconds(result.completed_at.as_ref()),
        logs: response.logs,
    }
}

/// Why an execution's final state breaks the retry policy, or `None` when it keeps it.
fn policy_violation(state: &FinalState) -> Option<String> {
    let max_retries = max_retries_of(state.index) as u32;
    if state.attempt == 0 || state.attempt > max_retries + 1 {
        return Some(format!(
            "attempt {} with max_retries {max_retries}",
            state.attempt
        ));
    }
    let completed = proto::ExecutionStatus::Completed as i32;
    let failed = proto::ExecutionStatus::Failed as i32;
    if state.status == completed {
        if !state.output.starts_with(SLEEP_OUTPUT) {
            return Some(format!("COMPLETED with output {:?}", state.output));
        }
        if state.attempt > 1 && !state.mentions_the_restart() {
            return Some("COMPLETED on a retry whose logs do not mention the restart".into());
        }
        if state.attempt == 1 && state.mentions_the_restart() {
            return Some("COMPLETED on attempt 1 but the logs mention a retry".into());
        }
        return None;
    }
    if state.status == failed {
        if state.error_code != "NODE_RESTARTED" {
            return Some(format!("FAILED with error code {:?}", state.error_code));
        }
        if state.attempt != max_retries + 1 {
            return Some(format!(
                "NODE_RESTARTED on attempt {} although max_retries {max_retries} allowed another",
                state.attempt
            ));
        }
        return None;
    }
    Some(format!(
        "status {} is neither COMPLETED nor FAILED",
        status_name(state.status)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_executions_survive_kill_9_and_follow_the_retry_policy() {
    let directory = tempfile::tempdir().unwrap();
    let data_directory = directory.path().join("data");

    // Before the kill.
    let mut first_node = start_node(&data_directory, &directory.path().join("node-1.log"), &[]);
    let mut client = connect(&first_node).await;
    let task_id_before = sleep_task_id(&mut client)
        .await
        .expect("the sleep example is registered at first start");

    submit_async_executions(&client, 0..FIRST_WAVE_COUNT, FIRST_WAVE_CONCURRENCY).await;
    let first_wave_started = Instant::now();
    let completed_before_kill = loop {
        let completed = list_test_executions(&mut client, proto::ExecutionStatus::Completed).await;
        if completed.len() >= COMPLETED_BEFORE_KILL {
            break completed;
        }
        assert!(
            first_wave_started.elapsed() < FIRST_WAVE_TIMEOUT,
            "only {} executions completed within {FIRST_WAVE_TIMEOUT:?}; node log:\n{}",
            completed.len(),
            first_node.log()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    submit_async_executions(
        &client,
        FIRST_WAVE_COUNT..EXECUTION_COUNT,
        EXECUTION_COUNT - FIRST_WAVE_COUNT,
    )
    .await;
    first_node.kill_hard();
    drop(client);
    assert!(
        data_directory.join("spearlet.db").exists(),
        "no spearlet.db in the data dir"
    );

    // After the restart. Without the examples, `sleep` can only come from the store.
    let restarted_at_us = now_unix_microseconds();
    let second_node = start_node(
        &data_directory,
        &directory.path().join("node-2.log"),
        &["--no-examples"],
    );
    let mut client = connect(&second_node).await;
    assert_eq!(
        sleep_task_id(&mut client).await.as_deref(),
        Some(task_id_before.as_str()),
        "the sleep task did not survive the restart"
    );
    let settle_started = Instant::now();
    loop {
        let executions = list_test_executions(&mut client, proto::ExecutionStatus::Unknown).await;
        let live: Vec<&proto::ExecutionInfo> = executions
            .values()
            .filter(|execution| !is_terminal(execution.status))
            .collect();
        if executions.len() == EXECUTION_COUNT && live.is_empty() {
            break;
        }
        assert!(
            settle_started.elapsed() < SETTLE_TIMEOUT,
            "after {SETTLE_TIMEOUT:?}, {} of {EXECUTION_COUNT} executions are listed and {} are \
             not terminal (first: {:?}); node log:\n{}",
            executions.len(),
            live.len(),
            live.first(),
            second_node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut states = Vec::with_capacity(EXECUTION_COUNT);
    for index in 0..EXECUTION_COUNT {
        states.push(final_state(&mut client, index).await);
    }
    let violations: Vec<String> = states
        .iter()
        .filter_map(|state| {
            policy_violation(state)
                .map(|why| format!("{}: {why}; {state:?}", execution_id(state.index)))
        })
        .collect();
    assert!(
        violations.is_empty(),
        "{} executions break the retry policy:\n{}\nfirst node log:\n{}\nsecond node log:\n{}",
        violations.len(),
        violations.join("\n"),
        first_node.log(),
        second_node.log()
    );

    // What a client saw COMPLETED before the kill stays exactly that.
    for (execution_id, seen) in &completed_before_kill {
        let state = &states[index_of(execution_id).unwrap()];
        assert!(
            state.status == proto::ExecutionStatus::Completed as i32
                && state.attempt == 1
                && state.completed_at_us == unix_microseconds(seen.completed_at.as_ref()),
            "{execution_id} was COMPLETED before the kill ({seen:?}) but is now {state:?}"
        );
    }

    let completed = proto::ExecutionStatus::Completed as i32;
    let completed_first_try = states
        .iter()
        .filter(|state| state.status == completed && state.attempt == 1)
        .count();
    let run_by_restarted_node = states
        .iter()
        .filter(|state| {
            state.status == completed
                && state.attempt == 1
                && state
                    .started_at_us
                    .is_some_and(|started| started >= restarted_at_us)
        })
        .count();
    let retried = states
        .iter()
        .filter(|state| state.status == completed && state.attempt > 1)
        .count();
    let node_restarted = states
        .iter()
        .filter(|state| state.error_code == "NODE_RESTARTED")
        .count();
    let ids_where = |keep: &dyn Fn(&FinalState) -> bool| -> Vec<String> {
        states
            .iter()
            .filter(|state| keep(state))
            .map(|state| execution_id(state.index))
            .collect()
    };
    eprintln!(
        "durability: retried {:?}; NODE_RESTARTED {:?}",
        ids_where(&|state| state.status == completed && state.attempt > 1),
        ids_where(&|state| state.error_code == "NODE_RESTARTED"),
    );
    eprintln!(
        "durability: {EXECUTION_COUNT} async executions, {} seen COMPLETED before kill -9; after \
         the restart: {completed_first_try} completed on the first try ({run_by_restarted_node} \
         of them pending at the kill and run by the restarted node), {retried} retried and \
         completed, {node_restarted} failed NODE_RESTARTED",
        completed_before_kill.len()
    );
    assert!(
        run_by_restarted_node + retried + node_restarted > 0,
        "the kill landed after every execution had ended, so the restart was not exercised"
    );
}
