//! The `payment.v1.PaymentService` gRPC API.

use proto::payment::v1::{
    GetPaymentRequest, GetPaymentResponse, ListPaymentsRequest, ListPaymentsResponse,
    payment_service_server::PaymentService,
};
use service_kit::{
    ApiError,
    error::Violation,
    pagination::{self, PageToken},
    text_field,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::repository::{self, PaymentFilter};

/// The gRPC service over the payments database.
#[derive(Debug, Clone)]
pub struct PaymentApi {
    pool: PgPool,
}

impl PaymentApi {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    #[tracing::instrument(skip_all, fields(payment_id = ?request.get_ref().payment_id))]
    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        let payment_id = text_field::uuid("payment_id", &request.get_ref().payment_id)
            .map_err(|violation| ApiError::InvalidArgument(vec![violation]))?;
        let payment = repository::find(&self.pool, payment_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("no payment with id {payment_id}")))?;
        Ok(Response::new(GetPaymentResponse {
            payment: Some(payment.into()),
        }))
    }

    #[tracing::instrument(
        skip_all,
        fields(user_id = ?request.get_ref().user_id, order_id = ?request.get_ref().order_id)
    )]
    async fn list_payments(
        &self,
        request: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        let request = request.get_ref();
        let mut violations = Vec::new();
        let mut optional_uuid = |field, raw| {
            text_field::optional_uuid(field, raw)
                .map_err(|violation| violations.push(violation))
                .ok()
                .flatten()
        };
        let user_id = optional_uuid("user_id", &request.user_id);
        let order_id = optional_uuid("order_id", &request.order_id);
        if violations.is_empty() && user_id.is_none() && order_id.is_none() {
            violations.push(Violation::new("user_id", "user_id or order_id is required"));
            violations.push(Violation::new(
                "order_id",
                "user_id or order_id is required",
            ));
        }
        let page = pagination::page(request.page_size, &request.page_token, &mut violations);
        let Some(page) = page.filter(|_| violations.is_empty()) else {
            return Err(ApiError::InvalidArgument(violations).into());
        };

        let filter = PaymentFilter { user_id, order_id };
        let rows = repository::list(&self.pool, filter, page.after, page.size + 1)
            .await
            .map_err(ApiError::from)?;
        let (payments, next_page_token) =
            pagination::paginate(rows, page.size, |payment| PageToken {
                create_time: payment.create_time,
                id: payment.payment_id,
            });
        Ok(Response::new(ListPaymentsResponse {
            payments: payments.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
