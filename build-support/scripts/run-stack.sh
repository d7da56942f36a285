#!/usr/bin/env bash
# Runs the whole stack without Docker: the user, order and payment services as three processes
# against the local PostgreSQL and RabbitMQ (started or installed first if needed). Each service
# creates its database (users, orders, payments) on start. Output is prefixed with the service
# name. Ctrl-C (or SIGTERM) stops all three gracefully.
#
#   build-support/scripts/run-stack.sh [--release] [--cluster]
#
# --cluster runs it on the local three-node RabbitMQ cluster of rabbitmq-cluster.sh (started
# first, or reused if it runs) with AMQP_URL set to its nodes' list; the cluster keeps running
# after the stack stops (`build-support/scripts/rabbitmq-cluster.sh stop` stops it).
# Every service setting passes through from the environment (BUS_NAMESPACE, RUST_LOG, …); the
# gRPC ports are 50051 (user), 50052 (order) and 50053 (payment).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=debug
cargo_flags=()
cluster=false
for arg in "$@"; do
  case "$arg" in
    --release) profile=release; cargo_flags=(--release) ;;
    --cluster) cluster=true ;;
    *) echo "usage: $0 [--release] [--cluster]" >&2; exit 2 ;;
  esac
done

build-support/scripts/ensure-services.sh
if $cluster; then
  AMQP_URL=$(build-support/scripts/rabbitmq-cluster.sh start)
  export AMQP_URL
  echo "[stack] on the RabbitMQ cluster $AMQP_URL" >&2
fi
cargo build "${cargo_flags[@]}" -p user-service -p order-service -p payment-service

pids=()
start() {
  local name=$1
  # The prefixing sed ignores Ctrl-C, so it still passes on what the services log while they
  # shut down.
  "target/$profile/$name" > >(trap '' INT; exec sed -u "s/^/[$name] /") 2>&1 &
  pids+=("$!")
}

stop() {
  trap - INT TERM
  echo "[stack] stopping" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "[stack] stopped" >&2
}
trap 'stop; exit 0' INT TERM

start user-service
start order-service
start payment-service
echo "[stack] running: user :50051, order :50052, payment :50053; Ctrl-C stops" >&2

# If one service exits on its own, take the others down too.
status=0
wait -n "${pids[@]}" || status=$?
echo "[stack] a service exited (status $status)" >&2
stop
exit "$status"
