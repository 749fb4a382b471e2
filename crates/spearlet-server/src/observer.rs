//! Process observations for health and stats: uptime, resident memory and CPU usage, read from
//! `/proc` (Linux). Values that cannot be read are reported as 0 with a warning once, never
//! invented.

// Uptime and CPU figures are wall-clock facts about the process, never paused in tests.
#![allow(clippy::disallowed_types)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How far back `cpu_usage_percent` looks.
const CPU_WINDOW: Duration = Duration::from_secs(10);
const CPU_SAMPLE_PERIOD: Duration = Duration::from_secs(1);

pub struct ProcessObserver {
    started: Instant,
    /// (when, process CPU seconds) samples covering the last `CPU_WINDOW`.
    cpu_samples: Mutex<VecDeque<(Instant, f64)>>,
    clock_ticks_per_second: f64,
    cpu_count: usize,
}

impl ProcessObserver {
    /// Starts the observer and its sampling task (stops when the observer is dropped).
    pub fn start() -> Arc<ProcessObserver> {
        let observer = Arc::new(ProcessObserver {
            started: Instant::now(),
            cpu_samples: Mutex::new(VecDeque::new()),
            clock_ticks_per_second: clock_ticks_per_second(),
            cpu_count: std::thread::available_parallelism().map_or(1, usize::from),
        });
        observer.sample();
        let weak = Arc::downgrade(&observer);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(CPU_SAMPLE_PERIOD);
            loop {
                interval.tick().await;
                let Some(observer) = weak.upgrade() else {
                    return;
                };
                observer.sample();
            }
        });
        observer
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn cpu_count(&self) -> usize {
        self.cpu_count
    }

    fn sample(&self) {
        let Some(cpu_seconds) = self.process_cpu_seconds() else {
            return;
        };
        let now = Instant::now();
        let mut samples = self.cpu_samples.lock();
        samples.push_back((now, cpu_seconds));
        while samples
            .front()
            .is_some_and(|(when, _)| now.duration_since(*when) > CPU_WINDOW + CPU_SAMPLE_PERIOD)
        {
            samples.pop_front();
        }
    }

    /// The node's CPU use over the last 10 s as a percent of the whole machine; 0 during the
    /// first second, when the window is too short for the kernel's clock-tick counts (a few
    /// ticks over a few milliseconds would read as several hundred percent).
    pub fn cpu_usage_percent(&self) -> f64 {
        let Some(now_cpu) = self.process_cpu_seconds() else {
            return 0.0;
        };
        let now = Instant::now();
        let samples = self.cpu_samples.lock();
        let oldest = samples
            .iter()
            .find(|(when, _)| now.duration_since(*when) <= CPU_WINDOW)
            .or(samples.front());
        let Some((since, cpu_then)) = oldest else {
            return 0.0;
        };
        let wall = now.duration_since(*since).as_secs_f64();
        if wall < CPU_SAMPLE_PERIOD.as_secs_f64() {
            return 0.0;
        }
        ((now_cpu - cpu_then) / wall / self.cpu_count as f64 * 100.0).clamp(0.0, 100.0)
    }

    /// Resident set size of the node process, in bytes.
    pub fn resident_memory_bytes(&self) -> u64 {
        read_proc_kib("/proc/self/status", "VmRSS:").map_or(0, |kib| kib * 1024)
    }

    /// Total memory of the machine, in bytes.
    pub fn total_memory_bytes(&self) -> u64 {
        read_proc_kib("/proc/meminfo", "MemTotal:").map_or(0, |kib| kib * 1024)
    }

    fn process_cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let after_command = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_command.split_whitespace().collect();
        let user_ticks: f64 = fields.get(11)?.parse().ok()?;
        let system_ticks: f64 = fields.get(12)?.parse().ok()?;
        Some((user_ticks + system_ticks) / self.clock_ticks_per_second)
    }
}

fn read_proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[allow(unsafe_code)]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn process_figures_are_read_from_proc() {
        let observer = ProcessObserver::start();
        assert!(observer.resident_memory_bytes() > 0);
        assert!(observer.total_memory_bytes() > observer.resident_memory_bytes());
        // Burn CPU so the figure has something to show. Within the first second the window is
        // too short to read (a few clock ticks over milliseconds): 0, not a wild figure.
        let started = Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(100) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert_eq!(observer.cpu_usage_percent(), 0.0);
        while started.elapsed() < CPU_SAMPLE_PERIOD + Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let busy = observer.cpu_usage_percent();
        assert!(busy > 0.0 && busy <= 100.0, "{busy}");
    }
}
