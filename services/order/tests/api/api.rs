//! GetOrder and ListOrders.

use proto::{
    order::v1::{GetOrderRequest, ListOrdersRequest},
    user::v1::Plan,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{spawn_app, user_created, user_id};

#[tokio::test]
async fn list_orders_returns_the_users_order_and_no_next_page() {
    let app = spawn_app().await;
    let envelope = user_created("ada@example.com", Plan::Basic);
    app.publish(&envelope).await;
    let order = app.order_of(&user_id(&envelope)).await;

    let page = app
        .client
        .clone()
        .list_orders(ListOrdersRequest {
            user_id: order.user_id.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("listed")
        .into_inner();

    assert_eq!(page.orders, [order]);
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn list_orders_of_a_user_without_orders_is_empty() {
    let app = spawn_app().await;

    let page = app
        .client
        .clone()
        .list_orders(ListOrdersRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
            ..ListOrdersRequest::default()
        })
        .await
        .expect("listed")
        .into_inner();

    assert!(page.orders.is_empty());
}

#[tokio::test]
async fn list_orders_names_every_bad_argument() {
    let app = spawn_app().await;

    let status = app
        .client
        .clone()
        .list_orders(ListOrdersRequest {
            user_id: "nope".into(),
            page_size: -1,
            page_token: "forged".into(),
        })
        .await
        .expect_err("invalid");

    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<_> = status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["user_id", "page_size", "page_token"]);
}

#[tokio::test]
async fn get_order_tells_unknown_from_malformed() {
    let app = spawn_app().await;

    let unknown = app
        .client
        .clone()
        .get_order(GetOrderRequest {
            order_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");
    let malformed = app
        .client
        .clone()
        .get_order(GetOrderRequest {
            order_id: "42".into(),
        })
        .await
        .expect_err("malformed");

    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(malformed.code(), Code::InvalidArgument);
}
