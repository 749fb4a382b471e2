//! `sleep`: waits without using CPU, to exercise timeouts and cancellation of an idle guest.
//!
//! Input: an integer `N` on stdin (surrounding whitespace is ignored).
//! Output: with a valid `N`, sleeps `N` milliseconds (`std::thread::sleep`, i.e. WASI
//! `poll_oneoff` on a clock subscription) and then prints `slept N ms`. With any other input
//! (including none) it sleeps for an hour, then prints `slept 3600000 ms`.

use std::io::Read;
use std::time::Duration;

/// How long to sleep when the input is not a number.
const DEFAULT_MS: u64 = 3_600_000;

fn main() {
    let mut input = String::new();
    // Unreadable (non-UTF-8) input is treated like a missing number.
    let _ = std::io::stdin().read_to_string(&mut input);
    let ms = input.trim().parse::<u64>().unwrap_or(DEFAULT_MS);
    std::thread::sleep(Duration::from_millis(ms));
    println!("slept {ms} ms");
}
