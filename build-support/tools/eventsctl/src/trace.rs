//! `eventsctl trace`: the flow of one user, or of every user of one correlation id, as
//! timelines from the three services' read APIs, with the flow's dead letters read from the
//! dead-letter queues.
//!
//! It shows what the services record and nothing else. Retried attempts are not recorded
//! anywhere a read can reach (a retry is a message waiting in a retry queue for a moment, one
//! WARN log line and a metric), so the trace says where to look for them instead.

use std::{collections::BTreeSet, io::Write, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use messaging::{BrokerAddresses, Topology, topology::SUBSCRIPTIONS};
use proto::{
    order::v1::{ListOrdersRequest, Order, OrderStatus, order_service_client::OrderServiceClient},
    payment::v1::{
        ListPaymentsRequest, Payment, PaymentStatus, payment_service_client::PaymentServiceClient,
    },
    user::v1::{GetUserRequest, ListUsersRequest, User, user_service_client::UserServiceClient},
};
use serde_json::json;
use tonic::{Code, transport::Channel};

use crate::dlq::{DeadLetter, DeadLetters, Scan};

/// Where the services' gRPC APIs are.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) user: String,
    pub(crate) order: String,
    pub(crate) payment: String,
}

/// Where the flow's dead letters are, and how much of each dead-letter queue to read.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterSource {
    pub(crate) amqp_url: String,
    pub(crate) topology: Topology,
    /// Messages read at most per dead-letter queue.
    pub(crate) scan_limit: usize,
}

/// The longest the dead-letter part may take; past it, the trace prints the rest without it.
const DEAD_LETTER_PATIENCE: Duration = Duration::from_secs(30);

/// Where retried attempts can be seen, since no read API can show them.
pub(crate) const RETRIES: &str = "the services do not record retried attempts; each is one WARN \
     log line (attempt, delay, reason) with the flow's correlation_id, counted in \
     events_consumed_total{outcome=\"retried\"}; a dead letter says how many attempts it had";

/// One step of a flow; a dead letter whose headers give no time has none.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    at: Option<DateTime<Utc>>,
    what: String,
}

/// One user's flow, as the read APIs give it.
struct Flow {
    user: User,
    orders: Vec<Order>,
    payments: Vec<Payment>,
}

/// What the dead-letter queues say about the flow, or why that is unknown.
enum Findings {
    Known(Scan),
    Unknown(String),
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

/// The users `id` names: the user with that id, or else every user whose CreateUser call had
/// that correlation id, oldest first (a client may reuse its x-request-id).
async fn find_users(users: Channel, id: &str) -> anyhow::Result<Vec<User>> {
    let mut client = UserServiceClient::new(users);
    let by_id = client
        .get_user(GetUserRequest {
            user_id: id.to_owned(),
        })
        .await;
    match by_id {
        Ok(response) => Ok(vec![
            response
                .into_inner()
                .user
                .context("the user service returned no user")?,
        ]),
        Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
            let mut found = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_users(ListUsersRequest {
                        correlation_id: id.to_owned(),
                        page_token,
                        ..ListUsersRequest::default()
                    })
                    .await
                    .map_err(|status| {
                        anyhow::anyhow!("users of correlation id {id}: {}", status.message())
                    })?
                    .into_inner();
                found.extend(page.users);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            anyhow::ensure!(
                !found.is_empty(),
                "no user has the id or the correlation id {id:?}"
            );
            Ok(found)
        }
        Err(status) => Err(anyhow::anyhow!("user {id}: {}", status.message())),
    }
}

impl Flow {
    /// `user`'s orders and payments.
    async fn read(
        orders: &mut OrderServiceClient<Channel>,
        payments: &mut PaymentServiceClient<Channel>,
        user: User,
    ) -> anyhow::Result<Self> {
        let user_id = user.user_id.clone();
        let orders = orders
            .list_orders(ListOrdersRequest {
                user_id: user_id.clone(),
                ..ListOrdersRequest::default()
            })
            .await
            .map_err(|status| anyhow::anyhow!("orders of {user_id}: {}", status.message()))?
            .into_inner()
            .orders;
        let payments = payments
            .list_payments(ListPaymentsRequest {
                user_id: user_id.clone(),
                ..ListPaymentsRequest::default()
            })
            .await
            .map_err(|status| anyhow::anyhow!("payments of {user_id}: {}", status.message()))?
            .into_inner()
            .payments;
        Ok(Self {
            user,
            orders,
            payments,
        })
    }

    /// The flow's steps in time order (untimed dead letters last), its dead letters among them.
    fn steps(&self, dead_letters: &[&DeadLetter]) -> Vec<Step> {
        let user = &self.user;
        let mut steps = Vec::new();
        let mut push = |at: Option<DateTime<Utc>>, what: String| {
            if at.is_some() {
                steps.push(Step { at, what });
            }
        };
        push(
            time(user.create_time),
            format!(
                "user {} created: {} ({})",
                user.user_id,
                user.email,
                user.plan().as_str_name()
            ),
        );
        for order in &self.orders {
            let amount = format!(
                "{}.{:02} {}",
                order.amount_minor / 100,
                order.amount_minor % 100,
                order.currency
            );
            push(
                time(order.create_time),
                format!(
                    "order {} created: {amount}, PENDING_PAYMENT",
                    order.order_id
                ),
            );
            if order.status() != OrderStatus::PendingPayment {
                push(
                    time(order.update_time),
                    format!("order {} {}", order.order_id, order.status().as_str_name()),
                );
            }
        }
        for payment in &self.payments {
            // The intent first, then the gateway's outcome: the time between is the charge's.
            push(
                time(payment.create_time),
                format!(
                    "payment {} PROCESSING (intent recorded)",
                    payment.payment_id
                ),
            );
            if payment.status() != PaymentStatus::Processing {
                let reason = if payment.status() == PaymentStatus::Declined {
                    format!(" ({})", payment.decline_reason)
                } else {
                    String::new()
                };
                push(
                    time(payment.process_time),
                    format!(
                        "payment {} {}{reason}",
                        payment.payment_id,
                        payment.status().as_str_name()
                    ),
                );
            }
        }
        steps.extend(dead_letters.iter().map(|dead| Step {
            at: dead.failed_at,
            what: describe(dead),
        }));
        steps.sort_by_key(|step| (step.at.is_none(), step.at));
        steps
    }
}

/// A dead letter in one line: which, where, how it failed, after how many attempts, and why.
/// Its headers and properties are shown with control characters escaped: whoever published it
/// does not get to move the operator's cursor or colour the terminal.
fn describe(dead: &DeadLetter) -> String {
    let attempts = dead
        .attempts
        .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    format!(
        "dead letter {} in {}: {}, {} after {attempts} attempt(s): {}",
        printable(&dead.message_id),
        dead.queue,
        printable(&dead.event_type),
        printable(&dead.kind),
        printable(dead.reason.as_deref().unwrap_or("(no reason given)"))
    )
}

/// `text` with its control characters (newlines, escape sequences) escaped.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The dead letters with `correlation_id`, or why they are unknown.
async fn find_dead_letters(source: &DeadLetterSource, correlation_id: &str) -> Findings {
    if correlation_id.is_empty() {
        return Findings::Unknown("the user has no correlation id to look for".into());
    }
    let scan = async {
        let addresses = BrokerAddresses::parse(&source.amqp_url)?;
        let connection = crate::connect(&addresses).await?;
        let dead_letters = DeadLetters::new(
            &connection,
            addresses.user().to_owned(),
            source.topology.clone(),
            SUBSCRIPTIONS.iter().collect(),
        );
        let scan = dead_letters
            .of_correlation(correlation_id, source.scan_limit)
            .await;
        crate::close(connection).await;
        scan
    };
    match tokio::time::timeout(DEAD_LETTER_PATIENCE, scan).await {
        Ok(Ok(scan)) => Findings::Known(scan),
        Ok(Err(error)) => Findings::Unknown(format!("{error:#}")),
        Err(_) => Findings::Unknown(format!(
            "the broker did not answer within {DEAD_LETTER_PATIENCE:?}"
        )),
    }
}

/// Prints the flows `id` names (a user id, or a correlation id and every user of it) to `out`,
/// as text or as JSON, with the dead letters of their correlation id from `source`.
pub(crate) async fn trace(
    endpoints: &Endpoints,
    source: &DeadLetterSource,
    id: &str,
    json_output: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let users = find_users(connect(&endpoints.user, "user service").await?, id).await?;
    let mut orders = OrderServiceClient::new(connect(&endpoints.order, "order service").await?);
    let mut payments =
        PaymentServiceClient::new(connect(&endpoints.payment, "payment service").await?);
    let mut flows = Vec::with_capacity(users.len());
    for user in users {
        flows.push(Flow::read(&mut orders, &mut payments, user).await?);
    }
    // One correlation id: the one asked for, or the one user's.
    let correlation_id = flows[0].user.correlation_id.clone();
    let findings = find_dead_letters(source, &correlation_id).await;
    let found: &[DeadLetter] = match &findings {
        Findings::Known(scan) => &scan.found,
        Findings::Unknown(_) => &[],
    };
    let of_user = |flow: &Flow| -> Vec<&DeadLetter> {
        found
            .iter()
            .filter(|dead| dead.user_id.as_deref() == Some(flow.user.user_id.as_str()))
            .collect()
    };
    let traced: BTreeSet<&str> = flows.iter().map(|f| f.user.user_id.as_str()).collect();
    let unattributed: Vec<&DeadLetter> = found
        .iter()
        .filter(|dead| dead.user_id.as_deref().is_none_or(|u| !traced.contains(u)))
        .collect();

    if json_output {
        let users: Vec<_> = flows
            .iter()
            .map(|flow| {
                let dead_letters = of_user(flow);
                json!({
                    "user_id": flow.user.user_id,
                    "correlation_id": flow.user.correlation_id,
                    "timeline": flow.steps(&dead_letters).iter().map(|step| json!({
                        "time": step.at.map(|at| at.to_rfc3339()),
                        "event": step.what,
                    })).collect::<Vec<_>>(),
                    "dead_letters": dead_letters.iter().copied().map(dead_letter_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let dead_letters = match &findings {
            Findings::Known(scan) => json!({
                "status": if scan.partial.is_empty() { "complete" } else { "partial" },
                "read": scan.read,
                "scan_limit": source.scan_limit,
                "partial_queues": scan.partial.iter().map(|(queue, read, waiting)| json!({
                    "queue": queue, "read": read, "waiting": waiting,
                })).collect::<Vec<_>>(),
                "missing_queues": scan.missing,
                "unattributed": unattributed.iter().copied().map(dead_letter_json).collect::<Vec<_>>(),
            }),
            Findings::Unknown(reason) => json!({ "status": "unknown", "reason": reason }),
        };
        let report = json!({
            "correlation_id": correlation_id,
            "users": users,
            "dead_letters": dead_letters,
            "retries": RETRIES,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }

    for (at, flow) in flows.iter().enumerate() {
        if at > 0 {
            writeln!(out)?;
        }
        let correlation = if flow.user.correlation_id.is_empty() {
            "no correlation id".to_owned()
        } else {
            format!("correlation id {}", flow.user.correlation_id)
        };
        writeln!(
            out,
            "user {} ({} of {}, {correlation})",
            flow.user.user_id,
            at + 1,
            flows.len()
        )?;
        let dead_letters = of_user(flow);
        write_timeline(&flow.steps(&dead_letters), out)?;
        if let Some(dead) = dead_letters.first() {
            writeln!(
                out,
                "dead-lettered: once the cause is fixed, `eventsctl dlq replay --message-id {}`",
                printable(&dead.message_id)
            )?;
        } else if flow.orders.is_empty() {
            writeln!(
                out,
                "no order yet: is the order service consuming user_created?"
            )?;
        } else if flow.payments.is_empty() {
            writeln!(out, "no payment yet: see `eventsctl dlq list` if it failed")?;
        }
    }
    writeln!(out)?;
    match &findings {
        Findings::Known(scan) => {
            writeln!(
                out,
                "dead letters: {} with correlation id {correlation_id}, of {} read in {} dead-letter queue(s)",
                scan.found.len(),
                scan.read,
                scan.queues
            )?;
            for (queue, read, waiting) in &scan.partial {
                writeln!(
                    out,
                    "dead letters: scan partial: {queue} holds {waiting}, only the first {read} \
                     were read (--dlq-scan-limit)"
                )?;
            }
            for queue in &scan.missing {
                writeln!(out, "dead letters: {queue} does not exist, skipped")?;
            }
            for dead in &unattributed {
                writeln!(out, "  of no user above: {}", describe(dead))?;
            }
        }
        Findings::Unknown(reason) => writeln!(out, "dead letters unknown: {reason}")?,
    }
    writeln!(out, "retries: {RETRIES}")?;
    Ok(())
}

/// The timeline: each step's time, the time since the step before, and what happened.
fn write_timeline(steps: &[Step], out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let timed: Vec<DateTime<Utc>> = steps.iter().filter_map(|step| step.at).collect();
    let mut previous = timed.first().copied();
    for step in steps {
        match step.at {
            Some(at) => {
                let hop = previous.map_or(0, |p| (at - p).num_milliseconds());
                writeln!(
                    out,
                    "{}  {:>+7} ms  {}",
                    at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    hop,
                    step.what
                )?;
                previous = Some(at);
            }
            None => writeln!(out, "{:<24}  {:>10}  {}", "(time unknown)", "", step.what)?,
        }
    }
    if let (Some(first), Some(last)) = (timed.first(), timed.last()) {
        writeln!(out, "total {} ms", (*last - *first).num_milliseconds())?;
    }
    Ok(())
}

fn dead_letter_json(dead: &DeadLetter) -> serde_json::Value {
    json!({
        "queue": dead.queue,
        "message_id": dead.message_id,
        "type": dead.event_type,
        "failure_kind": dead.kind,
        "attempts": dead.attempts,
        "failure_message": dead.reason,
        "last_failure_time": dead.failed_at.map(|at| at.to_rfc3339()),
        "user_id": dead.user_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(at: Option<&str>) -> DeadLetter {
        DeadLetter {
            queue: "payment_service.order_created.dlq".into(),
            message_id: "m1".into(),
            event_type: "order.v1.OrderCreated".into(),
            kind: "permanent".into(),
            attempts: Some(1),
            reason: Some("boom\n\u{1b}[2J".into()),
            failed_at: at.map(|t| t.parse().expect("a time")),
            user_id: None,
        }
    }

    #[test]
    fn a_dead_letters_headers_cannot_write_control_characters_to_the_terminal() {
        let line = describe(&dead_letter(None));

        assert_eq!(
            line,
            "dead letter m1 in payment_service.order_created.dlq: order.v1.OrderCreated, \
             permanent after 1 attempt(s): boom\\n\\u{1b}[2J"
        );
    }

    #[test]
    fn dead_letters_take_their_place_in_time_and_untimed_ones_come_last() {
        let flow = Flow {
            user: User {
                user_id: "u1".into(),
                create_time: Some(prost_types::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 0,
                }),
                ..User::default()
            },
            orders: Vec::new(),
            payments: Vec::new(),
        };
        let untimed = dead_letter(None);
        let timed = dead_letter(Some("2027-01-15T08:00:01.5Z"));

        let steps = flow.steps(&[&untimed, &timed]);

        assert_eq!(steps.len(), 3);
        assert!(steps[0].what.starts_with("user u1 created"));
        assert_eq!(steps[1].at, timed.failed_at);
        assert_eq!(steps[2].at, None);
        let mut out = Vec::new();
        write_timeline(&steps, &mut out).expect("written");
        let text = String::from_utf8(out).expect("text");
        assert!(
            text.lines()
                .nth(2)
                .expect("a third line")
                .starts_with("(time unknown)"),
            "{text}"
        );
        assert!(text.contains("   +1500 ms  dead letter m1"), "{text}");
        assert!(text.ends_with("total 1500 ms\n"), "{text}");
    }
}
