"""Helpers of bench.sh: free ports, CPU snapshots of a stack's processes, and the one table.

    bench_report.py ports N                 prints N free TCP ports of 127.0.0.1
    bench_report.py snapshot NAME=PID...    prints a JSON snapshot of CPU time (clock ticks)
    bench_report.py table DIR               prints the table from the files bench.sh wrote

The snapshot sums user+system time per group: the PostgreSQL server (every `postgres`
process), RabbitMQ (`beam.smp`), and each service by the pids given; the machine's busy time
comes from /proc/stat. The table compares this tree's runs with a baseline's when bench.sh ran
one (`baseline.json` in DIR): figures are medians over the pairs of runs, ratios this tree's
over the baseline's; then the open-loop sweep's steps (`sweep.json`), when it ran. Only the
standard library is used.
"""

import glob
import json
import os
import socket
import statistics
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


def free_ports(count):
    """Ports nothing listens on now: all bound at once, so they differ, then released."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def load(path):
    with open(path) as f:
        return json.load(f)


def runs(directory, kind, stack):
    """The JSON of one kind of run (idle, peak) by one build, in the order of the pairs."""
    paths = glob.glob(os.path.join(directory, f"{kind}-{stack}-*.json"))
    return [load(p) for p in sorted(paths, key=lambda p: int(p[: -len(".json")].rsplit("-", 1)[1]))]


class Build:
    """One build's idle and peak runs, and its CPU snapshots around its last peak run."""

    def __init__(self, directory, stack):
        self.idle = runs(directory, "idle", stack)
        self.peak = runs(directory, "peak", stack)
        self.cpu = (
            load(os.path.join(directory, f"cpu-before-{stack}.json")),
            load(os.path.join(directory, f"cpu-after-{stack}.json")),
        )

    def median(self, kind, figure):
        return statistics.median(figure(run) for run in getattr(self, kind))


def e2e_p50(run):
    return run["end_to_end_latency"]["p50_ms"]


def e2e_p99(run):
    return run["end_to_end_latency"]["p99_ms"]


def completed(run):
    return run["completed_per_second"]


def accepted(run):
    return run["accepted_per_second"]


def ratio(current, baseline):
    return current / baseline if baseline else float("nan")


def rejected(build):
    """The share of the peak runs' calls the service rejected as saturated, and what it was of."""
    calls = sum(run["calls"] for run in build.peak)
    refused = sum(run["rejected"] for run in build.peak)
    failed = sum(run["failed"] for run in build.peak)
    share = refused / calls if calls else 0.0
    return f"{100 * share:.1f}% ({refused} of {calls} calls, {failed} failed)"


def table(directory):
    path = lambda name: os.path.join(directory, name)
    current = Build(directory, "current")
    steady, ceiling, rss = load(path("steady.json")), load(path("ceiling.json")), load(path("rss.json"))
    slow, slow_gateway = load(path("slow.json")), load(path("slow-gateway.json"))
    compared = load(path("baseline.json")) if os.path.exists(path("baseline.json")) else None
    baseline = Build(directory, "baseline") if compared else None
    baseline_rss = load(path("rss-baseline.json")) if compared else {}

    ceiling_fps = ceiling["ceiling_flows_per_second"]
    hop_sum = ceiling["hop_latency_sum_ms"]
    idle_hop_sum = ceiling["idle_hop_latency_sum_ms"]
    idle_p50_ms = current.median("idle", e2e_p50)
    peak_fps = current.median("peak", completed)
    concurrency = current.peak[0]["concurrency"]
    rows = []

    def row(name, value, target="", verdict="", base="", ratios=""):
        rows.append((name, value, base, ratios, target, verdict))

    def meets(ok):
        return "meets" if ok else "SHORT"

    def side(kind, figure, unit, describe=None):
        """The baseline's median of a figure (as `unit` writes it, or as `describe` writes the
        baseline's runs), and this tree's over it, each pair's after."""
        if baseline is None:
            return {}
        base = baseline.median(kind, figure)
        pairs = [
            ratio(figure(mine), figure(theirs))
            for mine, theirs in zip(getattr(current, kind), getattr(baseline, kind))
        ]
        text = f"{ratio(current.median(kind, figure), base):.3f} x"
        if len(pairs) > 1:
            text += " (" + ", ".join(f"{r:.3f}" for r in pairs) + ")"
        return {"base": describe(baseline) if describe else unit(base), "ratios": text}

    row("ceiling (costs added)", f"{ceiling_fps:.0f} flows/s")
    row("  postgres alone", f"{ceiling['postgres_flows_per_second']:.0f} flows/s")
    row("  rabbitmq alone", f"{ceiling['broker_flows_per_second']:.0f} flows/s")
    flows = lambda value: f"{value:.0f} flows/s"
    against_ceiling = peak_fps / ceiling_fps
    targets, verdicts = [">= 0.5 x ceiling"], [meets(against_ceiling >= 0.5)]
    if baseline is not None:
        targets.append(">= 1.3 x baseline")
        verdicts.append(meets(ratio(peak_fps, baseline.median("peak", completed)) >= 1.3))
    row(
        f"completed flows/s at C={concurrency}",
        f"{flows(peak_fps)} ({against_ceiling:.2f} x ceiling)",
        "; ".join(targets),
        "; ".join(verdicts),
        **side("peak", completed, flows),
    )
    row(
        f"accepted calls/s at C={concurrency}",
        f"{current.median('peak', accepted):.0f} /s",
        **side("peak", accepted, lambda value: f"{value:.0f} /s"),
    )
    row(
        f"calls rejected at C={concurrency}",
        rejected(current),
        base=rejected(baseline) if baseline else "",
    )
    slow_ratio = slow["completed_per_second"] / peak_fps
    row(
        f"completed flows/s at C={slow['concurrency']}, gateway {slow_gateway['latency']}",
        f"{slow['completed_per_second']:.0f} flows/s ({slow_ratio:.2f} x without latency)",
        ">= 0.7 x without latency",
        meets(slow_ratio >= 0.7),
    )
    row(
        "latency sum on the path (ceiling)",
        f"{hop_sum:.1f} ms back to back; {idle_hop_sum:.1f} ms one every {ceiling['idle_pace_ms']} ms",
    )
    rate = current.idle[0].get("rate")
    milliseconds = lambda value: f"{value:.1f} ms"
    row(
        f"idle e2e p50 ({rate:.0f} calls/s)",
        milliseconds(idle_p50_ms),
        f"<= 2 x hop sum = {2 * hop_sum:.1f} ms; <= 4.0 ms",
        f"{meets(idle_p50_ms <= 2 * hop_sum)}; {meets(idle_p50_ms <= 4.0)}",
        **side("idle", e2e_p50, milliseconds),
    )
    if baseline is not None:
        row(
            f"idle e2e p99 ({rate:.0f} calls/s)",
            milliseconds(current.median("idle", e2e_p99)),
            **side("idle", e2e_p99, milliseconds),
        )

    def tail(p99, p50):
        return f"{p99:.0f} ms (p50 {p50:.0f} ms)"

    def peak_tail(build):
        return tail(build.median("peak", e2e_p99), build.median("peak", e2e_p50))

    peak_p99 = current.median("peak", e2e_p99)
    row(
        f"e2e p99 at C={concurrency} (saturated)",
        peak_tail(current),
        f"<= 10 x idle p50 = {10 * idle_p50_ms:.0f} ms",
        meets(peak_p99 <= 10 * idle_p50_ms),
        **side("peak", e2e_p99, None, peak_tail),
    )
    pushed = load(path("backpressure.json"))
    limit = load(path("backpressure-limit.json"))["backlog"]
    pushed_p99 = pushed["end_to_end_latency"]["p99_ms"]
    row(
        f"e2e p99 at C={pushed['concurrency']}, backlog limit {limit}",
        tail(pushed_p99, pushed["end_to_end_latency"]["p50_ms"]),
        f"<= 10 x idle p50 = {10 * idle_p50_ms:.0f} ms",
        meets(pushed_p99 <= 10 * idle_p50_ms),
    )
    refused = pushed["rejected"] / pushed["calls"] if pushed["calls"] else 0.0
    row(
        "  completed flows/s; calls refused",
        f"{pushed['completed_per_second']:.0f} flows/s; {100 * refused:.1f}% of {pushed['calls']} calls",
    )
    latency = steady["end_to_end_latency"]
    row(
        f"e2e p99 at {steady['rate']:.0f} calls/s (half the peak)",
        tail(latency["p99_ms"], latency["p50_ms"]),
        f"<= 10 x idle p50 = {10 * idle_p50_ms:.0f} ms",
        meets(latency["p99_ms"] <= 10 * idle_p50_ms),
    )
    rss = dict(rss)
    rss[f"payment-service (gateway {slow_gateway['latency']})"] = slow_gateway["rss_kib"]
    mebibytes = lambda kib: f"{kib / 1024:.1f} MiB"
    for service, kib in sorted(rss.items()):
        theirs = baseline_rss.get(service)
        row(
            f"peak RSS {service}",
            mebibytes(kib),
            "<= 64 MiB",
            meets(kib <= 64 * 1024),
            base=mebibytes(theirs) if theirs else "",
            ratios=f"{kib / theirs:.3f} x" if theirs else "",
        )
    sweep = load(path("sweep.json")) if os.path.exists(path("sweep.json")) else None
    swept = sweep["steps"] if sweep else []
    consistent = all(
        run["consistent"] for run in current.idle + current.peak + [steady, pushed, slow] + swept
    )
    base_consistent = baseline is None or all(run["consistent"] for run in baseline.idle + baseline.peak)
    row(
        "consistency (every run)",
        "OK" if consistent else "FAILED",
        "exactly once",
        meets(consistent and base_consistent),
        base="" if baseline is None else "OK" if base_consistent else "FAILED",
    )

    if baseline is None:
        columns = [(0, "<"), (1, "<"), (4, "<"), (5, "")]
    else:
        print(
            f"side by side: this tree (current) and the baseline {compared['baseline']} "
            f"({compared['commit'][:12]}), {compared['pairs']} pair(s) of idle and peak runs in turn;\n"
            "both builds' idle and peak figures are medians over the pairs, the ratio column "
            "current/baseline of the medians\n(each pair's in parentheses); the steady, "
            "slow-gateway and ceiling rows measure this tree alone\n"
        )
        heading = ("", "current (this tree)", f"baseline {compared['baseline']}", "current/baseline")
        rows.insert(0, heading + ("target", ""))
        columns = [(0, "<"), (1, "<"), (2, "<"), (3, "<"), (4, "<"), (5, "")]
    width = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        line = "  ".join(f"{r[i]:{align}{width[i] if align else ''}}" for i, align in columns)
        print(line.rstrip())

    print()
    cpu_table(concurrency, current, baseline)
    if sweep:
        print()
        sweep_table(sweep)
    return 0 if consistent and base_consistent else 1


def cpu_table(concurrency, current, baseline):
    """Where the CPU went during the (last) peak run of each build."""

    def shares(build):
        before, after = build.cpu
        total = after["total"] - before["total"]
        busy = after["busy"] - before["busy"]
        groups = {
            group: ticks - before["groups"].get(group, 0) for group, ticks in after["groups"].items()
        }
        groups = {group: 100 * ticks / total for group, ticks in groups.items()}
        return 100 * busy / total, groups, 100 * busy / total - sum(groups.values())

    busy, groups, other = shares(current)
    order = sorted(groups, key=lambda g: -groups[g])
    if baseline is None:
        print(f"CPU during the C={concurrency} run: {busy:.0f}% of both cores busy")
        for group in order:
            print(f"  {group:<16} {groups[group]:5.1f}% of the machine")
        print(f"  {'other (loadgen, kernel)':<16} {other:5.1f}% of the machine")
        return
    base_busy, base_groups, base_other = shares(baseline)
    label = f"CPU during the last C={concurrency} run of each, % of the machine"
    lines = [(label, "current", "baseline"), ("  both cores busy", f"{busy:.0f}%", f"{base_busy:.0f}%")]
    for group in order + sorted(set(base_groups) - set(groups)):
        mine, theirs = groups.get(group), base_groups.get(group)
        lines.append(
            (f"  {group}", "" if mine is None else f"{mine:.1f}%", "" if theirs is None else f"{theirs:.1f}%")
        )
    lines.append(("  other (loadgen, the idle stack, kernel)", f"{other:.1f}%", f"{base_other:.1f}%"))
    width = max(len(line[0]) for line in lines)
    for name, mine, theirs in lines:
        print(f"{name:<{width}}  {mine:>8}  {theirs:>8}")


def sweep_table(sweep):
    """The open-loop sweep, a step a line: what was offered, what completed, at what latency."""
    steps = sweep["steps"]
    print(
        f"open-loop sweep: {len(steps)} steps of {sweep['step_seconds']} s, rates offered as shares "
        f"of the peak ({sweep['peak_flows_per_second']:.0f} flows/s)"
    )
    print("  " + ", ".join(sweep["notes"]))
    print(f"{'offered/s':>10} {'of peak':>8} {'completed/s':>12} {'e2e p50':>10} {'e2e p99':>10} {'refused':>8} {'failed':>7}")
    for step in steps:
        latency = step["end_to_end_latency"]
        print(
            f"{step['rate']:>10.0f} {100 * step['share_of_peak']:>7.0f}% {step['completed_per_second']:>12.0f} "
            f"{latency['p50_ms']:>7.1f} ms {latency['p99_ms']:>7.1f} ms "
            f"{100 * step['rejected_share']:>7.1f}% {step['failed']:>7}"
        )


def main(argv):
    if len(argv) == 3 and argv[1] == "ports":
        print(" ".join(str(port) for port in free_ports(int(argv[2]))))
        return 0
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
