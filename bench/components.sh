#!/usr/bin/env bash
# The component figures of docs/PERFORMANCE.md (issue #16), measured from outside, all in one run:
#
# 1. Warm wasi:http echo (POST /echo, 64-byte body) through spearlet's HTTP path
#    (/v1/tasks/http-echo/http/echo, every request an execution with its record) against the same
#    component under `wasmtime serve -S cli`, with wasmtime's default allocator and with
#    `-O pooling-allocator`: wrk at 1 and 64 connections, requests/s, p50 and p99.
# 2. The echo command component against the echo preview 1 module (the same Rust source):
#    `spearlet bench` over gRPC at 1 and 64 in flight.
# 3. The Python and JavaScript components (tens of MB): registration (read, verify, compile,
#    link), the first call, a warm call (median of 20), then after a restart of the node the
#    restart itself and the first call (the compiled cache instead of the compiler).
#
# Usage: bench/components.sh WASMTIME POLYGLOT_DIR [seconds per wrk run]
#   WASMTIME      a wasmtime CLI at the embedded version (48): cargo install wasmtime-cli@48.0.8
#   POLYGLOT_DIR  the output of scripts/build-polyglot-components.sh
# After `cargo build --release -p spearlet`; needs wrk and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
wasmtime="$1"
polyglot="$(cd "$2" && pwd -P)"
seconds="${3:-5}"
binary="target/release/spearlet"
work="$(mktemp -d)"
node_pid=""
wasmtime_pid=""
trap 'kill $node_pid $wasmtime_pid 2>/dev/null || true; rm -rf "$work"' EXIT
printf '[artifacts]\nallowed_roots = ["%s"]\n' "$polyglot" > "$work/node.toml"
head -c 64 /dev/zero | tr '\0' 'x' > "$work/body"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 64)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

start_node() {
  "$binary" serve --config "$work/node.toml" --data-dir "$work/data" --grpc-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 --log-level warn > "$work/stdout" 2> "$work/stderr" &
  node_pid=$!
  local started_ns
  started_ns=$(date +%s%N)
  until [ "$(wc -l < "$work/stdout")" -ge 2 ]; do sleep 0.001; done
  start_ms=$(( ($(date +%s%N) - started_ns) / 1000000 ))
  grpc="$(sed -n 1p "$work/stdout" | sed 's#.*://\([^ ]*\).*#\1#')"
  http="$(sed -n 2p "$work/stdout" | sed 's#.*http://\([^ ]*\).*#\1#')"
}

# wrk_line LABEL URL CONNECTIONS: one table row: requests/s, p50, p99.
wrk_line() {
  local output
  output=$(wrk -t"$(( $3 < 2 ? 1 : 2 ))" -c"$3" -d"${seconds}s" -s "$work/post.lua" --latency "$2")
  local rps p50 p99 errors
  rps=$(echo "$output" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$output" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$output" | awk '$1 == "99%" {print $2}')
  errors=$(echo "$output" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  echo "| $1 | $3 | $rps | $p50 | $p99 | ${errors:-none} |"
}

# url_of NAME: where a call of that polyglot task goes (a command is invoked, a handler GETs /hello).
url_of() {
  if [ "$1" = python-command ]; then
    echo "http://$http/v1/tasks/$1/invoke"
  else
    echo "http://$http/v1/tasks/$1/http/hello"
  fi
}

# seconds_of URL: curl's time_total of one call: POST with the input "Ada" to invoke the command,
# GET of a handler's /hello; a status other than 200 stops the run.
seconds_of() {
  local answer
  case "$1" in
    */invoke) answer=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -X POST --data Ada "$1") ;;
    *) answer=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "$1") ;;
  esac
  [ "${answer%% *}" = 200 ] || { echo "$1 answered ${answer%% *}" >&2; exit 1; }
  echo "${answer#* }"
}

# median_of_20 URL: the median time_total of 20 calls.
median_of_20() { for _ in $(seq 20); do seconds_of "$1"; done | sort -n | sed -n 10p; }

ms() { python3 -c "import sys; print(f'{float(sys.argv[1]) * 1000:.1f}')" "$1"; }

echo "## wasi:http echo, 64-byte POST, wrk ${seconds}s per row"
echo "| server | connections | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
start_node
curl -sf -X POST --data-binary @"$work/body" "http://$http/v1/tasks/http-echo/http/echo" > /dev/null
for connections in 1 64; do
  wrk_line "spearlet /v1/tasks/http-echo/http/echo" "http://$http/v1/tasks/http-echo/http/echo" "$connections"
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for options in "" "-O pooling-allocator"; do
  # shellcheck disable=SC2086 # $options is zero or two words on purpose
  "$wasmtime" serve -S cli $options --addr "127.0.0.1:$port" examples/wasm/p2/http-echo.wasm \
    > "$work/wasmtime.log" 2>&1 &
  wasmtime_pid=$!
  until curl -sf -X POST --data-binary @"$work/body" "http://127.0.0.1:$port/echo" > /dev/null; do
    sleep 0.05
  done
  for connections in 1 64; do
    wrk_line "wasmtime serve -S cli ${options:-(default allocator)}" "http://127.0.0.1:$port/echo" "$connections"
  done
  kill "$wasmtime_pid"; wait "$wasmtime_pid" 2>/dev/null || true
  wasmtime_pid=""
done

echo
echo "## echo command component vs echo preview 1 module, spearlet bench (gRPC), ${seconds}s"
for task in echo echo-component; do
  for concurrency in 1 64; do
    echo "### $task, $concurrency in flight"
    "$binary" bench --addr "http://$grpc" --task "$task" --concurrency "$concurrency" \
      --duration "$seconds"
  done
done

echo
echo "## Python and JavaScript components"
echo "| component | size | register (compile) | first call | warm call (median of 20) |"
echo "|---|---|---|---|---|"
components=(python-http-hello js-http-hello python-command)
for name in "${components[@]}"; do
  path="$polyglot/$name.wasm"
  create=$(curl -s -o "$work/create.json" -w '%{time_total}' -X POST "http://$http/v1/tasks" \
    -d "{\"task_name\": \"$name\", \"artifact_spec\": {\"artifact_type\": \"wasm\", \"location\": \"file://$path\"}}")
  grep -q '"task_id"' "$work/create.json" || { cat "$work/create.json"; exit 1; }
  url=$(url_of "$name")
  first=$(seconds_of "$url")
  warm=$(median_of_20 "$url")
  echo "| $name | $(( $(stat -c %s "$path") / 1024 / 1024 )) MiB | $(ms "$create") ms | $(ms "$first") ms | $(ms "$warm") ms |"
done
echo "idle RSS with the three loaded: $(awk '/VmRSS/ {print $2}' "/proc/$node_pid/status") KiB"

kill -TERM "$node_pid"; wait "$node_pid" || true
start_node
echo
echo "restart (tasks restored, components loaded from the compiled cache): ${start_ms} ms"
echo "| component | first call after restart | warm call (median of 20) |"
echo "|---|---|---|"
for name in "${components[@]}"; do
  url=$(url_of "$name")
  first=$(seconds_of "$url")
  warm=$(median_of_20 "$url")
  echo "| $name | $(ms "$first") ms | $(ms "$warm") ms |"
done
