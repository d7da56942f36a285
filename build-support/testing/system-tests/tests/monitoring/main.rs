//! The shipped monitoring (build-support/monitoring) names only what the services export: every
//! metric the alert rules and the Grafana dashboard query is on the `/metrics` of a running
//! stack (the three service binaries, after flows that are paid, retried and dead-lettered),
//! and every metric exported there has a `# HELP` line.
//!
//! One test in its own binary: the services run as processes, and nothing else of the test
//! process records into what they export.

use std::collections::{BTreeMap, BTreeSet};

use messaging::topology::SUBSCRIPTIONS;
use proto::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use system_tests::{
    ledger::stack::Base,
    processes::{Service, ServiceProcess, binaries},
};

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../monitoring");
/// Series Prometheus makes itself rather than scraping them.
const PROMETHEUS_OWN: &[&str] = &["up"];

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported_with_its_help() {
    // Arrange: what the rules and the dashboard query.
    let rules = std::fs::read_to_string(format!("{MONITORING}/alerts.yml")).expect("alerts.yml");
    let rule_exprs: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("expr:"))
        .collect();
    assert!(
        rule_exprs.len() >= 10,
        "alerts.yml has its rules: {rule_exprs:?}"
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{MONITORING}/grafana/dashboards/event-driven.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut dashboard_exprs = Vec::new();
    collect_exprs(&dashboard, &mut dashboard_exprs);
    assert!(dashboard_exprs.len() >= 10, "the dashboard has its queries");
    let named: BTreeSet<String> = rule_exprs
        .iter()
        .copied()
        .chain(dashboard_exprs.iter().map(String::as_str))
        .flat_map(metric_names)
        .filter(|name| !PROMETHEUS_OWN.contains(&name.as_str()))
        .collect();

    // Arrange: the stack, as processes on the shared servers.
    let base = Base::new("monitoring", &test_support::postgres_server());
    let bin = binaries();
    let services: Vec<_> = Service::ALL
        .into_iter()
        .map(|service| {
            let mut env = base.service_env(service, &test_support::broker_url());
            // The sandbox's retry queues, which it removes at the end (the ledger's longer
            // chain would leave its extra queues on the shared broker).
            env.retain(|(name, _)| *name != "RETRY_DELAYS");
            env.push(("RETRY_DELAYS", test_support::TEST_RETRY_DELAYS.to_owned()));
            ServiceProcess::spawn(service, &bin, env, base.log(service.binary()))
        })
        .collect();
    for process in &services {
        process.wait_until_serving().await;
    }
    let user_service = services
        .iter()
        .find(|process| process.service == Service::User)
        .expect("the user service runs");

    // Act: a paid flow, a retried one, a refused call, and a dead letter on every queue.
    let mut users = UserServiceClient::new(user_service.channel());
    let id = uuid::Uuid::new_v4().simple();
    for email in [
        format!("ok-{id}@example.com"),
        format!("x+flaky-{id}@example.com"),
    ] {
        users
            .create_user(CreateUserRequest {
                email,
                name: "Monitored".into(),
                ..CreateUserRequest::default()
            })
            .await
            .expect("CreateUser succeeds");
    }
    let invalid = users
        .create_user(CreateUserRequest::default())
        .await
        .expect_err("an empty request is refused");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let amqp = test_support::broker().await;
    let topology = &base.sandbox.topology;
    for subscription in SUBSCRIPTIONS {
        let (_, payload, properties) = test_support::poison("")
            .into_iter()
            .next()
            .expect("a poison message");
        test_support::publish_raw(
            &amqp,
            topology,
            subscription.routing_key,
            &payload,
            properties,
        )
        .await;
    }

    // Assert: every name shows up on some service's /metrics (the queue gauges every 5 s).
    let mut missing = named.clone();
    let mut scrapes = Vec::new();
    for _ in 0..120 {
        scrapes.clear();
        for process in &services {
            scrapes.push(test_support::http_get(process.metrics_addr(), "/metrics").await);
        }
        let exported: BTreeSet<String> = scrapes.iter().flat_map(|s| sample_names(s)).collect();
        missing = named.difference(&exported).cloned().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "named by the alerts or the dashboard but not exported: {missing:?}"
    );
    for (process, scrape) in services.iter().zip(&scrapes) {
        let undescribed = families_without_help(scrape);
        assert!(
            undescribed.is_empty(),
            "{:?} exports metrics without # HELP: {undescribed:?}",
            process.service
        );
    }
}

#[test]
fn metric_names_are_the_selectors_of_a_query_not_its_functions_labels_or_keywords() {
    let expr = r#"sum by (consumer, le) (rate(a_total{code=~"x|y", kind="dead_letter"}[5m])) / on (service) max(b_seconds_bucket offset 5m) > 0 unless c"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["a_total", "b_seconds_bucket", "c"]);
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m])))"),
        BTreeSet::from(["x_bucket".to_owned()])
    );
}

#[test]
fn a_family_without_help_is_found_histograms_included() {
    let scrape = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n\
                  # TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 1\nh_seconds_sum 1\nh_seconds_count 1\n\
                  # HELP g G.\n# TYPE g gauge\ng 2\n";
    assert_eq!(families_without_help(scrape), ["h_seconds"]);
}

/// Every `expr` string in a Grafana dashboard.
fn collect_exprs(node: &serde_json::Value, into: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(fields) => {
            if let Some(serde_json::Value::String(expr)) = fields.get("expr") {
                into.push(expr.clone());
            }
            fields.values().for_each(|value| collect_exprs(value, into));
        }
        serde_json::Value::Array(values) => {
            values.iter().for_each(|value| collect_exprs(value, into))
        }
        _ => {}
    }
}

/// The metric names a PromQL expression selects: its identifiers once string literals, label
/// matchers, ranges and the label lists of `by`, `without`, `on`, `ignoring` and `group_*` are
/// gone, except functions (an identifier before `(`), aggregations and keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Followed by a list of labels, not of names.
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // The aggregations among them, which `by (…)` may part from their parenthesis.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    // Strings, label matchers and ranges out.
    let mut plain = String::new();
    let mut closing = None;
    for c in expr.chars() {
        match (closing, c) {
            (None, '"') => closing = Some('"'),
            (None, '{') => closing = Some('}'),
            (None, '[') => closing = Some(']'),
            (Some(end), c) if c == end => closing = None,
            (Some(_), _) => {}
            (None, c) => plain.push(c),
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut at = 0;
    let mut skip_list = false;
    while at < chars.len() {
        let c = chars[at];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = at;
            while at < chars.len()
                && (chars[at].is_ascii_alphanumeric() || "_:".contains(chars[at]))
            {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            let mut next = at;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                skip_list = true;
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_list {
            // The label list after by/on/…: up to its closing parenthesis.
            while at < chars.len() && chars[at] != ')' {
                at += 1;
            }
            skip_list = false;
        } else if c.is_ascii_digit() || c == '.' {
            // A number (or a duration after `offset`): its letters are not a name.
            while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '.') {
                at += 1;
            }
            continue;
        }
        at += 1;
    }
    names
}

/// The names of the samples in a Prometheus exposition.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric families in a Prometheus exposition that have samples but no `# HELP` line.
fn families_without_help(scrape: &str) -> Vec<String> {
    let mut helped = BTreeSet::new();
    let mut kinds = BTreeMap::new();
    for line in scrape.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("HELP"), Some(name)) => {
                helped.insert(name.to_owned());
            }
            (Some("#"), Some("TYPE"), Some(name)) => {
                kinds.insert(name.to_owned(), words.next().unwrap_or_default().to_owned());
            }
            _ => {}
        }
    }
    let family = |sample: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && kinds
                    .get(base)
                    .is_some_and(|kind| kind == "histogram" || kind == "summary")
            {
                return base.to_owned();
            }
        }
        sample.to_owned()
    };
    let families: BTreeSet<String> = sample_names(scrape).iter().map(|s| family(s)).collect();
    families.difference(&helped).cloned().collect()
}
