//! What a CreateUser call that created no user tells the run: either the service rejected it
//! because it is saturated (`RESOURCE_EXHAUSTED`, back-pressure, reported apart as rejected
//! calls, with the wait the service asked for in a `google.rpc.RetryInfo` detail), or the call
//! failed for another reason.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The longest a caller waits after a rejection, whatever the service asked: a longer wait is
/// a service's mistake, and would keep a run of a fixed number of users from ending.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Why a call created no user.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// `RESOURCE_EXHAUSTED`: the service is saturated. `retry_after` is the delay its
    /// `RetryInfo` asked for (at most [`MAX_RETRY_DELAY`]), if it sent one.
    Rejected { retry_after: Option<Duration> },
    /// Any other status.
    Failed { code: Code, message: String },
}

impl Refusal {
    pub(crate) fn of(status: &Status) -> Self {
        if status.code() != Code::ResourceExhausted {
            return Self::Failed {
                code: status.code(),
                message: status.message().to_owned(),
            };
        }
        let retry_after = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .map(|delay| delay.min(MAX_RETRY_DELAY));
        Self::Rejected { retry_after }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn resource_exhausted_is_a_rejection_with_the_delay_the_service_asked_for() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "saturated",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(250))),
        );

        assert_eq!(
            Refusal::of(&status),
            Refusal::Rejected {
                retry_after: Some(Duration::from_millis(250))
            }
        );
    }

    #[test]
    fn resource_exhausted_without_retry_info_is_a_rejection_without_a_delay() {
        let status = Status::resource_exhausted("the server is at its limit of calls in flight");

        assert_eq!(
            Refusal::of(&status),
            Refusal::Rejected { retry_after: None }
        );
    }

    #[test]
    fn a_retry_delay_beyond_the_cap_is_cut_to_it() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "saturated",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3600))),
        );

        assert_eq!(
            Refusal::of(&status),
            Refusal::Rejected {
                retry_after: Some(MAX_RETRY_DELAY)
            }
        );
    }

    #[test]
    fn any_other_status_is_a_failure() {
        let status = Status::unavailable("connection refused");

        assert_eq!(
            Refusal::of(&status),
            Refusal::Failed {
                code: Code::Unavailable,
                message: "connection refused".to_owned()
            }
        );
    }
}
