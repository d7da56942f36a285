//! The error of every repository: the database failed, or a row holds a value the code never
//! writes. Both API handlers and event handlers map it.

use messaging::{HandlerError, consumer::BatchFailure};

use crate::error::ApiError;

/// A row that does not map to the domain.
#[derive(Debug, thiserror::Error)]
#[error("{table} row {id} holds an unknown {column} {value:?}")]
pub struct CorruptRow {
    pub table: &'static str,
    pub id: uuid::Uuid,
    pub column: &'static str,
    pub value: String,
}

/// Everything a repository query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRow),
}

impl From<RepositoryError> for HandlerError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::Database(error) => error.into(),
            RepositoryError::Corrupt(error) => Self::Permanent(error.into()),
        }
    }
}

/// A statement an event handler made for a whole batch failed: which message is at fault is not
/// known.
impl From<RepositoryError> for BatchFailure {
    fn from(error: RepositoryError) -> Self {
        Self {
            at: None,
            error: error.into(),
        }
    }
}

impl From<RepositoryError> for ApiError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::Database(error) => error.into(),
            RepositoryError::Corrupt(error) => Self::Internal(error.into()),
        }
    }
}
