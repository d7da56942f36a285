#!/usr/bin/env bash
# Records the current proto/ as the published contract that CI's `buf breaking` compares against
# (build-support/libraries/proto/compat/baseline.binpb). Run it only after a deliberate, reviewed change:
# a compatible addition, or a breaking one released as a new package version (e.g. user.v2).
set -euo pipefail
cd "$(dirname "$0")/../.."
build-support/scripts/buf.sh build -o build-support/libraries/proto/compat/baseline.binpb
echo "baseline updated: build-support/libraries/proto/compat/baseline.binpb" >&2
