"""Helpers of bench.sh: CPU snapshots of the stack's processes, and the one table.

    bench_report.py snapshot PID...         prints a JSON snapshot of CPU time (clock ticks)
    bench_report.py table DIR               prints the table from the files bench.sh wrote

The snapshot sums user+system time per group: the PostgreSQL server (every `postgres`
process), RabbitMQ (`beam.smp`), and each service by the pids given; the machine's busy time
comes from /proc/stat. Only the standard library is used.
"""

import json
import os
import sys

GROUPS = {"postgres": "postgres", "beam.smp": "rabbitmq"}


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    # The command name is in parentheses and may hold spaces; fields follow the last ')'.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, int(fields[11]) + int(fields[12])


def snapshot(service_pids):
    groups = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm, ticks = proc_ticks(entry)
        except (OSError, ValueError, IndexError):
            continue
        if entry in service_pids:
            groups[service_pids[entry]] = groups.get(service_pids[entry], 0) + ticks
        elif comm in GROUPS:
            groups[GROUPS[comm]] = groups.get(GROUPS[comm], 0) + ticks
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    return {"groups": groups, "busy": sum(cpu[:8]) - idle, "total": sum(cpu[:8])}


def load(path):
    with open(path) as f:
        return json.load(f)


def table(directory):
    path = lambda name: os.path.join(directory, name)
    idle, peak, steady = load(path("idle.json")), load(path("peak.json")), load(path("steady.json"))
    ceiling, rss = load(path("ceiling.json")), load(path("rss.json"))
    slow, slow_gateway = load(path("slow.json")), load(path("slow-gateway.json"))
    before, after = load(path("cpu-before.json")), load(path("cpu-after.json"))

    ceiling_fps = ceiling["ceiling_flows_per_second"]
    hop_sum = ceiling["hop_latency_sum_ms"]
    idle_p50 = idle["end_to_end_latency"]["p50_ms"]
    rows = []

    def row(name, value, target="", verdict=""):
        rows.append((name, value, target, verdict))

    def meets(ok):
        return "meets" if ok else "SHORT"

    row("ceiling (costs added)", f"{ceiling_fps:.0f} flows/s")
    row("  postgres alone", f"{ceiling['postgres_flows_per_second']:.0f} flows/s")
    row("  rabbitmq alone", f"{ceiling['broker_flows_per_second']:.0f} flows/s")
    ratio = peak["completed_per_second"] / ceiling_fps
    row(
        f"completed flows/s at C={peak['concurrency']}",
        f"{peak['completed_per_second']:.0f} flows/s ({ratio:.2f} x ceiling)",
        ">= 0.5 x ceiling",
        meets(ratio >= 0.5),
    )
    row(f"accepted calls/s at C={peak['concurrency']}", f"{peak['accepted_per_second']:.0f} /s")
    slow_ratio = slow["completed_per_second"] / peak["completed_per_second"]
    row(
        f"completed flows/s at C={slow['concurrency']}, gateway {slow_gateway['latency']}",
        f"{slow['completed_per_second']:.0f} flows/s ({slow_ratio:.2f} x without latency)",
        ">= 0.7 x without latency",
        meets(slow_ratio >= 0.7),
    )
    row("per-hop latency sum (ceiling)", f"{hop_sum:.1f} ms")
    rate = idle.get("rate")
    row(
        f"idle e2e p50 (C=1, {rate:.0f} calls/s)",
        f"{idle_p50:.1f} ms",
        f"<= 2 x hop sum = {2 * hop_sum:.1f} ms",
        meets(idle_p50 <= 2 * hop_sum),
    )
    def tail_row(label, run):
        latency = run["end_to_end_latency"]
        row(
            label,
            f"{latency['p99_ms']:.0f} ms (p50 {latency['p50_ms']:.0f} ms)",
            f"<= 10 x idle p50 = {10 * idle_p50:.0f} ms",
            meets(latency["p99_ms"] <= 10 * idle_p50),
        )

    tail_row(f"e2e p99 at C={peak['concurrency']} (saturated)", peak)
    tail_row(f"e2e p99 at {steady['rate']:.0f} calls/s (half the peak)", steady)
    rss = dict(rss)
    rss[f"payment-service (gateway {slow_gateway['latency']})"] = slow_gateway["rss_kib"]
    for service, kib in sorted(rss.items()):
        row(f"peak RSS {service}", f"{kib / 1024:.1f} MiB", "<= 64 MiB", meets(kib <= 64 * 1024))
    consistent = all(run["consistent"] for run in (idle, peak, steady, slow))
    row("consistency (every run)", "OK" if consistent else "FAILED", "exactly once", meets(consistent))

    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for name, value, target, verdict in rows:
        print(
            f"{name:<{width[0]}}  {value:<{width[1]}}  {target:<{width[2]}}  {verdict}".rstrip()
        )

    busy = after["busy"] - before["busy"]
    total = after["total"] - before["total"]
    print(f"\nCPU during the C={peak['concurrency']} run: {100 * busy / total:.0f}% of both cores busy")
    groups = after["groups"]
    accounted = 0
    for group in sorted(groups, key=lambda g: before["groups"].get(g, 0) - groups[g]):
        ticks = groups[group] - before["groups"].get(group, 0)
        accounted += ticks
        print(f"  {group:<16} {100 * ticks / total:5.1f}% of the machine")
    print(f"  {'other (loadgen, kernel)':<16} {100 * (busy - accounted) / total:5.1f}% of the machine")
    return 0 if consistent else 1


def main(argv):
    if len(argv) >= 2 and argv[1] == "snapshot":
        pids = dict(arg.split("=", 1)[::-1] for arg in argv[2:])
        print(json.dumps(snapshot(pids)))
        return 0
    if len(argv) == 3 and argv[1] == "table":
        return table(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
