//! Back-pressure: past the backlog limit, CreateUser says RESOURCE_EXHAUSTED with a RetryInfo,
//! and what it accepted goes through, exactly once.

use proto::{order::v1::OrderStatus, user::v1::CreateUserRequest};
use tonic::Code;
use tonic_types::StatusExt;
use user_service::settings::Ingress;

use crate::helpers::{Stack, spawn_stack_with_ingress};

#[tokio::test]
async fn a_burst_past_a_tiny_backlog_limit_is_refused_for_the_excess_and_every_accepted_user_is_paid_once()
 {
    // Arrange: at most five flows may wait in the chain.
    let stack = spawn_stack_with_ingress(Ingress {
        create_user_max_backlog: 5,
        ..Ingress::default()
    })
    .await;

    // Act: a burst of 100 sign-ups at once.
    let calls = (0..100).map(|i| {
        let mut users = stack.users.clone();
        async move {
            users
                .create_user(CreateUserRequest {
                    email: format!("burst{i}@example.com"),
                    name: "Burst".into(),
                    ..CreateUserRequest::default()
                })
                .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;

    // Assert: each call accepted or refused with a delay to retry after, some of each.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for answer in answers {
        match answer {
            Ok(response) => accepted.push(response.into_inner().user.expect("a user")),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let retry = status.get_details_retry_info().expect("a RetryInfo");
                assert!(retry.retry_delay.is_some_and(|delay| !delay.is_zero()));
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the excess of the burst is refused");
    assert!(!accepted.is_empty(), "the burst is not refused as a whole");
    // Every accepted user gets exactly one paid order and one payment; refused calls left
    // nothing behind.
    for user in &accepted {
        stack
            .wait_for_order_status(&user.user_id, OrderStatus::Paid)
            .await;
        assert_eq!(stack.orders_of(&user.user_id).await.len(), 1);
        assert_eq!(stack.payments_of(&user.user_id).await.len(), 1);
    }
    let accepted = i64::try_from(accepted.len()).expect("a count");
    assert_eq!(
        Stack::count(&stack.order_db, "select count(*) from orders").await,
        accepted
    );
    assert_eq!(
        Stack::count(&stack.payment_db, "select count(*) from payments").await,
        accepted
    );
}
