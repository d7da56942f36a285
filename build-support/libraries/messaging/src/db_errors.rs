//! What a database error means for the caller: the database is gone, the statement should be
//! retried, or retrying cannot help.

/// SQLSTATEs of a database that is going away or not there yet: too many connections, admin or
/// crash shutdown, cannot connect now.
const UNAVAILABLE_SQLSTATES: &[&str] = &["53300", "57P01", "57P02", "57P03"];
/// SQLSTATEs that ask the client to retry the transaction: serialization failure, deadlock.
const RETRY_SQLSTATES: &[&str] = &["40001", "40P01"];

/// How to treat a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorClass {
    /// The database is unreachable or shutting down: wait for it.
    Unavailable,
    /// The database asked for the transaction to be retried.
    Retry,
    /// The statement itself failed; retrying will not help.
    Permanent,
}

/// Classifies `error`.
pub fn classify(error: &sqlx::Error) -> DbErrorClass {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbErrorClass::Unavailable,
        sqlx::Error::Database(db) => match db.code() {
            // Class 08: connection exceptions.
            Some(code)
                if code.starts_with("08") || UNAVAILABLE_SQLSTATES.contains(&code.as_ref()) =>
            {
                DbErrorClass::Unavailable
            }
            Some(code) if RETRY_SQLSTATES.contains(&code.as_ref()) => DbErrorClass::Retry,
            _ => DbErrorClass::Permanent,
        },
        _ => DbErrorClass::Permanent,
    }
}

/// Whether `error` is worth retrying later (unavailable or asked to retry).
pub fn is_transient(error: &sqlx::Error) -> bool {
    classify(error) != DbErrorClass::Permanent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_errors_mean_the_database_is_unavailable() {
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            DbErrorClass::Unavailable
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(&sqlx::Error::Io(io)), DbErrorClass::Unavailable);
    }

    #[test]
    fn a_missing_row_is_permanent() {
        assert_eq!(classify(&sqlx::Error::RowNotFound), DbErrorClass::Permanent);
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
