//! What a test does when the machine lacks something it needs (a tool, a rustup target): under
//! CI it fails naming the missing piece; elsewhere it says it skipped, where `cargo test` shows it.

use std::io::Write as _;

/// Whether this run is CI's: `CI=true` (or `CI=1`), as `.ci/run`'s environment sets it.
pub fn running_under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Reports that the calling test cannot run because `what` is missing; `how_to_get_it` says how
/// to provide it. Under CI (see [`running_under_ci`]) this panics naming it. Elsewhere it writes
/// `SKIPPED <test>: <what> is missing (<how_to_get_it>)` straight to the process's stderr, past
/// libtest's capture (which would hide an `eprintln!` of a passing test), and the caller returns.
/// Use it as `return missing_prerequisite(..)`.
///
/// The test is named by its thread, which libtest names after the test.
#[track_caller]
pub fn missing_prerequisite(what: &str, how_to_get_it: &str) {
    let current_thread = std::thread::current();
    let test = current_thread.name().unwrap_or("this test");
    if running_under_ci() {
        panic!("{test}: {what} is missing under CI=true ({how_to_get_it})");
    }
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "SKIPPED {test}: {what} is missing ({how_to_get_it})"
    );
}
