//! Group commit: the CreateUser calls written in one transaction each get their own answer, and
//! exactly the users created get one `user_created` each.

use std::collections::HashMap;

use futures_util::FutureExt;
use lapin::Consumer;
use messaging::Envelope;
use prost::Message;
use proto::user::v1::{CreateUserRequest, UserCreated};
use test_support::{assert_no_more_deliveries, http_get, new_context, next_delivery};
use tonic::Code;
use user_service::{
    domain::{NewUser, Plan, User},
    flows::{FlowsInFlight, Slot},
    repository::{self, CreateRequest, CreateUserError, Registered},
    writer::{self, Writer},
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
    let mut created = repository::create_batch(&app.db, &[call], None)
        .await
        .expect("committed");
    match created.outcomes.remove(0).expect("created") {
        Registered::Created(user) => user,
        replayed => panic!("not created: {replayed:?}"),
    }
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
    let created = repository::create_batch(&app.db, &calls, None)
        .await
        .expect("committed");

    // Assert: each call's own answer, a new user told from a replay's.
    let outcomes = created.outcomes;
    assert_eq!(outcomes.len(), calls.len());
    let user = |at: usize| match &outcomes[at] {
        Ok(Registered::Created(user)) => user.clone(),
        Ok(Registered::Replayed(user)) => panic!("call {at} replayed user {}", user.user_id),
        Err(error) => panic!("call {at} failed: {error}"),
    };
    let replayed = |at: usize| match &outcomes[at] {
        Ok(Registered::Replayed(user)) => user.clone(),
        Ok(Registered::Created(user)) => panic!("call {at} created user {}", user.user_id),
        Err(error) => panic!("call {at} failed: {error}"),
    };
    let refused = |at: usize| match &outcomes[at] {
        Ok(registered) => panic!(
            "call {at} was answered with user {}",
            registered.user().user_id
        ),
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
    assert_eq!(replayed(4), earlier, "a replay gets the committed original");
    assert!(matches!(refused(5), CreateUserError::RequestIdReused));
    let new = user(6);
    assert_eq!(new.email, "new@example.com");
    assert_eq!(
        replayed(7),
        new,
        "a replay gets the original of its own batch"
    );
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

#[tokio::test]
async fn a_batch_the_database_refuses_is_written_call_by_call_and_only_the_bad_call_fails() {
    // Arrange: the database refuses one of the users (as it would any row it cannot take).
    let app = spawn_app().await;
    sqlx::query(
        "create function refuse_one() returns trigger language plpgsql as $$ \
         begin \
           if new.name = 'Refused' then raise exception 'refused by the test'; end if; \
           return new; \
         end $$",
    )
    .execute(&app.db)
    .await
    .expect("function");
    sqlx::query(
        "create trigger refuse_one before insert on users \
         for each row execute function refuse_one()",
    )
    .execute(&app.db)
    .await
    .expect("trigger");
    let calls = vec![
        call("first@example.com", "First", None),
        call("refused@example.com", "Refused", None),
        call("last@example.com", "Last", None),
    ];

    // Act
    let outcomes = writer::write(&app.db, &calls, None).await;

    // Assert
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(
        matches!(outcomes[1], Err(CreateUserError::Repository(_))),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    assert_eq!(app.user_rows().await, 2);
}

#[tokio::test]
async fn when_the_database_is_unavailable_every_call_of_the_batch_gets_that_error() {
    // Arrange: a pool that can no longer reach the database.
    let app = spawn_app().await;
    let pool = app.db.clone();
    pool.close().await;
    let calls = vec![
        call("one@example.com", "One", None),
        call("two@example.com", "Two", None),
    ];

    // Act
    let outcomes = writer::write(&pool, &calls, None).await;

    // Assert: the batch's error for each, not one attempt per call.
    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Err(CreateUserError::Unavailable(_))),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn a_call_whose_caller_went_away_is_written_and_the_writer_goes_on() {
    // Arrange: a call handed to a writer that is not running yet, then abandoned.
    let app = spawn_app().await;
    let (writer, writing) = Writer::new(app.db.clone(), 64, None);
    let mut abandoned = Box::pin(writer.create(
        new_user("gone@example.com", "Gone", None),
        new_context(),
        Slot::unlimited(),
    ));
    assert!((&mut abandoned).now_or_never().is_none(), "handed over");
    drop(abandoned);
    let writing = tokio::spawn(writing);

    // Act
    let next = writer
        .create(
            new_user("next@example.com", "Next", None),
            new_context(),
            Slot::unlimited(),
        )
        .await;

    // Assert
    assert!(next.is_ok(), "{next:?}");
    let emails: Vec<String> = sqlx::query_scalar("select email from users order by email")
        .fetch_all(&app.db)
        .await
        .expect("users");
    assert_eq!(emails, ["gone@example.com", "next@example.com"]);
    drop(writer);
    writing
        .await
        .expect("the writer ends once its handles are gone");
}

#[tokio::test]
async fn the_writer_answers_every_call_it_took_before_it_ends() {
    // Arrange: three calls handed over, and no handle left to send more.
    let app = spawn_app().await;
    let (writer, writing) = Writer::new(app.db.clone(), 64, None);
    let mut calls: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let writer = writer.clone();
            Box::pin(async move {
                writer
                    .create(
                        new_user(&format!("{name}@example.com"), name, None),
                        new_context(),
                        Slot::unlimited(),
                    )
                    .await
            })
        })
        .collect();
    for call in &mut calls {
        assert!(call.now_or_never().is_none(), "handed over");
    }
    drop(writer);

    // Act
    let writing = tokio::spawn(writing);
    let outcomes = futures_util::future::join_all(calls).await;

    // Assert
    for outcome in &outcomes {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    writing.await.expect("the writer ends");
    assert_eq!(app.user_rows().await, 3);
}

#[tokio::test]
async fn the_writer_tracks_the_flow_of_each_call_that_created_a_user_and_of_no_other() {
    // Arrange
    let app = spawn_app().await;
    let flows = FlowsInFlight::new(10, std::time::Duration::from_secs(60));
    let (writer, writing) = Writer::new(app.db.clone(), 64, None);
    let writing = tokio::spawn(writing);
    let create = |email: &str, request_id: Option<Uuid>| {
        writer.create(
            new_user(email, "Ada", request_id),
            new_context(),
            flows.reserve().expect("a slot"),
        )
    };
    let request_id = Uuid::new_v4();

    // Act: a new user, its replay, a call whose address is taken, a call whose caller went
    // away once it was handed over, and one more new user.
    let created = create("ada@example.com", Some(request_id))
        .await
        .expect("created");
    let replayed = create("ada@example.com", Some(request_id))
        .await
        .expect("replayed");
    let taken = create("ADA@example.com", None).await;
    let mut abandoned = Box::pin(create("gone@example.com", None));
    assert!((&mut abandoned).now_or_never().is_none(), "handed over");
    drop(abandoned);
    let last = create("last@example.com", None).await.expect("created");

    // Assert: the new users' flows, the abandoned call's included, and nothing else.
    assert!(matches!(created, Registered::Created(_)), "{created:?}");
    assert!(matches!(replayed, Registered::Replayed(_)), "{replayed:?}");
    assert!(
        matches!(taken, Err(CreateUserError::EmailTaken)),
        "{taken:?}"
    );
    assert_eq!(flows.count(), 3);
    assert!(flows.complete(created.user().user_id));
    assert!(flows.complete(last.user().user_id));
    assert_eq!(flows.count(), 1, "the abandoned call's user");
    drop(writer);
    writing.await.expect("the writer ends");
}

/// What one of the concurrent calls should get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expected {
    /// A user of its own.
    NewUser,
    /// One of the calls of its group gets a new user, every other ALREADY_EXISTS.
    OneOfTwins(usize),
    AlreadyExists,
    /// The user created before.
    Original,
    /// INVALID_ARGUMENT naming the request_id.
    RequestIdReused,
    /// One user, the same for every call of the group.
    SameAsReplays,
}

#[tokio::test]
async fn fifty_concurrent_create_user_calls_each_get_their_own_answer() {
    // Arrange: two users before, and fifty calls, some in conflict with them or each other.
    let app = spawn_app().await;
    let mut events = app.capture("user_created").await;
    let request = |email: &str, name: &str, request_id: &str| CreateUserRequest {
        email: email.into(),
        name: name.into(),
        request_id: request_id.into(),
        ..CreateUserRequest::default()
    };
    let (earlier_request, later_request) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    app.create_user("existing@example.com", "Existing")
        .await
        .expect("created");
    let original = app
        .client
        .clone()
        .create_user(request("earlier@example.com", "Earlier", &earlier_request))
        .await
        .expect("created")
        .into_inner()
        .user
        .expect("a user");
    let mut calls = Vec::new();
    for n in 0..30 {
        calls.push((
            request(&format!("user-{n}@example.com"), "New", ""),
            Expected::NewUser,
        ));
    }
    for pair in 0..5 {
        for email in [
            format!("twin-{pair}@example.com"),
            format!("TWIN-{pair}@example.com"),
        ] {
            calls.push((request(&email, "Twin", ""), Expected::OneOfTwins(pair)));
        }
    }
    for _ in 0..3 {
        calls.push((
            request("Existing@example.com", "Again", ""),
            Expected::AlreadyExists,
        ));
    }
    for _ in 0..3 {
        let replay = request("earlier@example.com", "Earlier", &earlier_request);
        calls.push((replay, Expected::Original));
    }
    for name in ["Not Earlier", "Someone Else"] {
        let reuse = request("earlier@example.com", name, &earlier_request);
        calls.push((reuse, Expected::RequestIdReused));
    }
    for _ in 0..2 {
        let replay = request("later@example.com", "Later", &later_request);
        calls.push((replay, Expected::SameAsReplays));
    }
    assert_eq!(calls.len(), 50);

    // Act: all at once.
    let answers = futures_util::future::join_all(calls.iter().map(|(create, _)| {
        let mut client = app.client.clone();
        let create = create.clone();
        async move {
            client
                .create_user(create)
                .await
                .map(|r| r.into_inner().user)
        }
    }))
    .await;

    // Assert: each answer.
    let mut new_users = Vec::new();
    let mut twins_created = [0; 5];
    let mut replayed = Vec::new();
    for ((create, expected), answer) in calls.iter().zip(answers) {
        match (expected, answer) {
            (Expected::NewUser, Ok(Some(user))) => {
                assert_eq!(user.email, create.email);
                new_users.push(user.user_id);
            }
            (Expected::OneOfTwins(pair), Ok(Some(user))) => {
                assert_eq!(user.email, create.email);
                twins_created[*pair] += 1;
                new_users.push(user.user_id);
            }
            (Expected::OneOfTwins(_) | Expected::AlreadyExists, Err(status))
                if status.code() == Code::AlreadyExists => {}
            (Expected::Original, Ok(Some(user))) => assert_eq!(user, original),
            (Expected::RequestIdReused, Err(status)) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                assert_eq!(
                    test_support::hostile::violated_fields(&status),
                    ["request_id"]
                );
            }
            (Expected::SameAsReplays, Ok(Some(user))) => {
                assert_eq!(user.email, create.email);
                replayed.push(user);
            }
            (expected, answer) => panic!("{create:?}: expected {expected:?}, got {answer:?}"),
        }
    }
    assert_eq!(
        twins_created, [1; 5],
        "one of each pair of twins is created"
    );
    assert!(
        replayed.windows(2).all(|pair| pair[0] == pair[1]),
        "{replayed:?}"
    );
    new_users.push(replayed[0].user_id.clone());
    new_users.sort();
    new_users.dedup();
    assert_eq!(new_users.len(), 30 + 5 + 1);

    // Assert: every user stored is announced exactly once.
    let stored = user_ids(&app).await;
    assert_eq!(stored.len(), 2 + new_users.len());
    let announced = user_created_events(&mut events, stored.len()).await;
    assert_no_more_deliveries(&mut events, std::time::Duration::from_millis(500)).await;
    let mut announced_ids: Vec<String> = announced.keys().cloned().collect();
    announced_ids.sort();
    assert_eq!(announced_ids, stored);
    assert!(announced.values().all(|&n| n == 1), "{announced:?}");

    // Assert: the batches were measured.
    let metrics = http_get(app.metrics_addr, "/metrics").await;
    let written: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("create_user_batch_size_sum "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no create_user_batch_size in {metrics}"));
    assert!(written >= 52.0, "{written}");
}
