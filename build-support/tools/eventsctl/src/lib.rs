//! `eventsctl`, the operator CLI of the event bus.
//!
//! `eventsctl trace <user_id | correlation_id>` draws the flow of a user, or of every user of a
//! correlation id, from the services' read APIs, with the flow's dead letters.
//! `eventsctl dlq list | show | replay | purge` inspects and repairs the dead-letter queues over
//! plain AMQP (no management plugin needed). Reading a queue never loses a message: messages are
//! fetched unacknowledged and go back to the queue when the channel closes, except those a
//! replay re-published (with confirms) or a purge deleted.
//! `eventsctl topology delete` removes a namespace's queues and exchanges (keeping any that
//! hold messages unless told to purge them).

mod dlq;
mod payload;
mod topology;
mod trace;

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use lapin::{Connection, ConnectionProperties};
use messaging::{BrokerAddresses, Namespace, RetryPolicy, Topology, topology::SUBSCRIPTIONS};

/// The broker eventsctl talks to unless told otherwise.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Operate the event bus.
#[derive(Debug, Parser)]
#[command(
    name = "eventsctl",
    version,
    about = "Operate the event bus: inspect, replay and purge dead letters"
)]
pub struct Cli {
    /// The RabbitMQ broker: one URL, or a cluster's nodes as a comma-separated list (the first
    /// that answers is used).
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, global = true)]
    pub amqp_url: String,
    /// The stack's exchange and queue prefix, as the services were given it.
    #[arg(long, env = "BUS_NAMESPACE", default_value = "", global = true)]
    pub bus_namespace: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dead-letter queues: what failed, and what to do about it.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The namespace's queues and exchanges.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// A user's flow as a timeline: user, order and its status changes, payment, and the time
    /// each hop took, from the services' read APIs; by correlation id, the flow of every user
    /// created under it (a client may reuse its x-request-id), one after the other. The flow's
    /// dead letters (found by correlation id in the dead-letter queues, read without being
    /// consumed) appear in its timeline with their queue, failure kind, attempts and reason.
    /// Retried attempts are not recorded by the services: each is one WARN log line with the
    /// flow's correlation_id and counted in events_consumed_total{outcome="retried"}.
    Trace {
        /// The user's id, as CreateUser returned it, or the flow's correlation id (the
        /// x-request-id of the CreateUser call).
        id: String,
        /// The user service's gRPC address.
        #[arg(
            long,
            env = "USER_SERVICE_ADDR",
            default_value = "http://127.0.0.1:50051"
        )]
        user_addr: String,
        /// The order service's gRPC address.
        #[arg(
            long,
            env = "ORDER_SERVICE_ADDR",
            default_value = "http://127.0.0.1:50052"
        )]
        order_addr: String,
        /// The payment service's gRPC address.
        #[arg(
            long,
            env = "PAYMENT_SERVICE_ADDR",
            default_value = "http://127.0.0.1:50053"
        )]
        payment_addr: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Read at most this many messages of each dead-letter queue when looking for the
        /// flow's dead letters; the trace says when a queue held more.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        dlq_scan_limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Delete the namespace's queues (consumer, retry and dead-letter queues) and exchanges,
    /// e.g. to tear a stack down, or so that the services declare them again with another
    /// QUEUE_TYPE. Stop the services first; queues that hold messages are kept unless --purge.
    /// Names what it deleted; deletes nothing, successfully, when nothing of the namespace exists.
    Delete {
        /// The services' RETRY_DELAYS, which name their retry queues.
        #[arg(long, env = "RETRY_DELAYS", default_value = messaging::retry::DEFAULT_RETRY_DELAYS)]
        retry_delays: String,
        /// Delete queues that still hold messages, and the messages with them.
        #[arg(long)]
        purge: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Each dead-letter queue with its count and a summary by type and error.
    List,
    /// Dead letters with their payload decoded to JSON and their failure headers.
    Show {
        #[command(flatten)]
        filter: Filter,
        /// Show at most this many messages.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send dead letters back to their original exchange and routing key. They keep their
    /// message_id, so a consumer that did apply one already skips it.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Say what would be replayed, and replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many messages per second.
        #[arg(long, default_value_t = 50.0, value_parser = positive_rate)]
        rate: f64,
    },
    /// Delete the dead letters of one or every dead-letter queue.
    Purge {
        /// Only this queue's dead letters, e.g. payment_service.order_created.
        #[arg(long)]
        queue: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters a command applies to; every condition given must hold.
#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    /// Only this consumer queue's dead letters, e.g. payment_service.order_created.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only these message ids (repeatable).
    #[arg(long = "message-id")]
    pub message_ids: Vec<String>,
    /// Only this event type, e.g. order.v1.OrderCreated.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only messages that last failed at or after this RFC 3339 time.
    #[arg(long, value_parser = rfc3339)]
    pub since: Option<DateTime<Utc>>,
    /// Only messages that last failed before this RFC 3339 time.
    #[arg(long, value_parser = rfc3339)]
    pub until: Option<DateTime<Utc>>,
}

fn rfc3339(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| format!("{raw:?} is not an RFC 3339 time like 2026-11-28T10:00:00Z"))
}

fn positive_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{raw:?} is not a positive number of messages per second"
        )),
    }
}

/// Runs `cli`, writing what it reports to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let topology = Topology::new(Namespace::parse(&cli.bus_namespace)?);
    let command = match cli.command {
        Command::Dlq(command) => command,
        Command::Topology(TopologyCommand::Delete {
            retry_delays,
            purge,
            yes,
        }) => {
            let topology = topology.with_retry(RetryPolicy::parse(&retry_delays)?);
            let addresses = BrokerAddresses::parse(&cli.amqp_url)?;
            let connection = connect(&addresses).await?;
            let outcome = topology::delete(&connection, &topology, purge, yes, out).await;
            close(connection).await;
            return outcome;
        }
        Command::Trace {
            id,
            user_addr,
            order_addr,
            payment_addr,
            json,
            dlq_scan_limit,
        } => {
            let endpoints = trace::Endpoints {
                user: user_addr,
                order: order_addr,
                payment: payment_addr,
            };
            let dead_letters = trace::DeadLetterSource {
                amqp_url: cli.amqp_url,
                topology,
                scan_limit: dlq_scan_limit as usize,
            };
            return trace::trace(&endpoints, &dead_letters, &id, json, out).await;
        }
    };
    let queue = match &command {
        DlqCommand::Show { filter, .. } | DlqCommand::Replay { filter, .. } => {
            filter.queue.as_deref()
        }
        DlqCommand::Purge { queue, .. } => queue.as_deref(),
        DlqCommand::List => None,
    };
    let subscriptions = select_queues(queue)?;
    let addresses = BrokerAddresses::parse(&cli.amqp_url)?;
    let connection = connect(&addresses).await?;
    let user = addresses.user().to_owned();
    let dlq = dlq::DeadLetters::new(&connection, user, topology, subscriptions);
    let outcome = match command {
        DlqCommand::List => dlq.list(out).await,
        DlqCommand::Show { filter, limit } => dlq.show(&filter, limit, out).await,
        DlqCommand::Replay {
            filter,
            dry_run,
            rate,
        } => dlq.replay(&filter, dry_run, rate, out).await,
        DlqCommand::Purge { yes, .. } => dlq.purge(yes, out).await,
    };
    close(connection).await;
    outcome
}

/// Closing is a courtesy to the broker; never let it keep the operator waiting.
async fn close(connection: Connection) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        connection.close(200, "done".into()),
    )
    .await;
}

/// Asks on the terminal whether to `action`; refuses when there is no terminal to ask on.
fn confirm(question: &str, action: &str) -> anyhow::Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to {action} without confirmation: pass --yes (standard input is not a terminal)"
        );
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}

fn select_queues(
    queue: Option<&str>,
) -> anyhow::Result<Vec<&'static messaging::topology::Subscription>> {
    match queue {
        None => Ok(SUBSCRIPTIONS.iter().collect()),
        Some(name) => {
            let name = name.trim_end_matches(messaging::topology::DLQ_SUFFIX);
            SUBSCRIPTIONS
                .iter()
                .find(|s| s.queue == name)
                .map(|s| vec![s])
                .with_context(|| {
                    let known: Vec<_> = SUBSCRIPTIONS.iter().map(|s| s.queue).collect();
                    format!(
                        "unknown queue {name:?}; the queues are {}",
                        known.join(", ")
                    )
                })
        }
    }
}

/// Connects to the first node of `AMQP_URL` (one URL or a cluster's list) that answers.
async fn connect(addresses: &BrokerAddresses) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name("eventsctl".into());
    let (connection, _) = addresses
        .connect(0, &properties)
        .await
        .with_context(|| format!("cannot reach RabbitMQ at {addresses}"))?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_named_with_or_without_the_dlq_suffix() {
        assert_eq!(select_queues(None).expect("all").len(), 3);
        let one = select_queues(Some("payment_service.order_created.dlq")).expect("known");
        assert_eq!(one[0].queue, "payment_service.order_created");
        let error = select_queues(Some("nope")).expect_err("unknown");
        assert!(error.to_string().contains("order_service.user_created"));
    }

    #[test]
    fn rates_and_times_are_validated() {
        assert!(positive_rate("0").is_err());
        assert!(positive_rate("abc").is_err());
        assert_eq!(positive_rate("2.5"), Ok(2.5));
        assert!(rfc3339("yesterday").is_err());
        assert!(rfc3339("2026-11-28T10:00:00Z").is_ok());
    }
}
