//! The `users` table. Users and their `user_created` events are written in one transaction, a
//! batch of CreateUser calls at a time.

use std::{collections::HashMap, sync::Arc};

use messaging::{Dispatcher, Envelope, EventContext, outbox};
use service_kit::{
    pagination::{self, PageToken},
    repository::{CorruptRow, RepositoryError},
};
use sqlx::{PgConnection, PgExecutor, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::{
    domain::{NewUser, Plan, User},
    wire,
};

const COLUMNS: &str = "user_id, email, name, plan, create_time, correlation_id";

#[derive(sqlx::FromRow)]
struct UserRow {
    user_id: Uuid,
    email: String,
    name: String,
    plan: String,
    create_time: chrono::DateTime<chrono::Utc>,
    correlation_id: Option<String>,
}

/// Why a user was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    /// Another user has this e-mail address (in any case).
    #[error("a user with this e-mail address already exists")]
    EmailTaken,
    /// The `request_id` was used before by a call that asked for something else.
    #[error("the request_id was already used for a different request")]
    RequestIdReused,
    /// The database is unavailable: the batch this call was part of failed with this, and so
    /// did every other call of it.
    #[error("the database is unavailable")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// The user this call ran into was gone before it could be read (deleted in between), on
    /// every attempt: a retry will find what is there then.
    #[error("the user this request conflicts with changed while it was read")]
    ConflictVanished,
    /// The writer stopped before taking or answering the call: the service is shutting down.
    #[error("the service is stopping")]
    Stopped,
    /// The database failed, or a row is corrupt.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

impl From<sqlx::Error> for CreateUserError {
    fn from(error: sqlx::Error) -> Self {
        Self::Repository(error.into())
    }
}

impl From<CorruptRow> for CreateUserError {
    fn from(error: CorruptRow) -> Self {
        Self::Repository(error.into())
    }
}

impl TryFrom<UserRow> for User {
    type Error = CorruptRow;

    fn try_from(row: UserRow) -> Result<Self, Self::Error> {
        let plan = Plan::from_db(&row.plan).ok_or_else(|| CorruptRow {
            table: "users",
            id: row.user_id,
            column: "plan",
            value: row.plan.clone(),
        })?;
        Ok(Self {
            user_id: row.user_id,
            email: row.email,
            name: row.name,
            plan,
            create_time: row.create_time,
            correlation_id: row.correlation_id,
        })
    }
}

/// One CreateUser call: the user asked for, and the context its `user_created` event carries.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub new_user: NewUser,
    pub context: EventContext,
}

/// The user a CreateUser call is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// The call created this user (and its `user_created` event): a new flow.
    Created(User),
    /// A call with the same `request_id` created this user before: a replay, nothing new.
    Replayed(User),
}

impl Registered {
    /// The user, however it came to be.
    pub fn user(&self) -> &User {
        match self {
            Self::Created(user) | Self::Replayed(user) => user,
        }
    }

    /// The user, however it came to be.
    pub fn into_user(self) -> User {
        match self {
            Self::Created(user) | Self::Replayed(user) => user,
        }
    }
}

/// What one transaction of [`create_batch`] committed.
#[derive(Debug)]
pub struct CreatedBatch {
    /// Each call's answer, in the order of the calls.
    pub outcomes: Vec<Result<Registered, CreateUserError>>,
    /// The `user_created` events of the users it created, committed in the outbox with them.
    pub events: Vec<Envelope>,
}

/// Creates the users of `calls` and queues their `user_created` events in one transaction: one
/// insert of every user, one look-up of the rows the calls that were not inserted ran into, one
/// insert of the outbox rows (and a second insert and look-up only for a call whose conflicting
/// row vanished in between). Each call gets its own answer: its new user
/// ([`Registered::Created`]); with a `request_id` seen before, the user that request created
/// (even earlier in this batch; [`Registered::Replayed`]), or
/// [`CreateUserError::RequestIdReused`] when that request asked for something else;
/// [`CreateUserError::EmailTaken`] when another user (even earlier in this batch) has the
/// address. The error is the transaction's: nothing was written. With a `dispatcher`, the
/// events are written for it to publish once committed (hand it [`CreatedBatch::events`]);
/// without, they are due at once for any relay. Errors are logged where they
/// become a status, by whose fault they are (an e-mail taken is the client's).
#[tracing::instrument(skip_all, fields(calls = calls.len()))]
pub async fn create_batch(
    pool: &PgPool,
    calls: &[CreateRequest],
    dispatcher: Option<&Dispatcher>,
) -> Result<CreatedBatch, RepositoryError> {
    let user_ids: Vec<Uuid> = calls.iter().map(|_| Uuid::new_v4()).collect();
    let mut answers: Vec<Option<Answer>> = calls.iter().map(|_| None).collect();
    // Addresses are ASCII, so this is the order of the `lower(email)` index: batches of several
    // instances that share addresses take them in one order and wait on each other instead of
    // deadlocking (their request_ids can still cross, and a deadlock then fails one batch).
    // The sort is stable: of two calls with one address, the earlier wins.
    let mut pending: Vec<usize> = (0..calls.len()).collect();
    pending.sort_by_cached_key(|&call| calls[call].new_user.email.as_str().to_ascii_lowercase());

    let mut tx = pool.begin().await?;
    // A call whose conflicting row is gone by the look-up (deleted in between) is inserted again
    // in a second round; if that happens twice, it is answered `ConflictVanished`, never with a
    // guess.
    for _ in 0..INSERT_ROUNDS {
        if pending.is_empty() {
            break;
        }
        for (call, row) in insert_users(&mut tx, calls, &user_ids, &pending).await? {
            answers[call] = Some(Answer::Created(row.try_into()?));
        }
        pending.retain(|&call| answers[call].is_none());
        for (call, outcome) in conflicts(&mut tx, calls, &pending).await? {
            answers[call] = Some(Answer::Conflict(outcome));
        }
        pending.retain(|&call| answers[call].is_none());
    }
    let events: Vec<Envelope> = answers
        .iter()
        .zip(calls)
        .filter_map(|(answer, call)| match answer {
            Some(Answer::Created(user)) => {
                Some(Envelope::new(&wire::user_created(user), &call.context))
            }
            _ => None,
        })
        .collect();
    match dispatcher {
        Some(dispatcher) => dispatcher.enqueue(&mut tx, &events).await?,
        None => outbox::enqueue_all(&mut tx, &events).await?,
    }
    tx.commit().await?;

    let outcomes = answers
        .into_iter()
        .zip(calls)
        .map(|(answer, call)| match answer {
            Some(Answer::Created(user)) => {
                tracing::debug!(
                    user_id = %user.user_id,
                    correlation_id = %call.context.correlation_id,
                    "user created"
                );
                Ok(Registered::Created(user))
            }
            Some(Answer::Conflict(outcome)) => outcome,
            None => Err(CreateUserError::ConflictVanished),
        })
        .collect();
    Ok(CreatedBatch { outcomes, events })
}

/// How many times a batch inserts a call whose conflicting row vanished before it was read.
const INSERT_ROUNDS: usize = 2;

/// What became of one call of a batch.
enum Answer {
    /// It inserted this user.
    Created(User),
    /// It ran into an existing user: the answer that user makes.
    Conflict(Result<Registered, CreateUserError>),
}

/// Inserts the users of the calls at `positions` (into `calls`) in one statement, skipping those
/// that run into an existing user's `request_id` or address (or an earlier one's of the same
/// statement). The position and row of each user inserted.
async fn insert_users(
    connection: &mut PgConnection,
    calls: &[CreateRequest],
    user_ids: &[Uuid],
    positions: &[usize],
) -> Result<Vec<(usize, UserRow)>, sqlx::Error> {
    let rows: Vec<UserRow> = sqlx::query_as(&format!(
        "insert into users \
           (user_id, email, name, plan, request_id, correlation_id, request_fingerprint) \
         select user_id, email, name, plan, request_id, correlation_id, \
                create_user_request_fingerprint(email, name, plan) \
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[]) \
           as call (user_id, email, name, plan, request_id, correlation_id) \
         on conflict do nothing \
         returning {COLUMNS}"
    ))
    .bind(positions.iter().map(|&at| user_ids[at]).collect::<Vec<_>>())
    .bind(column(calls, positions, |call| {
        call.new_user.email.as_str()
    }))
    .bind(column(calls, positions, |call| call.new_user.name.as_str()))
    .bind(column(calls, positions, |call| call.new_user.plan.as_str()))
    .bind(
        positions
            .iter()
            .map(|&at| calls[at].new_user.request_id)
            .collect::<Vec<_>>(),
    )
    .bind(column(calls, positions, |call| {
        call.context.correlation_id.as_str()
    }))
    .fetch_all(connection)
    .await?;
    let position: HashMap<Uuid, usize> = positions.iter().map(|&at| (user_ids[at], at)).collect();
    Ok(rows
        .into_iter()
        .filter_map(|row| Some((*position.get(&row.user_id)?, row)))
        .collect())
}

/// One text field of the calls at `positions`, as a column for `unnest`.
fn column<'a>(
    calls: &'a [CreateRequest],
    positions: &[usize],
    field: fn(&'a CreateRequest) -> &'a str,
) -> Vec<&'a str> {
    positions.iter().map(|&at| field(&calls[at])).collect()
}

#[derive(sqlx::FromRow)]
struct ConflictRow {
    /// Which of the looked-up calls ran into this user, from 1.
    ordinal: i64,
    #[sqlx(flatten)]
    user: UserRow,
    /// The user has the call's `request_id` (else only its address).
    same_request_id: bool,
    /// The user was created by a call that asked for the same as this one.
    same_request: bool,
}

/// The answer of each call at `positions` (into `calls`) that was not inserted, from the users it
/// ran into, in one statement: the user of its `request_id` if any (that user when the request
/// was the same, `RequestIdReused` when not), else `EmailTaken` when a user has its address.
/// A call that runs into nobody (the user it ran into was deleted since) has no answer.
async fn conflicts(
    connection: &mut PgConnection,
    calls: &[CreateRequest],
    positions: &[usize],
) -> Result<Vec<(usize, Result<Registered, CreateUserError>)>, RepositoryError> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<ConflictRow> = sqlx::query_as(
        "select call.ordinal, \
           users.user_id, users.email, users.name, users.plan, users.create_time, \
           users.correlation_id, \
           coalesce(users.request_id = call.request_id, false) as same_request_id, \
           coalesce(users.request_fingerprint, \
                    create_user_request_fingerprint(users.email, users.name, users.plan)) \
             = create_user_request_fingerprint(call.email, call.name, call.plan) as same_request \
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) with ordinality \
           as call (request_id, email, name, plan, ordinal) \
         join users \
           on users.request_id = call.request_id or lower(users.email) = lower(call.email)",
    )
    .bind(
        positions
            .iter()
            .map(|&at| calls[at].new_user.request_id)
            .collect::<Vec<_>>(),
    )
    .bind(column(calls, positions, |call| {
        call.new_user.email.as_str()
    }))
    .bind(column(calls, positions, |call| call.new_user.name.as_str()))
    .bind(column(calls, positions, |call| call.new_user.plan.as_str()))
    .fetch_all(&mut *connection)
    .await?;

    let mut answers = HashMap::new();
    for row in rows {
        let Some(&position) = usize::try_from(row.ordinal - 1)
            .ok()
            .and_then(|index| positions.get(index))
        else {
            continue;
        };
        if row.same_request_id {
            // The request_id's user answers, whatever else the call ran into.
            let outcome = if row.same_request {
                Ok(Registered::Replayed(User::try_from(row.user)?))
            } else {
                Err(CreateUserError::RequestIdReused)
            };
            answers.insert(position, outcome);
        } else {
            answers
                .entry(position)
                .or_insert(Err(CreateUserError::EmailTaken));
        }
    }
    Ok(answers.into_iter().collect())
}

/// The user with this id, if any.
#[tracing::instrument(skip(executor))]
pub async fn find(
    executor: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Option<User>, RepositoryError> {
    let row: Option<UserRow> =
        sqlx::query_as(&format!("select {COLUMNS} from users where user_id = $1"))
            .bind(user_id)
            .fetch_optional(executor)
            .await?;
    Ok(row.map(User::try_from).transpose()?)
}

/// Up to `limit` users whose CreateUser call had `correlation_id`, after `after`, oldest first.
pub async fn list_by_correlation_id(
    executor: impl PgExecutor<'_>,
    correlation_id: &str,
    after: Option<PageToken>,
    limit: i64,
) -> Result<Vec<User>, RepositoryError> {
    let mut query = QueryBuilder::new(format!(
        "select {COLUMNS} from users where correlation_id = "
    ));
    query.push_bind(correlation_id);
    pagination::push_keyset_page(&mut query, "user_id", after, limit);
    let rows: Vec<UserRow> = query.build_query_as().fetch_all(executor).await?;
    Ok(rows
        .into_iter()
        .map(User::try_from)
        .collect::<Result<_, _>>()?)
}
