//! Health, reflection and graceful shutdown.

use futures_util::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use user_service::settings::Ingress;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_is_serving_once_migrated_and_connected() {
    let app = spawn_app().await;

    assert_eq!(app.health().await, ServingStatus::Serving);
}

#[tokio::test]
async fn reflection_v1_lists_the_user_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"user.v1.UserService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn reflection_v1alpha_resolves_the_create_user_request() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "user.v1.CreateUserRequest".into(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection v1alpha answers")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");

    assert!(
        matches!(
            response.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()
        ),
        "{response:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_the_service_cleanly() {
    let app = spawn_app().await;
    app.create_user("ada@example.com", "Ada")
        .await
        .expect("created");

    tokio::time::timeout(std::time::Duration::from_secs(15), app.stop())
        .await
        .expect("the service stops within its drain bounds");
}

#[tokio::test]
async fn instances_started_at_once_on_a_fresh_database_all_start() {
    // Arrange: a database nobody created yet, and four instances racing to create and migrate it.
    let sandbox = test_support::Sandbox::new();
    let settings = sandbox.settings("user-service", "users", &test_support::broker_url());

    // Act
    let started = futures_util::future::join_all(
        (0..4).map(|_| user_service::build(&settings, Ingress::default())),
    )
    .await;

    // Assert: every one starts and serves.
    let mut running = Vec::new();
    for (instance, application) in started.into_iter().enumerate() {
        let application =
            application.unwrap_or_else(|error| panic!("instance {instance}: {error:#}"));
        running.push(
            test_support::Running::start(application, user_service::startup::GRPC_SERVICE).await,
        );
    }
    for instance in &running {
        instance.wait_for_health(ServingStatus::Serving).await;
    }
    for instance in running {
        instance.stop().await;
    }
}
