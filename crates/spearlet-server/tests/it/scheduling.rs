//! Every `spearlet.scheduler.policy`, observed at node level: a task with a fixed pool of three
//! warm instances (capacity two each) per policy, calls driven over gRPC, and the distribution
//! over instances (each answer's `instance_id`, the pool's per-instance load) checked against
//! what the policy promises, and nothing more.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use spearlet_core::SchedulingPolicy;
use spearlet_proto as proto;
use support::*;

const INSTANCES: usize = 3;
const INSTANCE_CAPACITY: u32 = 2;

/// What a policy guarantees, phrased as something a client can observe.
#[derive(Clone, Copy, Debug)]
enum Promise {
    /// Sequential calls visit the instances in a fixed rotation: three in a row on three
    /// different instances, and every call on the instance of the call three before it.
    Rotation,
    /// With equal weights (the weight is the capacity, the same for every instance of a pool),
    /// every run of `sum(weights)` sequential calls gives each instance exactly `weight` calls.
    ExactSharesPerRound,
    /// A call arriving while others run goes to an instance with the fewest running (or the
    /// lowest load): three long calls started one after another occupy all three instances.
    SpreadsConcurrentCalls,
    /// Over many sequential calls, more than one instance serves, and only the pool's own.
    UsesSeveralInstances,
    /// Each untried instance is tried first, and then an instance with a slow mean response time
    /// gets no call while the others answer fast.
    AvoidsTheSlowInstance,
}

/// Every policy, with the promise checked for it. Listing `SchedulingPolicy::ALL` through a match
/// makes a new policy fail to compile here until it has a promise.
fn promise_of(policy: SchedulingPolicy) -> Promise {
    match policy {
        SchedulingPolicy::RoundRobin => Promise::Rotation,
        SchedulingPolicy::WeightedRoundRobin => Promise::ExactSharesPerRound,
        SchedulingPolicy::LeastConnections | SchedulingPolicy::ResourceBased => {
            Promise::SpreadsConcurrentCalls
        }
        SchedulingPolicy::Random => Promise::UsesSeveralInstances,
        SchedulingPolicy::LeastResponseTime => Promise::AvoidsTheSlowInstance,
    }
}

async fn pool_of(node: &mut TestNode, task_name: &str) -> proto::PoolStats {
    node.client
        .get_stats(proto::GetStatsRequest {
            include_task_stats: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools
        .into_iter()
        .find(|pool| pool.task_name == task_name)
        .unwrap_or_else(|| panic!("no pool for {task_name}"))
}

/// Registers the `sleep` guest as `task_name` with a fixed pool of warm instances under
/// `policy`, and waits until every instance is ready. Returns the instances' ids.
async fn create_fixed_pool(
    node: &mut TestNode,
    task_name: &str,
    policy: SchedulingPolicy,
) -> HashSet<String> {
    let instances = INSTANCES.to_string();
    let capacity = INSTANCE_CAPACITY.to_string();
    node.client
        .create_task(proto::CreateTaskRequest {
            task_name: task_name.into(),
            artifact_spec: Some(wasm_artifact(
                example("sleep"),
                &[
                    ("spearlet.scheduler.policy", policy.as_str()),
                    ("spearlet.pool.min_instances", &instances),
                    ("spearlet.pool.max_instances", &instances),
                    ("spearlet.pool.instance_capacity", &capacity),
                    ("spearlet.autoscale.predictive", "false"),
                ],
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = pool_of(node, task_name).await;
        assert_eq!(pool.scheduler_policy, policy.as_str());
        let ready: HashSet<String> = pool
            .instances
            .iter()
            .filter(|instance| instance.state == "ready")
            .map(|instance| instance.instance_id.clone())
            .collect();
        if ready.len() == INSTANCES {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "{task_name}: the pool never had {INSTANCES} ready instances: {pool:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sync call that sleeps `milliseconds`; returns the instance that ran it.
async fn call_on_some_instance(node: &mut TestNode, task_name: &str, milliseconds: u64) -> String {
    let response = node
        .client
        .invoke_function(invoke(task_name, milliseconds.to_string().as_bytes()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&response), proto::ExecutionStatus::Completed);
    assert!(!response.instance_id.is_empty());
    response.instance_id
}

async fn sequential_calls(node: &mut TestNode, task_name: &str, count: usize) -> Vec<String> {
    let mut instance_ids = Vec::with_capacity(count);
    for _ in 0..count {
        instance_ids.push(call_on_some_instance(node, task_name, 1).await);
    }
    instance_ids
}

async fn check_promise(
    node: &mut TestNode,
    task_name: &str,
    pool_instances: &HashSet<String>,
    promise: Promise,
) {
    match promise {
        Promise::Rotation => {
            let picked = sequential_calls(node, task_name, 4 * INSTANCES).await;
            let first_round: HashSet<&String> = picked[..INSTANCES].iter().collect();
            assert_eq!(first_round.len(), INSTANCES, "{picked:?}");
            for (call, instance_id) in picked.iter().enumerate().skip(INSTANCES) {
                assert_eq!(
                    instance_id,
                    &picked[call - INSTANCES],
                    "call {call} broke the rotation: {picked:?}"
                );
            }
        }
        Promise::ExactSharesPerRound => {
            let round = INSTANCES * INSTANCE_CAPACITY as usize;
            let picked = sequential_calls(node, task_name, 3 * round).await;
            for calls in picked.chunks(round) {
                let mut shares: HashMap<&String, u32> = HashMap::new();
                for instance_id in calls {
                    *shares.entry(instance_id).or_default() += 1;
                }
                assert_eq!(shares.len(), INSTANCES, "{picked:?}");
                assert!(
                    shares.values().all(|&share| share == INSTANCE_CAPACITY),
                    "each instance gets its weight in every round: {shares:?}"
                );
            }
        }
        Promise::SpreadsConcurrentCalls => {
            let mut long_calls = Vec::new();
            for running in 1..=INSTANCES {
                let mut client = node.client.clone();
                let request = invoke(task_name, b"30000");
                long_calls.push(tokio::spawn(async move {
                    client.invoke_function(request).await
                }));
                // The next call arrives only once this one runs, so each pick sees the load.
                let deadline = Instant::now() + Duration::from_secs(20);
                while pool_of(node, task_name).await.active_executions < running as i32 {
                    assert!(Instant::now() < deadline, "call {running} never ran");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let pool = pool_of(node, task_name).await;
            let active: Vec<i32> = pool
                .instances
                .iter()
                .map(|instance| instance.active)
                .collect();
            assert_eq!(
                active,
                vec![1; INSTANCES],
                "one call per instance: {pool:?}"
            );
            // Dropping a sync caller cancels its execution.
            for call in long_calls {
                call.abort();
            }
        }
        Promise::UsesSeveralInstances => {
            // All thirty on one of three instances by chance: 3 × (1/3)^30, about 1e-14.
            let picked = sequential_calls(node, task_name, 30).await;
            let used: HashSet<String> = picked.into_iter().collect();
            assert!(used.len() > 1, "random used one instance only: {used:?}");
            assert!(
                used.is_subset(pool_instances),
                "{used:?} vs {pool_instances:?}"
            );
        }
        Promise::AvoidsTheSlowInstance => {
            // Untried instances count as 0 µs, ties go to the lowest index: the slow call goes
            // to the first instance, the next two fast calls to the two untried ones.
            let slow = call_on_some_instance(node, task_name, 400).await;
            let tried: Vec<String> = sequential_calls(node, task_name, INSTANCES - 1).await;
            let mut all_tried: HashSet<&String> = tried.iter().collect();
            all_tried.insert(&slow);
            assert_eq!(all_tried.len(), INSTANCES, "{slow} then {tried:?}");
            let later = sequential_calls(node, task_name, 2 * INSTANCES).await;
            assert!(
                !later.contains(&slow),
                "the instance whose mean is 400 ms got a call: {later:?}"
            );
        }
    }
}

#[tokio::test]
async fn every_scheduling_policy_keeps_its_promise_at_node_level() {
    let mut node = start_node().await;
    for policy in SchedulingPolicy::ALL {
        let task_name = format!("scheduled-{}", policy.as_str().replace('_', "-"));
        let pool_instances = create_fixed_pool(&mut node, &task_name, policy).await;
        check_promise(&mut node, &task_name, &pool_instances, promise_of(policy)).await;
    }
}
