//! The `order.v1.OrderService` gRPC API.

use proto::order::v1::{
    GetOrderRequest, GetOrderResponse, ListOrdersRequest, ListOrdersResponse,
    order_service_server::OrderService,
};
use service_kit::{
    ApiError,
    pagination::{self, PageToken},
    text_field,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::repository;

/// The gRPC service over the orders database.
#[derive(Debug, Clone)]
pub struct OrderApi {
    pool: PgPool,
}

impl OrderApi {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all, fields(order_id = ?request.get_ref().order_id))]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let order_id = text_field::uuid("order_id", &request.get_ref().order_id)
            .map_err(|v| ApiError::InvalidArgument(vec![v]))?;
        let order = repository::find(&self.pool, order_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("no order with id {order_id}")))?;
        Ok(Response::new(GetOrderResponse {
            order: Some(order.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = ?request.get_ref().user_id))]
    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let request = request.get_ref();
        let mut violations = Vec::new();
        let user_id = text_field::uuid("user_id", &request.user_id)
            .map_err(|violation| violations.push(violation))
            .ok();
        let page = pagination::page(request.page_size, &request.page_token, &mut violations);
        let (Some(user_id), Some(page)) = (user_id, page) else {
            return Err(ApiError::InvalidArgument(violations).into());
        };
        let rows = repository::list_for_user(&self.pool, user_id, page.after, page.size + 1)
            .await
            .map_err(ApiError::from)?;
        let (orders, next_page_token) = pagination::paginate(rows, page.size, |order| PageToken {
            create_time: order.create_time,
            id: order.order_id,
        });
        Ok(Response::new(ListOrdersResponse {
            orders: orders.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
