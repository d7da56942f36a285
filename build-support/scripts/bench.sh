#!/usr/bin/env bash
# The benchmark: builds in release mode, starts the three services on databases, ports and a bus
# namespace of their own (bench_<run>_users, bench_<run>_orders, bench_<run>_payments, free ports,
# namespace bench-<run>, where <run> is random; all removed at the end), then runs, against the
# local PostgreSQL and RabbitMQ on this machine:
#   1. a warm-up (2000 flows, not reported);
#   2. idle: 20 calls per second, open loop (flows barely overlap);
#   3. peak: concurrency 64, as fast as it goes, for BENCH_SECONDS (default 30);
#   4. steady: a fixed rate of half the peak's completed flows per second, for BENCH_SECONDS;
#   5. sweep: open-loop rates from 10% to 120% of the peak in BENCH_SWEEP_STEPS (default 8) steps
#      of BENCH_SWEEP_SECONDS each (default BENCH_SECONDS/6, at least 2; BENCH_SWEEP_STEPS=0
#      skips it), drawn as latency-throughput.svg beside the runs' JSON (`loadgen plot`);
#   6. back-pressure: the user service restarted with CREATE_USER_MAX_BACKLOG=BENCH_BACKLOG
#      (default 16 flows in the chain), and the peak again: the e2e latency of the
#      accepted calls and the share refused with RESOURCE_EXHAUSTED;
#   7. slow gateway: the payment service restarted with GATEWAY_LATENCY=BENCH_GATEWAY_LATENCY
#      (default 100ms, a real provider's answer time), and the peak again;
#   8. `loadgen ceiling`: the same durable work without the services;
# and prints one table against the targets, with each service's peak RSS and where the CPU went
# during the peak run. Exits 1 when a run loses or duplicates a flow.
#
#   build-support/scripts/bench.sh
#   BENCH_BASELINE=7bd8805 build-support/scripts/bench.sh    # side by side with another commit
#
# Side by side: BENCH_BASELINE=<git rev> also checks that commit out in a git worktree of its own
# (target/bench-baseline/<commit>/src, removed at the end), builds its services in release mode
# into target/bench-baseline/<commit>/target (kept, so the next run with that commit builds
# nothing), and starts them as a second stack on databases, ports and a namespace of their own
# (bench_<run>_baseline_*, bench-<run>-baseline). After both warm-ups, BENCH_PAIRS (default 2)
# pairs of runs alternate between the builds, this tree's first: its idle and peak runs, then
# the baseline's, so that machine drift hits both; one stack is under load at a time while the
# other waits idle. Both are driven by this tree's loadgen, so the comparison measures the
# services only. The baseline is then stopped, and steps 4-8 measure this tree alone. The table
# gains the baseline's figures beside this tree's (the median over the pairs) and their ratio,
# each pair's ratio in parentheses.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${BENCH_SECONDS:-30}
gateway_latency=${BENCH_GATEWAY_LATENCY:-100ms}
backlog=${BENCH_BACKLOG:-16}
postgres=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
baseline_rev=${BENCH_BASELINE:-}
sweep_steps=${BENCH_SWEEP_STEPS:-8}
sweep_seconds=${BENCH_SWEEP_SECONDS:-$((seconds / 6 > 2 ? seconds / 6 : 2))}
[[ $sweep_steps =~ ^[0-9]+$ ]] || { echo "BENCH_SWEEP_STEPS must be a number, not $sweep_steps" >&2; exit 2; }
[[ $sweep_seconds =~ ^[1-9][0-9]*$ ]] ||
  { echo "BENCH_SWEEP_SECONDS must be a positive number, not $sweep_seconds" >&2; exit 2; }
pairs=1
if [[ -n $baseline_rev ]]; then
  pairs=${BENCH_PAIRS:-2}
  [[ $pairs =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_PAIRS must be a positive number, not $pairs" >&2; exit 2; }
fi
export RUST_LOG=${RUST_LOG:-warn}
log() { printf '[bench] %s\n' "$*" >&2; }

run=$(printf '%04x%04x' "$RANDOM" "$RANDOM")
services=(user-service order-service payment-service)
declare -A table=([user-service]=users [order-service]=orders [payment-service]=payments)
stacks=(current)
declare -A bin=([current]=target/release) prefix=([current]="bench_$run") namespace=([current]="bench-$run")
if [[ -n $baseline_rev ]]; then
  stacks+=(baseline)
  prefix[baseline]="bench_${run}_baseline"
  namespace[baseline]="bench-$run-baseline"
fi
tools=target/release # loadgen and eventsctl: this tree's, whichever stack they face
out=$(mktemp -d)
declare -A pids=() ports=()
worktree=

database() { echo "${prefix[$1]}_${table[$2]}"; }
stop_service() {
  local key=$1/$2
  [[ -n ${pids[$key]:-} ]] || return 0
  kill -TERM "${pids[$key]}" 2>/dev/null || true
  wait "${pids[$key]}" 2>/dev/null || true
  unset "pids[$key]"
}
stop_stack() {
  local service
  for service in "${services[@]}"; do
    if [[ -n ${pids[$1/$service]:-} ]]; then kill -TERM "${pids[$1/$service]}" 2>/dev/null || true; fi
  done
  for service in "${services[@]}"; do stop_service "$1" "$service"; done
}
# Removes everything a stack left: its processes, its namespace's queues and exchanges (the
# services must be stopped first), its databases.
declare -A removed=()
remove_stack() {
  [[ -z ${removed[$1]:-} ]] || return 0
  removed[$1]=1
  stop_stack "$1"
  if [[ -x $tools/eventsctl ]]; then
    BUS_NAMESPACE=${namespace[$1]} "$tools/eventsctl" topology delete --yes --purge >/dev/null 2>&1 ||
      log "could not delete the queues of namespace ${namespace[$1]}"
  fi
  local service
  for service in "${services[@]}"; do
    psql -q "$postgres/postgres" -c "drop database if exists $(database "$1" "$service") with (force)" \
      2>/dev/null || true
  done
}
cleanup() {
  set +e
  local stack
  for stack in "${stacks[@]}"; do remove_stack "$stack"; done
  if [[ -n $worktree ]]; then
    git worktree remove --force "$worktree" 2>/dev/null || rm -rf "$worktree"
    git worktree prune
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build-support/scripts/ensure-services.sh
cargo build --release --locked -p user-service -p order-service -p payment-service -p loadgen -p eventsctl

if [[ -n $baseline_rev ]]; then
  commit=$(git rev-parse --verify --quiet "$baseline_rev^{commit}") ||
    { echo "BENCH_BASELINE=$baseline_rev names no commit" >&2; exit 2; }
  baseline_dir=$PWD/target/bench-baseline/${commit:0:12}
  worktree=$baseline_dir/src
  # What an interrupted run may have left.
  git worktree remove --force "$worktree" 2>/dev/null || rm -rf "$worktree"
  git worktree prune
  log "baseline: $baseline_rev ($(git log -1 --format='%h %s' "$commit" | cut -c1-80))"
  git worktree add --quiet --detach "$worktree" "$commit"
  # Cargo rebuilds a file newer than its last build; the commit's files are the same every run,
  # so they get the commit's time, and a second run finds the kept build fresh.
  (cd "$worktree" && find . -exec touch -h -d "@$(git log -1 --format=%ct HEAD)" {} +)
  if ! git diff --quiet "$commit" -- proto; then
    log "warning: proto/ differs between the baseline and this tree: this tree's loadgen drives both"
  fi
  (cd "$worktree" && CARGO_TARGET_DIR=$baseline_dir/target \
    cargo build --release --locked -p user-service -p order-service -p payment-service)
  bin[baseline]=$baseline_dir/target/release
fi

start() {
  local stack=$1 service=$2
  shift 2
  env "$@" BUS_NAMESPACE="${namespace[$stack]}" DATABASE_URL="$postgres/$(database "$stack" "$service")" \
    GRPC_ADDR="127.0.0.1:${ports[$stack/$service]}" METRICS_ADDR="127.0.0.1:${ports[$stack/$service/metrics]}" \
    "${bin[$stack]}/$service" >>"$out/$stack-$service.log" 2>&1 &
  pids[$stack/$service]=$!
}
wait_serving() {
  local stack=$1 service=$2
  for _ in $(seq 1 120); do
    if ! kill -0 "${pids[$stack/$service]}" 2>/dev/null; then
      log "$stack $service exited; the end of its log:"
      tail -n 20 "$out/$stack-$service.log" >&2
      return 1
    fi
    "${bin[$stack]}/$service" --grpc-addr "127.0.0.1:${ports[$stack/$service]}" healthcheck >/dev/null 2>&1 &&
      return 0
    sleep 1
  done
  "${bin[$stack]}/$service" --grpc-addr "127.0.0.1:${ports[$stack/$service]}" healthcheck >/dev/null
}
load() {
  local stack=$1
  shift
  # The arguments first: they may name a subcommand (sweep).
  if ! BUS_NAMESPACE=${namespace[$stack]} "$tools/loadgen" "$@" \
    --user-addr "http://127.0.0.1:${ports[$stack/user-service]}" --json 2>"$out/loadgen.err"; then
    tr '\r' '\n' <"$out/loadgen.err" | tail -n 5 >&2
    return 1
  fi
}
snapshot() {
  python3 build-support/scripts/bench_report.py snapshot \
    "user-service=${pids[$1/user-service]}" "order-service=${pids[$1/order-service]}" \
    "payment-service=${pids[$1/payment-service]}"
}
peak_rss() {
  local sep='' service
  printf '{'
  for service in "${services[@]}"; do
    printf '%s"%s": %s' "$sep" "$service" "$(awk '/VmHWM/ {print $2}' "/proc/${pids[$1/$service]}/status")"
    sep=', '
  done
  printf '}\n'
}

# Every port at once, before any service binds one.
read -r -a free <<<"$(python3 build-support/scripts/bench_report.py ports $((6 * ${#stacks[@]})))"
for stack in "${stacks[@]}"; do
  for i in 0 1 2; do
    ports[$stack/${services[$i]}]=${free[$i]}
    ports[$stack/${services[$i]}/metrics]=${free[$((i + 3))]}
  done
  log "$stack stack: gRPC on ports ${free[*]:0:3}, metrics on ${free[*]:3:3}, namespace ${namespace[$stack]}"
  free=("${free[@]:6}")
  for service in "${services[@]}"; do start "$stack" "$service"; done
done
for stack in "${stacks[@]}"; do
  for service in "${services[@]}"; do wait_serving "$stack" "$service"; done
done

# Without a baseline the log reads as it always did.
for stack in "${stacks[@]}"; do
  label=${baseline_rev:+$stack, }
  log "${label}warm-up: 2000 flows"
  load "$stack" --concurrency 16 --users 2000 >/dev/null
done
for pair in $(seq 1 "$pairs"); do
  for stack in "${stacks[@]}"; do
    label=${baseline_rev:+pair $pair/$pairs, $stack, }
    log "${label}idle: 200 flows, 20 calls/s"
    load "$stack" --rate 20 --users 200 >"$out/idle-$stack-$pair.json"
    log "${label}peak: concurrency 64 for ${seconds}s"
    snapshot "$stack" >"$out/cpu-before-$stack.json"
    load "$stack" --concurrency 64 --duration "$seconds" >"$out/peak-$stack-$pair.json"
    snapshot "$stack" >"$out/cpu-after-$stack.json"
  done
done
if [[ -n $baseline_rev ]]; then
  peak_rss baseline >"$out/rss-baseline.json"
  remove_stack baseline
  python3 -c 'import json,sys; print(json.dumps({"baseline": sys.argv[1], "commit": sys.argv[2], "pairs": int(sys.argv[3])}))' \
    "$baseline_rev" "$commit" "$pairs" >"$out/baseline.json"
fi

peak=$(python3 -c '
import json, statistics, sys
print(statistics.median(json.load(open(path))["completed_per_second"] for path in sys.argv[1:]))' \
  "$out"/peak-current-*.json)
rate=$(python3 -c 'import sys; print(max(1, round(float(sys.argv[1]) / 2)))' "$peak")
log "steady: ${rate} calls/s (half the peak) for ${seconds}s"
load current --rate "$rate" --duration "$seconds" >"$out/steady.json"
peak_rss current >"$out/rss.json"

# What the user service runs with: the variable as this environment passes it on, else the
# default its --help gives.
setting() {
  local name=$1
  if [[ -n ${!name:-} ]]; then
    echo "$name=${!name}"
    return
  fi
  echo "$name=$("${bin[current]}/user-service" --help | awk -v env="[env: $name=" '
    index($0, env) { found = 1; next }
    found && /\[default: / { sub(/.*\[default: /, ""); sub(/\].*/, ""); print; exit }')"
}
if ((sweep_steps > 0)); then
  log "sweep: $sweep_steps open-loop steps from 10% to 120% of the peak ($(printf '%.0f' "$peak") flows/s), ${sweep_seconds}s each"
  head=$(git rev-parse --short HEAD)
  git diff --quiet HEAD 2>/dev/null || head+=" with local changes"
  load current sweep --peak "$peak" --steps "$sweep_steps" --from 0.1 --to 1.2 --step-seconds "$sweep_seconds" \
    --note "$(setting CREATE_USER_MAX_BACKLOG)" --note "$(setting CREATE_USER_BATCH_MAX)" \
    --note "$(setting QUEUE_TYPE)" --note "RUST_LOG=$RUST_LOG" \
    --note "peak: median of the C=64 runs of ${seconds}s" \
    --note "$(nproc) cores, Linux $(uname -r)" --note "$(date -u +%Y-%m-%d), commit $head" \
    >"$out/sweep.json"
  "$tools/loadgen" plot "$out/sweep.json" -o "$out/latency-throughput.svg"
fi

log "back-pressure: user-service with CREATE_USER_MAX_BACKLOG=$backlog, concurrency 64 for ${seconds}s"
stop_service current user-service
start current user-service CREATE_USER_MAX_BACKLOG="$backlog"
wait_serving current user-service
load current --concurrency 64 --duration "$seconds" >"$out/backpressure.json"
python3 -c 'import json,sys; print(json.dumps({"backlog": int(sys.argv[1])}))' "$backlog" >"$out/backpressure-limit.json"
stop_service current user-service
start current user-service
wait_serving current user-service

log "slow gateway: payment-service with GATEWAY_LATENCY=$gateway_latency, peak for ${seconds}s"
stop_service current payment-service
start current payment-service GATEWAY_LATENCY="$gateway_latency"
wait_serving current payment-service
load current --concurrency 16 --users 500 >/dev/null
load current --concurrency 64 --duration "$seconds" >"$out/slow.json"
python3 -c 'import json,sys; print(json.dumps({"latency": sys.argv[1], "rss_kib": int(sys.argv[2])}))' \
  "$gateway_latency" "$(awk '/VmHWM/ {print $2}' "/proc/${pids[current/payment-service]}/status")" >"$out/slow-gateway.json"

log "ceiling"
"$tools/loadgen" ceiling --postgres-url "$postgres/postgres" --json >"$out/ceiling.json"

echo
echo "benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), release build, RUST_LOG=$RUST_LOG"
python3 build-support/scripts/bench_report.py table "$out"
if ((sweep_steps > 0)); then
  echo "(the runs' JSON: $out; the sweep's plot: $out/latency-throughput.svg)"
else
  echo "(the runs' JSON: $out)"
fi
