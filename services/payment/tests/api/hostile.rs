//! Hostile input: every string reaches Postgres only after validation, and a bad
//! `x-request-id` is replaced instead of trusted.

use proto::payment::v1::{GetPaymentRequest, ListPaymentsRequest};
use test_support::hostile::{
    POSTGRES_MIN_MICROS, TIMES_POSTGRES_CANNOT_HOLD, assert_request_id_replaced, bad_strings,
    page_token_at, request_ids_to_replace, violated_fields, with_request_id,
};
use uuid::Uuid;

use crate::helpers::spawn_app;

/// By user, by order, and by both.
fn lists(page_token: &str) -> [ListPaymentsRequest; 3] {
    let id = || Uuid::new_v4().to_string();
    let page_token = page_token.to_owned();
    [
        ListPaymentsRequest {
            user_id: id(),
            page_token: page_token.clone(),
            ..ListPaymentsRequest::default()
        },
        ListPaymentsRequest {
            order_id: id(),
            page_token: page_token.clone(),
            ..ListPaymentsRequest::default()
        },
        ListPaymentsRequest {
            user_id: id(),
            order_id: id(),
            page_token,
            ..ListPaymentsRequest::default()
        },
    ]
}

#[tokio::test]
async fn page_tokens_with_times_postgres_cannot_hold_are_invalid_arguments() {
    let app = spawn_app().await;

    for micros in TIMES_POSTGRES_CANNOT_HOLD {
        for request in lists(&page_token_at(micros)) {
            let status = app
                .client
                .clone()
                .list_payments(request)
                .await
                .expect_err("an out-of-range page token is refused");

            assert_eq!(violated_fields(&status), ["page_token"], "{micros}");
        }
    }
    for request in lists(&page_token_at(POSTGRES_MIN_MICROS)) {
        let earliest = app.client.clone().list_payments(request).await;
        assert!(earliest.is_ok(), "the earliest time is held: {earliest:?}");
    }
}

#[tokio::test]
async fn ids_and_page_tokens_with_control_characters_or_too_long_are_invalid_arguments() {
    let app = spawn_app().await;

    for text in bad_strings().iter().map(String::as_str) {
        let got = app
            .client
            .clone()
            .get_payment(GetPaymentRequest {
                payment_id: text.into(),
            })
            .await
            .expect_err("refused");
        let listed = app
            .client
            .clone()
            .list_payments(ListPaymentsRequest {
                user_id: text.into(),
                order_id: text.into(),
                page_size: 0,
                page_token: text.into(),
            })
            .await
            .expect_err("refused");

        assert_eq!(violated_fields(&got), ["payment_id"], "{text:.20?}");
        assert_eq!(
            violated_fields(&listed),
            ["user_id", "order_id", "page_token"],
            "{text:.20?}"
        );
    }
}

#[tokio::test]
async fn an_x_request_id_that_is_too_long_or_not_visible_ascii_is_replaced() {
    let app = spawn_app().await;

    for sent in request_ids_to_replace() {
        let [request, ..] = lists("");
        let listed = app
            .client
            .clone()
            .list_payments(with_request_id(request, &sent))
            .await
            .expect("listed");

        assert_request_id_replaced(&sent, listed.metadata());
    }
}
