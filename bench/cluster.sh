#!/usr/bin/env bash
# Cluster-mode figures for docs/PERFORMANCE.md, each against its single-node counterpart in the
# same run, on loopback: one nats-server (JetStream, sync_interval always), a single node S
# without a cluster, and cluster nodes A, B, C (plus D, whose one run slot is kept busy so every
# call to it spills to a peer).
#
#   NATS_SERVER=/path/to/nats-server bench/cluster.sh [target/release/spearlet] > cluster.txt
#
# Prints one "<figure> <value>" line per measurement (latencies in ms, rates per second).
set -euo pipefail
binary=${1:-target/release/spearlet}
nats_server=${NATS_SERVER:?set NATS_SERVER to a nats-server 2.11+ binary}
duration=${DURATION:-5}
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/nats.conf" <<CONF
listen: "127.0.0.1:14390"
jetstream { store_dir: "$work/jetstream", sync_interval: always }
CONF
"$nats_server" -c "$work/nats.conf" 2>"$work/nats.log" &
pids+=($!)
sleep 1

cat > "$work/cluster.toml" <<CONF
[cluster]
nats_url = "nats://127.0.0.1:14390"
ack_wait_ms = 5000
CONF
cat > "$work/busy.toml" <<CONF
max_concurrent_executions = 1
[cluster]
nats_url = "nats://127.0.0.1:14390"
ack_wait_ms = 5000
CONF

start() { # name grpc-port config-or-empty
  local name=$1 port=$2 config=$3
  local arguments=(serve --grpc-addr "127.0.0.1:$port" --http-addr 127.0.0.1:0
    --data-dir "$work/$name" --log-level warn)
  [ -n "$config" ] && arguments+=(--config "$config")
  "$binary" "${arguments[@]}" > "$work/$name.out" 2> "$work/$name.log" &
  pids+=($!)
  eval "pid_$name=$!"
  for _ in $(seq 200); do grep -q grpc:// "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
}
start S 52100 ""
start A 52111 "$work/cluster.toml"
start B 52112 "$work/cluster.toml"
start C 52113 "$work/cluster.toml"
start D 52114 "$work/busy.toml"
cat > "$work/solo.toml" <<CONF
[cluster]
nats_url = "nats://127.0.0.1:14390"
name = "solo"
CONF
start E 52115 "$work/solo.toml"
sleep 3
cli() { "$binary" --addr "http://127.0.0.1:$1" "${@:2}"; }
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin)['spearlet']; print($1)"; }
bench_p50() { cli "$1" bench --json --duration "$duration" --warmup 1 "${@:2}" | json_field "d['latency_ms']['p50']"; }
bench_rate() { cli "$1" bench --json --duration "$duration" --warmup 1 "${@:2}" | json_field "d['throughput_per_second']"; }

# 1. A warm sync call on a node with spare capacity: cluster mode vs single node, alternating,
#    three rounds.
for round in 1 2 3; do
  for c in 1 64; do
    echo "warm_sync_single_c${c}_per_s $(bench_rate 52100 --concurrency $c)"
    echo "warm_sync_cluster_c${c}_per_s $(bench_rate 52111 --concurrency $c)"
  done
done

# 2. A spilled call: D's only run slot is held by a long sleep, so every call to D runs on a
#    peer; against calling the peer directly.
cli 52114 invoke sleep --input 290000 --timeout 300000 >/dev/null 2>&1 &
pids+=($!)
sleep 1
for c in 1 64; do
  echo "spilled_p50_ms_c${c} $(bench_p50 52114 --concurrency $c)"
  echo "local_p50_ms_c${c} $(bench_p50 52112 --concurrency $c)"
done

# 3. Async acceptance: the cluster's JetStream queue vs the single node's durable queue.
echo "async_accept_single_per_s $(bench_rate 52100 --mode async --concurrency 64)"
echo "async_accept_cluster_per_s $(bench_rate 52111 --mode async --concurrency 64)"
# The accepted executions run on after the bench; let them drain.
for port in 52100 52111 52112 52113; do
  until [ "$(cli $port --json exec ls --status pending --limit 1 | python3 -c "import json,sys; print(len(json.load(sys.stdin)['executions']))")" = 0 ]; do sleep 0.5; done
done

# 4. Async completion of a 100 ms wait capped at 2 instances per node: 3 cluster nodes vs
#    a single node and vs a one-node cluster E (its own cluster name on the same NATS). D's one
#    run slot is still held, so it takes none.
# The `sleep` example (wasm, sleeps its input in milliseconds in a host call), registered again
# as `nap` capped at two instances per node: the work is waiting, not CPU, so nodes can scale it.
for port in 52100 52111 52115; do
  cli $port task create nap --artifact "file://$work/A/examples/sleep.wasm" \
    --set spearlet.pool.max_instances=2 >/dev/null 2>&1 \
  || cli $port task create nap --artifact "$work/A/examples/sleep.wasm" \
    --set spearlet.pool.max_instances=2 >/dev/null
done
sleep 2
completed() { # ports...
  local total=0
  for port in "$@"; do
    total=$((total + $(cli "$port" --json exec ls --task nap --status completed --limit 1000 \
      | python3 -c "import json,sys; print(len(json.load(sys.stdin)['executions']))")))
  done
  echo $total
}
completion_rate() { # submit-port count ports...
  local port=$1 count=$2
  shift 2
  local before
  before=$(completed "$@")
  local started=$(date +%s.%N)
  cli "$port" bench --task nap --input-text 100 --mode async --requests "$count" --warmup 0 --concurrency 16 >/dev/null 2>&1
  while [ $(( $(completed "$@") - before )) -lt "$count" ]; do sleep 0.1; done
  python3 -c "print(round($count / ($(date +%s.%N) - $started), 1))"
}
echo "async_completion_single_per_s $(completion_rate 52100 300 52100)"
echo "async_completion_one_node_cluster_per_s $(completion_rate 52115 300 52115)"
echo "async_completion_three_nodes_per_s $(completion_rate 52111 300 52111 52112 52113 52114)"

# 5. Artifact propagation: registered on A (a file in A's data dir), runnable on C.
for size_mb in 1 20; do
  artifact="$work/A/pad-$size_mb.sh"
  { printf '#!/bin/sh\necho padded\nexit 0\n'; head -c $((size_mb * 1024 * 1024)) /dev/zero | tr '\0' '#'; } > "$artifact"
  started=$(date +%s.%N)
  cli 52111 task create "pad$size_mb" --type process --artifact "file://$artifact" >/dev/null
  until cli 52113 task get "pad$size_mb" >/dev/null 2>&1; do sleep 0.02; done
  echo "artifact_${size_mb}mb_propagation_ms $(python3 -c "print(round(($(date +%s.%N) - $started) * 1000))")"
done

# 6. kill -9 of a node running an execution: out of A's routing, and the execution redelivered
#    to a node with a free instance (ack_wait 5 s). Two 20 s executions on three one-instance
#    nodes (D's slot is held), so one node stays free to take over.
printf '#!/bin/sh\nsleep 20\n' > "$work/long.sh"
cli 52111 task create long --type process --artifact "$work/long.sh" \
  --set spearlet.pool.max_instances=1 >/dev/null
sleep 2
for index in 1 2; do cli 52111 invoke long --async --max-retries 1 -q > "$work/long-$index.id"; done
node_id_of() { cli "$1" --json cluster ls | python3 -c "import json,sys; print(json.load(sys.stdin)['node_id'])"; }
b_id=$(node_id_of 52112)
c_id=$(node_id_of 52113)
victim=""
until [ -n "$victim" ]; do
  for index in 1 2; do
    id=$(cat "$work/long-$index.id")
    node=$(cli 52111 --json exec get "$id" | python3 -c "import json,sys; d=json.load(sys.stdin); d=d.get('result', d); print(d.get('metrics',{}).get('node_id','') if d.get('status')=='RUNNING' else '')")
    if [ "$node" = "$b_id" ]; then victim=B; victim_id=$b_id; on_victim=$id; fi
    if [ "$node" = "$c_id" ]; then victim=C; victim_id=$c_id; on_victim=$id; fi
  done
  sleep 0.1
done
killed=$(date +%s.%N)
eval "kill -9 \$pid_$victim"
until cli 52111 --json cluster ls | python3 -c "import json,sys; n=[x for x in json.load(sys.stdin)['nodes'] if x['node_id']=='$victim_id' and x['routable']]; sys.exit(1 if n else 0)"; do sleep 0.05; done
echo "kill_to_out_of_routing_ms $(python3 -c "print(round(($(date +%s.%N) - $killed) * 1000))")"
until [ "$(cli 52111 --json exec get "$on_victim" | python3 -c "import json,sys; d=json.load(sys.stdin); d=d.get('result', d); print(d.get('metrics',{}).get('attempt','') if d.get('status')=='RUNNING' else '')")" = 2 ]; do sleep 0.05; done
echo "kill_to_redelivered_running_ms $(python3 -c "print(round(($(date +%s.%N) - $killed) * 1000))")"
