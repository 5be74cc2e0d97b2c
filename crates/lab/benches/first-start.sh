#!/bin/bash
# A first start on a server that already holds N events of history (BENCHMARKS.md, "A
# first start from the server's history"): time until the API answers (READY is sent just
# before it), time until the rest of the history has been scored (`events_model_scored`
# unchanged for 10 s), peak RSS, and what the journal line says was learned and reviewed.
#
#   crates/lab/benches/first-start.sh N [PORT]
#
# Needs the lab build (`cargo build --release --locked`: `bench-server`); FHIR_EDGE names
# the binary (default: $CARGO_TARGET_DIR or target, then release/fhir-edge). Work files go
# to /tmp/fhir-edge-first-start/N.
set -euo pipefail
N=$1; PORT=${2:-18791}
B=${FHIR_EDGE:-${CARGO_TARGET_DIR:-$(dirname "$0")/../../../target}/release/fhir-edge}
D=/tmp/fhir-edge-first-start/$N; rm -rf "$D"; mkdir -p "$D"
(sleep infinity | "$B" bench-server --events "$N" > "$D/url" 2> "$D/server.log") &
SERVER=$!
trap 'pkill -P $SERVER 2>/dev/null || true; kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1200); do [ -s "$D/url" ] && break; sleep 0.5; done
[ -s "$D/url" ] || { echo "bench-server did not start: $(cat "$D/server.log")"; exit 1; }
cat > "$D/cfg.toml" <<C
[fhir]
base_url = "$(head -1 "$D/url")"
[detector]
model_dir = "$(cd "$(dirname "$0")/../../../models/default" && pwd)"
[api]
listen = "127.0.0.1:$PORT"
[state]
dir = "$D/state"
C
t0=$(date +%s.%N)
/usr/bin/time -v "$B" --config "$D/cfg.toml" run > "$D/run.out" 2> "$D/run.err" &
DAEMON=$!
metric() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
until metric fhir_edge_events_model_scored_total >/dev/null 2>&1; do
  kill -0 $DAEMON 2>/dev/null || { echo "the daemon stopped: $(tail -3 "$D/run.err")"; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
last=-1; same=0; t2=$t1
while [ $same -lt 10 ]; do
  s=$(metric fhir_edge_events_model_scored_total)
  if [ "$s" = "$last" ]; then same=$((same + 1)); else same=0; t2=$(date +%s.%N); fi
  last=$s; sleep 1
done
kill -TERM "$(pgrep -P $DAEMON)"; wait $DAEMON || true
echo "history $N events: API up after $(echo "$t1 - $t0" | bc) s; $last events scored by $(echo "$t2 - $t0" | bc) s; peak RSS $(awk '/Maximum resident/ {print $NF}' "$D/run.err") KB"
grep -o 'events_learned=[0-9]* events_to_review=[0-9]* days="[0-9.]*"' "$D/run.err" | head -1 || echo "(no first-start training in the journal)"
