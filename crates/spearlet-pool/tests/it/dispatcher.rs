//! The Dispatcher from outside: limits, queue order, pool sizing and autoscaling, on tokio's
//! paused clock so windows and timeouts pass without waiting.
//!
//! The runtime behind an instance is the dispatcher's type parameter; here it is a number (which
//! start of the factory produced it), which is all the pool ever sees of a runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use spearlet_core::{Isolation, PoolSettings, Priority};
use spearlet_pool::{
    AcquireRequest, Dispatcher, DispatcherConfig, InstanceFactory, InstanceLease,
    InstanceStartError, InstanceState, PoolHandle, Rejection,
};

/// Starts instances numbered 1, 2, 3…, taking `start_time` each; fails when told to.
#[derive(Default)]
struct CountingFactory {
    starts: AtomicU64,
    start_time: Duration,
    fail_starts: AtomicBool,
    unhealthy: AtomicBool,
}

impl InstanceFactory<u64> for CountingFactory {
    fn create_instance(&self) -> BoxFuture<'static, Result<u64, InstanceStartError>> {
        let number = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let start_time = self.start_time;
        let fail = self.fail_starts.load(Ordering::SeqCst);
        async move {
            tokio::time::sleep(start_time).await;
            if fail {
                Err(InstanceStartError {
                    message: "the guest's _initialize trapped".into(),
                })
            } else {
                Ok(number)
            }
        }
        .boxed()
    }

    fn is_healthy(&self, _runtime: &u64) -> bool {
        !self.unhealthy.load(Ordering::SeqCst)
    }
}

fn dispatcher(max_concurrent: usize, max_queue_length: usize) -> Dispatcher<u64> {
    Dispatcher::new(DispatcherConfig {
        max_concurrent_executions: max_concurrent,
        max_queue_length,
        priority_aging: Duration::from_secs(1),
        health_check_interval: Duration::from_secs(1),
        autoscale_tick: Duration::from_secs(1),
        instance_id_prefix: String::new(),
    })
}

fn call(priority: Priority) -> AcquireRequest {
    AcquireRequest {
        priority,
        force_new_instance: false,
        counts_against_queue_limit: true,
        grant_now_only: false,
    }
}

fn settings(max_instances: u32) -> PoolSettings {
    PoolSettings {
        max_instances,
        ..PoolSettings::default()
    }
}

fn live_instances(dispatcher: &Dispatcher<u64>) -> u32 {
    dispatcher
        .snapshot()
        .instances_by_state
        .values()
        .sum::<u32>()
}

/// Queues a call and waits for its instance.
async fn acquire(
    dispatcher: &Dispatcher<u64>,
    pool: &PoolHandle<u64>,
    request: AcquireRequest,
) -> InstanceLease<u64> {
    dispatcher
        .enqueue(pool, request)
        .unwrap()
        .ready()
        .await
        .unwrap()
}

/// Lets spawned tasks (instance starts) run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_hundred_calls_never_use_more_than_max_instances() {
    let dispatcher = dispatcher(256, 1024);
    let factory = Arc::new(CountingFactory::default());
    let pool = dispatcher.add_pool("task-a", settings(4), factory.clone());
    let peak_instances = Arc::new(AtomicU64::new(0));
    let mut calls = Vec::new();
    for _ in 0..200 {
        let ticket = dispatcher.enqueue(&pool, call(Priority::NORMAL)).unwrap();
        let dispatcher = dispatcher.clone();
        let peak_instances = peak_instances.clone();
        calls.push(tokio::spawn(async move {
            let lease = ticket.ready().await.unwrap();
            peak_instances.fetch_max(u64::from(live_instances(&dispatcher)), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            (*lease.runtime(), lease.queue_wait())
        }));
    }
    let mut waited = 0;
    for call in calls {
        let (runtime, queue_wait) = call.await.unwrap();
        assert!((1..=4).contains(&runtime));
        if queue_wait > Duration::ZERO {
            waited += 1;
        }
    }
    assert_eq!(factory.starts.load(Ordering::SeqCst), 4);
    assert!(peak_instances.load(Ordering::SeqCst) <= 4);
    assert!(waited >= 190, "only {waited} calls waited");
    let snapshot = dispatcher.snapshot();
    assert_eq!(snapshot.running, 0);
    assert_eq!(snapshot.queued, 0);
    assert_eq!(snapshot.cold_starts, 4);
    assert_eq!(snapshot.warm_starts, 196);
    assert!(snapshot.queue_wait.unwrap().max_ms >= 400.0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_with_a_retry_hint() {
    let dispatcher = dispatcher(1, 3);
    let pool = dispatcher.add_pool("task-a", settings(1), Arc::new(CountingFactory::default()));
    let running = dispatcher.enqueue(&pool, call(Priority::NORMAL)).unwrap();
    let _lease = running.ready().await.unwrap();
    let _queued: Vec<_> = (0..3)
        .map(|_| dispatcher.enqueue(&pool, call(Priority::NORMAL)).unwrap())
        .collect();
    let Err(rejection) = dispatcher.enqueue(&pool, call(Priority::HIGH)) else {
        panic!("the fourth waiting call was accepted");
    };
    assert!(matches!(
        rejection,
        Rejection::QueueFull {
            waiting: 3,
            max_queue_length: 3,
            ..
        }
    ));
    assert!(rejection.retry_after() >= Duration::from_millis(10));
    assert!(rejection.to_string().contains("max_queue_length"));
    // Async work does not count against the limit.
    let uncounted = AcquireRequest {
        counts_against_queue_limit: false,
        ..call(Priority::NORMAL)
    };
    let _async_waiter = dispatcher.enqueue(&pool, uncounted).unwrap();
    assert_eq!(dispatcher.snapshot().waiting_uncounted, 1);
}

#[tokio::test(start_paused = true)]
async fn high_priority_runs_before_queued_low_priority_calls() {
    let dispatcher = dispatcher(1, 1024);
    let pool = dispatcher.add_pool("task-a", settings(1), Arc::new(CountingFactory::default()));
    let first = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut calls = Vec::new();
    let mut submit = |label: &'static str, priority: Priority| {
        let ticket = dispatcher.enqueue(&pool, call(priority)).unwrap();
        let order = order.clone();
        calls.push(tokio::spawn(async move {
            let _lease = ticket.ready().await.unwrap();
            order.lock().push(label);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }));
    };
    for _ in 0..100 {
        submit("low", Priority::LOW);
    }
    submit("high", Priority::HIGH);
    settle().await;
    drop(first);
    for call in calls {
        call.await.unwrap();
    }
    let order = order.lock();
    assert_eq!(order[0], "high", "order: {:?}", &order[..5]);
    assert_eq!(order.len(), 101);
}

#[tokio::test(start_paused = true)]
async fn min_instances_are_warm_after_load_and_idle_ones_shrink_back() {
    let dispatcher = dispatcher(64, 64);
    dispatcher.start_maintenance();
    let pool_settings = PoolSettings {
        min_instances: 2,
        max_instances: 8,
        idle_timeout_ms: 5_000,
        ..PoolSettings::default()
    };
    let factory = Arc::new(CountingFactory::default());
    let pool = dispatcher.add_pool("task-a", pool_settings, factory.clone());
    settle().await;
    let snapshot = dispatcher.pool_snapshot(&pool).unwrap();
    assert_eq!(snapshot.instances.len(), 2);
    assert!(
        snapshot
            .instances
            .iter()
            .all(|instance| instance.state == InstanceState::Ready)
    );
    // A burst of 6 concurrent calls grows the pool to 6…
    let mut leases = Vec::new();
    for _ in 0..6 {
        let ticket = dispatcher.enqueue(&pool, call(Priority::NORMAL)).unwrap();
        leases.push(ticket.ready().await.unwrap());
    }
    assert_eq!(dispatcher.pool_snapshot(&pool).unwrap().instances.len(), 6);
    let cold = leases
        .iter()
        .filter(|lease| lease.cold_start().is_some())
        .count();
    assert_eq!(cold, 4, "two calls used the warm instances");
    drop(leases);
    // …which stays while younger than idle_timeout and shrinks to min after it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(dispatcher.pool_snapshot(&pool).unwrap().instances.len(), 6);
    // The reactive stable window (60 s by default) still remembers the burst; use a pool
    // whose windows are short to see the shrink.
    drop(pool);
    let short_windows = PoolSettings {
        autoscale: spearlet_core::AutoscaleSettings {
            stable_window_ms: 2_000,
            panic_window_ms: 1_000,
            predictive: false,
            ..Default::default()
        },
        ..pool_settings
    };
    let pool = dispatcher.add_pool("task-b", short_windows, factory.clone());
    settle().await;
    let mut leases = Vec::new();
    for _ in 0..6 {
        let ticket = dispatcher.enqueue(&pool, call(Priority::NORMAL)).unwrap();
        leases.push(ticket.ready().await.unwrap());
    }
    drop(leases);
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let snapshot = dispatcher.pool_snapshot(&pool).unwrap();
    assert_eq!(snapshot.instances.len(), 6, "{snapshot:#?}");
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let snapshot = dispatcher.pool_snapshot(&pool).unwrap();
    assert_eq!(snapshot.instances.len(), 2, "{snapshot:?}");
    assert_eq!(snapshot.last_decision.unwrap().desired_instances, 2);
}

#[tokio::test(start_paused = true)]
async fn force_new_instance_serves_one_call_and_is_refused_at_max() {
    let dispatcher = dispatcher(64, 64);
    let pool = dispatcher.add_pool("task-a", settings(2), Arc::new(CountingFactory::default()));
    let force_new = AcquireRequest {
        force_new_instance: true,
        ..call(Priority::NORMAL)
    };
    let warm = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
    let fresh = acquire(&dispatcher, &pool, force_new).await;
    assert_ne!(warm.runtime(), fresh.runtime());
    assert!(fresh.cold_start().is_some());
    let Err(rejection) = dispatcher.enqueue(&pool, force_new) else {
        panic!("a third instance was allowed");
    };
    assert!(matches!(
        rejection,
        Rejection::PoolAtMaxInstances {
            max_instances: 2,
            ..
        }
    ));
    drop(fresh);
    // The one-shot instance is gone; the warm one stays.
    assert_eq!(dispatcher.pool_snapshot(&pool).unwrap().instances.len(), 1);
    drop(warm);
    assert_eq!(dispatcher.pool_snapshot(&pool).unwrap().instances.len(), 1);
    // At max with idle instances, a fresh instance takes the place of the longest-idle one.
    let second = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
    let second_runtime = *second.runtime();
    drop(second);
    assert_eq!(dispatcher.pool_snapshot(&pool).unwrap().instances.len(), 1);
    let _busy = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
    let _other_busy = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
    assert!(
        dispatcher.enqueue(&pool, force_new).is_err(),
        "both busy: no room"
    );
    drop(_other_busy);
    let fresh = acquire(&dispatcher, &pool, force_new).await;
    assert!(*fresh.runtime() > second_runtime);
    assert_eq!(dispatcher.pool_snapshot(&pool).unwrap().instances.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn reuse_instances_recycle_after_max_uses_and_discarded_ones_are_replaced() {
    let dispatcher = dispatcher(64, 64);
    let factory = Arc::new(CountingFactory::default());
    let reuse = PoolSettings {
        isolation: Isolation::Reuse,
        min_instances: 1,
        max_instances: 1,
        max_uses: 2,
        ..PoolSettings::default()
    };
    let pool = dispatcher.add_pool("task-a", reuse, factory.clone());
    settle().await;
    let mut served_by = Vec::new();
    for _ in 0..4 {
        let lease = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
        served_by.push(*lease.runtime());
        drop(lease);
        settle().await;
    }
    assert_eq!(served_by, vec![1, 1, 2, 2]);
    let mut lease = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
    assert_eq!(*lease.runtime(), 3);
    lease.discard_instance();
    drop(lease);
    settle().await;
    let snapshot = dispatcher.snapshot();
    assert_eq!(snapshot.instances_failed, 1);
    assert_eq!(snapshot.instance_failures_last_minute, 1);
    assert_eq!(
        factory.starts.load(Ordering::SeqCst),
        4,
        "replaced to keep min_instances"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_fails_the_call_and_frees_the_slot() {
    let dispatcher = dispatcher(64, 64);
    let factory = Arc::new(CountingFactory::default());
    factory.fail_starts.store(true, Ordering::SeqCst);
    let pool = dispatcher.add_pool("task-a", settings(1), factory.clone());
    let error = dispatcher
        .enqueue(&pool, call(Priority::NORMAL))
        .unwrap()
        .ready()
        .await
        .err()
        .unwrap();
    assert!(error.message.contains("_initialize"));
    let snapshot = dispatcher.snapshot();
    assert_eq!(snapshot.running, 0);
    assert_eq!(live_instances(&dispatcher), 0);
    factory.fail_starts.store(false, Ordering::SeqCst);
    let lease = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
    assert_eq!(*lease.runtime(), 2);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_idle_instances_are_drained_and_replaced() {
    let dispatcher = dispatcher(64, 64);
    dispatcher.start_maintenance();
    let factory = Arc::new(CountingFactory::default());
    let pool_settings = PoolSettings {
        min_instances: 2,
        ..PoolSettings::default()
    };
    let pool = dispatcher.add_pool("task-a", pool_settings, factory.clone());
    settle().await;
    factory.unhealthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    factory.unhealthy.store(false, Ordering::SeqCst);
    settle().await;
    assert_eq!(dispatcher.snapshot().instances_failed, 2);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let snapshot = dispatcher.pool_snapshot(&pool).unwrap();
    assert_eq!(snapshot.instances.len(), 2);
    assert_eq!(factory.starts.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn the_global_limit_spans_pools_and_leaving_the_queue_frees_its_place() {
    let dispatcher = dispatcher(2, 8);
    let pool_a = dispatcher.add_pool("task-a", settings(4), Arc::new(CountingFactory::default()));
    let pool_b = dispatcher.add_pool("task-b", settings(4), Arc::new(CountingFactory::default()));
    let a = acquire(&dispatcher, &pool_a, call(Priority::NORMAL)).await;
    let _b = acquire(&dispatcher, &pool_b, call(Priority::NORMAL)).await;
    let waiting_a = dispatcher.enqueue(&pool_a, call(Priority::NORMAL)).unwrap();
    let waiting_b = dispatcher.enqueue(&pool_b, call(Priority::HIGH)).unwrap();
    assert!(!waiting_a.granted_at_once());
    assert_eq!(dispatcher.queued(), 2);
    drop(waiting_a);
    assert_eq!(dispatcher.queued(), 1);
    // Freeing task-a's slot lets task-b's waiting call run: the limit is node-wide.
    drop(a);
    let lease = tokio::time::timeout(Duration::from_secs(1), waiting_b.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dispatcher.running(), 2);
    drop(lease);
}

#[tokio::test(start_paused = true)]
async fn periodic_load_is_prewarmed_before_the_burst() {
    let dispatcher = dispatcher(64, 64);
    dispatcher.start_maintenance();
    let factory = Arc::new(CountingFactory {
        start_time: Duration::from_millis(50),
        ..CountingFactory::default()
    });
    let pool_settings = PoolSettings {
        max_instances: 16,
        idle_timeout_ms: 500,
        autoscale: spearlet_core::AutoscaleSettings {
            stable_window_ms: 1_000,
            panic_window_ms: 1_000,
            predictive: true,
            ..Default::default()
        },
        ..PoolSettings::default()
    };
    let pool = dispatcher.add_pool("task-a", pool_settings, factory.clone());
    // A burst of 4 calls of 300 ms every 5 s, starting mid-tick.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut instances_before_burst = Vec::new();
    for period in 0..6 {
        if period > 0 {
            tokio::time::sleep(Duration::from_millis(4_700)).await;
        }
        instances_before_burst.push(dispatcher.pool_snapshot(&pool).unwrap().instances.len());
        let mut calls = Vec::new();
        for _ in 0..4 {
            let ticket = dispatcher.enqueue(&pool, call(Priority::NORMAL)).unwrap();
            calls.push(tokio::spawn(async move {
                let lease = ticket.ready().await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                lease.cold_start().is_some()
            }));
        }
        for call in calls {
            call.await.unwrap();
        }
    }
    // Early bursts start cold and the instances are gone (idle 500 ms) long before the next;
    // once the pattern is learned, instances exist before the burst arrives.
    assert_eq!(instances_before_burst[0], 0);
    assert!(
        instances_before_burst[4..].iter().all(|&count| count >= 4),
        "instances before each burst: {instances_before_burst:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failing_calls_drain_a_reuse_instance_but_not_a_per_call_one() {
    let dispatcher = dispatcher(64, 64);
    for (isolation, expected_starts) in [(Isolation::PerCall, 1), (Isolation::Reuse, 2)] {
        let factory = Arc::new(CountingFactory::default());
        let pool_settings = PoolSettings {
            isolation,
            max_instances: 1,
            ..PoolSettings::default()
        };
        let pool = dispatcher.add_pool("task-a", pool_settings, factory.clone());
        for _ in 0..4 {
            let mut lease = acquire(&dispatcher, &pool, call(Priority::NORMAL)).await;
            lease.record_failure();
        }
        assert_eq!(
            factory.starts.load(Ordering::SeqCst),
            expected_starts,
            "{isolation:?}: three failures in a row make only a reuse instance unhealthy"
        );
    }
    assert_eq!(dispatcher.snapshot().instances_failed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_grant_now_only_call_is_refused_instead_of_queued() {
    let dispatcher = dispatcher(64, 64);
    let pool = dispatcher.add_pool("task-a", settings(1), Arc::new(CountingFactory::default()));
    let grant_now_only = AcquireRequest {
        grant_now_only: true,
        ..call(Priority::NORMAL)
    };
    assert!(dispatcher.can_grant_now(&pool, false));
    let busy = acquire(&dispatcher, &pool, grant_now_only).await;
    assert!(!dispatcher.can_grant_now(&pool, false));
    let Err(rejection) = dispatcher.enqueue(&pool, grant_now_only) else {
        panic!("a grant-now-only call was queued");
    };
    assert!(
        matches!(rejection, Rejection::NoInstanceNow { .. }),
        "{rejection}"
    );
    assert_eq!(dispatcher.queued(), 0);
    drop(busy);
    assert!(dispatcher.can_grant_now(&pool, false));
}
