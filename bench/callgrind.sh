#!/usr/bin/env bash
# Instructions per warm sync call of `echo`, counted by callgrind: a repeatable figure where
# wall-clock throughput on a shared 2-core VM swings ±25% between runs. Runs the node under
# valgrind, warms it up, zeroes the counters, makes CALLS calls at 1 in flight, dumps and prints
# Ir per call overall and for the main parts of the path (inclusive).
#
#   cargo build --profile profiling -p spearlet
#   bench/callgrind.sh [path/to/spearlet] [CALLS]
#
# The default binary is the profiling build (the release build with line tables): the groups
# below match the source paths callgrind_annotate prints, which the release binary, built
# without debug info, does not carry.
#
# Needs valgrind (Debian: apt-get install valgrind). The pooling allocator's default 1000 slots
# reserve more address space than valgrind allows, so the node runs with `[wasm] max_instances
# = 4`; nothing else differs from the defaults. Under valgrind the kernel still does the work of
# system calls, which callgrind does not count: the figures are user-space instructions.
set -euo pipefail
binary=${1:-target/profiling/spearlet}
calls=${2:-2000}
work=$(mktemp -d)
trap 'kill "$node_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
printf '[wasm]\nmax_instances = 4\n' > "$work/node.toml"
port=$((40000 + RANDOM % 20000))
# A first start outside valgrind fills the compiled-module cache, so the profiled start does
# not spend minutes compiling the examples under emulation.
"$binary" serve --config "$work/node.toml" --data-dir "$work/data" --grpc-addr "127.0.0.1:$port" \
  --http-addr 127.0.0.1:0 --log-level warn > "$work/warm.log" 2>&1 &
node_pid=$!
for _ in $(seq 100); do grep -q grpc:// "$work/warm.log" && break; sleep 0.1; done
kill "$node_pid"; wait "$node_pid" 2>/dev/null || true
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$binary" serve --config "$work/node.toml" --data-dir "$work/data" --grpc-addr "127.0.0.1:$port" \
  --http-addr 127.0.0.1:0 --log-level warn > "$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 600); do grep -q grpc:// "$work/node.log" && break; sleep 0.2; done
"$binary" bench --addr "http://127.0.0.1:$port" --requests 300 --concurrency 1 --warmup 0 > /dev/null
callgrind_control -z "$node_pid" > /dev/null
# `bench` makes one checking call before it measures.
"$binary" bench --addr "http://127.0.0.1:$port" --requests "$calls" --concurrency 1 --warmup 0 > /dev/null
callgrind_control -d "$node_pid" > /dev/null
total_calls=$((calls + 1))
dump=$(ls "$work"/callgrind.out.* | head -1)
callgrind_annotate --auto=no --threshold=100 "$dump" > "$work/annotated.txt"
cp "$dump" "${CALLGRIND_KEEP:-/dev/null}" 2>/dev/null || true
python3 - "$work/annotated.txt" "$total_calls" <<'PY'
# Self (exclusive) instructions grouped by where the code comes from. Inclusive figures are not
# used: wasmtime runs guests on fibers, and callgrind's call tree attributes the whole tokio
# worker to whatever ran on the fiber first.
import collections, re, sys
text = open(sys.argv[1]).read()
calls = int(sys.argv[2])
total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
thread_roots = ("clone.S:clone", "pthread_create.c:start_thread", "Thread>::new::thread_start",
                "call_once{{vtable.shim}}", "__rust_begin_short_backtrace")
groups = [
    ("SQLite (store writer thread)", r"sqlite"),
    ("wasmtime (instantiate, WASI calls, memory reset)", r"wasmtime"),
    ("guest code and trampolines (JIT, no symbols)", r"^\?\?\?"),
    ("h2 (HTTP/2 framing, HPACK)", r"/h2-|h2::"),
    ("hyper, tonic, axum, tower, http", r"hyper|tonic|axum|tower|/http-|http::"),
    ("tokio (scheduler, channels, timers, I/O)", r"tokio"),
    ("protobuf (prost)", r"prost"),
    ("serde_json (record maps)", r"serde"),
    ("sha2 (request fingerprint)", r"sha2"),
    ("hashing (SipHash) and hash maps", r"hash/sip|hashbrown|BuildHasher"),
    ("mimalloc (malloc, free)", r"mimalloc"),
    ("memset, memcpy, memcmp", r"mem(set|cpy|move|cmp)"),
    ("spearlet crates (manager, store index, handler, pool)", r"crates/spearlet|spearlet_\w+::"),
    ("Rust std, core, alloc (clones, drops, formatting)", r"/rustc/"),
    ("libc and the rest", r""),
]
sums = collections.Counter()
for line in text.splitlines():
    match = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
    if not match or "PROGRAM TOTALS" in line or any(root in line for root in thread_roots):
        continue
    count, name = int(match.group(1).replace(",", "")), match.group(2)
    for label, pattern in groups:
        if re.search(pattern, name):
            sums[label] += count
            break
print(f"calls measured: {calls}")
print(f"{total / calls:9.0f} Ir per call  the whole node (user space)")
for label, _ in groups:
    print(f"{sums[label] / calls:9.0f} Ir per call  {label}")
PY
