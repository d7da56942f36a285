//! The ceiling's result: what the steps add up to, as a table or JSON.

use std::time::Duration;

use serde_json::json;

use super::{CeilingArgs, Step};

/// What the steps add up to.
pub(super) struct Totals {
    postgres: f64,
    broker: f64,
    ceiling: f64,
    hop_sum: Duration,
    idle_hop_sum: Duration,
}

pub(super) fn totals(steps: &[Step]) -> Totals {
    let (db, mq): (Vec<&Step>, Vec<&Step>) = steps
        .iter()
        .partition(|step| !step.name.starts_with("broker"));
    let per_second = |steps: &[&Step]| 1.0 / steps.iter().map(|s| s.cost()).sum::<f64>();
    Totals {
        postgres: per_second(&db),
        broker: per_second(&mq),
        ceiling: per_second(&steps.iter().collect::<Vec<_>>()),
        hop_sum: steps
            .iter()
            .map(|step| step.latency.alone.mul_f64(step.hops))
            .sum(),
        idle_hop_sum: steps
            .iter()
            .map(|step| step.latency.idle.mul_f64(step.hops))
            .sum(),
    }
}

pub(super) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

pub(super) fn table(args: &CeilingArgs, steps: &[Step]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ceiling: batch {}, {} workers per consumer, user transactions {} at once of {} calls",
        args.batch, args.workers, args.concurrency, args.user_batch
    );
    let _ = writeln!(
        out,
        "{:<40} {:>14} {:>8} {:>6} {:>12} {:>12}",
        "step", "full load", "/flow", "/path", "alone p50", "idle p50"
    );
    for step in steps {
        let _ = writeln!(
            out,
            "{:<40} {:>10.0} {:<3}/s {:>8} {:>6} {:>9.2} ms {:>9.2} ms",
            step.name,
            step.throughput,
            step.unit,
            step.per_flow,
            step.hops,
            millis(step.latency.alone),
            millis(step.latency.idle)
        );
    }
    let totals = totals(steps);
    let _ = writeln!(
        out,
        "postgres alone             {:>8.0} flows/s",
        totals.postgres
    );
    let _ = writeln!(
        out,
        "rabbitmq alone             {:>8.0} flows/s",
        totals.broker
    );
    let _ = writeln!(
        out,
        "ceiling (costs added)      {:>8.0} flows/s",
        totals.ceiling
    );
    let _ = writeln!(
        out,
        "latency sum on the path    {:>8.2} ms alone, {:.2} ms idle",
        millis(totals.hop_sum),
        millis(totals.idle_hop_sum)
    );
    out
}

pub(super) fn to_json(args: &CeilingArgs, steps: &[Step]) -> serde_json::Value {
    let totals = totals(steps);
    json!({
        "batch": args.batch,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "user_batch": args.user_batch,
        "steps": steps.iter().map(|step| json!({
            "name": step.name,
            "throughput_per_second": step.throughput,
            "unit": step.unit,
            "per_flow": step.per_flow,
            "latency_p50_ms": millis(step.latency.alone),
            "idle_latency_p50_ms": millis(step.latency.idle),
            "hops": step.hops,
        })).collect::<Vec<_>>(),
        "postgres_flows_per_second": totals.postgres,
        "broker_flows_per_second": totals.broker,
        "ceiling_flows_per_second": totals.ceiling,
        "hop_latency_sum_ms": millis(totals.hop_sum),
        "idle_hop_latency_sum_ms": millis(totals.idle_hop_sum),
        "idle_pace_ms": args.idle_pace_ms,
    })
}
