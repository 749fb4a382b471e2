//! `echo`: copies its input to its output unchanged.
//!
//! Input: any bytes on stdin (need not be UTF-8).
//! Output: exactly the same bytes on stdout. Nothing is written to stderr; the exit code is 0
//! unless reading or writing fails.

use std::io::{self, Write};

fn main() {
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    if let Err(err) = io::copy(&mut stdin, &mut stdout).and_then(|_| stdout.flush()) {
        eprintln!("echo: {err}");
        std::process::exit(1);
    }
}
