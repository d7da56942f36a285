//! The order service's consumers: one order per user, settled by its payment, whatever the
//! broker redelivers.

use std::time::Duration;

use lapin::{BasicProperties, types::AMQPValue};
use messaging::topology::ORDER_SERVICE_USER_CREATED;
use prost::Message;
use proto::{
    order::v1::{OrderCreated, OrderStatus},
    payment::v1::PaymentStatus,
    user::v1::Plan,
};
use test_support::{assert_no_more_deliveries, eventually, next_delivery};

use crate::helpers::{
    payment_processed, spawn_app, user_created, user_created_without_uuid, user_id,
};

#[tokio::test]
async fn user_created_creates_one_pending_order_priced_by_plan_and_announces_it() {
    // Arrange
    let app = spawn_app().await;
    let mut events = app.capture("order_created").await;
    let envelope = user_created("ada@example.com", Plan::Pro);

    // Act
    app.publish(&envelope).await;

    // Assert: the order, through the read API.
    let order = app.order_of(&user_id(&envelope)).await;
    assert_eq!(order.status(), OrderStatus::PendingPayment);
    assert_eq!(order.plan(), Plan::Pro);
    assert_eq!((order.amount_minor, order.currency.as_str()), (2999, "USD"));

    // Assert: the event, carrying what the payment service needs and the flow's ids.
    let delivery = next_delivery(&mut events).await;
    let event = OrderCreated::decode(delivery.data.as_slice()).expect("an OrderCreated");
    assert_eq!(event.order_id, order.order_id);
    assert_eq!(event.user_id, order.user_id);
    assert_eq!(event.user_email, "ada@example.com");
    assert_eq!((event.amount_minor, event.currency.as_str()), (2999, "USD"));
    let properties = &delivery.properties;
    assert_eq!(
        properties.correlation_id().as_ref().map(|c| c.to_string()),
        Some(envelope.correlation_id.clone()),
        "the flow keeps its correlation id"
    );
    let causation = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("causation_id").cloned());
    assert_eq!(
        causation,
        Some(AMQPValue::LongString(
            envelope.message_id.to_string().into()
        )),
        "order_created is caused by the user_created message"
    );
    assert_eq!(
        properties.app_id().as_ref().map(|a| a.as_str()),
        Some("order-service")
    );
    assert_eq!(
        properties.kind().as_ref().map(|t| t.as_str()),
        Some("order.v1.OrderCreated")
    );
}

#[tokio::test]
async fn every_plan_has_its_price() {
    let app = spawn_app().await;
    let cases = [
        (Plan::Unspecified, 999),
        (Plan::Basic, 999),
        (Plan::Pro, 2999),
        (Plan::Enterprise, 9999),
    ];

    for (plan, price) in cases {
        let envelope = user_created("ada@example.com", plan);
        app.publish(&envelope).await;
        let order = app.order_of(&user_id(&envelope)).await;
        assert_eq!(order.amount_minor, price, "{plan:?}");
    }
}

#[tokio::test]
async fn the_same_user_created_delivered_twice_gives_one_order() {
    let app = spawn_app().await;
    let mut events = app.capture("order_created").await;
    let envelope = user_created("ada@example.com", Plan::Basic);

    app.publish(&envelope).await;
    app.order_of(&user_id(&envelope)).await;
    app.publish(&envelope).await;

    next_delivery(&mut events).await;
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
    assert_eq!(app.order_rows().await, 1);
}

#[tokio::test]
async fn the_same_user_created_delivered_twice_at_once_gives_one_order() {
    // Arrange: many users, each event twice in a row, so copies land on parallel workers.
    let app = spawn_app().await;
    let mut events = app.capture("order_created").await;
    let envelopes: Vec<_> = (0..40)
        .map(|i| user_created(&format!("user{i}@example.com"), Plan::Basic))
        .collect();

    // Act
    let publisher = test_support::publisher(&app.amqp, app.topology(), "test").await;
    let doubled: Vec<_> = envelopes
        .iter()
        .flat_map(|e| [e.clone(), e.clone()])
        .collect();
    let outcomes = publisher.publish_batch(&doubled).await;
    assert!(outcomes.iter().all(Result::is_ok));

    // Assert
    for _ in &envelopes {
        next_delivery(&mut events).await;
    }
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
    assert_eq!(app.order_rows().await, 40);
    let inbox: i64 = sqlx::query_scalar("select count(*) from processed_messages")
        .fetch_one(&app.db)
        .await
        .expect("count inbox");
    assert_eq!(inbox, 40);
}

#[tokio::test]
async fn a_backlog_is_applied_in_batches_and_a_poisoned_message_fails_alone() {
    // Arrange: a backlog waiting while no instance consumes: 30 users, one of them twice, and a
    // message the handler must refuse (its user_id is not a UUID) in the middle.
    let mut app = spawn_app().await;
    let mut events = app.capture("order_created").await;
    app.stop().await;
    let users: Vec<_> = (0..30)
        .map(|i| user_created(&format!("user{i}@example.com"), Plan::Basic))
        .collect();
    let poison = user_created_without_uuid();
    let backlog: Vec<_> = users[..15]
        .iter()
        .chain([&poison, &users[3]])
        .chain(&users[15..])
        .collect();
    for envelope in backlog {
        app.publish(envelope).await;
    }

    // Act
    let _instance = app.start_another_instance().await;

    // Assert: every user's order once, and one event each.
    let dlq = app
        .topology()
        .dead_letter_queue(&ORDER_SERVICE_USER_CREATED);
    eventually(|| async { test_support::queue_depth(&app.amqp, &dlq).await == 1 }).await;
    for _ in &users {
        next_delivery(&mut events).await;
    }
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
    assert_eq!(app.order_rows().await, 30);

    // Assert: only the poison was dead-lettered.
    let dead = test_support::take_message(&app.amqp, &dlq)
        .await
        .expect("a dead letter");
    assert_eq!(
        dead.properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(poison.message_id.to_string())
    );

    // Assert: in batches: the rows of one transaction share its start time.
    let (messages, transactions): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct processed_at) from processed_messages")
            .fetch_one(&app.db)
            .await
            .expect("count inbox");
    assert_eq!(messages, 30);
    assert!(
        transactions < messages / 2,
        "{messages} messages in {transactions} transactions"
    );
}

#[tokio::test]
async fn a_backlog_of_payment_processed_settles_each_order_by_its_first_payment_and_fails_only_unknown_orders_and_malformed_messages()
 {
    // Arrange: 20 users' orders, then a backlog waiting while no instance consumes: each
    // order's payment, for some a second one contradicting it right after, and in the middle one
    // for an unknown order and one whose order id is no UUID.
    let mut app = spawn_app().await;
    let users: Vec<_> = (0..20)
        .map(|i| user_created(&format!("user{i}@example.com"), Plan::Basic))
        .collect();
    for envelope in &users {
        app.publish(envelope).await;
    }
    let mut orders = Vec::new();
    for envelope in &users {
        orders.push(app.order_of(&user_id(envelope)).await);
    }
    app.stop().await;
    let first_status = |i: usize| {
        if i.is_multiple_of(2) {
            PaymentStatus::Succeeded
        } else {
            PaymentStatus::Declined
        }
    };
    let mut unknown = orders[0].clone();
    unknown.order_id = uuid::Uuid::now_v7().to_string();
    let mut malformed = orders[0].clone();
    malformed.order_id = "not-a-uuid".into();
    let poison = [
        payment_processed(&unknown, PaymentStatus::Succeeded),
        payment_processed(&malformed, PaymentStatus::Succeeded),
    ];
    let mut backlog = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        backlog.push(payment_processed(order, first_status(i)));
        if i.is_multiple_of(5) {
            backlog.push(payment_processed(order, first_status(i + 1)));
        }
        if i == 10 {
            backlog.extend(poison.iter().cloned());
        }
    }
    for envelope in &backlog {
        app.publish(envelope).await;
    }

    // Act
    let _instance = app.start_another_instance().await;

    // Assert: every order settled by its first payment.
    let dlq = app
        .topology()
        .dead_letter_queue(&messaging::topology::ORDER_SERVICE_PAYMENT_PROCESSED);
    eventually(|| async { test_support::queue_depth(&app.amqp, &dlq).await == 2 }).await;
    let status_of = |order_id: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, String>("select status from orders where order_id = $1::uuid")
                .bind(order_id)
                .fetch_one(&db)
                .await
                .expect("the order")
        }
    };
    let last = orders.last().expect("orders").order_id.clone();
    eventually(|| async { status_of(last.clone()).await != "pending_payment" }).await;
    for (i, order) in orders.iter().enumerate() {
        let expected = match first_status(i) {
            PaymentStatus::Succeeded => "paid",
            _ => "payment_declined",
        };
        assert_eq!(
            status_of(order.order_id.clone()).await,
            expected,
            "order {i}"
        );
    }

    // Assert: only the two poisoned messages were dead-lettered.
    let mut dead = Vec::new();
    for _ in 0..2 {
        let message = test_support::take_message(&app.amqp, &dlq)
            .await
            .expect("a dead letter");
        dead.push(
            message
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .expect("a message id"),
        );
    }
    dead.sort();
    let mut expected: Vec<_> = poison.iter().map(|e| e.message_id.to_string()).collect();
    expected.sort();
    assert_eq!(dead, expected);
}

#[tokio::test]
async fn a_second_user_created_for_the_same_user_with_a_new_message_id_gives_one_order() {
    let app = spawn_app().await;
    let mut events = app.capture("order_created").await;
    let first = user_created("ada@example.com", Plan::Basic);
    let mut second = first.clone();
    second.message_id = uuid::Uuid::now_v7();

    app.publish(&first).await;
    app.order_of(&user_id(&first)).await;
    app.publish(&second).await;

    next_delivery(&mut events).await;
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
    assert_eq!(app.order_rows().await, 1);
}

#[tokio::test]
async fn payment_processed_marks_the_order_paid_or_declined_once() {
    // Arrange
    let app = spawn_app().await;
    let paid = user_created("paid@example.com", Plan::Basic);
    let declined = user_created("declined@example.com", Plan::Basic);
    app.publish(&paid).await;
    app.publish(&declined).await;
    let paid = app.order_of(&user_id(&paid)).await;
    let declined = app.order_of(&user_id(&declined)).await;

    // Act
    app.publish(&payment_processed(&paid, PaymentStatus::Succeeded))
        .await;
    app.publish(&payment_processed(&declined, PaymentStatus::Declined))
        .await;

    // Assert
    eventually(|| async { app.get_order(&paid.order_id).await.status() == OrderStatus::Paid })
        .await;
    eventually(|| async {
        app.get_order(&declined.order_id).await.status() == OrderStatus::PaymentDeclined
    })
    .await;
    let settled = app.get_order(&paid.order_id).await;
    let seconds_and_nanos = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(seconds_and_nanos(settled.update_time) > seconds_and_nanos(settled.create_time));

    // Act: a late, contradicting payment_processed for an order already settled.
    app.publish(&payment_processed(&paid, PaymentStatus::Declined))
        .await;

    // Assert: settled once; the late event is consumed without effect.
    let queue = app
        .topology()
        .queue(&messaging::topology::ORDER_SERVICE_PAYMENT_PROCESSED);
    eventually(|| async { test_support::queue_depth(&app.amqp, &queue).await == 0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get_order(&paid.order_id).await.status(),
        OrderStatus::Paid
    );
    assert_eq!(
        test_support::dead_letters(&app.amqp, app.topology()).await,
        0
    );
}

#[tokio::test]
async fn undecodable_messages_go_to_the_dead_letter_queue_and_the_consumer_goes_on() {
    // Arrange
    let app = spawn_app().await;
    let valid = user_created("ada@example.com", Plan::Basic);
    let typed = |message_id: Option<&str>, kind: &str| {
        let properties = BasicProperties::default().with_type(kind.into());
        match message_id {
            Some(id) => properties.with_message_id(id.into()),
            None => properties,
        }
    };
    let id = uuid::Uuid::new_v4().to_string();
    let poison = [
        (
            b"\xff\xfe not protobuf".to_vec(),
            typed(Some(&id), "user.v1.UserCreated"),
        ),
        (
            Vec::new(),
            typed(Some(&uuid::Uuid::new_v4().to_string()), "user.v1.Wrong"),
        ),
        (valid.payload.clone(), typed(None, "user.v1.UserCreated")),
        (
            valid.payload.clone(),
            typed(Some("not-a-uuid"), "user.v1.UserCreated"),
        ),
    ];

    // Act
    for (payload, properties) in poison {
        test_support::publish_raw(
            &app.amqp,
            app.topology(),
            "user_created",
            &payload,
            properties,
        )
        .await;
    }
    app.publish(&valid).await;

    // Assert
    app.order_of(&user_id(&valid)).await;
    let dlq = app
        .topology()
        .dead_letter_queue(&ORDER_SERVICE_USER_CREATED);
    eventually(|| async { test_support::queue_depth(&app.amqp, &dlq).await == 4 }).await;
    assert_eq!(app.order_rows().await, 1);
}

#[tokio::test]
async fn two_instances_on_the_same_queues_apply_every_event_once() {
    // Arrange
    let app = spawn_app().await;
    let _second = app.start_another_instance().await;
    let mut events = app.capture("order_created").await;
    let envelopes: Vec<_> = (0..60)
        .map(|i| user_created(&format!("user{i}@example.com"), Plan::Basic))
        .collect();

    // Act: every event twice.
    for envelope in envelopes.iter().chain(envelopes.iter()) {
        app.publish(envelope).await;
    }

    // Assert
    for _ in &envelopes {
        next_delivery(&mut events).await;
    }
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
    assert_eq!(app.order_rows().await, 60);
    assert_eq!(
        test_support::dead_letters(&app.amqp, app.topology()).await,
        0
    );
}

#[tokio::test]
async fn consumption_shows_in_the_metrics() {
    // Arrange
    let app = spawn_app().await;
    let envelope = user_created("ada@example.com", Plan::Basic);

    // Act: once, then again (a duplicate).
    app.publish(&envelope).await;
    app.order_of(&user_id(&envelope)).await;
    app.publish(&envelope).await;

    // Assert
    let labels = |outcome| {
        [
            ("consumer", "order_service"),
            ("type", "user.v1.UserCreated"),
            ("outcome", outcome),
        ]
    };
    eventually(|| async {
        let metrics = test_support::http_get(app.metrics_addr, "/metrics").await;
        test_support::metric_value(&metrics, "events_consumed_total", &labels("duplicate"))
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    let metrics = test_support::http_get(app.metrics_addr, "/metrics").await;
    assert!(
        test_support::metric_value(&metrics, "events_consumed_total", &labels("applied"))
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    for histogram in [
        "event_handler_duration_seconds",
        "event_end_to_end_age_seconds",
    ] {
        let count = format!("{histogram}_count");
        assert!(
            test_support::metric_value(
                &metrics,
                &count,
                &[
                    ("consumer", "order_service"),
                    ("type", "user.v1.UserCreated")
                ]
            )
            .is_some_and(|n| n >= 1.0),
            "{histogram} in {metrics}"
        );
    }
}
