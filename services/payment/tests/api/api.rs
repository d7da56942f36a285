//! GetPayment and ListPayments.

use proto::payment::v1::{GetPaymentRequest, ListPaymentsRequest};
use test_support::hostile::violated_fields;
use tonic::Code;

use crate::helpers::{order_created_for, spawn_app};

#[tokio::test]
async fn list_payments_by_user_pages_through_every_payment_oldest_first() {
    // Arrange: one user with three orders.
    let app = spawn_app().await;
    let user_id = uuid::Uuid::new_v4().to_string();
    let mut order_ids = Vec::new();
    for _ in 0..3 {
        let (order, envelope) = order_created_for("ada@example.com", &user_id);
        app.publish(&envelope).await;
        app.payment_of(&order.order_id).await;
        order_ids.push(order.order_id);
    }

    // Act
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client
            .clone()
            .list_payments(ListPaymentsRequest {
                user_id: user_id.clone(),
                page_size: 2,
                page_token: page_token.clone(),
                ..ListPaymentsRequest::default()
            })
            .await
            .expect("listed")
            .into_inner();
        pages += 1;
        seen.extend(page.payments.into_iter().map(|p| p.order_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    // Assert
    assert_eq!(pages, 2);
    assert_eq!(seen, order_ids);
}

#[tokio::test]
async fn list_payments_filters_by_user_and_order_together() {
    let app = spawn_app().await;
    let user_id = uuid::Uuid::new_v4().to_string();
    let (first, envelope) = order_created_for("ada@example.com", &user_id);
    app.publish(&envelope).await;
    let (second, envelope) = order_created_for("ada@example.com", &user_id);
    app.publish(&envelope).await;
    app.payment_of(&first.order_id).await;
    app.payment_of(&second.order_id).await;

    let page = app
        .client
        .clone()
        .list_payments(ListPaymentsRequest {
            user_id,
            order_id: second.order_id.clone(),
            ..ListPaymentsRequest::default()
        })
        .await
        .expect("listed")
        .into_inner();

    let orders: Vec<_> = page.payments.into_iter().map(|p| p.order_id).collect();
    assert_eq!(orders, [second.order_id]);
}

#[tokio::test]
async fn list_payments_needs_a_user_or_an_order() {
    let app = spawn_app().await;

    let status = app
        .client
        .clone()
        .list_payments(ListPaymentsRequest::default())
        .await
        .expect_err("no filter");

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["user_id", "order_id"]);
}

#[tokio::test]
async fn list_payments_names_every_bad_argument() {
    let app = spawn_app().await;

    let status = app
        .client
        .clone()
        .list_payments(ListPaymentsRequest {
            user_id: "x".into(),
            order_id: "y".into(),
            page_size: -5,
            page_token: "z".into(),
        })
        .await
        .expect_err("invalid");

    assert_eq!(
        violated_fields(&status),
        ["user_id", "order_id", "page_size", "page_token"]
    );
}

#[tokio::test]
async fn get_payment_finds_a_payment_and_tells_unknown_from_malformed() {
    let app = spawn_app().await;
    let (order, envelope) = order_created_for("ada@example.com", &uuid::Uuid::new_v4().to_string());
    app.publish(&envelope).await;
    let payment = app.payment_of(&order.order_id).await;

    let found = app
        .client
        .clone()
        .get_payment(GetPaymentRequest {
            payment_id: payment.payment_id.clone(),
        })
        .await
        .expect("found")
        .into_inner()
        .payment;
    let unknown = app
        .client
        .clone()
        .get_payment(GetPaymentRequest {
            payment_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");
    let malformed = app
        .client
        .clone()
        .get_payment(GetPaymentRequest {
            payment_id: "no".into(),
        })
        .await
        .expect_err("malformed");

    assert_eq!(found, Some(payment));
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(malformed.code(), Code::InvalidArgument);
}
