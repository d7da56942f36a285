//! The `order.v1.OrderService` gRPC API.

use proto::order::v1::{
    GetOrderRequest, GetOrderResponse, ListOrdersRequest, ListOrdersResponse,
    order_service_server::OrderService,
};
use service_kit::{
    ApiError,
    error::parse_uuid,
    pagination::{self, PageToken},
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
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let order_id = parse_uuid("order_id", &request.get_ref().order_id)
            .map_err(|v| ApiError::InvalidArgument(vec![v]))?;
        let order = repository::find(&self.pool, order_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("no order with id {order_id}")))?;
        Ok(Response::new(GetOrderResponse {
            order: Some(order.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let request = request.get_ref();
        let user_id = parse_uuid("user_id", &request.user_id);
        let page_size = pagination::page_size(request.page_size);
        let page_token = PageToken::decode(&request.page_token);
        let (user_id, page_size, after) = match (user_id, page_size, page_token) {
            (Ok(user_id), Ok(size), Ok(after)) => (user_id, size, after),
            (user_id, size, after) => {
                let violations = [user_id.err(), size.err(), after.err()]
                    .into_iter()
                    .flatten()
                    .collect();
                return Err(ApiError::InvalidArgument(violations).into());
            }
        };
        let rows = repository::list_for_user(&self.pool, user_id, after, page_size + 1)
            .await
            .map_err(ApiError::from)?;
        let (orders, next_page_token) = pagination::paginate(rows, page_size, |order| PageToken {
            create_time: order.create_time,
            id: order.order_id,
        });
        Ok(Response::new(ListOrdersResponse {
            orders: orders.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
