//! What an operator sees: Prometheus metrics, the `healthcheck` subcommand, and readiness that
//! turns NOT_SERVING when the outbox stops draining.

use std::time::Duration;

use tokio::process::Command;

use test_support::{eventually, http_get, metric_value};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn metrics_count_grpc_calls_by_method_and_code_and_published_events() {
    // Arrange
    let app = spawn_app().await;

    // Act
    app.create_user("ada@example.com", "Ada")
        .await
        .expect("created");
    app.create_user("", "").await.expect_err("invalid");
    eventually(|| async { app.outbox_rows().await == 0 }).await;

    // Assert
    let method = "/user.v1.UserService/CreateUser";
    let labels = |code| {
        [
            ("service", "user-service"),
            ("method", method),
            ("code", code),
        ]
    };
    let metrics = http_get(app.metrics_addr, "/metrics").await;
    assert!(
        metric_value(&metrics, "grpc_server_requests_total", &labels("Ok")).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "grpc_server_requests_total",
            &labels("InvalidArgument")
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("grpc_server_request_duration_seconds_bucket"),
        "{metrics}"
    );
    let published = [
        ("service", "user-service"),
        ("type", "user.v1.UserCreated"),
        ("outcome", "acked"),
    ];
    assert!(
        metric_value(&metrics, "events_published_total", &published).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_healthcheck_subcommand_says_whether_the_service_is_serving() {
    let app = spawn_app().await;
    // Run without blocking: the service answers from this test's runtime.
    let healthcheck = |addr: String| async move {
        Command::new(env!("CARGO_BIN_EXE_user-service"))
            .args(["--grpc-addr", &addr, "healthcheck"])
            .output()
            .await
            .expect("user-service runs")
    };

    let serving = healthcheck(app.grpc_addr.to_string()).await;
    let nothing = healthcheck(format!("127.0.0.1:{}", test_support::unused_port())).await;

    assert!(serving.status.success(), "{serving:?}");
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");
    assert_eq!(nothing.status.code(), Some(1), "{nothing:?}");
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing answers"));
}

#[tokio::test]
async fn health_is_not_serving_while_the_outbox_does_not_drain() {
    // Arrange: a one-second limit, and nothing bound to user_created, so events cannot leave.
    let app = spawn_app_with(&test_support::broker_url(), |settings| {
        settings.outbox_max_age = Duration::from_secs(1);
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    app.route_user_created(false).await;

    // Act
    app.create_user("ada@example.com", "Ada")
        .await
        .expect("created");

    // Assert: unready while the event is stuck, ready again once it drains.
    app.wait_for_health(ServingStatus::NotServing).await;
    let metrics = http_get(app.metrics_addr, "/metrics").await;
    assert!(
        metric_value(
            &metrics,
            "outbox_pending_rows",
            &[("service", "user-service")]
        )
        .is_some(),
        "{metrics}"
    );
    app.route_user_created(true).await;
    eventually(|| async { app.outbox_rows().await == 0 }).await;
    app.wait_for_health(ServingStatus::Serving).await;
}
