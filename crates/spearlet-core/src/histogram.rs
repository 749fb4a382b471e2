//! A fixed-bucket histogram that many threads observe into without locks, for metrics.
//!
//! The bucket bounds are chosen once (a `&'static [f64]`, strictly increasing); each observation
//! is one bucket search and two atomic additions (its bucket and the sum), so it is cheap enough
//! for the hot path. A [`HistogramSnapshot`] reads the counts back for an exporter; counts are
//! kept per bucket (not cumulative) so an observation touches one counter, and
//! [`HistogramSnapshot::cumulative`] gives the Prometheus form. The count is the sum of the
//! buckets, so a snapshot's count and buckets always agree; the sum is read separately and may
//! lag or lead them by an observation taken at the same moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds in seconds for durations from 100 µs to a minute: a warm wasm call, a cold process
/// start and a long guest all land in distinct buckets.
pub const DURATION_SECONDS_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Counts of observations per bucket, plus their sum.
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, and a last one for observations above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with buckets `(-inf, bounds[0]], (bounds[0], bounds[1]], …, (last, +inf)`.
    ///
    /// # Panics
    /// When `bounds` are not finite and strictly increasing: bounds are constants, so this is a
    /// programming error.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        assert!(
            bounds.iter().all(|bound| bound.is_finite())
                && bounds.windows(2).all(|pair| pair[0] < pair[1]),
            "histogram bounds must be finite and strictly increasing: {bounds:?}"
        );
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one value. NaN is ignored: it belongs to no bucket.
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let index = self.bounds.partition_point(|bound| *bound < value);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        }
    }
}

/// The state of a [`Histogram`] at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more entry than `bounds`, the last for
    /// values above every bound.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// All observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, observations ≤ bound)` for every bound and then `+inf`, as Prometheus
    /// `_bucket{le=…}` samples want them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }

    /// Adds `other`'s observations (a snapshot with the same bounds) to this one.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        debug_assert_eq!(
            self.bounds, other.bounds,
            "adding histograms of other bounds"
        );
        for (total, count) in self.counts.iter_mut().zip(&other.counts) {
            *total += count;
        }
        self.sum += other.sum;
    }

    /// The observations made since `earlier`, a snapshot of the same histogram: per-bucket
    /// differences (a counter that went backwards, which a reset would cause, counts as 0).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(index, count)| {
                    count.saturating_sub(earlier.counts.get(index).copied().unwrap_or(0))
                })
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// The `quantile` (0..=1) estimated from the buckets as Prometheus' `histogram_quantile`
    /// does: linear within the bucket that holds it (from 0 for the first bucket), and the
    /// highest bound for values above every bound. `None` without observations.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = quantile.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            let through = below + count;
            if (through as f64) >= rank && *count > 0 {
                let Some(upper) = self.bounds.get(index) else {
                    return self.bounds.last().copied();
                };
                let lower = if index == 0 {
                    0.0
                } else {
                    self.bounds[index - 1]
                };
                let within = (rank - below as f64) / *count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below = through;
        }
        self.bounds.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let histogram = Histogram::new(&[1.0, 2.0, 5.0]);
        for value in [0.5, 1.0, 1.5, 2.0, 4.0, 6.0, 100.0, f64::NAN] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, [2, 2, 1, 2]);
        assert_eq!(snapshot.count(), 7);
        assert_eq!(snapshot.sum, 115.0);
        assert_eq!(
            snapshot.cumulative(),
            [(1.0, 2), (2.0, 4), (5.0, 5), (f64::INFINITY, 7)]
        );
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket_like_prometheus() {
        let histogram = Histogram::new(&[1.0, 2.0, 4.0]);
        assert_eq!(histogram.snapshot().quantile(0.5), None);
        for value in [0.5, 1.5, 1.5, 3.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        // Rank 2 of 4 is the first of the two observations in (1, 2]: halfway through it.
        assert_eq!(snapshot.quantile(0.5), Some(1.5));
        assert_eq!(snapshot.quantile(0.25), Some(1.0));
        assert_eq!(snapshot.quantile(1.0), Some(4.0));
        histogram.observe(100.0);
        assert_eq!(
            histogram.snapshot().quantile(1.0),
            Some(4.0),
            "above every bound: the highest bound"
        );
    }

    #[test]
    fn since_counts_only_the_observations_in_between() {
        let histogram = Histogram::new(&[1.0, 2.0]);
        histogram.observe(0.5);
        let earlier = histogram.snapshot();
        histogram.observe(1.5);
        histogram.observe(1.5);
        let between = histogram.snapshot().since(&earlier);
        assert_eq!(between.counts, [0, 2, 0]);
        assert_eq!(between.sum, 3.0);
        assert_eq!(between.quantile(0.5), Some(1.5));
        let mut both = earlier.clone();
        both.add(&between);
        assert_eq!(both, histogram.snapshot(), "earlier + between = now");
    }

    #[test]
    fn durations_are_observed_in_seconds() {
        let histogram = Histogram::new(DURATION_SECONDS_BOUNDS);
        histogram.observe_duration(Duration::from_micros(300));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts[2], 1, "300 µs falls in (250 µs, 500 µs]");
        assert!((snapshot.sum - 0.0003).abs() < 1e-12);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let histogram = Histogram::new(&[10.0]);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        histogram.observe(1.0);
                    }
                });
            }
        });
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 4000);
        assert_eq!(snapshot.sum, 4000.0);
    }
}
