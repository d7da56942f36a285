//! The load: CreateUser at a steady rate with the test cards mixed in, each call with its own
//! request_id, spread over the user-service instances in turn, and the resolution of the calls
//! whose outcome was unknown by resending it (AIP-155), as a well-behaved client does: to the
//! next instance each time, so that one instance down does not hold a call up.

use std::time::Duration;

use proto::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use uuid::Uuid;

use crate::ledger::book::{Call, Calls, Card, Outcome};

/// A caller's deadline for one CreateUser.
const DEADLINE: Duration = Duration::from_secs(2);
/// How long resending an unknown call may go on.
const RESOLVE_FOR: Duration = Duration::from_secs(120);

/// A client of each user-service instance.
pub type Users = Vec<UserServiceClient<Channel>>;

/// A load running in the background until [`Load::stop`].
#[derive(Debug)]
pub struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Starts `rate` calls a second, numbered on from the calls already in `calls`, with
    /// e-mails unique to `run`, call `n` to instance `n % users.len()`.
    pub fn start(users: Users, calls: Calls, rate: u32, run: String) -> Self {
        assert!(!users.is_empty(), "a load needs a user-service instance");
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut in_flight = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopping.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let index = {
                    let mut calls = calls.lock().expect("not poisoned");
                    let n = calls.len();
                    let card = Card::for_call(n);
                    calls.push(Call {
                        email: format!("u{n}-{run}{}@ledger.test", card.suffix()),
                        request_id: Uuid::new_v4(),
                        card,
                        outcome: Outcome::InFlight,
                        resent: false,
                    });
                    n
                };
                let (users, calls) = (users[index % users.len()].clone(), calls.clone());
                in_flight.spawn(async move {
                    let call = calls.lock().expect("not poisoned")[index].clone();
                    let outcome = create_user(users, &call).await;
                    calls.lock().expect("not poisoned")[index].outcome = outcome;
                });
                while in_flight.try_join_next().is_some() {}
            }
            while in_flight.join_next().await.is_some() {}
        });
        Self { stop, task }
    }

    /// Stops calling and waits for the calls in flight.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// One CreateUser call, with the caller's deadline.
async fn create_user(mut users: UserServiceClient<Channel>, call: &Call) -> Outcome {
    let mut request = tonic::Request::new(CreateUserRequest {
        email: call.email.clone(),
        name: "Ledger User".into(),
        request_id: call.request_id.to_string(),
        ..CreateUserRequest::default()
    });
    request.set_timeout(DEADLINE);
    match users.create_user(request).await {
        Ok(response) => match response.into_inner().user.map(|u| u.user_id.parse()) {
            Some(Ok(user_id)) => Outcome::Accepted(user_id),
            other => Outcome::Rejected(format!("an answer without a user id: {other:?}")),
        },
        Err(status) if matches!(status.code(), Code::InvalidArgument | Code::AlreadyExists) => {
            Outcome::Rejected(format!("{:?}: {}", status.code(), status.message()))
        }
        Err(status) => Outcome::Unknown(format!("{:?}", status.code())),
    }
}

/// Resends every call whose outcome is unknown, with its request_id, until each is answered,
/// each time to the next instance. Returns how many there were; panics if one stays unknown for
/// two minutes.
pub async fn resolve(users: &Users, calls: &Calls) -> usize {
    let unknown: Vec<usize> = calls
        .lock()
        .expect("not poisoned")
        .iter()
        .enumerate()
        .filter(|(_, call)| matches!(call.outcome, Outcome::Unknown(_)))
        .map(|(index, _)| index)
        .collect();
    let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
    for &index in &unknown {
        for attempt in 1.. {
            let call = calls.lock().expect("not poisoned")[index].clone();
            let instance = &users[(index + attempt) % users.len()];
            let outcome = create_user(instance.clone(), &call).await;
            let known = !matches!(outcome, Outcome::Unknown(_));
            {
                let mut calls = calls.lock().expect("not poisoned");
                calls[index].outcome = outcome.clone();
                calls[index].resent = true;
            }
            if known {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "CreateUser {} still unknown after resending for {RESOLVE_FOR:?}: {outcome:?}",
                call.email
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    unknown.len()
}
