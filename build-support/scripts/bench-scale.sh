#!/usr/bin/env bash
# The scaling measurement (build-support/docs/operations.md, Scaling out): the stack in release mode with N instances of
# each service, on fresh databases (scale_users, scale_orders, scale_payments) and bus namespace
# (`scale`), each removed after its run, for each configuration of BENCH_SCALE_RUNS, one after the
# other in one run of this script:
#   1. a warm-up (1000 flows, not reported);
#   2. idle: one call at a time, 20 calls per second, 200 flows;
#   3. peak: concurrency 64 spread over the user-service instances, for BENCH_SECONDS (30);
# then prints one table. Exits 1 when a run loses or duplicates a flow.
#
#   build-support/scripts/bench-scale.sh
#
# BENCH_SCALE_RUNS lists the configurations as broker:queue-type:instances, where broker is
# `cluster` (the local three-node cluster of rabbitmq-cluster.sh, started if it does not run) or
# `single` (the local RabbitMQ node); default "cluster:quorum:1 cluster:quorum:2". For example
# "single:classic:1 single:quorum:1" measures what quorum queues cost on one node.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${BENCH_SECONDS:-30}
runs=${BENCH_SCALE_RUNS:-cluster:quorum:1 cluster:quorum:2}
postgres=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
single_url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export BUS_NAMESPACE=scale RUST_LOG=${RUST_LOG:-warn}
log() { printf '[bench-scale] %s\n' "$*" >&2; }

build-support/scripts/ensure-services.sh
cargo build --release --locked -p user-service -p order-service -p payment-service -p loadgen -p eventsctl
bin=target/release
out=$(mktemp -d)
databases=(scale_users scale_orders scale_payments)

pids=()
stop_stack() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
drop_databases() {
  for db in "${databases[@]}"; do
    psql -q "$postgres/postgres" -c "drop database if exists $db with (force)" 2>/dev/null || true
  done
}
cleanup() {
  stop_stack
  drop_databases
}
trap cleanup EXIT

# One instance of a service: name, database, instance number (ports from it).
start() {
  local name=$1 db=$2 grpc=$3 metrics=$4
  env DATABASE_URL="$postgres/$db" GRPC_ADDR="127.0.0.1:$grpc" METRICS_ADDR="127.0.0.1:$metrics" \
    "$bin/$name" >>"$out/$name-$grpc.log" 2>&1 &
  pids+=("$!")
}
wait_serving() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do
    "$bin/$name" --grpc-addr "127.0.0.1:$port" healthcheck >/dev/null 2>&1 && return 0
    sleep 1
  done
  "$bin/$name" --grpc-addr "127.0.0.1:$port" healthcheck
}

results=()
for run in $runs; do
  IFS=: read -r broker queue_type instances <<<"$run"
  case "$broker" in
    cluster) amqp_url=$(build-support/scripts/rabbitmq-cluster.sh start) ;;
    single) amqp_url=$single_url ;;
    *) echo "unknown broker $broker in $run (cluster or single)" >&2; exit 2 ;;
  esac
  export AMQP_URL=$amqp_url QUEUE_TYPE=$queue_type
  log "$run: $instances instance(s) of each service, $queue_type queues on the $broker broker"
  # Whatever an interrupted run left in the namespace goes first.
  "$bin/eventsctl" topology delete --yes --purge >/dev/null
  drop_databases
  users=()
  for i in $(seq 1 "$instances"); do
    start user-service scale_users $((50080 + i)) $((9180 + i))
    start order-service scale_orders $((50090 + i)) $((9190 + i))
    start payment-service scale_payments $((50100 + i)) $((9200 + i))
    users+=("http://127.0.0.1:$((50080 + i))")
  done
  for i in $(seq 1 "$instances"); do
    wait_serving user-service $((50080 + i))
    wait_serving order-service $((50090 + i))
    wait_serving payment-service $((50100 + i))
  done
  addrs=$(IFS=,; echo "${users[*]}")
  load() {
    if ! "$bin/loadgen" --user-addr "$addrs" --json "$@" 2>"$out/loadgen.err"; then
      tr '\r' '\n' <"$out/loadgen.err" | tail -n 5 >&2
      return 1
    fi
  }
  name=${run//:/-}
  log "$run: warm-up, 1000 flows"
  load --concurrency 16 --users 1000 >/dev/null
  log "$run: idle, 200 flows at 20 calls/s"
  load --rate 20 --users 200 >"$out/$name-idle.json"
  log "$run: peak, concurrency 64 for ${seconds}s"
  load --concurrency 64 --duration "$seconds" >"$out/$name-peak.json"
  rss=0
  for pid in "${pids[@]}"; do rss=$((rss + $(awk '/VmHWM/ {print $2}' "/proc/$pid/status"))); done
  results+=("$run $out/$name-idle.json $out/$name-peak.json $rss")
  stop_stack
  "$bin/eventsctl" topology delete --yes --purge >/dev/null
  drop_databases
done

echo
echo "bench-scale: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), release build, RUST_LOG=$RUST_LOG"
printf '%-22s %10s %12s %12s %12s %12s %10s\n' "configuration" "instances" "idle e2e p50" "peak flows/s" "peak e2e p50" "peak e2e p99" "RSS (sum)"
status=0
for result in "${results[@]}"; do
  read -r run idle peak rss <<<"$result"
  IFS=: read -r broker queue_type instances <<<"$run"
  python3 - "$broker/$queue_type" "$instances" "$idle" "$peak" "$rss" <<'EOF' || status=1
import json, sys
label, instances, idle, peak, rss = sys.argv[1:]
idle, peak = json.load(open(idle)), json.load(open(peak))
print(f"{label:<22} {instances:>10} {idle['end_to_end_latency']['p50_ms']:>9.1f} ms "
      f"{peak['completed_per_second']:>12.0f} {peak['end_to_end_latency']['p50_ms']:>9.0f} ms "
      f"{peak['end_to_end_latency']['p99_ms']:>9.0f} ms {int(rss) / 1024:>6.1f} MiB")
sys.exit(0 if idle["consistent"] and peak["consistent"] else 1)
EOF
done
echo "(the runs' JSON: $out)"
exit "$status"
