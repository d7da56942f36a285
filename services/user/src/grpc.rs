//! The `user.v1.UserService` gRPC API: converts protobuf to domain types at the edge.

use messaging::activity::Counter;
use proto::user::v1::{
    CreateUserRequest, CreateUserResponse, GetUserRequest, GetUserResponse, ListUsersRequest,
    ListUsersResponse, user_service_server::UserService,
};
use service_kit::{
    ApiError,
    error::Violation,
    pagination::{self, PageToken},
    request_context, text_field,
};
use sqlx::PgPool;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    backlog::{self, Backlog},
    domain::{NewUser, Plan},
    repository::{self, CreateUserError},
    wire,
    writer::Writer,
};

/// The gRPC service over the users database.
#[derive(Debug, Clone)]
pub struct UserApi {
    pool: PgPool,
    /// Where CreateUser calls are written, together with those that arrive at the same time.
    writer: Writer,
    /// Whether the chain has room for one more flow.
    backlog: Arc<Backlog>,
    /// The CreateUser calls answered with a user, for the service's summary line.
    calls: Counter,
}

impl UserApi {
    pub fn new(pool: PgPool, writer: Writer, backlog: Arc<Backlog>, calls: Counter) -> Self {
        Self {
            pool,
            writer,
            backlog,
            calls,
        }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    #[tracing::instrument(skip_all, fields(correlation_id))]
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let context = request_context::event_context(request.metadata())?;
        tracing::Span::current().record("correlation_id", context.correlation_id.as_str());
        let new_user = new_user(request.get_ref()).map_err(ApiError::InvalidArgument)?;
        let Some(slot) = self.backlog.admit() else {
            return Err(ApiError::ResourceExhausted {
                message: format!(
                    "the system is saturated (its limit of {} flows in the chain is reached); retry later",
                    self.backlog.limit()
                ),
                retry_after: backlog::retry_after(),
            }
            .into());
        };
        let user = self
            .writer
            .create(new_user, context, slot)
            .await
            .map_err(ApiError::from)?
            .into_user();
        self.calls.add(1);
        Ok(Response::new(CreateUserResponse {
            user: Some(user.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = ?request.get_ref().user_id))]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let user_id = text_field::uuid("user_id", &request.get_ref().user_id)
            .map_err(|violation| ApiError::InvalidArgument(vec![violation]))?;
        let user = repository::find(&self.pool, user_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("no user with id {user_id}")))?;
        Ok(Response::new(GetUserResponse {
            user: Some(user.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(correlation_id = ?request.get_ref().correlation_id))]
    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let request = request.get_ref();
        let mut violations = Vec::new();
        // Correlation ids are request ids: no longer than those.
        let correlation_id = text_field::trimmed(
            "correlation_id",
            &request.correlation_id,
            request_context::MAX_REQUEST_ID_LEN,
        )
        .and_then(|id| match id {
            "" => Err(Violation::new("correlation_id", "is required")),
            id => Ok(id),
        })
        .map_err(|violation| violations.push(violation))
        .ok();
        let page = pagination::page(request.page_size, &request.page_token, &mut violations);
        let (Some(correlation_id), Some(page)) = (correlation_id, page) else {
            return Err(ApiError::InvalidArgument(violations).into());
        };
        let rows = repository::list_by_correlation_id(
            &self.pool,
            correlation_id,
            page.after,
            page.size + 1,
        )
        .await
        .map_err(ApiError::from)?;
        let (users, next_page_token) = pagination::paginate(rows, page.size, |user| PageToken {
            create_time: user.create_time,
            id: user.user_id,
        });
        Ok(Response::new(ListUsersResponse {
            users: users.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}

/// The request's fields as a [`NewUser`], or every bad one, in the request's field order.
fn new_user(request: &CreateUserRequest) -> Result<NewUser, Vec<Violation>> {
    let plan = wire::plan_from_proto(request.plan);
    let parsed = NewUser::parse(
        &request.email,
        &request.name,
        plan.as_ref().copied().unwrap_or(Plan::Basic),
        &request.request_id,
    );
    match (parsed, plan) {
        (Ok(new_user), Ok(_)) => Ok(new_user),
        (parsed, plan) => {
            let mut violations = parsed.err().unwrap_or_default();
            if let Err(description) = plan {
                // The plan comes after the e-mail and the name, before the request_id.
                let at = violations
                    .iter()
                    .position(|violation| violation.field == "request_id")
                    .unwrap_or(violations.len());
                violations.insert(at, Violation::new("plan", description));
            }
            Err(violations)
        }
    }
}

impl From<CreateUserError> for ApiError {
    fn from(error: CreateUserError) -> Self {
        match error {
            CreateUserError::EmailTaken => Self::AlreadyExists(error.to_string()),
            CreateUserError::RequestIdReused => Self::InvalidArgument(vec![Violation::new(
                "request_id",
                "was already used for a different request; \
                 send a new request_id with a new request",
            )]),
            CreateUserError::Unavailable(error) => Self::Unavailable(error.into()),
            // A retry finds what is there by then.
            CreateUserError::ConflictVanished | CreateUserError::Stopped => {
                Self::Unavailable(error.into())
            }
            CreateUserError::Repository(error) => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(email: &str, name: &str) -> CreateUserRequest {
        CreateUserRequest {
            email: email.into(),
            name: name.into(),
            ..CreateUserRequest::default()
        }
    }

    #[test]
    fn a_request_without_a_plan_is_a_basic_new_user() {
        let user = new_user(&request("ada@example.com", "Ada")).expect("valid");
        assert_eq!(user.plan, Plan::Basic);
    }

    #[test]
    fn every_bad_field_is_reported_in_the_request_order() {
        let mut bad = request("nope", "");
        bad.plan = 99;
        bad.request_id = "not-a-uuid".into();
        let fields: Vec<_> = new_user(&bad)
            .expect_err("invalid")
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["email", "name", "plan", "request_id"]);
    }

    #[test]
    fn a_bad_plan_alone_is_reported_alone() {
        let mut bad = request("ada@example.com", "Ada");
        bad.plan = 42;
        let violations = new_user(&bad).expect_err("invalid");
        assert_eq!(violations, [Violation::new("plan", "unknown plan 42")]);
    }
}
