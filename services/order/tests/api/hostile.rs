//! Hostile input: every string reaches Postgres only after validation, and a bad
//! `x-request-id` is replaced instead of trusted.

use proto::order::v1::{GetOrderRequest, ListOrdersRequest};
use test_support::hostile::{
    POSTGRES_MIN_MICROS, TIMES_POSTGRES_CANNOT_HOLD, assert_request_id_replaced, bad_strings,
    page_token_at, request_ids_to_replace, violated_fields, with_request_id,
};
use uuid::Uuid;

use crate::helpers::spawn_app;

fn list(page_token: &str) -> ListOrdersRequest {
    ListOrdersRequest {
        user_id: Uuid::new_v4().to_string(),
        page_size: 0,
        page_token: page_token.into(),
    }
}

#[tokio::test]
async fn page_tokens_with_times_postgres_cannot_hold_are_invalid_arguments() {
    let app = spawn_app().await;

    for micros in TIMES_POSTGRES_CANNOT_HOLD {
        let status = app
            .client
            .clone()
            .list_orders(list(&page_token_at(micros)))
            .await
            .expect_err("an out-of-range page token is refused");

        assert_eq!(violated_fields(&status), ["page_token"], "{micros}");
    }
    let earliest = app
        .client
        .clone()
        .list_orders(list(&page_token_at(POSTGRES_MIN_MICROS)))
        .await;
    assert!(earliest.is_ok(), "the earliest time is held: {earliest:?}");
}

#[tokio::test]
async fn ids_and_page_tokens_with_control_characters_or_too_long_are_invalid_arguments() {
    let app = spawn_app().await;

    for text in bad_strings().iter().map(String::as_str) {
        let got = app
            .client
            .clone()
            .get_order(GetOrderRequest {
                order_id: text.into(),
            })
            .await
            .expect_err("refused");
        let listed = app
            .client
            .clone()
            .list_orders(ListOrdersRequest {
                user_id: text.into(),
                page_size: 0,
                page_token: text.into(),
            })
            .await
            .expect_err("refused");

        assert_eq!(violated_fields(&got), ["order_id"], "{text:.20?}");
        assert_eq!(
            violated_fields(&listed),
            ["user_id", "page_token"],
            "{text:.20?}"
        );
    }
}

#[tokio::test]
async fn an_x_request_id_that_is_too_long_or_not_visible_ascii_is_replaced() {
    let app = spawn_app().await;

    for sent in request_ids_to_replace() {
        let listed = app
            .client
            .clone()
            .list_orders(with_request_id(list(""), &sent))
            .await
            .expect("listed");

        assert_request_id_replaced(&sent, listed.metadata());
    }
}
