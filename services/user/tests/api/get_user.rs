//! GetUser: found, not found, malformed.

use proto::user::v1::GetUserRequest;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test]
async fn get_user_returns_what_create_user_stored() {
    let app = spawn_app().await;
    let created = app
        .create_user("ada@example.com", "Ada")
        .await
        .expect("created")
        .user
        .expect("a user");

    let fetched = app
        .client
        .clone()
        .get_user(GetUserRequest {
            user_id: created.user_id.clone(),
        })
        .await
        .expect("found")
        .into_inner()
        .user;

    assert_eq!(fetched, Some(created));
}

#[tokio::test]
async fn an_unknown_user_id_is_not_found() {
    let app = spawn_app().await;

    let status = app
        .client
        .clone()
        .get_user(GetUserRequest {
            user_id: Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown");

    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_malformed_or_missing_user_id_is_invalid_argument() {
    let app = spawn_app().await;

    for user_id in ["not-a-uuid", "", "12345"] {
        let status = app
            .client
            .clone()
            .get_user(GetUserRequest {
                user_id: user_id.into(),
            })
            .await
            .expect_err("malformed");

        assert_eq!(status.code(), Code::InvalidArgument, "{user_id:?}");
    }
}

#[tokio::test]
async fn list_users_finds_a_user_by_the_correlation_id_of_its_create_call() {
    let app = spawn_app().await;
    let created = app
        .create_user_with_request_id(
            proto::user::v1::CreateUserRequest {
                email: "ada@example.com".into(),
                name: "Ada".into(),
                ..Default::default()
            },
            "flow-123",
        )
        .await
        .expect("created")
        .into_inner()
        .user
        .expect("a user");
    app.create_user("bob@example.com", "Bob")
        .await
        .expect("created");

    let found = app
        .client
        .clone()
        .list_users(proto::user::v1::ListUsersRequest {
            correlation_id: "flow-123".into(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner();

    assert_eq!(created.correlation_id, "flow-123");
    assert_eq!(found.users, [created]);
    assert!(found.next_page_token.is_empty());
}

#[tokio::test]
async fn list_users_needs_a_correlation_id() {
    let app = spawn_app().await;

    let status = app
        .client
        .clone()
        .list_users(proto::user::v1::ListUsersRequest::default())
        .await
        .expect_err("no filter");

    assert_eq!(status.code(), Code::InvalidArgument);
}
