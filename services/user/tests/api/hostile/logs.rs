//! What a client can make the service log. The service runs as its own binary here, so the
//! tests read exactly what an operator's log collector would.

use proto::user::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest};
use tonic::Code;

use crate::logged::LoggedService;

/// What a forger wants an operator to read as a line of its own.
const FORGED: &str = "FORGED-LINE ERROR user_service: the administrator's password is hunter2";

/// Sends `FORGED` after a line break in every string field of every method; `sqlx=debug` makes
/// sure events are logged inside the calls' spans, whose fields hold the request strings.
async fn send_forgeries(service: &LoggedService) {
    let evil = format!("x\n{FORGED}\r\n{FORGED}");
    let mut client = service.client.clone();
    let calls = [
        client
            .create_user(CreateUserRequest {
                email: evil.clone(),
                name: evil.clone(),
                request_id: evil.clone(),
                ..CreateUserRequest::default()
            })
            .await
            .map(drop),
        client
            .create_user(CreateUserRequest {
                email: "forger@example.com".into(),
                name: format!("Ada\n{FORGED}"),
                ..CreateUserRequest::default()
            })
            .await
            .map(drop),
        client
            .get_user(GetUserRequest {
                user_id: evil.clone(),
            })
            .await
            .map(drop),
        client
            .list_users(ListUsersRequest {
                correlation_id: evil.clone(),
                ..ListUsersRequest::default()
            })
            .await
            .map(drop),
        client
            .list_users(ListUsersRequest {
                correlation_id: "c".into(),
                page_token: evil.clone(),
                ..ListUsersRequest::default()
            })
            .await
            .map(drop),
    ];
    // Every one is invalid: a line break is a control character, refused in every field.
    let codes: Vec<_> = calls
        .iter()
        .map(|call| call.as_ref().err().map(tonic::Status::code))
        .collect();
    assert_eq!(
        codes,
        [
            Some(Code::InvalidArgument),
            Some(Code::InvalidArgument),
            Some(Code::InvalidArgument),
            Some(Code::InvalidArgument),
            Some(Code::InvalidArgument)
        ]
    );
}

#[tokio::test]
async fn request_strings_cannot_forge_a_line_of_the_text_log() {
    // Arrange
    let service = LoggedService::start("text", "info,sqlx=debug").await;

    // Act
    send_forgeries(&service).await;

    // Assert: the strings reached the log (else this proves nothing), escaped within a line.
    let log = service.log().await;
    assert!(log.contains("FORGED-LINE"), "{log}");
    let forged: Vec<_> = log
        .lines()
        .filter(|line| line.starts_with("FORGED-LINE"))
        .collect();
    assert!(forged.is_empty(), "forged lines: {forged:#?}");
    assert!(!log.contains('\r'), "a carriage return reached the log");
}

#[tokio::test]
async fn request_strings_cannot_forge_a_line_of_the_json_log() {
    // Arrange
    let service = LoggedService::start("json", "info,sqlx=debug").await;

    // Act
    send_forgeries(&service).await;

    // Assert: every line is one JSON object; the strings are inside them.
    let log = service.log().await;
    assert!(log.contains("FORGED-LINE"), "{log}");
    for line in log.lines() {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(parsed.is_object(), "{line}");
    }
}

#[tokio::test]
async fn a_duplicate_email_is_logged_as_a_client_error_without_personal_data() {
    // Arrange
    let service = LoggedService::start("json", "info").await;
    let mut client = service.client.clone();
    let request = CreateUserRequest {
        email: "ada.private@example.com".into(),
        name: "Ada Privatename".into(),
        ..CreateUserRequest::default()
    };
    client
        .create_user(request.clone())
        .await
        .expect("the first call creates the user");

    // Act
    let duplicate = client
        .create_user(CreateUserRequest {
            email: "ADA.PRIVATE@example.com".into(),
            ..request
        })
        .await
        .expect_err("the address is taken");

    // Assert
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let log = service.log().await;
    let lowered = log.to_lowercase();
    assert!(
        !lowered.contains("ada.private"),
        "the e-mail is logged: {log}"
    );
    assert!(
        !lowered.contains("privatename"),
        "the name is logged: {log}"
    );
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let level = event["level"].as_str().unwrap_or_default();
        assert!(
            level != "ERROR" && level != "WARN",
            "a client error logged as a server problem: {line}"
        );
    }
}
