#!/usr/bin/env bash
# Checks the shipped monitoring (build-support/monitoring): the alert rules parse and pass their
# unit tests, Prometheus' configuration is valid, and every query of the Grafana dashboard is
# valid PromQL. Needs promtool (Debian package `prometheus`; installed if missing and possible).
set -euo pipefail
cd "$(dirname "$0")/../monitoring"

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian package prometheus)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

promtool check rules alerts.yml
promtool test rules alerts.test.yml
# The configuration names the rules where the container mounts them.
sed "s#/etc/prometheus/alerts.yml#$PWD/alerts.yml#" prometheus.yml >"$work/prometheus.yml"
promtool check config --syntax-only "$work/prometheus.yml"
# The dashboard's queries as recording rules, which promtool parses.
python3 - grafana/dashboards/event-driven.json >"$work/dashboard-rules.yml" <<'PY'
import json, sys
exprs = []
def walk(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            exprs.append(node["expr"])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)
walk(json.load(open(sys.argv[1])))
if not exprs:
    sys.exit("the dashboard has no query")
print("groups:\n  - name: dashboard\n    rules:")
for i, expr in enumerate(exprs):
    print(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}")
PY
promtool check rules "$work/dashboard-rules.yml"
