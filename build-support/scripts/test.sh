#!/usr/bin/env bash
# The project's test command: makes sure PostgreSQL and RabbitMQ are running (starting or
# installing them if needed), then runs every test of the workspace against them.
set -euo pipefail
cd "$(dirname "$0")/../.."

build-support/scripts/ensure-services.sh
cargo test --workspace --locked "$@"
