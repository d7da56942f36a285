//! `loadgen sweep`: open-loop steps of rising offered rate, from a share of a measured peak
//! throughput to past it, each for the same number of seconds; per step the offered rate,
//! completed flows per second, end-to-end latency, and the shares of calls refused
//! (`RESOURCE_EXHAUSTED`) and failed. Its JSON is what `loadgen plot` draws.

use serde_json::json;

use crate::{
    StackArgs, drive,
    plan::{Extent, Pace, Plan},
    report::Report,
};

#[derive(Debug, clap::Args)]
pub(crate) struct SweepArgs {
    /// The peak the steps are shares of: completed flows per second a run at full load
    /// measured (its `completed_per_second`).
    #[arg(long)]
    peak: f64,
    /// How many steps.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// The first step's rate, as a share of the peak.
    #[arg(long, default_value_t = 0.1)]
    from: f64,
    /// The last step's rate, as a share of the peak; the steps between are evenly spaced.
    #[arg(long, default_value_t = 1.2)]
    to: f64,
    /// How long each step offers its rate.
    #[arg(long, default_value_t = 5)]
    step_seconds: u64,
    /// What the stack runs with, e.g. `CREATE_USER_MAX_BACKLOG=2000`, kept in the JSON and
    /// written under the plot; repeat it for each.
    #[arg(long = "note", value_name = "TEXT")]
    notes: Vec<String>,
    #[command(flatten)]
    stack: StackArgs,
    /// Print the sweep as JSON (what `loadgen plot` reads).
    #[arg(long)]
    json: bool,
}

/// The rates of the steps, in calls per second: `steps` shares of `peak` evenly spaced from
/// `from` to `to`, each rounded to a whole call per second and at least one.
pub(crate) fn rates(peak: f64, steps: usize, from: f64, to: f64) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(
        peak.is_finite() && peak > 0.0,
        "--peak must be a positive number of flows per second, not {peak}"
    );
    anyhow::ensure!(steps >= 1, "--steps must be at least 1");
    anyhow::ensure!(
        from.is_finite() && to.is_finite() && 0.0 < from && from <= to,
        "--from and --to must be shares of the peak with 0 < from <= to, not {from} and {to}"
    );
    let share = |step: usize| match steps {
        1 => to,
        _ => from + (to - from) * step as f64 / (steps - 1) as f64,
    };
    Ok((0..steps)
        .map(|step| (peak * share(step)).round().max(1.0))
        .collect())
}

pub(crate) async fn run(args: SweepArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.step_seconds >= 1, "--step-seconds must be at least 1");
    let rates = rates(args.peak, args.steps, args.from, args.to)?;
    let mut steps = Vec::with_capacity(rates.len());
    for (number, &rate) in rates.iter().enumerate() {
        let plan = Plan {
            pace: Pace::open(rate)?,
            extent: Extent::Seconds(args.step_seconds),
            label: format!("step {}/{} at {rate}/s ", number + 1, rates.len()),
        };
        steps.push(drive::run(&args.stack, &plan).await?);
    }
    let sweep = to_json(args.peak, args.step_seconds, &args.notes, &steps);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sweep)?);
    } else {
        print!("{}", table(args.peak, &steps));
    }
    let inconsistent: Vec<_> = steps
        .iter()
        .filter(|step| !step.consistent())
        .map(|step| format!("{}/s", step.rate.unwrap_or_default()))
        .collect();
    anyhow::ensure!(
        inconsistent.is_empty(),
        "inconsistent: a flow was lost or duplicated in the step(s) at {}",
        inconsistent.join(", ")
    );
    Ok(())
}

/// The sweep as `loadgen plot` reads it: each step is its run's report, with the share of the
/// peak it offered.
pub(crate) fn to_json(
    peak: f64,
    step_seconds: u64,
    notes: &[String],
    steps: &[Report],
) -> serde_json::Value {
    let steps: Vec<_> = steps
        .iter()
        .map(|step| {
            let mut json = step.to_json();
            json["share_of_peak"] = json!(step.rate.unwrap_or_default() / peak);
            json
        })
        .collect();
    json!({
        "peak_flows_per_second": peak,
        "step_seconds": step_seconds,
        "notes": notes,
        "steps": steps,
    })
}

fn table(peak: f64, steps: &[Report]) -> String {
    let mut table = format!(
        "open-loop sweep against a peak of {peak:.0} flows/s\n\
         {:>10} {:>7} {:>12} {:>10} {:>10} {:>8} {:>7}\n",
        "offered/s", "of peak", "completed/s", "e2e p50", "e2e p99", "refused", "failed"
    );
    for step in steps {
        let rate = step.rate.unwrap_or_default();
        table.push_str(&format!(
            "{rate:>10.0} {:>6.0}% {:>12.0} {:>7.1} ms {:>7.1} ms {:>7.1}% {:>7}\n",
            100.0 * rate / peak,
            step.completed_per_second,
            step.end_to_end.p50,
            step.end_to_end.p99,
            100.0 * step.rejected_share(),
            step.failed,
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rates_are_even_shares_of_the_peak_from_the_first_to_the_last() {
        let rates = rates(1000.0, 8, 0.1, 1.2).expect("valid");

        assert_eq!(
            rates,
            [100.0, 257.0, 414.0, 571.0, 729.0, 886.0, 1043.0, 1200.0]
        );
    }

    #[test]
    fn a_rate_is_a_whole_call_per_second_and_at_least_one() {
        assert_eq!(rates(5.0, 3, 0.1, 1.0).expect("valid"), [1.0, 3.0, 5.0]);
        assert_eq!(rates(1093.4, 1, 0.1, 1.2).expect("valid"), [1312.0]);
    }

    #[test]
    fn a_sweep_without_a_peak_or_steps_or_with_shares_out_of_order_is_refused() {
        for (peak, steps, from, to) in [
            (0.0, 8, 0.1, 1.2),
            (f64::NAN, 8, 0.1, 1.2),
            (1000.0, 0, 0.1, 1.2),
            (1000.0, 8, 1.2, 0.1),
            (1000.0, 8, 0.0, 1.2),
            (1000.0, 8, 0.1, f64::INFINITY),
        ] {
            assert!(
                rates(peak, steps, from, to).is_err(),
                "{peak} {steps} {from} {to}"
            );
        }
    }
}
