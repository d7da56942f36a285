//! The `users` table. A user and its `user_created` event are written in one transaction.

use messaging::{Envelope, EventContext, outbox};
use service_kit::{
    pagination::{self, PageToken},
    repository::{CorruptRow, RepositoryError},
};
use sqlx::{PgExecutor, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::{
    domain::{NewUser, Plan, User},
    wire,
};

/// The unique index on `lower(email)`.
const EMAIL_KEY: &str = "users_email_key";

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

/// Creates the user and queues its `user_created` event in the same transaction. With a
/// `request_id` that was seen before, returns the user that request created instead, or refuses
/// the call when that request asked for something else: the insert trips over the request_id's
/// unique index, so a first call pays no lookup. Errors are logged where they become a status, by whose fault they are (an e-mail
/// taken is the client's).
#[tracing::instrument(skip_all)]
pub async fn create(
    pool: &PgPool,
    new_user: &NewUser,
    context: &EventContext,
) -> Result<User, CreateUserError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query_as::<_, UserRow>(&format!(
        "insert into users \
           (user_id, email, name, plan, request_id, correlation_id, request_fingerprint) \
         values ($1, $2, $3, $4, $5, $6, create_user_request_fingerprint($2, $3, $4)) \
         returning {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(new_user.email.as_str())
    .bind(new_user.name.as_str())
    .bind(new_user.plan.as_str())
    .bind(new_user.request_id)
    .bind(&context.correlation_id)
    .fetch_one(&mut *tx)
    .await;

    let user = match inserted {
        Ok(row) => User::try_from(row)?,
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            drop(tx);
            // A concurrent call with the same request_id may have won the race; its user is
            // the answer, whichever unique index fired first.
            match replayed(pool, new_user).await? {
                Some(Replay::SameRequest(user)) => return Ok(user),
                Some(Replay::OtherRequest) => return Err(CreateUserError::RequestIdReused),
                None => {}
            }
            if error.constraint() == Some(EMAIL_KEY) {
                return Err(CreateUserError::EmailTaken);
            }
            return Err(sqlx::Error::Database(error).into());
        }
        Err(error) => return Err(error.into()),
    };

    outbox::enqueue(&mut tx, &Envelope::new(&wire::user_created(&user), context)).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.user_id, "user created");
    Ok(user)
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

/// What an earlier call with the same `request_id` left behind.
enum Replay {
    /// It asked for the same: its user is the answer.
    SameRequest(User),
    /// It asked for something else; its user is none of this caller's business.
    OtherRequest,
}

#[derive(sqlx::FromRow)]
struct ReplayRow {
    #[sqlx(flatten)]
    user: UserRow,
    same_request: bool,
}

/// What an earlier call with the same `request_id` created, if any, and whether it asked for
/// the same as `new_user`.
async fn replayed(pool: &PgPool, new_user: &NewUser) -> Result<Option<Replay>, RepositoryError> {
    let Some(request_id) = new_user.request_id else {
        return Ok(None);
    };
    let row = sqlx::query_as::<_, ReplayRow>(&format!(
        "select {COLUMNS}, \
           coalesce(request_fingerprint, create_user_request_fingerprint(email, name, plan)) \
             = create_user_request_fingerprint($2, $3, $4) as same_request \
         from users where request_id = $1"
    ))
    .bind(request_id)
    .bind(new_user.email.as_str())
    .bind(new_user.name.as_str())
    .bind(new_user.plan.as_str())
    .fetch_optional(pool)
    .await?;
    match row {
        None => Ok(None),
        Some(row) if row.same_request => Ok(Some(Replay::SameRequest(row.user.try_into()?))),
        Some(_) => Ok(Some(Replay::OtherRequest)),
    }
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
