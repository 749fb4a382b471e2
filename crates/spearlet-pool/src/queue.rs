//! The order calls leave the queue in: priority first, FIFO within a priority, with aging.
//!
//! A waiting call gains one priority level per `priority_aging` waited. Because every waiter ages
//! at the same rate, the comparison between two waiters never changes while they wait, so the
//! rank can be computed once at enqueue time and kept in a binary heap:
//!
//! ```text
//! rank = priority × aging_µs − enqueued_at_µs      (higher leaves first)
//! ```
//!
//! A waiter enqueued `k × aging` earlier than another is worth `k` priority levels more, so a
//! low-priority call is overtaken by newer high-priority calls for at most
//! `(9 − its priority) × aging`, then runs before them: low priority cannot starve.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::time::Duration;

use spearlet_core::Priority;

/// Rank of a waiter; see the module docs.
pub(crate) fn waiter_rank(
    priority: Priority,
    enqueued_since_epoch: Duration,
    aging: Duration,
) -> i64 {
    let aging_us = aging.as_micros().max(1) as i64;
    i64::from(priority.level()) * aging_us - enqueued_since_epoch.as_micros() as i64
}

/// Heap order of waiters: higher rank first, then the earlier submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaiterOrder {
    pub(crate) rank: i64,
    pub(crate) sequence: u64,
}

impl Ord for WaiterOrder {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank
            .cmp(&other.rank)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl PartialOrd for WaiterOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The most recent queue waits, for percentiles in stats.
pub(crate) struct RecentWaits {
    waits_us: VecDeque<u64>,
    capacity: usize,
}

impl RecentWaits {
    pub(crate) fn new(capacity: usize) -> RecentWaits {
        RecentWaits {
            waits_us: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub(crate) fn record(&mut self, wait: Duration) {
        if self.waits_us.len() == self.capacity {
            self.waits_us.pop_front();
        }
        self.waits_us.push_back(wait.as_micros() as u64);
    }

    /// The given percentiles (0–100) in milliseconds, or `None` before any wait was recorded.
    pub(crate) fn percentiles_ms<const N: usize>(&self, percentiles: [f64; N]) -> Option<[f64; N]> {
        if self.waits_us.is_empty() {
            return None;
        }
        let mut sorted: Vec<u64> = self.waits_us.iter().copied().collect();
        sorted.sort_unstable();
        Some(percentiles.map(|percentile| {
            let index = ((percentile / 100.0) * (sorted.len() - 1) as f64).round() as usize;
            sorted[index.min(sorted.len() - 1)] as f64 / 1000.0
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BinaryHeap;

    use super::*;

    fn order(priority: u8, enqueued_ms: u64, sequence: u64) -> WaiterOrder {
        WaiterOrder {
            rank: waiter_rank(
                Priority::parse(&priority.to_string()).unwrap(),
                Duration::from_millis(enqueued_ms),
                Duration::from_millis(1000),
            ),
            sequence,
        }
    }

    fn drain(heap: BinaryHeap<WaiterOrder>) -> Vec<u64> {
        heap.into_sorted_vec()
            .into_iter()
            .rev()
            .map(|waiter| waiter.sequence)
            .collect()
    }

    #[test]
    fn higher_priority_leaves_first_and_fifo_within_a_priority() {
        let heap: BinaryHeap<WaiterOrder> = [
            order(1, 0, 0),
            order(1, 0, 1),
            order(9, 1, 2),
            order(5, 2, 3),
            order(9, 3, 4),
        ]
        .into();
        assert_eq!(drain(heap), vec![2, 4, 3, 0, 1]);
    }

    #[test]
    fn aging_lets_old_low_priority_calls_overtake_new_high_priority_ones() {
        // A low (1) call that waited 8.5 s is worth 9.5 levels: it beats a fresh high (9) call,
        // but not one that arrived 8 s ago.
        let heap: BinaryHeap<WaiterOrder> =
            [order(1, 0, 0), order(9, 8_500, 1), order(9, 100, 2)].into();
        assert_eq!(drain(heap), vec![2, 0, 1]);
    }

    #[test]
    fn percentiles_come_from_recent_waits() {
        let mut waits = RecentWaits::new(100);
        assert!(waits.percentiles_ms([50.0]).is_none());
        for millis in 1..=200 {
            waits.record(Duration::from_millis(millis));
        }
        // Only the last 100 (101..=200 ms) are kept.
        let [p0, p50, p100] = waits.percentiles_ms([0.0, 50.0, 100.0]).unwrap();
        assert_eq!(p0, 101.0);
        assert!((150.0..=151.0).contains(&p50), "{p50}");
        assert_eq!(p100, 200.0);
    }
}
