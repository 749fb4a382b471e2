//! `spin`: burns CPU, to exercise timeouts, cancellation and fuel/epoch interruption.
//!
//! Input: an integer `N` on stdin (surrounding whitespace is ignored).
//! Output: with a valid `N`, spins for `N` milliseconds of wall-clock time and then prints
//! `spun N ms`. The loop only reads the clock (WASI `clock_time_get`, via [`Instant`]) every few
//! thousand iterations.
//!
//! With any other input (including none) it spins forever in a pure CPU loop that makes no host
//! calls at all, so only the host's interruption mechanism (epoch deadline, fuel, ...) can stop it.

use std::hint::black_box;
use std::io::Read;
use std::time::{Duration, Instant};

/// Iterations of busy work between two clock reads.
const ITERATIONS_PER_CLOCK_READ: u32 = 10_000;

fn main() {
    let mut input = String::new();
    // Unreadable (non-UTF-8) input is treated like a missing number.
    let _ = std::io::stdin().read_to_string(&mut input);

    match input.trim().parse::<u64>() {
        Ok(ms) => {
            let budget = Duration::from_millis(ms);
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < budget {
                for _ in 0..ITERATIONS_PER_CLOCK_READ {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            black_box(x);
            println!("spun {ms} ms");
        }
        Err(_) => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
    }
}
