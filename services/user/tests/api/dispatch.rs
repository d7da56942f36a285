//! Immediate dispatch: rows a process committed go straight to its publisher; a row whose
//! process died before handing it over is published once by a relay when its lease is over.

use std::time::Duration;

use messaging::{Dispatcher, Envelope, EventContext, TraceParent, outbox};
use proto::user::v1::UserCreated;

use test_support::{
    assert_no_more_deliveries, broker_url_at, eventually, next_delivery, unused_port,
};

use crate::helpers::{Relay, TestApp, spawn_app_with_broker};

fn user_created() -> Envelope {
    Envelope::new(
        &UserCreated {
            user_id: uuid::Uuid::new_v4().to_string(),
            ..UserCreated::default()
        },
        &EventContext {
            correlation_id: "dispatch-test".into(),
            causation_id: "dispatch-test".into(),
            traceparent: TraceParent::new_root(),
        },
    )
}

/// Commits `envelope` to the app's outbox through `dispatcher`, leased to its process.
async fn commit(app: &TestApp, dispatcher: &Dispatcher, envelope: &Envelope) {
    let mut tx = app.db.begin().await.expect("begin");
    dispatcher
        .enqueue(&mut tx, std::slice::from_ref(envelope))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_dispatched_row_is_published_at_once_without_any_claim() {
    // Arrange: the app's own relay has no broker; this relay never claims (no notification
    // comes from a dispatched row, and its poll is an hour away).
    let app = spawn_app_with_broker(&broker_url_at(unused_port())).await;
    let mut events = app.capture("user_created").await;
    let relay = Relay::start(&app, |relay| {
        relay.with_poll_interval(Duration::from_secs(3600))
    });
    let envelope = user_created();

    // Act
    commit(&app, &relay.dispatcher, &envelope).await;
    relay.dispatcher.dispatch(vec![envelope.clone()]);

    // Assert: published once, its row deleted after the confirm.
    let delivery = next_delivery(&mut events).await;
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(envelope.message_id.to_string())
    );
    eventually(|| async { app.outbox_rows().await == 0 }).await;
    assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_row_its_process_never_dispatched_is_left_to_the_relays_until_its_lease_is_over() {
    // Arrange: a process commits a row and dies before handing it over.
    let app = spawn_app_with_broker(&broker_url_at(unused_port())).await;
    let mut events = app.capture("user_created").await;
    let died = Relay::start(&app, |relay| {
        relay.with_dispatch_lease(Duration::from_secs(1))
    });
    let envelope = user_created();
    commit(&app, &died.dispatcher, &envelope).await;
    died.stop().await;
    let other = Relay::start(&app, |relay| relay);
    commit(&app, &other.dispatcher, &user_created()).await;
    other.stop().await;

    // Act: another process's relay, looking for due rows often.
    let relay = Relay::start(&app, |relay| {
        relay.with_poll_interval(Duration::from_millis(100))
    });

    // Assert: the row whose short lease ended is published once and deleted; the row under
    // its (ten-second) lease is not claimed meanwhile.
    let delivery = next_delivery(&mut events).await;
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(envelope.message_id.to_string())
    );
    eventually(|| async { app.outbox_rows().await == 1 }).await;
    let mut tx = app.db.begin().await.expect("begin");
    assert!(
        outbox::claim_due(&mut tx, 10)
            .await
            .expect("claim")
            .is_empty(),
        "a leased row is not due"
    );
    drop(tx);
    relay.stop().await;
}

#[tokio::test]
async fn confirmed_rows_are_deleted_together_and_a_relay_that_stops_deletes_them_first() {
    // Arrange: a relay that gathers confirms for an hour, connected (it has published a first
    // row), and rows dispatched to it.
    let app = spawn_app_with_broker(&broker_url_at(unused_port())).await;
    let mut events = app.capture("user_created").await;
    let relay = Relay::start(&app, |relay| {
        relay
            .with_poll_interval(Duration::from_secs(3600))
            .with_remove_delay(Duration::from_secs(3600))
    });
    let first = user_created();
    commit(&app, &relay.dispatcher, &first).await;
    relay.dispatcher.dispatch(vec![first]);
    next_delivery(&mut events).await;
    let envelopes: Vec<_> = (0..20).map(|_| user_created()).collect();
    for envelope in &envelopes {
        commit(&app, &relay.dispatcher, envelope).await;
        relay.dispatcher.dispatch(vec![envelope.clone()]);
    }
    // Each published once, its row kept (leased) while the confirms are gathered.
    for _ in &envelopes {
        next_delivery(&mut events).await;
    }
    let ids: Vec<_> = envelopes
        .iter()
        .map(|envelope| envelope.message_id)
        .collect();
    let kept =
        sqlx::query_scalar::<_, i64>("select count(*) from outbox where message_id = any($1)")
            .bind(&ids)
            .fetch_one(&app.db)
            .await
            .expect("the outbox");
    assert_eq!(kept, 20);

    // Act
    relay.stop().await;

    // Assert: by the time the relay has stopped, every confirmed row is deleted: none is left
    // for a relay to publish again once its lease is over.
    assert_eq!(app.outbox_rows().await, 0);
    assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
}
