//! Database start-up: create the service's database if it is missing, connect a pool, and apply
//! the messaging tables' migrations and then the service's own.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Longest wait for a pooled connection. While the database is down, a caller waits this long
/// (the pool keeps trying to connect) before it gets `UNAVAILABLE`; a busy pool hands
/// connections over in milliseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Postgres' SQLSTATE for "database already exists".
const DUPLICATE_DATABASE: &str = "42P04";
/// What a `create database` that loses a race with another one trips over instead: the catalog's
/// unique index on database names.
const DATABASE_NAME_INDEX: &str = "pg_database_datname_index";

/// Connects to the database `url` names, creating it first if it does not exist, and applies
/// `messaging::migrator()` and then `migrator`.
pub async fn connect_and_migrate(
    url: &SecretString,
    pool_size: u32,
    migrator: Migrator,
) -> anyhow::Result<PgPool> {
    let options = session_options(
        PgConnectOptions::from_str(url.expose_secret())
            .context("DATABASE_URL is not a valid Postgres URL")?,
    );
    create_database_if_missing(&options).await?;
    let pool = pool_options(pool_size)
        .connect_with(options)
        .await
        .context("cannot connect to the service's database")?;
    migrate(&pool, migrator).await?;
    Ok(pool)
}

/// `options` with the services' session settings: every statement planned for its own
/// parameters. After a few runs Postgres may keep a prepared statement's generic plan for as long
/// as its connection lives; one made while a table was small scans the whole table ever after.
/// The set-based `= any($1)` statements did so on every batch of a fresh stack, the longer it ran
/// the costlier (test `plans` of the order service).
pub fn session_options(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("plan_cache_mode", "force_custom_plan")])
}

/// The services' pool of up to `size` connections. Each connection is checked (a round trip)
/// before it is handed out, so that after a Postgres restart a dead one is closed and replaced
/// instead of failing a caller's statement.
pub fn pool_options(size: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Applies the messaging tables' migrations and then `migrator`. Each ignores the other's
/// versions, which share the `_sqlx_migrations` table.
pub async fn migrate(pool: &PgPool, mut migrator: Migrator) -> anyhow::Result<()> {
    let mut shared = messaging::migrator();
    shared.set_ignore_missing(true);
    shared
        .run(pool)
        .await
        .context("cannot apply the messaging migrations")?;
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .context("cannot apply the service's migrations")?;
    Ok(())
}

/// Creates the database `options` names unless it exists, through the server's `postgres`
/// maintenance database. Losing a race with another instance creating it is fine (Postgres says
/// so either as "already exists" or, when both got past its check, as a unique violation on its
/// catalog); the migrations that follow run under sqlx's advisory lock, one instance at a time.
pub async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options
        .get_database()
        .context("DATABASE_URL names no database")?
        .to_owned();
    let mut maintenance = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("cannot connect to the Postgres server")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut maintenance)
            .await?;
    if !exists {
        let created = sqlx::query(&format!("create database {}", quote_identifier(&name)))
            .execute(&mut maintenance)
            .await;
        match created {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some(DUPLICATE_DATABASE)
                    || error.constraint() == Some(DATABASE_NAME_INDEX) =>
            {
                tracing::debug!(database = %name, "another instance created the database");
            }
            Err(error) => return Err(error).context(format!("cannot create database {name}")),
        }
    }
    maintenance.close().await?;
    Ok(())
}

/// How often the database is checked, and how long a check may take.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks the database every second until `stop`; the receiver says whether the last check
/// answered. Consumers pause while it is `false`, and health reports NOT_SERVING.
pub fn watch_health(
    pool: PgPool,
    stop: tokio_util::sync::CancellationToken,
) -> (
    tokio::sync::watch::Receiver<bool>,
    impl std::future::Future<Output = ()>,
) {
    let (sender, receiver) = tokio::sync::watch::channel(true);
    let task = async move {
        let mut interval = tokio::time::interval(HEALTH_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let check = sqlx::query("select 1").execute(&pool);
            let up = matches!(tokio::time::timeout(HEALTH_TIMEOUT, check).await, Ok(Ok(_)));
            let was_up = sender.send_replace(up);
            if was_up != up {
                if up {
                    tracing::info!("the database is reachable again");
                } else {
                    tracing::warn!("the database is unreachable");
                }
            }
        }
    };
    (receiver, task)
}

/// Refuses API calls with `UNAVAILABLE` at once while the database is known to be down (the
/// last check of [`watch_health`] failed), instead of letting each wait for a connection: a
/// caller learns of an outage within a second, never at its deadline.
#[derive(Debug, Clone)]
pub struct DatabaseGate {
    up: tokio::sync::watch::Receiver<bool>,
}

impl DatabaseGate {
    /// A gate following `up`.
    pub fn new(up: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { up }
    }
}

impl tonic::service::Interceptor for DatabaseGate {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if *self.up.borrow() {
            Ok(request)
        } else {
            Err(tonic::Status::unavailable(
                "the database is unreachable; retry later",
            ))
        }
    }
}

/// Quotes a Postgres identifier.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_safely() {
        assert_eq!(quote_identifier("users"), "\"users\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
