//! Hostile input: every string reaches Postgres only after validation, a reused `request_id`
//! never hands out another request's user, names cannot hide or reorder text, and a bad
//! `x-request-id` is replaced instead of trusted.

use proto::user::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest, Plan};
use test_support::hostile::{
    POSTGRES_MIN_MICROS, TIMES_POSTGRES_CANNOT_HOLD, WITH_CONTROL_CHARACTERS,
    assert_request_id_replaced, bad_strings, page_token_at, request_ids_to_replace,
    violated_fields, with_request_id,
};
use uuid::Uuid;

use crate::helpers::spawn_app;

fn request(email: &str, name: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: email.into(),
        name: name.into(),
        ..CreateUserRequest::default()
    }
}

fn list(correlation_id: &str, page_token: &str) -> ListUsersRequest {
    ListUsersRequest {
        correlation_id: correlation_id.into(),
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
            .list_users(list("req-1", &page_token_at(micros)))
            .await
            .expect_err("an out-of-range page token is refused");

        assert_eq!(violated_fields(&status), ["page_token"], "{micros}");
    }
    let earliest = app
        .client
        .clone()
        .list_users(list("req-1", &page_token_at(POSTGRES_MIN_MICROS)))
        .await;
    assert!(earliest.is_ok(), "the earliest time is held: {earliest:?}");
}

#[tokio::test]
async fn a_correlation_id_with_control_characters_is_an_invalid_argument() {
    let app = spawn_app().await;

    for correlation_id in WITH_CONTROL_CHARACTERS {
        let status = app
            .client
            .clone()
            .list_users(list(correlation_id, ""))
            .await
            .expect_err("a control character is refused");

        assert_eq!(
            violated_fields(&status),
            ["correlation_id"],
            "{correlation_id:?}"
        );
    }
}

#[tokio::test]
async fn a_correlation_id_longer_than_any_request_id_is_an_invalid_argument() {
    let app = spawn_app().await;

    let longest = app
        .client
        .clone()
        .list_users(list(&"c".repeat(128), ""))
        .await;
    let status = app
        .client
        .clone()
        .list_users(list(&"c".repeat(129), ""))
        .await
        .expect_err("too long");

    assert!(longest.is_ok(), "{longest:?}");
    assert_eq!(violated_fields(&status), ["correlation_id"]);
}

#[tokio::test]
async fn ids_with_control_characters_or_too_long_are_invalid_arguments() {
    let app = spawn_app().await;

    for user_id in bad_strings().iter().map(String::as_str) {
        let get = app
            .client
            .clone()
            .get_user(GetUserRequest {
                user_id: user_id.into(),
            })
            .await
            .expect_err("refused");
        let create = app
            .client
            .clone()
            .create_user(CreateUserRequest {
                request_id: user_id.into(),
                ..request("ada@example.com", "Ada")
            })
            .await
            .expect_err("refused");

        assert_eq!(violated_fields(&get), ["user_id"], "{user_id:.20?}");
        assert_eq!(violated_fields(&create), ["request_id"], "{user_id:.20?}");
    }
    assert_eq!(app.user_rows().await, 0);
}

#[tokio::test]
async fn a_request_id_reused_with_a_different_request_is_refused() {
    let app = spawn_app().await;
    let request_id = Uuid::new_v4().to_string();
    let original = CreateUserRequest {
        request_id: request_id.clone(),
        ..request("ada@example.com", "Ada")
    };
    app.client
        .clone()
        .create_user(original.clone())
        .await
        .expect("created");
    let others = [
        CreateUserRequest {
            email: "mallory@example.com".into(),
            ..original.clone()
        },
        CreateUserRequest {
            name: "Mallory".into(),
            ..original.clone()
        },
        CreateUserRequest {
            plan: Plan::Enterprise.into(),
            ..original.clone()
        },
    ];

    for other in others {
        let status = app
            .client
            .clone()
            .create_user(other.clone())
            .await
            .expect_err("another request under the same key is refused");

        assert_eq!(violated_fields(&status), ["request_id"], "{other:?}");
        assert!(!status.message().contains("ada@"), "{}", status.message());
    }
    assert_eq!(app.user_rows().await, 1);
}

#[tokio::test]
async fn a_request_id_resent_with_the_same_request_replays_the_user() {
    let app = spawn_app().await;
    let original = CreateUserRequest {
        request_id: Uuid::new_v4().to_string(),
        plan: Plan::Pro.into(),
        ..request("ada@example.com", "Ada Lovelace")
    };
    let created = app
        .client
        .clone()
        .create_user(original.clone())
        .await
        .expect("created")
        .into_inner();

    // The same request, as the server reads it: surrounding blanks are trimmed.
    let replayed = app
        .client
        .clone()
        .create_user(CreateUserRequest {
            email: " ada@example.com ".into(),
            name: "Ada Lovelace ".into(),
            ..original
        })
        .await
        .expect("replayed")
        .into_inner();

    assert_eq!(created.user, replayed.user);
    assert_eq!(app.user_rows().await, 1);
}

#[tokio::test]
async fn a_request_id_stored_before_fingerprints_still_replays_and_refuses() {
    // Arrange: a row as the service wrote it before it recorded what a request was.
    let app = spawn_app().await;
    let request_id = Uuid::new_v4();
    let user_id = Uuid::new_v4();
    sqlx::query(
        "insert into users (user_id, email, name, plan, request_id, correlation_id) \
         values ($1, 'ada@example.com', 'Ada', 'basic', $2, 'req-old')",
    )
    .bind(user_id)
    .bind(request_id)
    .execute(&app.db)
    .await
    .expect("an old row");
    let resend = |name: &str| CreateUserRequest {
        request_id: request_id.to_string(),
        ..request("ada@example.com", name)
    };

    // Act
    let replayed = app.client.clone().create_user(resend("Ada")).await;
    let other = app.client.clone().create_user(resend("Mallory")).await;

    // Assert
    let replayed = replayed
        .expect("replayed")
        .into_inner()
        .user
        .expect("a user");
    assert_eq!(replayed.user_id, user_id.to_string());
    assert_eq!(
        violated_fields(&other.expect_err("refused")),
        ["request_id"]
    );
}

#[tokio::test]
async fn names_with_bidi_controls_invisible_only_or_noncharacters_are_refused() {
    let app = spawn_app().await;
    let names = [
        // Bidi embeddings, overrides and isolates.
        "Ada\u{202A}x",
        "Ada\u{202B}x",
        "Ada\u{202C}",
        "Ada\u{202D}x",
        "\u{202E}gnp.exe",
        "Ada\u{2066}x",
        "Ada\u{2067}x",
        "Ada\u{2068}x",
        "Ada\u{2069}",
        // Nothing visible.
        "\u{200B}",
        "\u{2060}\u{2060}",
        "\u{FEFF}",
        "\u{200B} \u{200C}\u{200D}",
        "\u{0301}\u{0308}",
        "\u{3164}",
        "\u{2800}",
        "\u{3000}\u{00A0}",
        "\u{FE0F}",
        // Noncharacters.
        "Ada\u{FDD0}",
        "Ada\u{FDEF}",
        "Ada\u{FFFE}",
        "Ada\u{FFFF}",
        "Ada\u{1FFFF}",
        "Ada\u{10FFFE}",
    ];

    for name in names {
        let status = app
            .client
            .clone()
            .create_user(request("ada@example.com", name))
            .await
            .expect_err("refused");

        assert_eq!(violated_fields(&status), ["name"], "{name:?}");
    }
    assert_eq!(app.user_rows().await, 0);
}

#[tokio::test]
async fn names_in_any_script_with_marks_and_joiners_are_accepted() {
    let app = spawn_app().await;
    let names = [
        "Zoe\u{0308} Saldan\u{0303}a",
        "محمد",
        "李小龙",
        "\u{0928}\u{093F}\u{0924}\u{093F}\u{0928}",
        "Ada \u{1F469}\u{200D}\u{1F4BB}",
    ];

    for (n, name) in names.into_iter().enumerate() {
        let created = app
            .create_user(&format!("user{n}@example.com"), name)
            .await
            .expect("accepted");

        assert_eq!(created.user.expect("a user").name, name);
    }
}

#[tokio::test]
async fn an_x_request_id_that_is_too_long_or_not_visible_ascii_is_replaced() {
    let app = spawn_app().await;

    for (n, sent) in request_ids_to_replace().iter().enumerate() {
        let created = app
            .client
            .clone()
            .create_user(with_request_id(
                request(&format!("user{n}@example.com"), "Ada"),
                sent,
            ))
            .await
            .expect("created under a generated request id");
        let listed = app
            .client
            .clone()
            .list_users(with_request_id(list("req-1", ""), sent))
            .await
            .expect("listed");
        let got = app
            .client
            .clone()
            .get_user(with_request_id(
                GetUserRequest {
                    user_id: Uuid::new_v4().to_string(),
                },
                sent,
            ))
            .await
            .expect_err("no such user");

        let generated = assert_request_id_replaced(sent, created.metadata());
        let user = created.into_inner().user.expect("a user");
        assert_eq!(user.correlation_id, generated);
        assert_request_id_replaced(sent, listed.metadata());
        assert_eq!(got.code(), tonic::Code::NotFound);
        assert_request_id_replaced(sent, got.metadata());
    }
}
