//! API errors and their one mapping to gRPC statuses.
//!
//! Validation failures become `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming every bad
//! field; a lost dependency becomes `UNAVAILABLE`; anything unexpected becomes an opaque
//! `INTERNAL`, with the cause chain in the logs only.
//!
//! Logging follows whose fault it is: a client error is logged at INFO with its code (and the
//! names of the bad fields), never its message, which may quote what the client sent (an
//! e-mail, a name); a lost dependency at WARN; an internal error at ERROR.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: &'static str,
    pub description: String,
}

impl Violation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// What an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument")]
    InvalidArgument(Vec<Violation>),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// The service is saturated: the client should try again after `retry_after`
    /// (`google.rpc.RetryInfo`).
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if messaging::db_errors::is_transient(&error) {
            Self::Unavailable(error.into())
        } else {
            Self::Internal(error.into())
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => {
                tracing::info!(
                    code = ?Code::InvalidArgument,
                    fields = ?violations.iter().map(|v| v.field).collect::<Vec<_>>(),
                    "client error"
                );
                let summary = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid argument: {summary}"),
                    details,
                )
            }
            ApiError::AlreadyExists(message) => {
                tracing::info!(code = ?Code::AlreadyExists, "client error");
                Status::already_exists(message)
            }
            ApiError::NotFound(message) => {
                tracing::info!(code = ?Code::NotFound, "client error");
                Status::not_found(message)
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable");
                Status::unavailable("a dependency is unavailable; retry later")
            }
            ApiError::ResourceExhausted {
                message,
                retry_after,
            } => {
                // The metrics count these; a line for each would flood the log when it matters.
                tracing::debug!(code = ?Code::ResourceExhausted, "refused");
                Status::with_error_details(
                    Code::ResourceExhausted,
                    message,
                    ErrorDetails::with_retry_info(Some(retry_after)),
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saturated_service_says_when_to_retry() {
        let status = Status::from(ApiError::ResourceExhausted {
            message: "busy".into(),
            retry_after: std::time::Duration::from_millis(100),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(
            retry.retry_delay,
            Some(std::time::Duration::from_millis(100))
        );
    }

    #[test]
    fn validation_names_every_field() {
        let status = Status::from(ApiError::InvalidArgument(vec![
            Violation::new("email", "is required"),
            Violation::new("name", "is required"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<_> = status
            .get_details_bad_request()
            .expect("bad request details")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["email", "name"]);
    }

    #[test]
    fn internal_errors_are_opaque() {
        let status = Status::from(ApiError::Internal(anyhow::anyhow!("secret detail")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn a_pool_timeout_is_unavailable() {
        let status = Status::from(ApiError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), Code::Unavailable);
    }
}
