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
