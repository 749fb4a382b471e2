#!/usr/bin/env bash
# Cold start and restart figures of docs/PERFORMANCE.md, measured from outside over HTTP.
#
# Cold: the first use of a wasm artifact the node has never seen (~100 KB: the wordcount example
# plus a 25 KB custom section of random bytes, so every round has a new digest): POST /v1/tasks
# with a file:// location (read, sha256 verify, compile, link) and the first invoke (instantiate,
# run). Restart: the node is stopped (SIGTERM) and started on the same data dir; its start time
# (exec to listening, tasks restored from the compiled-module cache) and the first invoke of a
# task registered before the restart. Times are curl's time_total (no process start).
#
# Usage: bench/cold-start.sh [rounds]   (after `cargo build --release -p spearlet`)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-10}"
binary="target/release/spearlet"
work="$(mktemp -d)"
trap 'kill "$node_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
printf '[artifacts]\nallowed_roots = ["%s"]\n' "$work" > "$work/node.toml"

start_node() {
  local started_ns=$(date +%s%N)
  "$binary" serve --config "$work/node.toml" --data-dir "$work/data" --grpc-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 --log-level warn --no-examples > "$work/stdout" 2> "$work/stderr" &
  node_pid=$!
  until [ "$(wc -l < "$work/stdout")" -ge 2 ]; do sleep 0.001; done
  start_ms=$(( ($(date +%s%N) - started_ns) / 1000000 ))
  http="$(sed -n 2p "$work/stdout" | sed 's#.*http://\([^ ]*\).*#\1#')"
}

make_artifact() {
  python3 - "$1" <<'PY'
import os, sys
module = open("examples/wasm/wordcount.wasm", "rb").read()
name = b"spearlet-bench-pad"
payload = bytes([len(name)]) + name + os.urandom(25 * 1024)
size, leb = len(payload), b""
while True:
    byte, size = size & 0x7F, size >> 7
    leb += bytes([byte | (0x80 if size else 0)])
    if not size:
        break
open(sys.argv[1], "wb").write(module + b"\x00" + leb + payload)
PY
}

seconds_to_ms() { python3 -c "import sys; print(f'{float(sys.argv[1]) * 1000:.2f}')" "$1"; }

start_node
echo "node start (empty data dir): ${start_ms} ms"
for round in $(seq 1 "$rounds"); do
  artifact="$work/fn-$round.wasm"
  make_artifact "$artifact"
  create=$(curl -s -o "$work/create.json" -w '%{time_total}' -X POST "http://$http/v1/tasks" \
    -d "{\"task_name\": \"cold-$round\", \"artifact_spec\": {\"artifact_type\": \"wasm\", \"location\": \"file://$artifact\"}}")
  grep -q '"task_id"' "$work/create.json" || { cat "$work/create.json"; exit 1; }
  invoke=$(curl -s -o /dev/null -w '%{time_total}' -X POST "http://$http/v1/tasks/cold-$round/invoke" --data 'a b c')
  total=$(python3 -c "import sys; print(f'{(float(sys.argv[1]) + float(sys.argv[2])) * 1000:.2f}')" "$create" "$invoke")
  echo "cold $round: $(stat -c %s "$artifact") bytes, create $(seconds_to_ms "$create") ms + first invoke $(seconds_to_ms "$invoke") ms = $total ms"
done
warm=$(curl -s -o /dev/null -w '%{time_total}' -X POST "http://$http/v1/tasks/cold-1/invoke" --data 'a b c')
echo "warm invoke of cold-1: $(seconds_to_ms "$warm") ms"
echo "idle RSS with $rounds tasks: $(awk '/VmRSS/ {print $2}' "/proc/$node_pid/status") KiB"

kill -TERM "$node_pid"; wait "$node_pid" || true
start_node
echo "node start (restart, $rounds tasks restored from the compiled-module cache): ${start_ms} ms"
first=$(curl -s -o /dev/null -w '%{time_total}' -X POST "http://$http/v1/tasks/cold-1/invoke" --data 'a b c')
echo "first invoke after restart: $(seconds_to_ms "$first") ms"
