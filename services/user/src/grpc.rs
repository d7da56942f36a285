//! The `user.v1.UserService` gRPC API: converts protobuf to domain types at the edge.

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
use tonic::{Request, Response, Status};

use crate::{
    domain::NewUser,
    repository::{self, CreateUserError},
};

/// The gRPC service over the users database.
#[derive(Debug, Clone)]
pub struct UserApi {
    pool: PgPool,
}

impl UserApi {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
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
        let new_user = NewUser::parse(request.get_ref()).map_err(ApiError::InvalidArgument)?;
        let user = repository::create(&self.pool, &new_user, &context)
            .await
            .map_err(ApiError::from)?;
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

impl From<CreateUserError> for ApiError {
    fn from(error: CreateUserError) -> Self {
        match error {
            CreateUserError::EmailTaken => Self::AlreadyExists(error.to_string()),
            CreateUserError::RequestIdReused => Self::InvalidArgument(vec![Violation::new(
                "request_id",
                "was already used for a different request; \
                 send a new request_id with a new request",
            )]),
            CreateUserError::Repository(error) => error.into(),
        }
    }
}
