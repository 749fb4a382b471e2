//! The process allocator: mimalloc, and the one moment the node asks it to give memory back.
//!
//! Why mimalloc: a node allocates and frees a few dozen small objects per call on every worker
//! thread and on the store's writer thread. With glibc malloc that was about a fifth of the
//! node's CPU at 64 calls in flight; mimalloc serves the same calls with 10-30% less CPU per
//! call (docs/PERFORMANCE.md). Built as mimalloc v2 without transparent huge pages: with huge
//! pages every arena the allocator touches costs 2 MiB of resident memory, which tripled an
//! idle node's RSS.
//!
//! Architecture invariant: this is the only module with `unsafe` code in the crate: FFI calls
//! into mimalloc that take and return plain integers.

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_e` (`mimalloc.h`); the Rust bindings do
/// not name it. A unit test checks that it reads as the documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's default: freed memory goes back to the OS 10 ms after it was freed.
const DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Startup compiles every bundled example with cranelift on blocking threads, whose freed
/// memory the allocator would otherwise keep cached after those threads go idle. Called first
/// thing in `serve`: free memory goes back to the OS at once until the node is serving.
pub fn purge_freed_memory_at_once() {
    set_purge_delay_ms(0);
}

/// Called once the node is serving: returns what is free now and restores mimalloc's default
/// delay, under which memory freed between calls is reused rather than returned and faulted in
/// again.
pub fn release_startup_memory() {
    // SAFETY: `mi_collect` takes a plain bool and touches only the allocator's own state; it
    // may be called from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    set_purge_delay_ms(DEFAULT_PURGE_DELAY_MS);
}

fn set_purge_delay_ms(delay_ms: std::ffi::c_long) {
    // SAFETY: setting an option takes two integers and writes only the allocator's option table;
    // options may be changed at any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_we_mean() {
        // A wrong index would silently change some other option; the default identifies it.
        // SAFETY: reading an option takes an integer and reads the allocator's option table.
        #[allow(unsafe_code)]
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(delay, DEFAULT_PURGE_DELAY_MS);
        }
    }
}
