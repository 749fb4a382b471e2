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
