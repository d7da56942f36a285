#!/usr/bin/env bash
# Runs buf (lint, breaking, …) on proto/, installing it from npm into a cache on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."

BUF_VERSION=1.75.0
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/event-driven-tools/buf-$BUF_VERSION"
buf="$prefix/node_modules/.bin/buf"
if [ ! -x "$buf" ]; then
  echo "[buf] installing @bufbuild/buf@$BUF_VERSION from npm" >&2
  npm install --silent --no-audit --no-fund --prefix "$prefix" "@bufbuild/buf@$BUF_VERSION" >&2
fi
exec "$buf" "$@"
