#!/usr/bin/env bash
# The benchmark: builds in release mode, starts the three services on their own databases
# (bench_users, bench_orders, bench_payments, dropped at the end), ports and bus namespace, then
# runs, against the local PostgreSQL and RabbitMQ on this machine:
#   1. a warm-up (2000 flows, not reported);
#   2. idle: one call at a time, 20 calls per second (flows barely overlap);
#   3. peak: concurrency 64, as fast as it goes, for BENCH_SECONDS (default 30);
#   4. steady: a fixed rate of half the peak's completed flows per second, for BENCH_SECONDS;
#   5. slow gateway: the payment service restarted with GATEWAY_LATENCY=BENCH_GATEWAY_LATENCY
#      (default 100ms, a real provider's answer time), and the peak again;
#   6. `loadgen ceiling`: the same durable work without the services;
# and prints one table against the targets, with each service's peak RSS and where the CPU went
# during the peak run. Exits 1 when a run loses or duplicates a flow.
#
#   build-support/scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${BENCH_SECONDS:-30}
gateway_latency=${BENCH_GATEWAY_LATENCY:-100ms}
postgres=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
export BUS_NAMESPACE=bench RUST_LOG=${RUST_LOG:-warn}
log() { printf '[bench] %s\n' "$*" >&2; }

build-support/scripts/ensure-services.sh
cargo build --release --locked -p user-service -p order-service -p payment-service -p loadgen
bin=target/release
out=$(mktemp -d)

declare -A pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in bench_users bench_orders bench_payments; do
    psql -q "$postgres/postgres" -c "drop database if exists $db with (force)" 2>/dev/null || true
  done
}
trap cleanup EXIT

for db in bench_users bench_orders bench_payments; do
  psql -q "$postgres/postgres" -c "drop database if exists $db with (force)"
done
start() {
  local name=$1 db=$2 port=$3 metrics=$4
  shift 4
  env "$@" DATABASE_URL="$postgres/$db" GRPC_ADDR="127.0.0.1:$port" METRICS_ADDR="127.0.0.1:$metrics" \
    "$bin/$name" >>"$out/$name.log" 2>&1 &
  pids[$name]=$!
}
serving() {
  "$bin/$1" --grpc-addr "127.0.0.1:$2" healthcheck >/dev/null 2>&1
}
start user-service bench_users 50071 9171
start order-service bench_orders 50072 9172
start payment-service bench_payments 50073 9173

for _ in $(seq 1 120); do
  if serving user-service 50071 && serving order-service 50072 && serving payment-service 50073; then
    break
  fi
  sleep 1
done
"$bin/user-service" --grpc-addr 127.0.0.1:50071 healthcheck >/dev/null

load() {
  if ! "$bin/loadgen" --user-addr http://127.0.0.1:50071 --json "$@" 2>"$out/loadgen.err"; then
    tr '\r' '\n' <"$out/loadgen.err" | tail -n 5 >&2
    return 1
  fi
}
snapshot() {
  python3 build-support/scripts/bench_report.py snapshot \
    "user-service=${pids[user-service]}" "order-service=${pids[order-service]}" \
    "payment-service=${pids[payment-service]}"
}

log "warm-up: 2000 flows"
load --concurrency 16 --users 2000 >/dev/null
log "idle: 200 flows, one call at a time, 20 calls/s"
load --concurrency 1 --rate 20 --users 200 >"$out/idle.json"
log "peak: concurrency 64 for ${seconds}s"
snapshot >"$out/cpu-before.json"
load --concurrency 64 --duration "$seconds" >"$out/peak.json"
snapshot >"$out/cpu-after.json"
rate=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["completed_per_second"] / 2))' "$out/peak.json")
log "steady: ${rate} calls/s (half the peak) for ${seconds}s"
load --concurrency 64 --rate "$rate" --duration "$seconds" >"$out/steady.json"

{
  printf '{'
  sep=
  for name in user-service order-service payment-service; do
    printf '%s"%s": %s' "$sep" "$name" "$(awk '/VmHWM/ {print $2}' "/proc/${pids[$name]}/status")"
    sep=', '
  done
  printf '}\n'
} >"$out/rss.json"

log "slow gateway: payment-service with GATEWAY_LATENCY=$gateway_latency, peak for ${seconds}s"
kill -TERM "${pids[payment-service]}"
wait "${pids[payment-service]}" || true
start payment-service bench_payments 50073 9173 GATEWAY_LATENCY="$gateway_latency"
for _ in $(seq 1 120); do serving payment-service 50073 && break; sleep 1; done
load --concurrency 16 --users 500 >/dev/null
load --concurrency 64 --duration "$seconds" >"$out/slow.json"
python3 -c 'import json,sys; print(json.dumps({"latency": sys.argv[1], "rss_kib": int(sys.argv[2])}))' \
  "$gateway_latency" "$(awk '/VmHWM/ {print $2}' "/proc/${pids[payment-service]}/status")" >"$out/slow-gateway.json"

log "ceiling"
"$bin/loadgen" ceiling --postgres-url "$postgres/postgres" --json >"$out/ceiling.json"

echo
echo "benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), release build, RUST_LOG=$RUST_LOG"
python3 build-support/scripts/bench_report.py table "$out"
echo "(the runs' JSON: $out)"
