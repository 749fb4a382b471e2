//! Micro-benchmarks of the per-call work of the instance layer:
//! - `scheduler_pick/<policy>`: one `InstanceScheduler::pick` among 16 instances that can all
//!   take a call, for each `SchedulingPolicy`;
//! - `dispatcher/acquire_release_warm`: one call's trip through a `Dispatcher` with a pool of 4
//!   warm instances — `enqueue`, `Ticket::ready`, drop the lease — on a current-thread tokio
//!   runtime, with a runtime type that is just a number (no instance is ever started here).
//!
//! Run: `cargo bench -p spearlet-pool --bench dispatcher` (add a name filter after `--`).

// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use futures::future::BoxFuture;
use spearlet_core::{PoolSettings, Priority, SchedulingPolicy};
use spearlet_pool::scheduler::{InstanceScheduler, InstanceView};
use spearlet_pool::{
    AcquireRequest, Dispatcher, DispatcherConfig, InstanceFactory, InstanceStartError,
    InstanceState,
};

const INSTANCES: u64 = 16;
const WARM_INSTANCES: u32 = 4;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// 16 accepting instances with some load and differing response times, none full.
fn ready_instances() -> Vec<InstanceView> {
    (1..=INSTANCES)
        .map(|serial| InstanceView {
            serial,
            active: (serial * 7 % 4) as u32,
            capacity: 4,
            accepting: true,
            mean_response_us: Some(1_000 + serial * 37 % 500),
        })
        .collect()
}

fn scheduler_pick(criterion: &mut Criterion) {
    let instances = ready_instances();
    let mut group = criterion.benchmark_group("scheduler_pick");
    for policy in SchedulingPolicy::ALL {
        let mut scheduler = InstanceScheduler::new(policy);
        group.bench_function(policy.as_str(), |bencher| {
            bencher.iter(|| scheduler.pick(black_box(&instances)))
        });
    }
    group.finish();
}

/// Instances are numbers; starting one is immediate.
struct NumberFactory;

impl InstanceFactory<u64> for NumberFactory {
    fn create_instance(&self) -> BoxFuture<'static, Result<u64, InstanceStartError>> {
        async { Ok(7) }.boxed()
    }
}

fn acquire_release(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = AcquireRequest {
        priority: Priority::NORMAL,
        force_new_instance: false,
        counts_against_queue_limit: true,
        grant_now_only: false,
    };
    // No `start_maintenance`: the autoscaler and idle scale-down stay out of the measurement.
    let (dispatcher, pool) = runtime.block_on(async {
        let dispatcher = Dispatcher::<u64>::new(DispatcherConfig {
            max_concurrent_executions: 256,
            max_queue_length: 1024,
            priority_aging: Duration::from_secs(1),
            health_check_interval: Duration::from_secs(1),
            autoscale_tick: Duration::from_secs(1),
            instance_id_prefix: String::new(),
        });
        let pool = dispatcher.add_pool(
            "bench",
            PoolSettings {
                min_instances: WARM_INSTANCES,
                max_instances: WARM_INSTANCES,
                ..PoolSettings::default()
            },
            Arc::new(NumberFactory),
        );
        // Hold every instance once so all of them have started, then give them back.
        let mut leases = Vec::new();
        for _ in 0..WARM_INSTANCES {
            let ticket = dispatcher.enqueue(&pool, request).unwrap();
            leases.push(ticket.ready().await.unwrap());
        }
        drop(leases);
        (dispatcher, pool)
    });
    let snapshot = dispatcher.pool_snapshot(&pool).unwrap();
    assert_eq!(snapshot.instances.len(), WARM_INSTANCES as usize);
    assert!(
        snapshot
            .instances
            .iter()
            .all(|instance| instance.state == InstanceState::Ready)
    );
    let cold_starts_before = snapshot.cold_starts;

    criterion
        .benchmark_group("dispatcher")
        .bench_function("acquire_release_warm", |bencher| {
            bencher.iter_custom(|iterations| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        let ticket = dispatcher.enqueue(&pool, request).unwrap();
                        let lease = ticket.ready().await.unwrap();
                        black_box(lease.runtime());
                    }
                    started.elapsed()
                })
            })
        });
    // Every measured call was served by a warm instance.
    let cold_starts_after = dispatcher.pool_snapshot(&pool).unwrap().cold_starts;
    assert_eq!(cold_starts_after, cold_starts_before);
}

criterion_group! {
    name = benches;
    config = config();
    targets = scheduler_pick, acquire_release
}
criterion_main!(benches);
