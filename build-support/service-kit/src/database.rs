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

/// Postgres' SQLSTATE for "database already exists".
const DUPLICATE_DATABASE: &str = "42P04";

/// Connects to the database `url` names, creating it first if it does not exist, and applies
/// `messaging::migrator()` and then `migrator`.
pub async fn connect_and_migrate(url: &SecretString, migrator: Migrator) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url.expose_secret())
        .context("DATABASE_URL is not a valid Postgres URL")?;
    create_database_if_missing(&options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("cannot connect to the service's database")?;
    migrate(&pool, migrator).await?;
    Ok(pool)
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
/// maintenance database. Losing a race with another instance creating it is fine.
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
                if error.code().as_deref() == Some(DUPLICATE_DATABASE) => {}
            Err(error) => return Err(error).context(format!("cannot create database {name}")),
        }
    }
    maintenance.close().await?;
    Ok(())
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
