//! `loadgen plot`: a sweep's latency–throughput curve as an SVG: end-to-end p50 and p99
//! (log scale) against completed flows per second, one point per step labelled with the share
//! of the peak it offered, the peak as a vertical line, and the sweep's notes (what the stack
//! ran with) under the chart. Text is left to the SVG viewer's fonts: nothing is loaded here.

use std::path::PathBuf;

use anyhow::Context;
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Debug, clap::Args)]
pub(crate) struct PlotArgs {
    /// The sweep's JSON (`loadgen sweep --json`).
    sweep: PathBuf,
    /// The SVG to write.
    #[arg(long, short = 'o')]
    output: PathBuf,
}

/// What the plot reads of `loadgen sweep --json`.
#[derive(Debug, Deserialize)]
pub(crate) struct Sweep {
    peak_flows_per_second: f64,
    step_seconds: u64,
    #[serde(default)]
    notes: Vec<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
struct Step {
    share_of_peak: f64,
    completed_per_second: f64,
    rejected_share: f64,
    end_to_end_latency: Latency,
}

#[derive(Debug, Deserialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
}

const WIDTH: u32 = 960;
const CHART_HEIGHT: u32 = 560;
const NOTE_LINE: u32 = 20;
/// Notes are joined on lines of about this many characters.
const NOTE_CHARACTERS: usize = 120;
const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(214, 39, 40);

pub(crate) fn run(args: PlotArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.sweep)
        .with_context(|| format!("cannot read {}", args.sweep.display()))?;
    let sweep: Sweep = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a sweep's JSON", args.sweep.display()))?;
    let svg = render(&sweep)?;
    std::fs::write(&args.output, svg)
        .with_context(|| format!("cannot write {}", args.output.display()))
}

/// The SVG of a sweep. A step that completed no flow has no latency and is left out.
pub(crate) fn render(sweep: &Sweep) -> anyhow::Result<String> {
    let steps: Vec<&Step> = sweep
        .steps
        .iter()
        .filter(|step| step.end_to_end_latency.p50_ms > 0.0 && step.completed_per_second > 0.0)
        .collect();
    anyhow::ensure!(
        !steps.is_empty(),
        "the sweep has no step that completed a flow"
    );
    let p50: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (s.completed_per_second, s.end_to_end_latency.p50_ms))
        .collect();
    let p99: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| {
            (
                s.completed_per_second,
                s.end_to_end_latency.p99_ms.max(s.end_to_end_latency.p50_ms),
            )
        })
        .collect();
    let x_max = 1.1
        * p50
            .iter()
            .map(|p| p.0)
            .fold(sweep.peak_flows_per_second, f64::max);
    let y_min = decade_below(p50.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) / 1.2);
    let y_max = one_two_five_above(p99.iter().map(|p| p.1).fold(0.0, f64::max) * 1.2);

    let lines = note_lines(sweep);
    let height = CHART_HEIGHT + NOTE_LINE * (lines.len() as u32 + 1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (upper, lower) = root.split_vertically(CHART_HEIGHT);
        let mut chart = ChartBuilder::on(&upper)
            .caption(
                "End-to-end latency against throughput (open loop)",
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("completed flows/s")
            .y_desc("end-to-end latency (ms, log scale)")
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13))
            .y_labels(20)
            .y_label_formatter(&one_two_five)
            .x_label_formatter(&|flows| format!("{flows:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;

        let peak = sweep.peak_flows_per_second;
        chart
            .draw_series(LineSeries::new(
                [(peak, y_min), (peak, y_max)],
                BLACK.mix(0.4).stroke_width(1),
            ))?
            .label(format!("peak at full load: {peak:.0} flows/s"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
        for (name, points, colour) in [("p50", &p50, P50), ("p99", &p99, P99)] {
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .iter()
                    .map(|&point| Circle::new(point, 4, colour.filled())),
            )?;
        }
        // Each step's offered rate as a share of the peak, over its p99 point.
        chart.draw_series(steps.iter().zip(&p99).map(|(step, &point)| {
            EmptyElement::at(point)
                + Text::new(
                    format!("{:.0}%", 100.0 * step.share_of_peak),
                    (-12, -20),
                    ("sans-serif", 12).into_font().color(&BLACK.mix(0.7)),
                )
        }))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .draw()?;

        for (number, line) in lines.iter().enumerate() {
            lower.draw(&Text::new(
                line.as_str(),
                (24, (NOTE_LINE * number as u32) as i32 + 4),
                ("sans-serif", 14).into_font().color(&BLACK.mix(0.8)),
            ))?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// A log axis's label: 1, 2 and 5 times a power of ten are written, the lines between are
/// left without one.
fn one_two_five(ms: &f64) -> String {
    let mantissa = ms / 10f64.powf(ms.log10().floor());
    match [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6 * m)
    {
        true => format!("{ms}"),
        false => String::new(),
    }
}

/// The power of ten at most `ms`: where the log axis starts (plotters marks a log axis from
/// a power of ten on).
fn decade_below(ms: f64) -> f64 {
    10f64.powf(ms.log10().floor())
}

/// The smallest 1, 2 or 5 times a power of ten at least `ms`: where the log axis ends.
fn one_two_five_above(ms: f64) -> f64 {
    let decade = 10f64.powf(ms.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&bound| bound >= ms)
        .unwrap_or(10.0 * decade)
}

/// What is written under the chart: how the sweep ran, then its notes joined on lines.
fn note_lines(sweep: &Sweep) -> Vec<String> {
    let mut lines = vec![format!(
        "{} open-loop steps of {} s; over each point, the rate offered as a share of the peak",
        sweep.steps.len(),
        sweep.step_seconds
    )];
    let refused: Vec<String> = sweep
        .steps
        .iter()
        .filter(|step| step.rejected_share > 0.0)
        .map(|step| {
            format!(
                "{:.1}% at {:.0}%",
                100.0 * step.rejected_share,
                100.0 * step.share_of_peak
            )
        })
        .collect();
    lines.push(match refused.is_empty() {
        true => "no call refused (RESOURCE_EXHAUSTED)".to_owned(),
        false => format!("calls refused (RESOURCE_EXHAUSTED): {}", refused.join(", ")),
    });
    let mut line = String::new();
    for note in &sweep.notes {
        if !line.is_empty() && line.len() + note.len() + 2 > NOTE_CHARACTERS {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(note);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{
        plan::{Observations, Pace},
        report::Report,
        sweep,
    };

    /// A step of `rate` calls/s whose flows completed at `completed` per second over a
    /// second, with latencies from `fastest` ms up.
    fn step(rate: f64, completed: u64, fastest: u64) -> Report {
        let start = Instant::now();
        let mut observations = Observations::default();
        for user in 0..completed {
            let id = user.to_string();
            observations.sent.insert(id.clone(), start);
            observations.completed.insert(
                id,
                vec![start + Duration::from_millis(fastest + user * 1000 / completed)],
            );
        }
        Report::new(
            &observations,
            start,
            Duration::from_secs(1),
            Pace::Open { rate },
        )
    }

    #[test]
    fn a_sweep_is_drawn_as_an_svg_with_a_curve_per_percentile_and_the_axes_named() {
        // Arrange: a sweep's JSON as `loadgen sweep` writes it, read as `loadgen plot` does.
        let steps = [
            step(100.0, 100, 10),
            step(500.0, 500, 20),
            step(900.0, 700, 400),
        ];
        let json = sweep::to_json(
            1000.0,
            5,
            &[
                "CREATE_USER_MAX_BACKLOG=2000".to_owned(),
                "QUEUE_TYPE=quorum".to_owned(),
            ],
            &steps,
        );
        let sweep: Sweep = serde_json::from_value(json).expect("a sweep's JSON");

        // Act
        let svg = render(&sweep).expect("the sweep is drawn");

        // Assert: valid XML, a polyline of three points in each series' colour, the texts.
        let document = roxmltree::Document::parse(&svg).expect("the SVG is valid XML");
        let root = document.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let curve = |colour: RGBColor| {
            let stroke = format!("#{:02X}{:02X}{:02X}", colour.0, colour.1, colour.2);
            root.descendants()
                .filter(|node| node.has_tag_name("polyline"))
                .filter(|node| {
                    node.attribute("stroke")
                        .is_some_and(|s| s.eq_ignore_ascii_case(&stroke))
                })
                .map(|node| {
                    node.attribute("points")
                        .unwrap_or_default()
                        .split_whitespace()
                        .count()
                })
                .max()
        };
        assert_eq!(curve(P50), Some(3), "{svg}");
        assert_eq!(curve(P99), Some(3), "{svg}");
        let texts: Vec<String> = root
            .descendants()
            .filter(|node| node.has_tag_name("text"))
            .map(|node| node.text().unwrap_or_default().trim().to_owned())
            .collect();
        for expected in [
            "completed flows/s",
            "end-to-end latency (ms, log scale)",
            "p50",
            "p99",
            "peak at full load: 1000 flows/s",
            "10%",
            "90%",
            "CREATE_USER_MAX_BACKLOG=2000, QUEUE_TYPE=quorum",
        ] {
            assert!(
                texts.iter().any(|text| text == expected),
                "no text {expected:?} in {texts:?}"
            );
        }
    }

    #[test]
    fn a_sweep_that_completed_no_flow_cannot_be_drawn() {
        let json = sweep::to_json(1000.0, 5, &[], &[step(100.0, 0, 10)]);
        let sweep: Sweep = serde_json::from_value(json).expect("a sweep's JSON");

        let error = render(&sweep).expect_err("nothing to draw");

        assert!(
            error.to_string().contains("no step that completed a flow"),
            "{error}"
        );
    }
}
