//! A broker of several nodes (`AMQP_URL` as a list): the service connects to a node that
//! answers and, when that node goes away, to another one, and its events keep flowing.

use std::time::Duration;

use test_support::eventually;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::spawn_app_with;

const HEARTBEAT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn when_its_node_goes_away_the_service_moves_to_another_and_events_flow() {
    // Arrange: two addresses of the broker, each a proxy that can go away.
    let (first, second) = (
        test_support::shared_broker_proxy().await,
        test_support::shared_broker_proxy().await,
    );
    let nodes = format!("{},{}", first.url(), second.url());
    let app = spawn_app_with(&nodes, |settings| settings.amqp_heartbeat = HEARTBEAT).await;
    app.wait_for_health(ServingStatus::Serving).await;
    let (used, other) = if first.connections() > 0 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(other.connections(), 0, "one connection, on one node");

    // Act: the node it is connected to goes away (its connections cut, its address refusing).
    drop(used);

    // Assert: it connects through the other, serves, and publishes.
    eventually(|| async { other.connections() > 0 }).await;
    app.wait_for_health(ServingStatus::Serving).await;
    app.create_user("failover@example.com", "Ada")
        .await
        .expect("created");
    eventually(|| async { app.outbox_rows().await == 0 }).await;
}
