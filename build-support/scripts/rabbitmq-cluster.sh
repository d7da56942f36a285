#!/usr/bin/env bash
# A local RabbitMQ cluster without Docker: three nodes (by default) on this machine, each with a
# node name, AMQP port, distribution port and data directory of its own, joined into one
# cluster. Logs go to stderr; `start` and `status` print the AMQP_URL list (guest, which may log
# in from localhost only) as their last line on stdout, so
#
#   export AMQP_URL=$(build-support/scripts/rabbitmq-cluster.sh start)
#
#   build-support/scripts/rabbitmq-cluster.sh start            start and join the nodes (or say they run)
#   build-support/scripts/rabbitmq-cluster.sh status           each node up or down, the members, the URLs
#   build-support/scripts/rabbitmq-cluster.sh stop [--reset]   stop every node; --reset also removes the data
#   build-support/scripts/rabbitmq-cluster.sh reset            the same as stop --reset
#   build-support/scripts/rabbitmq-cluster.sh kill-node N      SIGKILL node N's Erlang VM (a crash)
#   build-support/scripts/rabbitmq-cluster.sh stop-node N      stop node N gracefully
#   build-support/scripts/rabbitmq-cluster.sh start-node N     start node N again; waits until it rejoined
#   build-support/scripts/rabbitmq-cluster.sh ctl N ARGS…      rabbitmqctl ARGS against node N
#
# Nodes are numbered from 1. Settings (read by `start` and recorded in the data directory, so the
# other commands find the nodes of that directory without them):
#   RABBITMQ_CLUSTER_DIR             data, logs, pid files and the cluster's Erlang cookie
#                                    (default ${XDG_STATE_HOME:-$HOME/.local/state}/event-driven/rabbitmq-cluster)
#   RABBITMQ_CLUSTER_NODES           how many nodes (default 3)
#   RABBITMQ_CLUSTER_NAME            node name prefix: nodes are <name>-<n>@localhost (default rmq-cluster)
#   RABBITMQ_CLUSTER_BASE_PORT       node n's AMQP port is base + n - 1 (default 5701)
#   RABBITMQ_CLUSTER_DIST_BASE_PORT  node n's Erlang distribution port is this + n - 1 (default base + 20000)
# To change them for an existing directory, `stop --reset` first. The shared broker
# (rabbit@…, port 5672) and epmd are never touched.
set -euo pipefail

log() { printf '[rabbitmq-cluster] %s\n' "$*" >&2; }
advanced_config="$(cd "$(dirname "$0")/../docker/rabbitmq" && pwd)/advanced.config"
die() { log "$*"; exit 1; }

dir=${RABBITMQ_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/event-driven/rabbitmq-cluster}
state="$dir/cluster.env"
if [ -f "$state" ]; then
  # shellcheck source=/dev/null
  . "$state"
else
  nodes=${RABBITMQ_CLUSTER_NODES:-3}
  name=${RABBITMQ_CLUSTER_NAME:-rmq-cluster}
  base_port=${RABBITMQ_CLUSTER_BASE_PORT:-5701}
  dist_base_port=${RABBITMQ_CLUSTER_DIST_BASE_PORT:-$((base_port + 20000))}
fi

# The Debian package's /usr/sbin wrappers switch to the rabbitmq user; the scripts behind them run
# as us.
bin=/usr/lib/rabbitmq/bin
if [ ! -x "$bin/rabbitmq-server" ]; then
  command -v rabbitmq-server >/dev/null 2>&1 ||
    die "rabbitmq-server is not installed (build-support/scripts/ensure-services.sh installs it)"
  bin=$(dirname "$(command -v rabbitmq-server)")
fi

# One HOME for the nodes and for rabbitmqctl: one Erlang cookie, $dir/.erlang.cookie. rabbitmqctl
# listens on a port the system picks, not in the 11 ports every other rabbitmqctl shares.
ctl_env=(env HOME="$dir" RABBITMQ_CONF_ENV_FILE=/dev/null
  RABBITMQ_CTL_DIST_PORT_MIN=0 RABBITMQ_CTL_DIST_PORT_MAX=0)
node_name() { echo "$name-$1@localhost"; }
node_dir() { echo "$dir/node-$1"; }
ctl() {
  local n=$1
  shift
  "${ctl_env[@]}" "$bin/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

pid_of() { cat "$(node_dir "$1")/pid" 2>/dev/null || true; }
# A node whose VM was killed is a zombie until whoever adopted it reaps it: that is not up.
is_up() {
  local pid state
  pid=$(pid_of "$1")
  [ -n "$pid" ] || return 1
  state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ "$state" != Z* ]]
}

kill_node() {
  local n=$1 pid
  is_up "$n" || die "$(node_name "$n") is not running"
  pid=$(pid_of "$n")
  log "killing $(node_name "$n") (pid $pid) with SIGKILL"
  kill -KILL "$pid"
  for _ in $(seq 1 100); do
    is_up "$n" || return 0
    sleep 0.1
  done
  die "$(node_name "$n") (pid $pid) is still there after SIGKILL"
}

urls() {
  local list=() n
  for n in $(seq 1 "$nodes"); do
    list+=("amqp://guest:guest@127.0.0.1:$((base_port + n - 1))/%2f")
  done
  (IFS=,; echo "${list[*]}")
}

check_node() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$nodes" ] ||
    die "no node '${1:-}': nodes are 1..$nodes"
}

# Starts node n's VM in the background, detached from this shell, and waits until it has booted
# (`rabbitmqctl wait` watches its pid file).
spawn_node() {
  local n=$1 node_dir
  node_dir=$(node_dir "$n")
  mkdir -p "$node_dir"
  rm -f "$node_dir/pid"
  printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$((base_port + n - 1))" >"$node_dir/rabbitmq.conf"
  # The stack's broker settings beyond rabbitmq.conf (the dead-letter worker's confirm timeout).
  cp "$advanced_config" "$node_dir/advanced.config"
  log "starting $(node_name "$n") (AMQP :$((base_port + n - 1)), distribution :$((dist_base_port + n - 1)))"
  (
    cd "$node_dir"
    "${ctl_env[@]}" \
      RABBITMQ_NODENAME="$(node_name "$n")" \
      RABBITMQ_NODE_PORT="$((base_port + n - 1))" \
      RABBITMQ_DIST_PORT="$((dist_base_port + n - 1))" \
      RABBITMQ_CONFIG_FILE="$node_dir/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$node_dir/advanced.config" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_MNESIA_BASE="$node_dir/mnesia" \
      RABBITMQ_LOG_BASE="$node_dir/log" \
      RABBITMQ_PID_FILE="$node_dir/pid" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      setsid "$bin/rabbitmq-server" </dev/null >>"$node_dir/server.log" 2>&1 &
  )
}

await_node() {
  local n=$1
  if ! ctl "$n" wait "$(node_dir "$n")/pid" --timeout 180 >/dev/null 2>&1; then
    tail -n 20 "$(node_dir "$n")/server.log" >&2 || true
    die "$(node_name "$n") did not start (its log: $(node_dir "$n")/log)"
  fi
}

# How many nodes node n sees running in its cluster (itself included).
running_seen_by() {
  ctl "$1" eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo 0
}

# Waits until node n sees every node whose VM is up (the whole cluster, when all run).
await_joined() {
  local n=$1 up m
  for _ in $(seq 1 90); do
    up=0
    for m in $(seq 1 "$nodes"); do is_up "$m" && up=$((up + 1)); done
    [ "$(running_seen_by "$n")" = "$up" ] && return 0
    sleep 2
  done
  die "$(node_name "$n") does not see the $up running nodes"
}

cmd_start() {
  local fresh=false n up=0 step output
  for n in $(seq 1 "$nodes"); do is_up "$n" && up=$((up + 1)); done
  if [ "$up" = "$nodes" ]; then
    log "already running in $dir"
    cmd_status
    return
  fi
  mkdir -p "$dir"
  if [ ! -f "$state" ]; then
    fresh=true
    printf 'nodes=%s\nname=%s\nbase_port=%s\ndist_base_port=%s\n' \
      "$nodes" "$name" "$base_port" "$dist_base_port" >"$state"
    echo '[].' >"$dir/enabled_plugins"
  fi
  # Boot in parallel, then join one by one.
  for n in $(seq 1 "$nodes"); do is_up "$n" || spawn_node "$n"; done
  for n in $(seq 1 "$nodes"); do await_node "$n"; done
  # A restarted cluster's nodes rejoin from their own data; a new one's are joined here.
  if $fresh; then
    for n in $(seq 2 "$nodes"); do
      log "joining $(node_name "$n") to $(node_name 1)"
      for step in stop_app reset "join_cluster $(node_name 1)" start_app; do
        # shellcheck disable=SC2086 # a step is a command and its argument
        output=$(ctl "$n" $step 2>&1) || die "rabbitmqctl $step on $(node_name "$n") failed: $output"
      done
    done
  fi
  await_joined 1
  log "cluster of $nodes nodes running"
  urls
}

# Stops node n: `rabbitmqctl stop` waits for its VM to exit; a VM still there then is killed.
stop_node() {
  local n=$1
  is_up "$n" || return 0
  log "stopping $(node_name "$n")"
  timeout 120 "${ctl_env[@]}" "$bin/rabbitmqctl" -n "$(node_name "$n")" stop "$(node_dir "$n")/pid" >/dev/null 2>&1 || true
  if is_up "$n"; then
    log "$(node_name "$n") did not stop"
    kill_node "$n"
  fi
}

cmd_stop() {
  local n
  [ -f "$state" ] || { log "no cluster in $dir"; return; }
  for n in $(seq "$nodes" -1 1); do stop_node "$n"; done
  if [ "${1:-}" = "--reset" ]; then
    log "removing $dir"
    rm -rf "$dir"
  fi
}

cmd_status() {
  [ -f "$state" ] || die "no cluster in $dir (start one with: $0 start)"
  local n first=""
  for n in $(seq 1 "$nodes"); do
    if is_up "$n"; then
      echo "$(node_name "$n") :$((base_port + n - 1)) running (pid $(pid_of "$n"))" >&2
      [ -n "$first" ] || first=$n
    else
      echo "$(node_name "$n") :$((base_port + n - 1)) stopped" >&2
    fi
  done
  if [ -n "$first" ]; then
    ctl "$first" eval '
      Names = fun(Nodes) -> lists:join(" ", [atom_to_list(N) || N <- lists:sort(Nodes)]) end,
      io:format("members: ~ts~nrunning: ~ts~n",
                [Names(rabbit_nodes:all()), Names(rabbit_nodes:all_running())]).' \
      2>/dev/null | grep -v '^ok$' >&2 || true
  fi
  urls
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  start) cmd_start ;;
  stop) cmd_stop "$@" ;;
  reset) cmd_stop --reset ;;
  status) cmd_status ;;
  kill-node) check_node "${1:-}"; kill_node "$1" ;;
  stop-node) check_node "${1:-}"; stop_node "$1" ;;
  start-node)
    check_node "${1:-}"
    is_up "$1" || spawn_node "$1"
    await_node "$1"
    await_joined "$1"
    log "$(node_name "$1") running and joined"
    ;;
  ctl) check_node "${1:-}"; n=$1; shift; ctl "$n" "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
