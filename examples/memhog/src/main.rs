//! `memhog`: grows its linear memory, to exercise memory limits.
//!
//! Input: an integer `N` on stdin (surrounding whitespace is ignored); anything else, including
//! no input, means 1024.
//! Output: allocates `N` MiB in 1 MiB chunks, writes to every 4096th byte of each chunk (so the
//! pages are really touched on the host) and keeps all chunks alive until the end, then prints
//! `allocated N MiB`.
//!
//! If an allocation fails (the host refused to grow the memory, or the 4 GiB wasm32 limit was
//! reached) it prints `memhog: allocation failed after K MiB` on stderr and exits with code 1.

use std::hint::black_box;
use std::io::Read;

const DEFAULT_MIB: usize = 1024;
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

fn main() {
    let mut input = String::new();
    // Unreadable (non-UTF-8) input is treated like a missing number.
    let _ = std::io::stdin().read_to_string(&mut input);
    let mib = input.trim().parse::<usize>().unwrap_or(DEFAULT_MIB);

    let mut chunks: Vec<Vec<u8>> = Vec::new();
    if chunks.try_reserve_exact(mib).is_err() {
        fail(0);
    }
    for allocated in 0..mib {
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(MIB).is_err() {
            fail(allocated);
        }
        chunk.resize(MIB, 0);
        for (i, byte) in chunk.iter_mut().step_by(PAGE).enumerate() {
            // Truncation intended: any non-zero-ish pattern will do.
            *byte = (i as u8) | 1;
        }
        chunks.push(black_box(chunk));
    }
    black_box(&chunks);
    println!("allocated {mib} MiB");
}

fn fail(allocated: usize) -> ! {
    eprintln!("memhog: allocation failed after {allocated} MiB");
    std::process::exit(1);
}
