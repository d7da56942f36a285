#!/usr/bin/env bash
# CI's checks against the running local stack: generates the Python client, starts the stack (in
# its own bus namespace), waits until all three services are healthy, runs the Python example
# (CreateUser, then ListOrders until the order is paid), then a short loadgen run that fails
# unless every accepted user got exactly one payment_processed, and stops the stack.
set -euo pipefail
cd "$(dirname "$0")/../.."

build-support/scripts/python-client.sh target/python-client
cargo build -p loadgen
venv="${XDG_CACHE_HOME:-$HOME/.cache}/event-driven-tools/python-venv"

# A fixed namespace: each run reuses the same queues instead of leaving new ones behind.
export BUS_NAMESPACE=pysmoke
log=$(mktemp)
build-support/scripts/run-stack.sh > "$log" 2>&1 &
stack=$!
stop_stack() {
  kill -TERM "$stack" 2>/dev/null || true
  wait "$stack" 2>/dev/null || true
}
trap stop_stack EXIT

ready=false
for _ in $(seq 1 300); do
  if target/debug/user-service --grpc-addr 127.0.0.1:50051 healthcheck >/dev/null 2>&1 &&
    target/debug/order-service --grpc-addr 127.0.0.1:50052 healthcheck >/dev/null 2>&1 &&
    target/debug/payment-service --grpc-addr 127.0.0.1:50053 healthcheck >/dev/null 2>&1; then
    ready=true
    break
  fi
  if ! kill -0 "$stack" 2>/dev/null; then break; fi
  sleep 1
done
if ! $ready; then
  echo "[stack-smoke] the stack did not become healthy; its log:" >&2
  tail -n 50 "$log" >&2
  exit 1
fi

PYTHONPATH=target/python-client "$venv/bin/python" build-support/clients/python/example.py
echo "[stack-smoke] the Python client created a user and saw the order paid" >&2

target/debug/loadgen --users 300 --concurrency 16
echo "[stack-smoke] loadgen: 300 flows, each user paid exactly once" >&2
