//! CreateUser: validation, duplicates and idempotent retries.

use proto::user::v1::{CreateUserRequest, Plan};
use test_support::hostile::violated_fields;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::spawn_app;

fn request(email: &str, name: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: email.into(),
        name: name.into(),
        ..CreateUserRequest::default()
    }
}

#[tokio::test]
async fn create_user_returns_the_stored_user_trimmed() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let mut create = request("  ada@example.com ", " Ada Lovelace ");
    create.plan = Plan::Pro.into();
    let user = app
        .client
        .clone()
        .create_user(create)
        .await
        .expect("created")
        .into_inner()
        .user
        .expect("a user");

    // Assert
    assert!(Uuid::parse_str(&user.user_id).is_ok());
    assert_eq!(user.email, "ada@example.com");
    assert_eq!(user.name, "Ada Lovelace");
    assert_eq!(user.plan(), Plan::Pro);
    assert!(user.create_time.is_some());
    assert_eq!(app.user_rows().await, 1);
}

#[tokio::test]
async fn an_unspecified_plan_means_basic() {
    let app = spawn_app().await;

    let user = app
        .create_user("ada@example.com", "Ada")
        .await
        .expect("created");

    assert_eq!(user.user.expect("a user").plan(), Plan::Basic);
}

#[tokio::test]
async fn each_validation_rule_is_enforced_alone() {
    let app = spawn_app().await;
    let long_email = format!("{}@{}.com", "a".repeat(64), "b".repeat(186));
    assert_eq!(long_email.len(), 255);
    let cases: Vec<(CreateUserRequest, &str)> = vec![
        (request("", "Ada"), "email"),
        (request("   ", "Ada"), "email"),
        (request("not-an-address", "Ada"), "email"),
        (request("ada@localhost", "Ada"), "email"),
        (request(&long_email, "Ada"), "email"),
        (request("ada@example.com", ""), "name"),
        (request("ada@example.com", " \t "), "name"),
        (request("ada@example.com", &"n".repeat(201)), "name"),
        (
            CreateUserRequest {
                plan: 42,
                ..request("ada@example.com", "Ada")
            },
            "plan",
        ),
        (
            CreateUserRequest {
                request_id: "not-a-uuid".into(),
                ..request("ada@example.com", "Ada")
            },
            "request_id",
        ),
    ];

    for (create, field) in cases {
        let status = app
            .client
            .clone()
            .create_user(create.clone())
            .await
            .expect_err("invalid input is rejected");

        assert_eq!(status.code(), Code::InvalidArgument, "{create:?}");
        assert_eq!(violated_fields(&status), [field], "{create:?}");
    }
    assert_eq!(app.user_rows().await, 0, "nothing is stored");
    assert_eq!(app.outbox_rows().await, 0, "nothing is published");
}

#[tokio::test]
async fn a_name_of_exactly_200_characters_is_accepted() {
    let app = spawn_app().await;

    let created = app.create_user("ada@example.com", &"é".repeat(200)).await;

    assert!(created.is_ok(), "{created:?}");
}

#[tokio::test]
async fn every_bad_field_is_named_at_once() {
    let app = spawn_app().await;

    let status = app
        .client
        .clone()
        .create_user(CreateUserRequest {
            email: "nope".into(),
            name: "".into(),
            plan: 9,
            request_id: "123".into(),
        })
        .await
        .expect_err("invalid input is rejected");

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["email", "name", "plan", "request_id"]
    );
}

#[tokio::test]
async fn a_duplicate_email_is_already_exists_whatever_its_case() {
    let app = spawn_app().await;
    app.create_user("Ada@Example.com", "Ada")
        .await
        .expect("created");

    let status = app
        .create_user(" ada@EXAMPLE.com ", "Another Ada")
        .await
        .expect_err("duplicate");

    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(app.user_rows().await, 1);
}

#[tokio::test]
async fn replaying_a_request_id_returns_the_original_user() {
    let app = spawn_app().await;
    let request_id = Uuid::new_v4().to_string();
    let first = CreateUserRequest {
        request_id: request_id.clone(),
        ..request("ada@example.com", "Ada")
    };

    let original = app
        .client
        .clone()
        .create_user(first.clone())
        .await
        .expect("created");
    let replayed = app
        .client
        .clone()
        .create_user(first)
        .await
        .expect("replayed");

    assert_eq!(original.into_inner().user, replayed.into_inner().user);
    assert_eq!(app.user_rows().await, 1);
}

#[tokio::test]
async fn concurrent_retries_of_one_request_id_create_one_user() {
    let app = spawn_app().await;
    let create = CreateUserRequest {
        request_id: Uuid::new_v4().to_string(),
        ..request("ada@example.com", "Ada")
    };

    let calls = (0..8).map(|_| {
        let mut client = app.client.clone();
        let create = create.clone();
        async move { client.create_user(create).await }
    });
    let outcomes = futures_util::future::join_all(calls).await;

    let users: Vec<_> = outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every retry succeeds").into_inner().user)
        .collect();
    assert!(users.windows(2).all(|pair| pair[0] == pair[1]), "{users:?}");
    assert_eq!(app.user_rows().await, 1);
}
