#!/usr/bin/env bash
# The project's test command: makes sure PostgreSQL and RabbitMQ are running (starting or
# installing them if needed), then runs every test of the workspace against them (every test
# binary, even after one fails) and closes with one summary line.
#
#   build-support/scripts/test.sh [--chaos-long] [cargo test arguments…]
#
# The chaos ledger (build-support/testing/system-tests/tests/ledger) and the cluster ledger
# (tests/cluster) run a short round by default; --chaos-long runs each for three rounds at a
# higher rate, each fault under a longer load.
set -euo pipefail
cd "$(dirname "$0")/../.."

args=()
for arg in "$@"; do
  case "$arg" in
    --chaos-long) export LEDGER_LONG=1 CLUSTER_LONG=1 ;;
    *) args+=("$arg") ;;
  esac
done

build-support/scripts/ensure-services.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --all-targets --no-fail-fast ${args[@]+"${args[@]}"} 2>&1 | tee "$log" || status=$?
summary=$(awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed", passed, failed }' "$log")
echo
echo "tests: $summary"
exit "$status"
