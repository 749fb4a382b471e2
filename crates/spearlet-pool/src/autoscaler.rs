//! The autoscaler of one pool: decides, once per tick, how many instances the pool should have.
//!
//! Pure arithmetic over the samples it is fed: no clock, no IO, no locks. The pool's background
//! task measures each tick, calls [`Autoscaler::observe`] and creates or retires instances towards
//! [`ScaleDecision::desired_instances`]. Tests feed samples directly and never wait.
//!
//! **Reactive scaling** follows Knative's autoscaler, with windows counted in ticks:
//! - stable window = `ceil(stable_window_ms / tick)` ticks, panic window =
//!   `ceil(panic_window_ms / tick)` ticks, each at least 1. Until a window has filled, its mean
//!   is over the ticks seen so far.
//! - stable desired = `ceil(mean average_concurrency over the stable window / target_concurrency)`;
//!   panic desired likewise over the panic window.
//! - The pool enters panic when panic desired ≥ 2 × max(current instances, 1) and panic desired
//!   > current instances: a burst the stable window would take too long to notice.
//! - While panicking, reactive = max(stable desired, panic desired, the highest reactive count
//!   since panic began): the pool never scales down in panic. (Knative also counts the stable
//!   desired here, for the rare case where the stable window runs hotter than the panic window.)
//! - The pool leaves panic after a full stable window of ticks without the panic condition; by
//!   then the burst has made its way into the stable mean. Outside panic, reactive = stable
//!   desired.
//!
//! **Predictive scaling** (when `settings.predictive`) prewarms instances ahead of demand:
//! - Holt's double exponential smoothing of arrivals per second, level α = 0.5 and trend
//!   β = 0.3: weighted towards the last few ticks so a ramp is followed within a handful of
//!   ticks, with a trend damped enough that one noisy tick does not launch a fleet. The level
//!   starts at the first observation and the trend at the difference of the first two. The
//!   forecast one tick ahead is `level + trend`, never below 0. By Little's law it becomes
//!   concurrency: forecast × `mean_execution_seconds` (0 while the execution time is unknown).
//! - A repeating-pattern detector over the last [`SEASONAL_HISTORY_TICKS`] ticks of
//!   `peak_concurrency`: for every period P in `2..=len/2` (so at least two full periods of
//!   history) it computes the normalised sample autocorrelation
//!   `Σ_{t≥P} (x_t − μ)(x_{t−P} − μ) / Σ_t (x_t − μ)²` and keeps the P with the highest value, the
//!   smallest P on ties. A period counts only at correlation ≥ [`SEASONAL_MIN_CORRELATION`]. This
//!   estimator shrinks with the lag by `(len − P) / len`, which favours the fundamental period
//!   over its multiples and makes a pattern seen only twice too weak to trust.
//! - Real periodic load wanders: a cron job's bursts land a tick early or late once scheduling
//!   delay and tick drift are counted, and an exact-lag autocorrelation of such spikes finds no
//!   period at all. So the detector first runs on the history widened by a running maximum over
//!   ±J ticks (J = [`SEASONAL_PHASE_TOLERANCE_TICKS`]), for periods P > 2J (so a lag never
//!   compares a window with itself) and at a bar lowered by (J + 1) / (2J + 1), the least
//!   overlap a widened peak J ticks off its period keeps with its predecessor's (0.4 at J = 1).
//!   The seasonal forecast of next tick's peak is then the widened value one period before the
//!   next tick: the highest peak within J ticks of where the pattern puts the next one.
//!   Instances arrive up to J ticks early and leave up to J ticks late, the price of not missing
//!   the burst. Only when the widened history has no pattern does the detector run on the exact
//!   history (periods from 2, the full bar), whose forecast is the value one period before the
//!   next tick; this keeps patterns too short to widen predictable.
//! - predicted concurrency = max(Little's-law concurrency, seasonal peak forecast);
//!   predicted instances = `ceil(predicted concurrency / target_concurrency)`.
//!
//! The detector costs about `3 × len² / 8` multiply-adds per pass (≈ 135k at 600 ticks, well under
//! a millisecond), at most two passes per tick, and nothing when predictive scaling is off.
//!
//! Invariants:
//! - desired = clamp(max(reactive, predicted), min, max), where max is raised to min if the
//!   caller passed min > max.
//! - No output is ever NaN: non-finite or negative inputs count as 0, a non-positive or
//!   non-finite target counts as 1 and a tick shorter than 1 ms counts as 1 ms.
//! - Every `ceil` forgives 1e-9 of floating-point error, so a mean of exactly 3.0 computed as
//!   3.0000000000000004 still asks for 3 instances.

use std::collections::VecDeque;
use std::time::Duration;

use spearlet_core::AutoscaleSettings;

/// Ticks of `peak_concurrency` the repeating-pattern detector looks back over.
pub const SEASONAL_HISTORY_TICKS: usize = 600;
/// The lowest normalised autocorrelation at which a period counts as a pattern.
pub const SEASONAL_MIN_CORRELATION: f64 = 0.6;
/// How many ticks a repeating pattern's period may wander either way from one repetition to
/// the next and still be predicted.
pub const SEASONAL_PHASE_TOLERANCE_TICKS: usize = 1;
/// Holt's level smoothing: the weight of the newest observation.
pub const HOLT_LEVEL_SMOOTHING: f64 = 0.5;
/// Holt's trend smoothing: the weight of the newest level change.
pub const HOLT_TREND_SMOOTHING: f64 = 0.3;

/// Floating-point slack forgiven before rounding a count up.
const CEIL_TOLERANCE: f64 = 1e-9;

/// One tick's observations of a pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct AutoscaleSample {
    /// Time-averaged concurrency over the tick: executions running on the pool plus calls
    /// waiting for it.
    pub average_concurrency: f64,
    /// The highest concurrency seen during the tick.
    pub peak_concurrency: u32,
    /// Calls that arrived for the pool during the tick.
    pub arrivals: u64,
    /// Recent mean execution time in seconds, if known.
    pub mean_execution_seconds: Option<f64>,
}

/// What the pool should have after one tick, and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleDecision {
    /// What the pool should have now, clamped to [min, max].
    pub desired_instances: u32,
    /// From the stable/panic windows alone.
    pub reactive_instances: u32,
    /// From the forecast alone (0 when predictive is off or there is no history).
    pub predicted_instances: u32,
    pub panicking: bool,
    /// Forecast arrivals per second for the next tick (Holt's forecast, computed whether or not
    /// predictive scaling is on, so it can be reported).
    pub forecast_arrivals_per_second: f64,
}

/// Reactive plus predictive autoscaling of one pool; see the module documentation.
#[derive(Debug)]
pub struct Autoscaler {
    settings: AutoscaleSettings,
    /// `settings.target_concurrency`, or 1 when it is not a positive number.
    target_concurrency: f64,
    min_instances: u32,
    max_instances: u32,
    tick_seconds: f64,
    stable_window_ticks: usize,
    panic_window_ticks: usize,
    /// The newest `max(stable, panic)` ticks of `average_concurrency`, oldest first.
    concurrency_history: VecDeque<f64>,
    /// Some while panicking.
    panic: Option<PanicState>,
    arrival_forecaster: HoltForecaster,
    /// The newest [`SEASONAL_HISTORY_TICKS`] ticks of `peak_concurrency`, oldest first; kept
    /// only when predictive scaling is on.
    peak_history: VecDeque<f64>,
    last_decision: Option<ScaleDecision>,
}

#[derive(Clone, Copy, Debug)]
struct PanicState {
    /// The highest reactive count since panic began; reactive never drops below it in panic.
    highest_reactive_instances: u32,
    /// Consecutive ticks since the panic condition last held.
    ticks_without_panic_condition: usize,
}

impl Autoscaler {
    pub fn new(
        settings: AutoscaleSettings,
        min_instances: u32,
        max_instances: u32,
        tick: Duration,
    ) -> Self {
        let tick = tick.max(Duration::from_millis(1));
        let target_concurrency =
            if settings.target_concurrency.is_finite() && settings.target_concurrency > 0.0 {
                settings.target_concurrency
            } else {
                1.0
            };
        let stable_window_ticks = window_in_ticks(settings.stable_window_ms, tick);
        let panic_window_ticks = window_in_ticks(settings.panic_window_ms, tick);
        let history_ticks = stable_window_ticks.max(panic_window_ticks);
        Autoscaler {
            settings,
            target_concurrency,
            min_instances,
            max_instances: max_instances.max(min_instances),
            tick_seconds: tick.as_secs_f64(),
            stable_window_ticks,
            panic_window_ticks,
            concurrency_history: VecDeque::with_capacity(history_ticks),
            panic: None,
            arrival_forecaster: HoltForecaster::default(),
            peak_history: VecDeque::new(),
            last_decision: None,
        }
    }

    /// Feeds one tick and returns what the pool should have. `current_instances` counts
    /// instances that exist or are being created.
    pub fn observe(&mut self, sample: AutoscaleSample, current_instances: u32) -> ScaleDecision {
        let reactive_instances = self.observe_concurrency(sample, current_instances);

        let arrivals_per_second = sample.arrivals as f64 / self.tick_seconds;
        let forecast_arrivals_per_second = self.arrival_forecaster.observe(arrivals_per_second);

        let predicted_instances = if self.settings.predictive {
            self.predict_instances(sample, forecast_arrivals_per_second)
        } else {
            0
        };

        let decision = ScaleDecision {
            desired_instances: reactive_instances
                .max(predicted_instances)
                .clamp(self.min_instances, self.max_instances),
            reactive_instances,
            predicted_instances,
            panicking: self.panic.is_some(),
            forecast_arrivals_per_second,
        };
        self.last_decision = Some(decision);
        decision
    }

    pub fn last_decision(&self) -> Option<ScaleDecision> {
        self.last_decision
    }

    /// Updates the windows and the panic state; returns the reactive count.
    fn observe_concurrency(&mut self, sample: AutoscaleSample, current_instances: u32) -> u32 {
        let history_ticks = self.stable_window_ticks.max(self.panic_window_ticks);
        if self.concurrency_history.len() == history_ticks {
            self.concurrency_history.pop_front();
        }
        self.concurrency_history
            .push_back(finite_non_negative(sample.average_concurrency));

        let stable_desired = self.instances_for(self.mean_of_newest(self.stable_window_ticks));
        let panic_desired = self.instances_for(self.mean_of_newest(self.panic_window_ticks));

        let panic_threshold = 2 * u64::from(current_instances.max(1));
        let panic_condition =
            u64::from(panic_desired) >= panic_threshold && panic_desired > current_instances;
        if panic_condition {
            let highest_reactive_instances = self
                .panic
                .map_or(0, |panic| panic.highest_reactive_instances);
            self.panic = Some(PanicState {
                highest_reactive_instances,
                ticks_without_panic_condition: 0,
            });
        } else if let Some(panic) = &mut self.panic {
            panic.ticks_without_panic_condition += 1;
            if panic.ticks_without_panic_condition >= self.stable_window_ticks {
                self.panic = None;
            }
        }

        match &mut self.panic {
            None => stable_desired,
            Some(panic) => {
                let reactive = stable_desired
                    .max(panic_desired)
                    .max(panic.highest_reactive_instances);
                panic.highest_reactive_instances = reactive;
                reactive
            }
        }
    }

    fn predict_instances(
        &mut self,
        sample: AutoscaleSample,
        forecast_arrivals_per_second: f64,
    ) -> u32 {
        if self.peak_history.len() == SEASONAL_HISTORY_TICKS {
            self.peak_history.pop_front();
        }
        self.peak_history
            .push_back(f64::from(sample.peak_concurrency));

        let mean_execution_seconds =
            finite_non_negative(sample.mean_execution_seconds.unwrap_or(0.0));
        let littles_law_concurrency = forecast_arrivals_per_second * mean_execution_seconds;
        let seasonal_peak = seasonal_forecast(self.peak_history.make_contiguous()).unwrap_or(0.0);
        self.instances_for(littles_law_concurrency.max(seasonal_peak))
    }

    /// Mean of the newest `window_ticks` concurrency samples (fewer while the window fills).
    fn mean_of_newest(&self, window_ticks: usize) -> f64 {
        let newest = self.concurrency_history.iter().rev().take(window_ticks);
        let count = newest.len();
        if count == 0 {
            return 0.0;
        }
        newest.sum::<f64>() / count as f64
    }

    fn instances_for(&self, concurrency: f64) -> u32 {
        ceil_count(concurrency / self.target_concurrency)
    }
}

/// Holt's double exponential smoothing of one series, forecasting one step ahead.
#[derive(Clone, Copy, Debug, Default)]
struct HoltForecaster {
    level: f64,
    trend: f64,
    observations: u64,
}

impl HoltForecaster {
    /// Adds one observation and returns the forecast of the next, never below 0.
    fn observe(&mut self, value: f64) -> f64 {
        let value = finite_non_negative(value);
        match self.observations {
            0 => {
                self.level = value;
                self.trend = 0.0;
            }
            1 => {
                self.trend = value - self.level;
                self.level = value;
            }
            _ => {
                let previous_level = self.level;
                self.level = HOLT_LEVEL_SMOOTHING * value
                    + (1.0 - HOLT_LEVEL_SMOOTHING) * (self.level + self.trend);
                self.trend = HOLT_TREND_SMOOTHING * (self.level - previous_level)
                    + (1.0 - HOLT_TREND_SMOOTHING) * self.trend;
            }
        }
        self.observations = self.observations.saturating_add(1);
        (self.level + self.trend).max(0.0)
    }
}

/// The period of the strongest repeating pattern in `history` and its normalised
/// autocorrelation, or None when no period in `shortest_period..=len/2` reaches
/// `min_correlation` (including a constant history, which has no pattern).
fn seasonal_period(
    history: &[f64],
    shortest_period: usize,
    min_correlation: f64,
) -> Option<(usize, f64)> {
    let length = history.len();
    let shortest_period = shortest_period.max(2);
    if length < 2 * shortest_period {
        return None;
    }
    let mean = history.iter().sum::<f64>() / length as f64;
    let total_variation: f64 = history.iter().map(|value| (value - mean).powi(2)).sum();
    if total_variation.is_nan() || total_variation <= 1e-12 {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for period in shortest_period..=length / 2 {
        let covariation: f64 = history[period..]
            .iter()
            .zip(history)
            .map(|(later, earlier)| (later - mean) * (earlier - mean))
            .sum();
        let correlation = covariation / total_variation;
        if correlation >= min_correlation
            && best.is_none_or(|(_, best_correlation)| correlation > best_correlation)
        {
            best = Some((period, correlation));
        }
    }
    best
}

/// Next tick's value by the strongest repeating pattern: the value one period before it when
/// the history repeats exactly, else the highest value within
/// [`SEASONAL_PHASE_TOLERANCE_TICKS`] of it when the pattern's period wanders.
fn seasonal_forecast(history: &[f64]) -> Option<f64> {
    let widened = widened_by_running_max(history, SEASONAL_PHASE_TOLERANCE_TICKS);
    // Widening by ±J turns each peak into a window of 2J + 1 ticks; one that lands J ticks off
    // its period overlaps its predecessor's window in only J + 1 of them, so a pattern that
    // wanders that far scores at most (J + 1) / (2J + 1) of what it would score repeating
    // exactly. The bar is lowered by the same factor.
    let wandering_min_correlation = SEASONAL_MIN_CORRELATION
        * (SEASONAL_PHASE_TOLERANCE_TICKS + 1) as f64
        / (2 * SEASONAL_PHASE_TOLERANCE_TICKS + 1) as f64;
    if let Some((period, _)) = seasonal_period(
        &widened,
        2 * SEASONAL_PHASE_TOLERANCE_TICKS + 1,
        wandering_min_correlation,
    ) {
        return Some(widened[widened.len() - period]);
    }
    let (period, _) = seasonal_period(history, 2, SEASONAL_MIN_CORRELATION)?;
    Some(history[history.len() - period])
}

/// Each value replaced by the maximum of `history` within `reach` positions either side.
fn widened_by_running_max(history: &[f64], reach: usize) -> Vec<f64> {
    (0..history.len())
        .map(|index| {
            let first = index.saturating_sub(reach);
            let last = (index + reach).min(history.len() - 1);
            history[first..=last]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

fn window_in_ticks(window_ms: u64, tick: Duration) -> usize {
    let window_nanos = u128::from(window_ms) * 1_000_000;
    let tick_nanos = tick.as_nanos().max(1);
    let ticks = window_nanos.div_ceil(tick_nanos).max(1);
    usize::try_from(ticks).unwrap_or(usize::MAX)
}

fn finite_non_negative(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

/// `ceil(value)` as a count: forgives [`CEIL_TOLERANCE`], 0 for NaN or negatives, saturating.
fn ceil_count(value: f64) -> u32 {
    // `as` saturates at u32::MAX and maps NaN to 0.
    (value - CEIL_TOLERANCE).ceil().max(0.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(1);

    /// Stable window 6 ticks, panic window 2 ticks at the 1 s tick.
    fn settings(target_concurrency: f64, predictive: bool) -> AutoscaleSettings {
        AutoscaleSettings {
            target_concurrency,
            stable_window_ms: 6_000,
            panic_window_ms: 2_000,
            predictive,
        }
    }

    fn concurrency(average_concurrency: f64) -> AutoscaleSample {
        AutoscaleSample {
            average_concurrency,
            ..AutoscaleSample::default()
        }
    }

    #[test]
    fn windows_are_counted_in_ticks() {
        let table = [
            (60_000, 6_000, Duration::from_secs(2), 30, 3),
            (60_000, 6_000, Duration::from_secs(7), 9, 1),
            (0, 0, Duration::from_secs(1), 1, 1),
            (1_500, 500, Duration::from_millis(1_000), 2, 1),
            (10, 5, Duration::ZERO, 10, 5),
        ];
        for (stable_window_ms, panic_window_ms, tick, stable_ticks, panic_ticks) in table {
            let autoscaler = Autoscaler::new(
                AutoscaleSettings {
                    stable_window_ms,
                    panic_window_ms,
                    ..AutoscaleSettings::default()
                },
                0,
                10,
                tick,
            );
            assert_eq!(
                (
                    autoscaler.stable_window_ticks,
                    autoscaler.panic_window_ticks
                ),
                (stable_ticks, panic_ticks),
                "{stable_window_ms} ms / {panic_window_ms} ms at {tick:?}"
            );
        }
    }

    #[test]
    fn steady_concurrency_asks_for_concurrency_over_target() {
        let table = [
            (1.0, 3.0, 3),
            (2.0, 3.0, 2),
            (0.5, 3.0, 6),
            (1.0, 0.1 + 0.2 + 2.7, 3),
            (1.0, 0.0, 0),
            (0.7, 0.7 * 3.0, 3),
        ];
        for (target_concurrency, steady_concurrency, expected) in table {
            let mut autoscaler = Autoscaler::new(settings(target_concurrency, false), 0, 100, TICK);
            for _ in 0..10 {
                let decision = autoscaler.observe(concurrency(steady_concurrency), expected);
                assert_eq!(
                    decision.desired_instances, expected,
                    "{steady_concurrency} at target {target_concurrency}"
                );
                assert!(!decision.panicking);
            }
        }
    }

    #[test]
    fn a_burst_panics_scales_up_at_once_and_never_down_until_a_stable_window_passes() {
        let mut autoscaler = Autoscaler::new(settings(1.0, false), 0, 100, TICK);
        // (average concurrency, current instances, desired, panicking)
        let table = [
            (1.0, 1, 1, false),
            (1.0, 1, 1, false),
            (1.0, 1, 1, false),
            (1.0, 1, 1, false),
            (1.0, 1, 1, false),
            (1.0, 1, 1, false),
            // Panic mean 5.5 → 6 ≥ 2 × 1: panic and scale up now (stable alone says 3).
            (10.0, 1, 6, true),
            // Panic mean 10 < 2 × 6: the first tick without the panic condition, but still
            // scaling up.
            (10.0, 6, 10, true),
            // The load is gone; panic holds at 10 until a full stable window (6 ticks) has
            // passed without the condition.
            (1.0, 10, 10, true),
            (1.0, 10, 10, true),
            (1.0, 10, 10, true),
            (1.0, 10, 10, true),
            // Sixth tick without the condition: panic ends; stable mean 15 / 6 → 3.
            (1.0, 10, 3, false),
            (1.0, 3, 1, false),
        ];
        for (tick, (average, current, desired, panicking)) in table.into_iter().enumerate() {
            let decision = autoscaler.observe(concurrency(average), current);
            assert_eq!(
                (decision.desired_instances, decision.panicking),
                (desired, panicking),
                "tick {tick}: {decision:?}"
            );
            assert_eq!(decision.reactive_instances, desired, "tick {tick}");
        }
    }

    #[test]
    fn a_renewed_burst_extends_panic() {
        let mut autoscaler = Autoscaler::new(settings(1.0, false), 0, 100, TICK);
        autoscaler.observe(concurrency(8.0), 1);
        for _ in 0..4 {
            assert!(autoscaler.observe(concurrency(0.0), 8).panicking);
        }
        // A second burst restarts the count of quiet ticks.
        assert!(autoscaler.observe(concurrency(40.0), 8).panicking);
        for _ in 0..5 {
            let decision = autoscaler.observe(concurrency(0.0), 40);
            assert!(decision.panicking);
            assert_eq!(decision.desired_instances, 20);
        }
        assert!(!autoscaler.observe(concurrency(0.0), 40).panicking);
    }

    #[test]
    fn desired_is_clamped_to_min_and_max() {
        let table = [
            (2, 5, 0.0, 2),
            (2, 5, 100.0, 5),
            (2, 5, 4.0, 4),
            (0, 0, 3.0, 0),
            // min > max: max is raised to min.
            (4, 1, 0.0, 4),
        ];
        for (min_instances, max_instances, average, expected) in table {
            let mut autoscaler =
                Autoscaler::new(settings(1.0, true), min_instances, max_instances, TICK);
            let decision = autoscaler.observe(concurrency(average), 1);
            assert_eq!(
                decision.desired_instances, expected,
                "{average} within [{min_instances}, {max_instances}]"
            );
        }
    }

    #[test]
    fn zero_and_garbage_inputs_never_give_nan() {
        let table = [
            AutoscaleSample::default(),
            AutoscaleSample {
                average_concurrency: f64::NAN,
                peak_concurrency: 0,
                arrivals: 0,
                mean_execution_seconds: Some(f64::NAN),
            },
            AutoscaleSample {
                average_concurrency: -3.0,
                peak_concurrency: 0,
                arrivals: 5,
                mean_execution_seconds: Some(f64::INFINITY),
            },
        ];
        let mut garbage_settings = settings(f64::NAN, true);
        garbage_settings.stable_window_ms = 0;
        garbage_settings.panic_window_ms = 0;
        for autoscale_settings in [settings(1.0, true), garbage_settings] {
            let mut autoscaler = Autoscaler::new(autoscale_settings, 0, 10, Duration::ZERO);
            assert_eq!(autoscaler.last_decision(), None);
            for sample in table {
                let decision = autoscaler.observe(sample, 0);
                assert!(
                    decision.forecast_arrivals_per_second.is_finite(),
                    "{decision:?}"
                );
                assert_eq!(decision.reactive_instances, 0, "{sample:?}");
                assert_eq!(autoscaler.last_decision(), Some(decision));
            }
        }
    }

    #[test]
    fn holt_forecast_runs_ahead_of_a_linear_ramp() {
        let mut autoscaler = Autoscaler::new(settings(1.0, true), 0, 1_000, TICK);
        let mut last_arrivals = 0;
        for step in 1..=20 {
            last_arrivals = 10 * step;
            autoscaler.observe(
                AutoscaleSample {
                    arrivals: last_arrivals,
                    mean_execution_seconds: Some(0.5),
                    ..AutoscaleSample::default()
                },
                1,
            );
        }
        let decision = autoscaler.last_decision().unwrap();
        assert!(
            decision.forecast_arrivals_per_second > last_arrivals as f64,
            "{decision:?}"
        );
        // Little's law: more than 200 calls/s × 0.5 s = 100 concurrent executions.
        assert!(decision.predicted_instances > 100, "{decision:?}");
        assert_eq!(decision.desired_instances, decision.predicted_instances);
    }

    #[test]
    fn holt_forecast_follows_noisy_smoothing_and_never_goes_negative() {
        let mut forecaster = HoltForecaster::default();
        assert_eq!(forecaster.observe(100.0), 100.0);
        assert_eq!(forecaster.observe(0.0), 0.0);
        for _ in 0..20 {
            let forecast = forecaster.observe(0.0);
            assert!(forecast >= 0.0);
        }
        let forecast = forecaster.observe(50.0);
        assert!(forecast > 0.0 && forecast < 50.0, "{forecast}");
    }

    /// Period 5: peak 4 at phase 0, quiet otherwise.
    fn periodic_sample(tick: usize) -> AutoscaleSample {
        let peak_concurrency = if tick.is_multiple_of(5) { 4 } else { 0 };
        AutoscaleSample {
            average_concurrency: f64::from(peak_concurrency) / 4.0,
            peak_concurrency,
            arrivals: u64::from(peak_concurrency),
            mean_execution_seconds: Some(0.1),
        }
    }

    #[test]
    fn periodic_peaks_are_prewarmed_one_tick_ahead() {
        let mut autoscaler = Autoscaler::new(settings(1.0, true), 0, 10, TICK);
        let mut decisions = Vec::new();
        for tick in 0..22 {
            decisions.push(autoscaler.observe(periodic_sample(tick), 1));
        }
        let history = autoscaler.peak_history.make_contiguous();
        let (period, correlation) = seasonal_period(history, 2, SEASONAL_MIN_CORRELATION).unwrap();
        assert_eq!(period, 5);
        assert!(correlation >= SEASONAL_MIN_CORRELATION, "{correlation}");
        // Tick 19 is the last quiet tick of the fourth period: tick 20 bursts.
        let burst_eve = decisions[19];
        assert!(burst_eve.predicted_instances >= 4, "{burst_eve:?}");
        assert!(burst_eve.desired_instances >= 4, "{burst_eve:?}");
        assert!(burst_eve.reactive_instances < 4, "{burst_eve:?}");
        // Tick 21 is quiet and so is tick 22.
        let quiet = decisions[21];
        assert!(
            quiet.predicted_instances < burst_eve.predicted_instances,
            "{quiet:?}"
        );
        assert!(quiet.predicted_instances <= 1, "{quiet:?}");
    }

    /// Bursts of peak 4 whose gaps wander between 7 and 9 ticks, as a cron job's do once
    /// scheduling delays and tick drift are counted; some bursts straddle two ticks. Returns
    /// the samples and the ticks at which a burst begins.
    fn jittered_bursts(ticks: usize) -> (Vec<AutoscaleSample>, Vec<usize>) {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut samples = vec![AutoscaleSample::default(); ticks];
        let mut burst_starts = Vec::new();
        let mut tick = 0;
        while tick < ticks {
            burst_starts.push(tick);
            let width = 1 + (noise(&mut state) % 2) as usize;
            for sample in samples.iter_mut().skip(tick).take(width) {
                *sample = AutoscaleSample {
                    average_concurrency: 2.0,
                    peak_concurrency: 4,
                    arrivals: 4,
                    mean_execution_seconds: Some(0.1),
                };
            }
            tick += 7 + (noise(&mut state) % 3) as usize;
        }
        (samples, burst_starts)
    }

    #[test]
    fn bursts_with_a_wandering_period_are_still_prewarmed() {
        let (samples, burst_starts) = jittered_bursts(200);
        let mut autoscaler = Autoscaler::new(settings(1.0, true), 0, 10, TICK);
        let decisions: Vec<ScaleDecision> = samples
            .iter()
            .map(|sample| autoscaler.observe(*sample, 0))
            .collect();
        // After five bursts of history, the tick before every burst asks for its instances.
        let missed: Vec<usize> = burst_starts
            .iter()
            .skip(5)
            .filter(|&&start| decisions[start - 1].predicted_instances < 4)
            .copied()
            .collect();
        assert!(
            missed.is_empty(),
            "bursts not prewarmed: {missed:?} of {burst_starts:?}"
        );
        // Half-way through a quiet gap nothing is predicted: the forecast is not just "always
        // the peak".
        let quiet_midpoints = burst_starts
            .windows(2)
            .skip(5)
            .filter(|pair| decisions[(pair[0] + pair[1]) / 2].predicted_instances == 0)
            .count();
        assert!(
            quiet_midpoints * 2 > burst_starts.len() - 6,
            "{quiet_midpoints} of {} quiet midpoints predicted nothing",
            burst_starts.len() - 6
        );
    }

    #[test]
    fn predictive_off_predicts_nothing() {
        let mut autoscaler = Autoscaler::new(settings(1.0, false), 0, 10, TICK);
        for tick in 0..40 {
            let decision = autoscaler.observe(periodic_sample(tick), 1);
            assert_eq!(decision.predicted_instances, 0, "tick {tick}");
        }
        assert!(autoscaler.peak_history.is_empty());
    }

    /// xorshift64: reproducible noise without a seeded-RNG feature.
    fn noise(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_noise_has_no_seasonal_forecast() {
        let mut autoscaler = Autoscaler::new(settings(1.0, true), 0, 10, TICK);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut decision = None;
        for _ in 0..300 {
            let sample = AutoscaleSample {
                peak_concurrency: (noise(&mut state) % 6) as u32,
                ..AutoscaleSample::default()
            };
            decision = Some(autoscaler.observe(sample, 1));
        }
        assert_eq!(
            seasonal_forecast(autoscaler.peak_history.make_contiguous()),
            None
        );
        // No execution time, so Little's law adds nothing either.
        assert_eq!(decision.unwrap().predicted_instances, 0);
    }

    #[test]
    fn seasonal_detector_cases() {
        let spikes_every_five: Vec<f64> = (0..20)
            .map(|tick: usize| if tick.is_multiple_of(5) { 4.0 } else { 0.0 })
            .collect();
        let alternating: Vec<f64> = (0..6).map(|tick| (tick % 2) as f64).collect();
        let table: [(&str, &[f64], Option<usize>); 6] = [
            ("too short", &[4.0, 0.0, 4.0], None),
            ("constant", &[3.0; 50], None),
            ("all zero", &[0.0; 50], None),
            (
                "spikes every five, four periods",
                &spikes_every_five,
                Some(5),
            ),
            // Two periods only: 0.5 correlation, not trusted.
            (
                "spikes every five, two periods",
                &spikes_every_five[..10],
                None,
            ),
            ("alternating, three periods", &alternating, Some(2)),
        ];
        for (name, history, expected_period) in table {
            let period =
                seasonal_period(history, 2, SEASONAL_MIN_CORRELATION).map(|(period, _)| period);
            assert_eq!(period, expected_period, "{name}");
        }
    }

    #[test]
    fn the_history_is_bounded() {
        let mut autoscaler = Autoscaler::new(settings(1.0, true), 0, 10, TICK);
        for tick in 0..(SEASONAL_HISTORY_TICKS + 50) {
            autoscaler.observe(periodic_sample(tick), 1);
        }
        assert_eq!(autoscaler.peak_history.len(), SEASONAL_HISTORY_TICKS);
        assert_eq!(autoscaler.concurrency_history.len(), 6);
    }
}
