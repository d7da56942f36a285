//! Which database errors are worth retrying.

/// SQLSTATEs that mean "try again later": serialization failure, deadlock, too many
/// connections, and the server shutting down or starting up.
const TRANSIENT_SQLSTATES: &[&str] = &["40001", "40P01", "53300", "57P01", "57P02", "57P03"];

/// Whether `error` is transient: the database is unreachable or asked us to retry, as opposed to
/// the statement itself being wrong.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exceptions.
            code.starts_with("08") || TRANSIENT_SQLSTATES.contains(&code.as_ref())
        }),
        _ => false,
    }
}
