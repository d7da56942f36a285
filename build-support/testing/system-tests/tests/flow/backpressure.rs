//! Back-pressure: past the backlog limit, CreateUser says RESOURCE_EXHAUSTED with a RetryInfo,
//! and what it accepted goes through, exactly once.

use messaging::topology::PAYMENT_SERVICE_ORDER_CREATED;
use payment_service::gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway};
use proto::{
    order::v1::OrderStatus,
    user::v1::{CreateUserRequest, User},
};
use tokio::sync::watch;
use tonic::Code;
use tonic_types::StatusExt;
use user_service::settings::Ingress;

use crate::helpers::{Stack, spawn_stack_with, spawn_stack_with_ingress};

/// CreateUser for `email`: the user, or `None` when refused with RESOURCE_EXHAUSTED and a
/// RetryInfo saying when to try again.
async fn create_or_refused(stack: &Stack, email: &str) -> Option<User> {
    let answer = stack
        .users
        .clone()
        .create_user(CreateUserRequest {
            email: email.into(),
            name: "Test User".into(),
            ..CreateUserRequest::default()
        })
        .await;
    match answer {
        Ok(response) => Some(response.into_inner().user.expect("a user")),
        Err(status) => {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            let retry = status.get_details_retry_info().expect("a RetryInfo");
            assert!(retry.retry_delay.is_some_and(|delay| !delay.is_zero()));
            None
        }
    }
}

/// Every accepted user gets exactly one paid order and one payment, and refused calls left
/// nothing behind.
async fn assert_paid_once_and_nothing_else(stack: &Stack, accepted: &[User]) {
    for user in accepted {
        stack
            .wait_for_order_status(&user.user_id, OrderStatus::Paid)
            .await;
        assert_eq!(stack.orders_of(&user.user_id).await.len(), 1);
        assert_eq!(stack.payments_of(&user.user_id).await.len(), 1);
    }
    let accepted = i64::try_from(accepted.len()).expect("a count");
    let users = stack.sandbox.pool("users").await;
    for (pool, table) in [
        (&users, "users"),
        (&stack.order_db, "orders"),
        (&stack.payment_db, "payments"),
    ] {
        let rows = Stack::count(pool, &format!("select count(*) from {table}")).await;
        assert_eq!(rows, accepted, "{table}");
    }
}

#[tokio::test]
async fn a_burst_past_a_tiny_backlog_limit_is_refused_for_the_excess_and_every_accepted_user_is_paid_once()
 {
    // Arrange: at most five flows in the chain.
    let stack = spawn_stack_with_ingress(Ingress {
        create_user_max_backlog: 5,
        ..Ingress::default()
    })
    .await;

    // Act: a burst of 100 sign-ups at once.
    let emails: Vec<String> = (0..100).map(|i| format!("burst{i}@example.com")).collect();
    let calls = emails.iter().map(|email| create_or_refused(&stack, email));
    let answers = futures_util::future::join_all(calls).await;

    // Assert: each call accepted or refused with a delay to retry after, some of each.
    let refused = answers.iter().filter(|answer| answer.is_none()).count();
    let accepted: Vec<User> = answers.into_iter().flatten().collect();
    assert!(refused > 0, "the excess of the burst is refused");
    assert!(!accepted.is_empty(), "the burst is not refused as a whole");
    assert_paid_once_and_nothing_else(&stack, &accepted).await;
}

/// A gateway that answers no charge until the test opens it: meanwhile the payment service's
/// consumers hold their deliveries, unacknowledged, where the broker's ready count does not see
/// them.
struct HeldGateway {
    open: watch::Receiver<bool>,
}

impl PaymentGateway for HeldGateway {
    async fn charge(&self, _: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        // A closed sender (the test ended) opens it too.
        let _ = self.open.clone().wait_for(|open| *open).await;
        Ok(ChargeOutcome::Succeeded)
    }
}

#[tokio::test]
async fn flows_a_consumer_holds_unacknowledged_count_against_the_limit() {
    // Arrange: at most five flows in the chain, and a payment step that holds every charge.
    const LIMIT: usize = 5;
    let (open, opened) = watch::channel(false);
    let stack = spawn_stack_with(
        Ingress {
            create_user_max_backlog: LIMIT as u64,
            ..Ingress::default()
        },
        |_| HeldGateway { open: opened },
    )
    .await;
    let payment_queue = stack.sandbox.topology.queue(&PAYMENT_SERVICE_ORDER_CREATED);

    // Act: sign-ups one after the other, each accepted one followed until the payment service
    // holds it: its order is created and nothing waits ready in the payment service's queue.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        match create_or_refused(&stack, &format!("held{i}@example.com")).await {
            Some(user) => {
                test_support::eventually(|| async {
                    !stack.orders_of(&user.user_id).await.is_empty()
                        && test_support::queue_depth(&stack.amqp, &payment_queue).await == 0
                })
                .await;
                accepted.push(user);
            }
            None => refused += 1,
        }
    }

    // Assert: while none could complete, the limit was taken and no more.
    assert_eq!(
        accepted.len(),
        LIMIT,
        "{} accepted, {refused} refused, while every accepted flow was held",
        accepted.len()
    );

    // Act: the payment step answers again.
    open.send_replace(true);

    // Assert: every accepted user is paid once; refused calls left nothing behind.
    assert_paid_once_and_nothing_else(&stack, &accepted).await;

    // Assert: the flows that ended made room again.
    let after =
        test_support::eventually_some(|| create_or_refused(&stack, "after@example.com")).await;
    stack
        .wait_for_order_status(&after.user_id, OrderStatus::Paid)
        .await;
}
