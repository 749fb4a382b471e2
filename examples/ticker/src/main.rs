//! `ticker`: produces output gradually, to exercise streaming of a function's stdout.
//!
//! Input: an integer `N` on stdin (surrounding whitespace is ignored); anything else, including
//! no input, means 10.
//! Output: the lines `tick 1` to `tick N` on stdout, flushed one at a time, with a 100 ms sleep
//! (WASI `poll_oneoff`) between consecutive lines. A run takes about `(N - 1) * 100` ms.

use std::io::{Read, Write};
use std::time::Duration;

const DEFAULT_TICKS: u64 = 10;
const INTERVAL: Duration = Duration::from_millis(100);

fn main() {
    let mut input = String::new();
    // Unreadable (non-UTF-8) input is treated like a missing number.
    let _ = std::io::stdin().read_to_string(&mut input);
    let ticks = input.trim().parse::<u64>().unwrap_or(DEFAULT_TICKS);

    let mut stdout = std::io::stdout().lock();
    for i in 1..=ticks {
        if i > 1 {
            std::thread::sleep(INTERVAL);
        }
        if let Err(err) = writeln!(stdout, "tick {i}").and_then(|()| stdout.flush()) {
            eprintln!("ticker: {err}");
            std::process::exit(1);
        }
    }
}
