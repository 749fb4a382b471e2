#!/usr/bin/env bash
# Alternating A/B of two node binaries under the same load generator: five rounds of
# $NODE_DIR/spearlet-base and $NODE_DIR/spearlet-new (copy the two builds there), each on a fresh
# data dir, `bench --json` at 64 and 1 in flight for 5 s after 1 s of warm-up. Prints one
# "<round> <base|new> <concurrency> <json>" record per run; compare medians.
#
#   NODE_DIR=/tmp CLIENT=target/release/spearlet bench/ab-nodes.sh > ab.txt
set -u
client=${CLIENT:-target/release/spearlet}
for round in 1 2 3 4 5; do
  for which in base new; do
    binary=${NODE_DIR:-/tmp}/spearlet-$which
    data=$(mktemp -d)
    port=$((41000 + RANDOM % 10000))
    "$binary" serve --data-dir "$data" --grpc-addr 127.0.0.1:$port --http-addr 127.0.0.1:0 --log-level warn > "$data/log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do grep -q grpc:// "$data/log" && break; sleep 0.05; done
    for c in 64 1; do
      result=$("$client" bench --addr http://127.0.0.1:$port --concurrency $c --duration 5 --warmup 1 --json 2>/dev/null)
      echo "$round $which $c $result"
    done
    kill $pid; wait $pid 2>/dev/null
    rm -rf "$data"
  done
done
