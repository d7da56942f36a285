//! Batches of CreateUser calls: the calls written in one transaction each get their own answer,
//! and exactly the users created get one `user_created` each.

use std::collections::HashMap;

use lapin::Consumer;
use messaging::Envelope;
use prost::Message;
use proto::user::v1::UserCreated;
use test_support::{assert_no_more_deliveries, new_context, next_delivery};
use user_service::{
    domain::{NewUser, Plan, User},
    repository::{self, CreateRequest, CreateUserError},
};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

fn new_user(email: &str, name: &str, request_id: Option<Uuid>) -> NewUser {
    let request_id = request_id.map(|id| id.to_string()).unwrap_or_default();
    NewUser::parse(email, name, Plan::Basic, &request_id).expect("a valid user")
}

fn call(email: &str, name: &str, request_id: Option<Uuid>) -> CreateRequest {
    CreateRequest {
        new_user: new_user(email, name, request_id),
        context: new_context(),
    }
}

/// Creates one user in a batch of its own.
async fn create_alone(app: &TestApp, call: CreateRequest) -> User {
    let mut created = repository::create_batch(&app.db, &[call])
        .await
        .expect("committed");
    created.outcomes.remove(0).expect("created")
}

/// The user ids of the next `n` `user_created` events, and how often each came.
async fn user_created_events(events: &mut Consumer, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let delivery = next_delivery(events).await;
        let event = UserCreated::decode(delivery.data.as_slice()).expect("a UserCreated");
        *seen.entry(event.user_id).or_default() += 1;
    }
    seen
}

/// The ids of every stored user, sorted.
async fn user_ids(app: &TestApp) -> Vec<String> {
    let ids: Vec<Uuid> = sqlx::query_scalar("select user_id from users")
        .fetch_all(&app.db)
        .await
        .expect("users");
    let mut ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    ids.sort();
    ids
}

fn event_user_id(envelope: &Envelope) -> String {
    UserCreated::decode(envelope.payload.as_slice())
        .expect("a UserCreated")
        .user_id
}

#[tokio::test]
async fn each_call_of_a_batch_gets_its_own_answer_and_only_new_users_an_event() {
    // Arrange: two users committed before the batch.
    let app = spawn_app().await;
    let mut events = app.capture("user_created").await;
    let (earlier_request, batch_request) = (Uuid::new_v4(), Uuid::new_v4());
    create_alone(&app, call("taken@example.com", "Taken", None)).await;
    let earlier = create_alone(
        &app,
        call("earlier@example.com", "Earlier", Some(earlier_request)),
    )
    .await;
    let calls = vec![
        call("fresh-1@example.com", "Fresh", None),
        call("TAKEN@example.com", "Taken again", None),
        call("twin@example.com", "First twin", None),
        call("Twin@Example.COM", "Second twin", None),
        call("earlier@example.com", "Earlier", Some(earlier_request)),
        call("earlier-2@example.com", "Earlier", Some(earlier_request)),
        call("new@example.com", "New", Some(batch_request)),
        call("new@example.com", "New", Some(batch_request)),
        call("other@example.com", "Other", Some(batch_request)),
        call("fresh-2@example.com", "Fresh", None),
    ];

    // Act
    let created = repository::create_batch(&app.db, &calls)
        .await
        .expect("committed");

    // Assert: each call's own answer.
    let outcomes = created.outcomes;
    assert_eq!(outcomes.len(), calls.len());
    let user = |at: usize| match &outcomes[at] {
        Ok(user) => user.clone(),
        Err(error) => panic!("call {at} failed: {error}"),
    };
    let refused = |at: usize| match &outcomes[at] {
        Ok(user) => panic!("call {at} was answered with user {}", user.user_id),
        Err(error) => error,
    };
    assert_eq!(user(0).email, "fresh-1@example.com");
    assert!(matches!(refused(1), CreateUserError::EmailTaken));
    assert_eq!(
        user(2).name,
        "First twin",
        "of two calls with one address, the first wins"
    );
    assert!(matches!(refused(3), CreateUserError::EmailTaken));
    assert_eq!(user(4), earlier, "a replay gets the committed original");
    assert!(matches!(refused(5), CreateUserError::RequestIdReused));
    let new = user(6);
    assert_eq!(new.email, "new@example.com");
    assert_eq!(user(7), new, "a replay gets the original of its own batch");
    assert!(matches!(refused(8), CreateUserError::RequestIdReused));
    assert_eq!(user(9).email, "fresh-2@example.com");
    let inserted = [user(0), user(2), new, user(9)];

    // Assert: the batch's events are exactly its new users' …
    let mut batch_events: Vec<String> = created.events.iter().map(event_user_id).collect();
    batch_events.sort();
    let mut inserted_ids: Vec<String> = inserted.iter().map(|u| u.user_id.to_string()).collect();
    inserted_ids.sort();
    assert_eq!(batch_events, inserted_ids);

    // … and every user stored, before the batch and by it, is announced exactly once.
    let stored = user_ids(&app).await;
    assert_eq!(stored.len(), 2 + inserted.len());
    let announced = user_created_events(&mut events, stored.len()).await;
    assert_no_more_deliveries(&mut events, std::time::Duration::from_millis(500)).await;
    let mut announced_ids: Vec<String> = announced.keys().cloned().collect();
    announced_ids.sort();
    assert_eq!(announced_ids, stored);
    assert!(announced.values().all(|&n| n == 1), "{announced:?}");
}
