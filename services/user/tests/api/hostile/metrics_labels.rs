//! Made-up method paths cannot grow `/metrics`: every method the server does not serve is
//! counted under one `unknown` label.

use test_support::{http_get, metric_value};
use tonic::{Code, codegen::http::uri::PathAndQuery};
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test]
async fn calls_to_unknown_methods_are_counted_under_one_unknown_label() {
    // Arrange: made-up services, and made-up methods of the real service.
    let app = spawn_app().await;
    let paths: Vec<String> = (0..250)
        .map(|i| {
            let id = Uuid::new_v4().simple();
            if i % 2 == 0 {
                format!("/evil{id}.v1.Evil/Call")
            } else {
                format!("/user.v1.UserService/Method{id}")
            }
        })
        .collect();
    let before = http_get(app.metrics_addr, "/metrics").await;

    // Act
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    for path in &paths {
        grpc.ready().await.expect("ready");
        let status = grpc
            .unary(
                tonic::Request::new(()),
                PathAndQuery::try_from(path.as_str()).expect("a path"),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }

    // Assert
    let after = http_get(app.metrics_addr, "/metrics").await;
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    let leaked: Vec<_> = paths.iter().filter(|path| after.contains(*path)).collect();
    assert!(leaked.is_empty(), "{} paths labelled", leaked.len());
    let unknown = [
        ("service", "user-service"),
        ("method", "unknown"),
        ("code", "Unimplemented"),
    ];
    assert!(
        metric_value(&after, "grpc_server_requests_total", &unknown).unwrap_or(0.0) >= 250.0,
        "{after}"
    );
}
