//! `eventsctl trace`: one user's flow as a timeline, from the three services' read APIs, found by
//! user id or by the flow's correlation id.

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use proto::{
    order::v1::{ListOrdersRequest, OrderStatus, order_service_client::OrderServiceClient},
    payment::v1::{
        ListPaymentsRequest, PaymentStatus, payment_service_client::PaymentServiceClient,
    },
    user::v1::{GetUserRequest, ListUsersRequest, User, user_service_client::UserServiceClient},
};
use serde_json::json;
use tonic::{Code, transport::Channel};

/// Where the services' gRPC APIs are.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) user: String,
    pub(crate) order: String,
    pub(crate) payment: String,
}

/// One step of the flow.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    at: DateTime<Utc>,
    what: String,
}

async fn connect(address: &str, service: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(address.to_owned())
        .with_context(|| format!("{address:?} is not a valid {service} address"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach the {service} at {address}"))
}

fn time(timestamp: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp?;
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

/// The user `id` names: a user id, or else the correlation id of the user's CreateUser call.
async fn find_user(users: Channel, id: &str) -> anyhow::Result<User> {
    let mut client = UserServiceClient::new(users);
    let by_id = client
        .get_user(GetUserRequest {
            user_id: id.to_owned(),
        })
        .await;
    match by_id {
        Ok(response) => response
            .into_inner()
            .user
            .context("the user service returned no user"),
        Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => client
            .list_users(ListUsersRequest {
                correlation_id: id.to_owned(),
                ..ListUsersRequest::default()
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!("users of correlation id {id}: {}", status.message())
            })?
            .into_inner()
            .users
            .into_iter()
            .next()
            .with_context(|| format!("no user has the id or the correlation id {id:?}")),
        Err(status) => Err(anyhow::anyhow!("user {id}: {}", status.message())),
    }
}

/// Prints the timeline of the flow of the user `id` names (a user id or a correlation id) to
/// `out`, as text or as JSON.
pub(crate) async fn trace(
    endpoints: &Endpoints,
    id: &str,
    json_output: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let user = find_user(connect(&endpoints.user, "user service").await?, id).await?;
    let user_id = user.user_id.as_str();
    let orders = OrderServiceClient::new(connect(&endpoints.order, "order service").await?)
        .list_orders(ListOrdersRequest {
            user_id: user_id.to_owned(),
            ..ListOrdersRequest::default()
        })
        .await
        .map_err(|status| anyhow::anyhow!("orders of {user_id}: {}", status.message()))?
        .into_inner()
        .orders;
    let payments = PaymentServiceClient::new(connect(&endpoints.payment, "payment service").await?)
        .list_payments(ListPaymentsRequest {
            user_id: user_id.to_owned(),
            ..ListPaymentsRequest::default()
        })
        .await
        .map_err(|status| anyhow::anyhow!("payments of {user_id}: {}", status.message()))?
        .into_inner()
        .payments;

    let mut steps = Vec::new();
    if let Some(at) = time(user.create_time) {
        steps.push(Step {
            at,
            what: format!(
                "user {} created: {} ({})",
                user.user_id,
                user.email,
                user.plan().as_str_name()
            ),
        });
    }
    for order in &orders {
        let amount = format!(
            "{}.{:02} {}",
            order.amount_minor / 100,
            order.amount_minor % 100,
            order.currency
        );
        if let Some(at) = time(order.create_time) {
            steps.push(Step {
                at,
                what: format!(
                    "order {} created: {amount}, PENDING_PAYMENT",
                    order.order_id
                ),
            });
        }
        if order.status() != OrderStatus::PendingPayment
            && let Some(at) = time(order.update_time)
        {
            steps.push(Step {
                at,
                what: format!("order {} {}", order.order_id, order.status().as_str_name()),
            });
        }
    }
    for payment in &payments {
        // The intent first, then the gateway's outcome: the time between is the charge's.
        if let Some(at) = time(payment.create_time) {
            steps.push(Step {
                at,
                what: format!(
                    "payment {} PROCESSING (intent recorded)",
                    payment.payment_id
                ),
            });
        }
        if payment.status() != PaymentStatus::Processing
            && let Some(at) = time(payment.process_time)
        {
            let reason = if payment.status() == PaymentStatus::Declined {
                format!(" ({})", payment.decline_reason)
            } else {
                String::new()
            };
            steps.push(Step {
                at,
                what: format!(
                    "payment {} {}{reason}",
                    payment.payment_id,
                    payment.status().as_str_name()
                ),
            });
        }
    }
    steps.sort_by_key(|step| step.at);

    if json_output {
        let timeline: Vec<_> = steps
            .iter()
            .map(|step| json!({ "time": step.at.to_rfc3339(), "event": step.what }))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({ "user_id": user_id, "timeline": timeline }))?
        )?;
        return Ok(());
    }
    let start = steps.first().map(|step| step.at);
    let mut previous = start;
    for step in &steps {
        let hop = previous
            .map(|p| (step.at - p).num_milliseconds())
            .unwrap_or(0);
        writeln!(
            out,
            "{}  {:>+7} ms  {}",
            step.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            hop,
            step.what
        )?;
        previous = Some(step.at);
    }
    if let (Some(first), Some(last)) = (start, steps.last()) {
        writeln!(out, "total {} ms", (last.at - first).num_milliseconds())?;
    }
    if orders.is_empty() {
        writeln!(
            out,
            "no order yet: is the order service consuming user_created?"
        )?;
    } else if payments.is_empty() {
        writeln!(out, "no payment yet: see `eventsctl dlq list` if it failed")?;
    }
    Ok(())
}
