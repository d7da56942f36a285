#!/usr/bin/env bash
# Runs the whole stack without Docker: the user, order and payment services as three processes
# against the local PostgreSQL and RabbitMQ (started or installed first if needed). Each service
# creates its database (users, orders, payments) on start. Output is prefixed with the service
# name. Ctrl-C (or SIGTERM) stops all three gracefully.
#
#   build-support/scripts/run-stack.sh [--release] [--cluster]
#   build-support/scripts/run-stack.sh --reset [--release] [--cluster]
#
# --cluster runs it on the local three-node RabbitMQ cluster of rabbitmq-cluster.sh (started
# first, or reused if it runs) with AMQP_URL set to its nodes' list; the cluster keeps running
# after the stack stops (`build-support/scripts/rabbitmq-cluster.sh stop` stops it).
#
# --reset removes what the stack left, with the same environment it ran with: its three
# databases and its namespace's queues (messages included) and exchanges (with `eventsctl
# topology delete --purge`), and prints what it removed. It refuses while anything listens on
# the stack's gRPC or metrics ports (stop the stack first), and the queue deletion refuses while
# a consumer is attached to one of them, before anything is removed.
#
# Every service setting passes through from the environment (BUS_NAMESPACE, RETRY_DELAYS,
# RUST_LOG, …) except the three each service has its own of, which come from
# <SERVICE>_DATABASE_URL, <SERVICE>_GRPC_ADDR and <SERVICE>_METRICS_ADDR (SERVICE is USER,
# ORDER or PAYMENT), by default the services' own: databases users, orders, payments on
# postgres://postgres@127.0.0.1:5432, gRPC ports 50051 (user), 50052 (order), 50053 (payment),
# metrics ports 9091 to 9093.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=debug
cargo_flags=()
cluster=false
reset=false
for arg in "$@"; do
  case "$arg" in
    --release) profile=release; cargo_flags=(--release) ;;
    --cluster) cluster=true ;;
    --reset) reset=true ;;
    *) echo "usage: $0 [--reset] [--release] [--cluster]" >&2; exit 2 ;;
  esac
done

log() { printf '[stack] %s\n' "$*" >&2; }

services=(user-service order-service payment-service)
declare -A variable=([user-service]=USER [order-service]=ORDER [payment-service]=PAYMENT)
declare -A database=([user-service]=users [order-service]=orders [payment-service]=payments)
declare -A grpc_port=([user-service]=50051 [order-service]=50052 [payment-service]=50053)
declare -A metrics_port=([user-service]=9091 [order-service]=9092 [payment-service]=9093)

# The value of SETTING for SERVICE: <SERVICE>_<SETTING> if set, else DEFAULT.
setting() {
  local name="${variable[$1]}_$2"
  echo "${!name:-$3}"
}
database_url() { setting "$1" DATABASE_URL "postgres://postgres@127.0.0.1:5432/${database[$1]}"; }
grpc_addr() { setting "$1" GRPC_ADDR "0.0.0.0:${grpc_port[$1]}"; }
metrics_addr() { setting "$1" METRICS_ADDR "0.0.0.0:${metrics_port[$1]}"; }

for shared in DATABASE_URL GRPC_ADDR METRICS_ADDR; do
  if [[ -n ${!shared:-} ]]; then
    log "ignoring $shared: each service has its own (USER_$shared, ORDER_$shared, PAYMENT_$shared)"
  fi
done

if $cluster; then
  if $reset; then
    # The running cluster's nodes; it is not started just to be cleaned.
    AMQP_URL=$(build-support/scripts/rabbitmq-cluster.sh status | tail -n 1)
  else
    AMQP_URL=$(build-support/scripts/rabbitmq-cluster.sh start)
  fi
  export AMQP_URL
  log "on the RabbitMQ cluster $AMQP_URL"
fi

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Whatever listens on ADDR's port, where a client reaches it.
listening() {
  local host=${1%:*} port=${1##*:}
  host=${host#[}
  host=${host%]}
  case "$host" in 0.0.0.0 | :: | '') host=127.0.0.1 ;; esac
  port_open "$host" "$port"
}

reset_stack() {
  local service addr busy='' url
  declare -A server=() name=()
  for service in "${services[@]}"; do
    for addr in "$(grpc_addr "$service")" "$(metrics_addr "$service")"; do
      if listening "$addr"; then busy+="${busy:+, }$addr ($service)"; fi
    done
    url=$(database_url "$service")
    url=${url%%\?*}
    server[$service]=${url%/*}
    name[$service]=${url##*/}
    if [[ ! ${name[$service]} =~ ^[A-Za-z0-9_-]+$ ]]; then
      log "refusing to reset: the database \"${name[$service]}\" of $service is not a plain name"
      exit 1
    fi
  done
  if [[ -n $busy ]]; then
    log "refusing to reset: something listens on $busy; stop the stack first (Ctrl-C where" \
      "run-stack.sh runs), as --reset removes its databases and queues"
    exit 1
  fi
  cargo build "${cargo_flags[@]}" -q -p eventsctl
  log "removing namespace \"${BUS_NAMESPACE:-}\" from the broker"
  "target/$profile/eventsctl" topology delete --yes --purge | sed -u 's/^/[stack] /' >&2
  for service in "${services[@]}"; do
    if [[ -z $(psql -X -q -At "${server[$service]}/postgres" \
      -c "select 1 from pg_database where datname = '${name[$service]}'") ]]; then
      log "no database ${name[$service]} ($service)"
      continue
    fi
    psql -X -q "${server[$service]}/postgres" -v ON_ERROR_STOP=1 \
      -c "drop database if exists \"${name[$service]}\" with (force)"
    log "dropped database ${name[$service]} ($service)"
  done
  log "reset done"
}

if $reset; then
  reset_stack
  exit 0
fi

build-support/scripts/ensure-services.sh
cargo build "${cargo_flags[@]}" -p user-service -p order-service -p payment-service

pids=()
start() {
  local name=$1
  # The prefixing sed ignores Ctrl-C, so it still passes on what the services log while they
  # shut down.
  DATABASE_URL=$(database_url "$name") GRPC_ADDR=$(grpc_addr "$name") METRICS_ADDR=$(metrics_addr "$name") \
    "target/$profile/$name" > >(trap '' INT; exec sed -u "s/^/[$name] /") 2>&1 &
  pids+=("$!")
}

stop() {
  trap - INT TERM
  log "stopping"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  log "stopped"
}
trap 'stop; exit 0' INT TERM

for service in "${services[@]}"; do start "$service"; done
log "running: user $(grpc_addr user-service), order $(grpc_addr order-service)," \
  "payment $(grpc_addr payment-service); Ctrl-C stops"

# If one service exits on its own, take the others down too.
status=0
wait -n "${pids[@]}" || status=$?
log "a service exited (status $status)"
stop
exit "$status"
