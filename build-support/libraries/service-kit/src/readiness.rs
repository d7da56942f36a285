//! Readiness: health follows the dependencies (broker, database, a draining outbox), and the
//! outbox gauges are kept current on the way.

use std::{future::Future, time::Duration};

use messaging::Connected;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::metrics;

/// Keeps the outbox gauges current and says whether the oldest unpublished row is younger than
/// `max_age`: an outbox that is not draining makes the service unready.
pub(crate) fn watch_outbox(
    pool: PgPool,
    service: &'static str,
    max_age: Duration,
    stop: CancellationToken,
) -> (watch::Receiver<bool>, impl Future<Output = ()>) {
    let (sender, receiver) = watch::channel(true);
    let task = async move {
        let mut interval = tokio::time::interval(metrics::OUTBOX_STATS_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            // When the database is down, the database check already makes the service unready.
            let Ok(stats) = messaging::outbox::stats(&pool).await else {
                continue;
            };
            let age = stats.oldest_age.unwrap_or_default();
            ::metrics::gauge!("outbox_pending_rows", "service" => service)
                .set(stats.pending as f64);
            ::metrics::gauge!("outbox_oldest_age_seconds", "service" => service)
                .set(age.as_secs_f64());
            let fresh = age <= max_age;
            if sender.send_replace(fresh) != fresh && !fresh {
                tracing::warn!(?age, ?max_age, "the outbox is not draining");
            }
        }
    };
    (receiver, task)
}

/// Health follows the dependencies: SERVING while the broker topology is declared, the
/// publisher is up and the broker answers, the database answers (it was migrated before this
/// runs) and the outbox drains; NOT_SERVING otherwise.
pub(crate) async fn report(
    mut bus: watch::Receiver<Option<Connected>>,
    mut responsive: watch::Receiver<bool>,
    mut database_up: watch::Receiver<bool>,
    mut outbox_fresh: watch::Receiver<bool>,
    health: HealthReporter,
    grpc_service: &'static str,
    stop: CancellationToken,
) {
    loop {
        let ready = bus.borrow_and_update().is_some()
            && *responsive.borrow_and_update()
            && *database_up.borrow_and_update()
            && *outbox_fresh.borrow_and_update();
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", grpc_service] {
            health.set_service_status(name, status).await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = bus.changed() => if changed.is_err() { return },
            changed = responsive.changed() => if changed.is_err() { return },
            changed = database_up.changed() => if changed.is_err() { return },
            changed = outbox_fresh.changed() => if changed.is_err() { return },
        }
    }
}
