//! The InstanceScheduler: picks which instance of a pool serves the next call.
//!
//! The pool takes an [`InstanceView`] snapshot of each of its instances under its lock and asks
//! [`InstanceScheduler::pick`] for an index into that snapshot. The scheduler keeps only the
//! little state its policy needs between picks (the last picked serial for round robin, the
//! smoothed current weights for weighted round robin) and never sees the instances themselves.
//!
//! Invariants:
//! - `pick` never returns a full instance (`active >= capacity`) or one that is not `accepting`;
//!   it returns `None` exactly when no instance can take a call.
//! - `pick` runs on the hot path of every invocation: one or two passes over the slice and no
//!   allocation. The one exception is weighted round robin, which inserts into a small map the
//!   first time it sees a serial and prunes serials that left the pool.
//! - State is keyed by instance serial, never by index, because indices shift when instances are
//!   removed; serials are never reused within a pool.
//! - Ties always break towards the lowest index, so every policy but `Random` is deterministic.
//!
//! The policies, in the order of [`SchedulingPolicy`]:
//! - `RoundRobin`: the next instance that can take a call after the previously picked serial, in
//!   slice order, wrapping. If that serial has left the pool, the rotation resumes at the first
//!   instance with a larger serial (the pool appends instances in serial order).
//! - `LeastConnections`: the fewest active executions.
//! - `Random`: uniform among the instances that can take a call (`rand::rng()`).
//! - `WeightedRoundRobin`: nginx's smooth weighted round robin with weight = capacity. Each pick
//!   adds every eligible instance's weight to its current weight, picks the largest current
//!   weight and subtracts the total eligible weight from the winner. Over any run of
//!   `sum(weights)` picks on an unchanging pool each instance is picked exactly `weight` times,
//!   interleaved rather than in bursts.
//! - `LeastResponseTime`: the lowest exponentially weighted mean response time; an instance that
//!   has never served a call counts as 0 µs so it gets tried. Ties go to fewer active executions.
//! - `ResourceBased`: the lowest load `active / capacity`; ties go to the larger free capacity.

use std::cmp::Ordering;
use std::collections::HashMap;

use rand::Rng;
use spearlet_core::SchedulingPolicy;

/// What the scheduler sees of one instance (a snapshot taken under the pool lock).
#[derive(Clone, Copy, Debug)]
pub struct InstanceView {
    /// Stable id of the instance within its pool (never reused).
    pub serial: u64,
    /// Executions running on the instance now.
    pub active: u32,
    /// Executions the instance can run at once.
    pub capacity: u32,
    /// Healthy and Ready/Running (not Creating, Draining, Terminated or Failed).
    pub accepting: bool,
    /// Exponentially weighted mean response time in µs; None = never served a call.
    pub mean_response_us: Option<u64>,
}

impl InstanceView {
    /// Accepting and below capacity: the only instances `pick` may return.
    pub fn can_take_call(&self) -> bool {
        self.accepting && self.active < self.capacity
    }
}

/// Picks an instance for each call according to one [`SchedulingPolicy`].
#[derive(Debug)]
pub struct InstanceScheduler {
    policy: SchedulingPolicy,
    /// Round robin: the serial picked last, where the rotation continues from.
    round_robin_last_picked_serial: Option<u64>,
    /// Weighted round robin: the smoothed current weight of each serial.
    weighted_round_robin: WeightedRoundRobinState,
}

impl InstanceScheduler {
    pub fn new(policy: SchedulingPolicy) -> Self {
        InstanceScheduler {
            policy,
            round_robin_last_picked_serial: None,
            weighted_round_robin: WeightedRoundRobinState::default(),
        }
    }

    pub fn policy(&self) -> SchedulingPolicy {
        self.policy
    }

    /// Index into `instances` of the instance to serve the next call, or None when no instance
    /// is accepting with active < capacity. Never returns a full or non-accepting instance.
    pub fn pick(&mut self, instances: &[InstanceView]) -> Option<usize> {
        match self.policy {
            SchedulingPolicy::RoundRobin => self.pick_round_robin(instances),
            SchedulingPolicy::LeastConnections => pick_least_connections(instances),
            SchedulingPolicy::Random => pick_random(instances),
            SchedulingPolicy::WeightedRoundRobin => self.weighted_round_robin.pick(instances),
            SchedulingPolicy::LeastResponseTime => pick_least_response_time(instances),
            SchedulingPolicy::ResourceBased => pick_resource_based(instances),
        }
    }

    fn pick_round_robin(&mut self, instances: &[InstanceView]) -> Option<usize> {
        let instance_count = instances.len();
        let start_index = match self.round_robin_last_picked_serial {
            None => 0,
            Some(last_picked_serial) => round_robin_start_index(instances, last_picked_serial),
        };
        let picked_index = (0..instance_count)
            .map(|offset| (start_index + offset) % instance_count)
            .find(|&index| instances[index].can_take_call())?;
        self.round_robin_last_picked_serial = Some(instances[picked_index].serial);
        Some(picked_index)
    }
}

/// Where the rotation resumes: right after the last picked serial, or, when it has left the
/// pool, at the first instance with a larger serial (or the start when there is none).
fn round_robin_start_index(instances: &[InstanceView], last_picked_serial: u64) -> usize {
    let mut first_larger_serial_index = None;
    for (index, instance) in instances.iter().enumerate() {
        if instance.serial == last_picked_serial {
            return index + 1;
        }
        if first_larger_serial_index.is_none() && instance.serial > last_picked_serial {
            first_larger_serial_index = Some(index);
        }
    }
    first_larger_serial_index.unwrap_or(0)
}

/// The eligible instance with the smallest key; `min_by_key` keeps the first of equal keys, so
/// ties go to the lowest index.
fn pick_smallest_by_key<Key: Ord>(
    instances: &[InstanceView],
    key: impl Fn(&InstanceView) -> Key,
) -> Option<usize> {
    instances
        .iter()
        .enumerate()
        .filter(|(_, instance)| instance.can_take_call())
        .min_by_key(|(_, instance)| key(instance))
        .map(|(index, _)| index)
}

fn pick_least_connections(instances: &[InstanceView]) -> Option<usize> {
    pick_smallest_by_key(instances, |instance| instance.active)
}

fn pick_least_response_time(instances: &[InstanceView]) -> Option<usize> {
    pick_smallest_by_key(instances, |instance| {
        (instance.mean_response_us.unwrap_or(0), instance.active)
    })
}

fn pick_resource_based(instances: &[InstanceView]) -> Option<usize> {
    let mut best_index: Option<usize> = None;
    for (index, instance) in instances.iter().enumerate() {
        if !instance.can_take_call() {
            continue;
        }
        let is_better = match best_index {
            None => true,
            Some(best) => compare_resource_load(instance, &instances[best]) == Ordering::Less,
        };
        if is_better {
            best_index = Some(index);
        }
    }
    best_index
}

/// Lower load first (`active / capacity`, compared exactly by cross-multiplying), then more
/// free slots. Only called on eligible instances, so both capacities are at least 1.
fn compare_resource_load(candidate: &InstanceView, incumbent: &InstanceView) -> Ordering {
    let candidate_load = u64::from(candidate.active) * u64::from(incumbent.capacity);
    let incumbent_load = u64::from(incumbent.active) * u64::from(candidate.capacity);
    candidate_load.cmp(&incumbent_load).then_with(|| {
        let candidate_free = candidate.capacity - candidate.active;
        let incumbent_free = incumbent.capacity - incumbent.active;
        incumbent_free.cmp(&candidate_free)
    })
}

fn pick_random(instances: &[InstanceView]) -> Option<usize> {
    let eligible_count = instances
        .iter()
        .filter(|instance| instance.can_take_call())
        .count();
    if eligible_count == 0 {
        return None;
    }
    let chosen_rank = rand::rng().random_range(0..eligible_count);
    instances
        .iter()
        .enumerate()
        .filter(|(_, instance)| instance.can_take_call())
        .nth(chosen_rank)
        .map(|(index, _)| index)
}

/// nginx's smooth weighted round robin, keyed by serial.
#[derive(Debug, Default)]
struct WeightedRoundRobinState {
    by_serial: HashMap<u64, WeightedEntry>,
    /// Counts picks; an entry not seen in the current pick belongs to a serial that left the
    /// pool.
    pick_round: u64,
}

#[derive(Debug, Clone, Copy)]
struct WeightedEntry {
    current_weight: i64,
    last_seen_round: u64,
}

impl WeightedRoundRobinState {
    fn pick(&mut self, instances: &[InstanceView]) -> Option<usize> {
        self.pick_round = self.pick_round.wrapping_add(1);
        let pick_round = self.pick_round;
        let mut total_weight: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (index, instance) in instances.iter().enumerate() {
            let entry = self
                .by_serial
                .entry(instance.serial)
                .or_insert(WeightedEntry {
                    current_weight: 0,
                    last_seen_round: pick_round,
                });
            entry.last_seen_round = pick_round;
            // A full or non-accepting instance keeps its current weight untouched, as nginx
            // does for a peer that is down.
            if !instance.can_take_call() {
                continue;
            }
            let weight = i64::from(instance.capacity);
            entry.current_weight += weight;
            total_weight += weight;
            if best.is_none_or(|(_, best_weight)| entry.current_weight > best_weight) {
                best = Some((index, entry.current_weight));
            }
        }
        if self.by_serial.len() > instances.len() {
            self.by_serial
                .retain(|_, entry| entry.last_seen_round == pick_round);
        }
        let (picked_index, _) = best?;
        if let Some(entry) = self.by_serial.get_mut(&instances[picked_index].serial) {
            entry.current_weight -= total_weight;
        }
        Some(picked_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(serial: u64, active: u32, capacity: u32) -> InstanceView {
        InstanceView {
            serial,
            active,
            capacity,
            accepting: true,
            mean_response_us: None,
        }
    }

    fn not_accepting(serial: u64, capacity: u32) -> InstanceView {
        InstanceView {
            accepting: false,
            ..view(serial, 0, capacity)
        }
    }

    fn timed(serial: u64, active: u32, capacity: u32, mean_response_us: u64) -> InstanceView {
        InstanceView {
            mean_response_us: Some(mean_response_us),
            ..view(serial, active, capacity)
        }
    }

    /// Picks `expected.len()` times from an unchanging pool (calls release immediately).
    fn check(policy: SchedulingPolicy, instances: &[InstanceView], expected: &[Option<usize>]) {
        let mut scheduler = InstanceScheduler::new(policy);
        let picks: Vec<Option<usize>> =
            expected.iter().map(|_| scheduler.pick(instances)).collect();
        assert_eq!(picks, expected, "{policy:?} over {instances:?}");
    }

    #[test]
    fn every_policy_skips_full_and_non_accepting_instances() {
        let only_index_two = [
            view(1, 2, 2),
            not_accepting(2, 4),
            view(3, 0, 1),
            InstanceView {
                accepting: false,
                ..timed(4, 0, 8, 1)
            },
        ];
        let all_full = [view(1, 1, 1), view(2, 3, 3), view(3, 0, 0)];
        let none_accepting = [not_accepting(1, 1), not_accepting(2, 5)];
        for policy in SchedulingPolicy::ALL {
            check(policy, &only_index_two, &[Some(2), Some(2), Some(2)]);
            check(policy, &all_full, &[None, None]);
            check(policy, &none_accepting, &[None]);
            check(policy, &[], &[None]);
        }
    }

    /// A policy, a pool and the picks it should make from it.
    type PickCase<'a> = (SchedulingPolicy, &'a [InstanceView], &'a [Option<usize>]);

    #[test]
    fn policies_pick_in_their_order() {
        use SchedulingPolicy::*;
        let table: &[PickCase] = &[
            // Rotation in slice order, skipping the full instance at index 1, wrapping.
            (
                RoundRobin,
                &[view(1, 0, 1), view(2, 1, 1), view(3, 0, 1), view(4, 0, 1)],
                &[Some(0), Some(2), Some(3), Some(0), Some(2)],
            ),
            // Fewest active; ties go to the lowest index.
            (
                LeastConnections,
                &[view(1, 2, 4), view(2, 1, 4), view(3, 1, 4), view(4, 0, 0)],
                &[Some(1), Some(1)],
            ),
            // nginx's example: weights 5, 1, 1 give a a b a c a a, then repeat.
            (
                WeightedRoundRobin,
                &[view(1, 0, 5), view(2, 0, 1), view(3, 0, 1)],
                &[
                    Some(0),
                    Some(0),
                    Some(1),
                    Some(0),
                    Some(2),
                    Some(0),
                    Some(0),
                    Some(0),
                ],
            ),
            // Untried instances (None = 0 µs) first; among them fewer active wins.
            (
                LeastResponseTime,
                &[
                    timed(1, 0, 4, 50),
                    view(2, 2, 4),
                    view(3, 1, 4),
                    timed(4, 0, 4, 10),
                ],
                &[Some(2)],
            ),
            // Once every instance has served, the fastest wins even if busier.
            (
                LeastResponseTime,
                &[timed(1, 0, 4, 50), timed(2, 3, 4, 10), timed(3, 0, 4, 30)],
                &[Some(1)],
            ),
            // Equal times: fewer active, then lowest index.
            (
                LeastResponseTime,
                &[timed(1, 2, 4, 10), timed(2, 1, 4, 10), timed(3, 1, 4, 10)],
                &[Some(1)],
            ),
            // Load 1/2 vs 1/4 vs 2/4: the lowest ratio wins.
            (
                ResourceBased,
                &[view(1, 1, 2), view(2, 1, 4), view(3, 2, 4)],
                &[Some(1)],
            ),
            // Equal load 0: the larger free capacity wins.
            (
                ResourceBased,
                &[view(1, 0, 1), view(2, 0, 8), view(3, 0, 4)],
                &[Some(1)],
            ),
            // Equal load 1/2 and equal free capacity: the lowest index wins.
            (
                ResourceBased,
                &[view(1, 3, 4), view(2, 2, 4), view(3, 2, 4)],
                &[Some(1)],
            ),
        ];
        for (policy, instances, expected) in table {
            check(*policy, instances, expected);
        }
    }

    #[test]
    fn round_robin_resumes_after_the_last_serial_when_the_pool_changes() {
        let mut scheduler = InstanceScheduler::new(SchedulingPolicy::RoundRobin);
        let pool = [view(1, 0, 1), view(2, 0, 1), view(3, 0, 1)];
        assert_eq!(scheduler.pick(&pool), Some(0));
        assert_eq!(scheduler.pick(&pool), Some(1));
        // Serial 2 leaves: the rotation continues at serial 3, now index 1.
        let without_serial_two = [view(1, 0, 1), view(3, 0, 1), view(4, 0, 1)];
        assert_eq!(scheduler.pick(&without_serial_two), Some(1));
        // Serial 5 joins at the end and is next after serial 4.
        let grown = [view(1, 0, 1), view(3, 0, 1), view(4, 0, 1), view(5, 0, 1)];
        assert_eq!(scheduler.pick(&grown), Some(2));
        assert_eq!(scheduler.pick(&grown), Some(3));
        assert_eq!(scheduler.pick(&grown), Some(0));
    }

    #[test]
    fn weighted_round_robin_is_proportional_to_capacity() {
        let mut scheduler = InstanceScheduler::new(SchedulingPolicy::WeightedRoundRobin);
        let pool = [view(10, 0, 1), view(11, 0, 2), view(12, 0, 3)];
        let mut counts = [0_u32; 3];
        for _ in 0..6_000 {
            counts[scheduler.pick(&pool).unwrap()] += 1;
        }
        assert_eq!(counts, [1_000, 2_000, 3_000]);
    }

    #[test]
    fn weighted_round_robin_prunes_serials_that_left() {
        let mut scheduler = InstanceScheduler::new(SchedulingPolicy::WeightedRoundRobin);
        let pool = [view(1, 0, 1), view(2, 0, 2), view(3, 0, 3)];
        for _ in 0..5 {
            scheduler.pick(&pool).unwrap();
        }
        assert_eq!(scheduler.weighted_round_robin.by_serial.len(), 3);
        let shrunk = [view(3, 0, 3), view(4, 0, 3)];
        let mut counts = [0_u32; 2];
        for _ in 0..600 {
            counts[scheduler.pick(&shrunk).unwrap()] += 1;
        }
        let mut remaining: Vec<u64> = scheduler
            .weighted_round_robin
            .by_serial
            .keys()
            .copied()
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, [3, 4]);
        assert_eq!(counts, [300, 300]);
    }

    #[test]
    fn random_returns_only_eligible_and_reaches_all_of_them() {
        let mut scheduler = InstanceScheduler::new(SchedulingPolicy::Random);
        let pool = [
            view(1, 0, 1),
            view(2, 1, 1),
            not_accepting(3, 4),
            view(4, 3, 4),
            view(5, 0, 2),
        ];
        let mut counts = [0_u32; 5];
        for _ in 0..3_000 {
            counts[scheduler.pick(&pool).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert_eq!(counts[2], 0);
        // Each eligible instance expects 1000 picks; 700 is far beyond any plausible deviation.
        for eligible in [0, 3, 4] {
            assert!(counts[eligible] > 700, "{counts:?}");
        }
    }

    #[test]
    fn policy_is_reported() {
        for policy in SchedulingPolicy::ALL {
            assert_eq!(InstanceScheduler::new(policy).policy(), policy);
        }
    }
}
