//! `counter`: a WASI *reactor* whose state survives between calls on the same instance.
//!
//! The module has no `_start`; the host calls `_initialize` once and then any of these exports
//! (all `() -> i32`, returning 0 for success), as many times as it likes:
//!
//! - `increment`: adds one to the counter and prints its new value and a newline on stdout.
//! - `get`: prints the current value and a newline on stdout.
//!
//! Input: ignored. The counter starts at 0 in every new instance, so three `increment` calls on
//! one instance print `1`, `2`, `3`, while three fresh instances each print `1`.
//!
//! Why `_initialize` is written by hand: rustc links wasi-libc's `crt1-reactor.o` (which defines
//! `_initialize`) only for `-Z wasi-exec-model=reactor` binaries, which needs nightly. A stable
//! `cdylib` gets neither `_start` nor `_initialize`, and wasm-ld would instead wrap *every* export
//! in calls to the static constructors and destructors. Defining `_initialize` here, with the same
//! body as `crt1-reactor.o`, turns that off (wasm-ld skips the wrappers once user code refers to
//! `__wasm_call_ctors`) and gives the host the standard reactor entry point.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);
static INITIALIZED: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    /// Synthesized by wasm-ld: runs the static constructors (wasi-libc's among them).
    fn __wasm_call_ctors();
}

/// The WASI reactor entry point: the host calls it once, before any other export.
/// A repeated call does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    if !INITIALIZED.swap(true, Ordering::Relaxed) {
        // SAFETY: runs the module's constructors exactly once, before any other code, which is
        // what `crt1-reactor.o` does.
        unsafe { __wasm_call_ctors() };
    }
}

/// Increments the counter and prints the new value.
#[unsafe(no_mangle)]
pub extern "C" fn increment() -> i32 {
    let value = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    print_value(value)
}

/// Prints the current value of the counter.
#[unsafe(no_mangle)]
pub extern "C" fn get() -> i32 {
    print_value(COUNTER.load(Ordering::Relaxed))
}

fn print_value(value: u64) -> i32 {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{value}").and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
