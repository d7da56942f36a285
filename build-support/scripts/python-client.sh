#!/usr/bin/env bash
# Generates the Python gRPC client of every service from proto/ with grpcio-tools, into
# target/python-client/ (or the directory given), inside a virtualenv cached under ~/.cache.
#
#   build-support/scripts/python-client.sh [OUT_DIR]
#   source "${XDG_CACHE_HOME:-$HOME/.cache}/event-driven-tools/python-venv/bin/activate"
#   PYTHONPATH=target/python-client python build-support/clients/python/readme_example.py   # the example of README.md
set -euo pipefail
cd "$(dirname "$0")/../.."

GRPCIO_TOOLS_VERSION=1.85.1
out="${1:-target/python-client}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/event-driven-tools/python-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import grpc_tools" 2>/dev/null; then
  echo "[python-client] installing grpcio-tools $GRPCIO_TOOLS_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "grpcio-tools==$GRPCIO_TOOLS_VERSION"
fi

mkdir -p "$out"
well_known=$("$venv/bin/python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mapfile -t protos < <(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
(cd proto && "$venv/bin/python" -m grpc_tools.protoc -I . -I "$well_known" \
  --python_out="../$out" --pyi_out="../$out" --grpc_python_out="../$out" "${protos[@]}")
# Packages for the generated modules: user/v1/…, order/v1/…, payment/v1/….
find "$out" -type d -exec touch {}/__init__.py \;
echo "[python-client] generated into $out" >&2
