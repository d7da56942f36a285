//! The error of every repository: the database failed, or a row holds a value the code never
//! writes. Both API handlers and event handlers map it.

use messaging::HandlerError;

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

impl From<RepositoryError> for ApiError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::Database(error) => error.into(),
            RepositoryError::Corrupt(error) => Self::Internal(error.into()),
        }
    }
}
