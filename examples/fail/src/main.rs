//! `fail`: always fails, to show how a failing function is reported.
//!
//! Input: ignored.
//! Output: nothing on stdout; `fail: exiting with code 3` on stderr; exit code 3.

fn main() {
    eprintln!("fail: exiting with code 3");
    std::process::exit(3);
}
