//! Configuration shared by every service, read from the environment or the matching `--flag`.
//!
//! Each service flattens [`CommonArgs`] into its own clap parser and resolves it against its
//! [`ServiceDefaults`] (its database name and port), so the defaults live in one place.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::Context;
use messaging::{
    BrokerAddresses, ConsumerTuning, Namespace, QueueType, RetryPolicy, Topology, TrustedProducers,
    retry::DEFAULT_RETRY_DELAYS,
};
use secrecy::{ExposeSecret, SecretString};

use crate::grpc_limits::GrpcLimits;

/// How long a consumer keeps a message's inbox row: the retry chain is minutes, and a dead
/// letter may be replayed weeks later.
pub const DEFAULT_INBOX_RETENTION: &str = "30d";

/// The broker every service uses unless told otherwise.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// What differs between services when nothing is configured.
#[derive(Debug, Clone, Copy)]
pub struct ServiceDefaults {
    /// The service's name: AMQP `app_id`, log field, connection name.
    pub name: &'static str,
    /// Its database on the local server, e.g. `users`.
    pub database: &'static str,
    /// Its gRPC port on 0.0.0.0.
    pub grpc_port: u16,
    /// Its Prometheus `/metrics` port on 0.0.0.0.
    pub metrics_port: u16,
    /// Workers per consumer: one lets batches grow; a handler that waits on another system
    /// (the payment gateway) needs more, so that the waits of several batches overlap.
    pub consumer_workers: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags and environment variables every service takes.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The service's own Postgres database [default: postgres://postgres@127.0.0.1:5432/<service db>]
    #[arg(long, env = "DATABASE_URL", value_parser = secret, hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Connections to the database at most (gRPC calls, consumers, relay and health share them).
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,
    /// The RabbitMQ broker: one URL, or a cluster's nodes as a comma-separated list (a service
    /// connects to one that answers, and to another when that connection is lost).
    #[arg(long, env = "AMQP_URL", value_parser = secret, default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: SecretString,
    /// The AMQP heartbeat (whole seconds; a `heartbeat` in AMQP_URL wins): a connection that
    /// stalls makes health NOT_SERVING within two heartbeats, and is replaced.
    #[arg(long, env = "AMQP_HEARTBEAT", default_value = "5s", value_parser = duration)]
    pub amqp_heartbeat: Duration,
    /// Address the gRPC server listens on [default: 0.0.0.0:<service port>]
    #[arg(long, env = "GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Address of the Prometheus `/metrics` endpoint [default: 0.0.0.0:<service metrics port>]
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Health says NOT_SERVING once the oldest unpublished outbox row is older than this.
    #[arg(long, env = "OUTBOX_MAX_AGE", default_value = "60s", value_parser = duration)]
    pub outbox_max_age: Duration,
    /// The broker users each consumed event type is accepted from, e.g.
    /// `user_created=user_service,order_created=order_service` (the AMQP `user_id` of the
    /// publish). Unset: only the broker user of AMQP_URL, for a stack whose services share one.
    #[arg(long, env = "TRUSTED_PRODUCERS", default_value = "", value_parser = trusted_producers)]
    pub trusted_producers: TrustedProducers,
    /// Prefix for every exchange and queue name, so several stacks can share one broker.
    #[arg(long, env = "BUS_NAMESPACE", default_value = "")]
    pub bus_namespace: String,
    /// What every queue is declared as: `quorum` (replicated over a cluster's nodes, at-least-once
    /// dead-lettering, a delivery limit) or `classic` (a single node's queue, as before).
    #[arg(long, env = "QUEUE_TYPE", default_value = "quorum")]
    pub queue_type: QueueType,
    /// Back-off delays of the retries after a transient failure, e.g. `1s,5s,30s,2m`; their
    /// number bounds the attempts before a message is dead-lettered.
    #[arg(long, env = "RETRY_DELAYS", default_value = DEFAULT_RETRY_DELAYS)]
    pub retry_delays: String,
    /// Workers (broker channels) per consumer [default: 1; 6 for the payment service]
    #[arg(long, env = "CONSUMER_WORKERS")]
    pub consumer_workers: Option<usize>,
    /// Deliveries the broker may push to each worker ahead of its acks.
    #[arg(long, env = "CONSUMER_PREFETCH", default_value_t = ConsumerTuning::default().prefetch)]
    pub consumer_prefetch: u16,
    /// Most deliveries a worker applies in one transaction (1 turns batching off).
    #[arg(long, env = "CONSUMER_BATCH", default_value_t = ConsumerTuning::default().batch_size)]
    pub consumer_batch: usize,
    /// How long a consumer remembers a message it applied (its inbox row), so a redelivery,
    /// retry or dead-letter replay within it is skipped; older rows are deleted. Longer than the
    /// whole RETRY_DELAYS chain.
    #[arg(long, env = "INBOX_RETENTION", default_value = DEFAULT_INBOX_RETENTION, value_parser = duration)]
    pub inbox_retention: Duration,
    /// gRPC calls in flight at once, across all connections; beyond it a call is refused at
    /// once with RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "GRPC_CONCURRENCY_LIMIT", default_value_t = GrpcLimits::default().concurrency_limit)]
    pub grpc_concurrency_limit: usize,
    /// Longest a gRPC call may run; past it the call ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "GRPC_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub grpc_request_timeout: Duration,
    /// How often the server pings an idle HTTP/2 connection.
    #[arg(long, env = "GRPC_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = duration)]
    pub grpc_keepalive_interval: Duration,
    /// How long the server waits for a ping's answer before closing the connection.
    #[arg(long, env = "GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub grpc_keepalive_timeout: Duration,
    /// Largest request message, in bytes; a bigger one is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", default_value_t = GrpcLimits::default().max_message_bytes)]
    pub grpc_max_message_bytes: usize,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax (Postgres notices stay at warn
    /// unless it names a sqlx target).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,
    /// How often the service logs one INFO line of what it did since the last (messages
    /// processed per consumer, CreateUser calls, retries, dead letters); nothing when it did
    /// nothing. `0s` turns the line off.
    #[arg(long, env = "LOG_SUMMARY_INTERVAL", default_value = "60s", value_parser = duration)]
    pub log_summary_interval: Duration,
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Parses a duration flag (`500ms`, `30s`, `2m`, `1h`), for clap's `value_parser`.
pub fn duration(raw: &str) -> Result<Duration, String> {
    messaging::retry::parse_duration(raw)
        .ok_or_else(|| format!("{raw:?} is not a duration like 500ms, 30s, 2m, 1h or 30d"))
}

fn trusted_producers(raw: &str) -> Result<TrustedProducers, String> {
    TrustedProducers::parse(raw).map_err(|error| error.to_string())
}

fn secret(raw: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

/// The resolved configuration of one service.
#[derive(Debug)]
pub struct Settings {
    pub service_name: &'static str,
    pub database_url: SecretString,
    pub database_pool_size: u32,
    pub amqp_url: BrokerAddresses,
    pub amqp_heartbeat: Duration,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub outbox_max_age: Duration,
    pub topology: Topology,
    pub trusted_producers: TrustedProducers,
    pub retry: RetryPolicy,
    pub consumer: ConsumerTuning,
    pub inbox_retention: Duration,
    pub grpc: GrpcLimits,
    pub rust_log: String,
    pub log_format: LogFormat,
    /// How often the activity summary is logged; zero: never.
    pub log_summary_interval: Duration,
}

impl CommonArgs {
    /// Fills what was not given from `defaults` and validates the rest.
    pub fn resolve(self, defaults: &ServiceDefaults) -> anyhow::Result<Settings> {
        let namespace = Namespace::parse(&self.bus_namespace).context("invalid BUS_NAMESPACE")?;
        let amqp_url = BrokerAddresses::parse(self.amqp_url.expose_secret())?;
        anyhow::ensure!(
            (1..=u64::from(u16::MAX)).contains(&self.amqp_heartbeat.as_secs()),
            "AMQP_HEARTBEAT must be whole seconds, from 1s"
        );
        anyhow::ensure!(
            self.database_pool_size >= 2,
            "DATABASE_POOL_SIZE must be at least 2 (the relay holds one while another commits)"
        );
        let retry = RetryPolicy::parse(&self.retry_delays).context("invalid RETRY_DELAYS")?;
        let consumer_workers = self.consumer_workers.unwrap_or(defaults.consumer_workers);
        anyhow::ensure!(
            consumer_workers >= 1 && self.consumer_prefetch >= 1 && self.consumer_batch >= 1,
            "CONSUMER_WORKERS, CONSUMER_PREFETCH and CONSUMER_BATCH must be at least 1"
        );
        anyhow::ensure!(
            self.consumer_batch <= usize::from(self.consumer_prefetch),
            "CONSUMER_BATCH ({}) cannot exceed CONSUMER_PREFETCH ({}): a batch is taken from \
             what the broker pushed ahead",
            self.consumer_batch,
            self.consumer_prefetch
        );
        // A copy of a message may still be retried after another copy was applied; forgetting
        // the applied one first would apply the message twice.
        anyhow::ensure!(
            self.inbox_retention > retry.total(),
            "INBOX_RETENTION ({:?}) must be longer than the whole RETRY_DELAYS chain ({:?})",
            self.inbox_retention,
            retry.total()
        );
        anyhow::ensure!(
            self.grpc_concurrency_limit >= 1 && self.grpc_max_message_bytes >= 1,
            "GRPC_CONCURRENCY_LIMIT and GRPC_MAX_MESSAGE_BYTES must be at least 1"
        );
        anyhow::ensure!(
            !self.grpc_request_timeout.is_zero()
                && !self.grpc_keepalive_interval.is_zero()
                && !self.grpc_keepalive_timeout.is_zero(),
            "GRPC_REQUEST_TIMEOUT, GRPC_KEEPALIVE_INTERVAL and GRPC_KEEPALIVE_TIMEOUT must be \
             longer than zero"
        );
        anyhow::ensure!(
            self.log_summary_interval.is_zero() || self.log_summary_interval.as_secs() >= 1,
            "LOG_SUMMARY_INTERVAL must be 0s (off) or at least 1s"
        );
        Ok(Settings {
            service_name: defaults.name,
            database_url: self.database_url.unwrap_or_else(|| {
                SecretString::from(format!(
                    "postgres://postgres@127.0.0.1:5432/{}",
                    defaults.database
                ))
            }),
            database_pool_size: self.database_pool_size,
            amqp_url,
            amqp_heartbeat: self.amqp_heartbeat,
            grpc_addr: self
                .grpc_addr
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], defaults.grpc_port))),
            metrics_addr: self
                .metrics_addr
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], defaults.metrics_port))),
            outbox_max_age: self.outbox_max_age,
            topology: Topology::new(namespace)
                .with_retry(retry.clone())
                .with_queue_type(self.queue_type),
            trusted_producers: self.trusted_producers,
            retry,
            consumer: ConsumerTuning {
                workers: consumer_workers,
                prefetch: self.consumer_prefetch,
                batch_size: self.consumer_batch,
            },
            inbox_retention: self.inbox_retention,
            grpc: GrpcLimits {
                concurrency_limit: self.grpc_concurrency_limit,
                request_timeout: self.grpc_request_timeout,
                keepalive_interval: self.grpc_keepalive_interval,
                keepalive_timeout: self.grpc_keepalive_timeout,
                max_message_bytes: self.grpc_max_message_bytes,
            },
            rust_log: self.rust_log,
            log_format: self.log_format,
            log_summary_interval: self.log_summary_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use secrecy::ExposeSecret;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    const DEFAULTS: ServiceDefaults = ServiceDefaults {
        name: "user-service",
        database: "users",
        grpc_port: 50051,
        metrics_port: 9091,
        consumer_workers: 1,
    };

    #[test]
    fn defaults_follow_the_service() {
        let settings = Cli::parse_from(["user-service"])
            .common
            .resolve(&DEFAULTS)
            .expect("defaults are valid");
        assert_eq!(
            settings.database_url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/users"
        );
        assert_eq!(settings.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(settings.metrics_addr.to_string(), "0.0.0.0:9091");
        assert_eq!(settings.outbox_max_age, Duration::from_secs(60));
        assert_eq!(settings.database_pool_size, 16);
        assert_eq!(settings.topology.exchange(), "events_exchange");
        assert_eq!(settings.topology.queue_type(), QueueType::Quorum);
    }

    #[test]
    fn flags_override_defaults() {
        let settings = Cli::parse_from([
            "user-service",
            "--grpc-addr",
            "127.0.0.1:0",
            "--bus-namespace",
            "ci",
        ])
        .common
        .resolve(&DEFAULTS)
        .expect("valid flags");
        assert_eq!(settings.grpc_addr.to_string(), "127.0.0.1:0");
        assert_eq!(settings.topology.exchange(), "ci.events_exchange");
    }

    #[test]
    fn the_log_summary_is_every_minute_off_at_zero_and_never_more_often_than_a_second() {
        let interval = |args: &[&str]| {
            Cli::parse_from(["order-service"].iter().chain(args))
                .common
                .resolve(&DEFAULTS)
                .map(|settings| settings.log_summary_interval)
        };

        assert_eq!(interval(&[]).expect("default"), Duration::from_secs(60));
        assert_eq!(
            interval(&["--log-summary-interval", "0s"]).expect("off"),
            Duration::ZERO
        );
        let error = interval(&["--log-summary-interval", "500ms"]).expect_err("too often");
        assert!(format!("{error:#}").contains("LOG_SUMMARY_INTERVAL"));
    }

    #[test]
    fn retry_delays_are_configurable_and_validated() {
        let settings = Cli::parse_from(["user-service", "--retry-delays", "100ms,1s"])
            .common
            .resolve(&DEFAULTS)
            .expect("valid delays");
        assert_eq!(settings.retry.delays().len(), 2);
        let error = Cli::parse_from(["user-service", "--retry-delays", "soon"])
            .common
            .resolve(&DEFAULTS)
            .expect_err("invalid delays");
        assert!(format!("{error:#}").contains("RETRY_DELAYS"));
    }

    #[test]
    fn consumer_tuning_is_configurable_and_validated() {
        let settings = Cli::parse_from([
            "order-service",
            "--consumer-workers",
            "2",
            "--consumer-prefetch",
            "16",
            "--consumer-batch",
            "8",
        ])
        .common
        .resolve(&DEFAULTS)
        .expect("valid tuning");
        assert_eq!(
            settings.consumer,
            ConsumerTuning {
                workers: 2,
                prefetch: 16,
                batch_size: 8
            }
        );
        let too_big = Cli::parse_from(["order-service", "--consumer-batch", "100"])
            .common
            .resolve(&DEFAULTS)
            .expect_err("a batch larger than the prefetch");
        assert!(format!("{too_big:#}").contains("CONSUMER_BATCH (100) cannot exceed"));
        let zero = Cli::parse_from(["order-service", "--consumer-workers", "0"])
            .common
            .resolve(&DEFAULTS)
            .expect_err("no workers");
        assert!(format!("{zero:#}").contains("at least 1"));
        let pool = Cli::parse_from(["order-service", "--database-pool-size", "1"])
            .common
            .resolve(&DEFAULTS)
            .expect_err("a pool of one");
        assert!(format!("{pool:#}").contains("DATABASE_POOL_SIZE must be at least 2"));
    }

    #[test]
    fn grpc_limits_default_as_documented_and_are_configurable() {
        let defaults = Cli::parse_from(["user-service"])
            .common
            .resolve(&DEFAULTS)
            .expect("defaults are valid");
        assert_eq!(defaults.grpc, GrpcLimits::default());
        let settings = Cli::parse_from([
            "user-service",
            "--grpc-concurrency-limit",
            "8",
            "--grpc-request-timeout",
            "2s",
            "--grpc-keepalive-interval",
            "15s",
            "--grpc-keepalive-timeout",
            "5s",
            "--grpc-max-message-bytes",
            "1024",
        ])
        .common
        .resolve(&DEFAULTS)
        .expect("valid limits");
        assert_eq!(
            settings.grpc,
            GrpcLimits {
                concurrency_limit: 8,
                request_timeout: Duration::from_secs(2),
                keepalive_interval: Duration::from_secs(15),
                keepalive_timeout: Duration::from_secs(5),
                max_message_bytes: 1024,
            }
        );
        let zero = Cli::parse_from(["user-service", "--grpc-concurrency-limit", "0"])
            .common
            .resolve(&DEFAULTS)
            .expect_err("no calls at all");
        assert!(format!("{zero:#}").contains("GRPC_CONCURRENCY_LIMIT"));
        let instant = Cli::parse_from(["user-service", "--grpc-keepalive-timeout", "0s"])
            .common
            .resolve(&DEFAULTS)
            .expect_err("a zero timeout");
        assert!(format!("{instant:#}").contains("GRPC_KEEPALIVE_TIMEOUT"));
    }

    #[test]
    fn inbox_retention_defaults_to_30_days_and_must_outlast_the_retries() {
        let defaults = Cli::parse_from(["order-service"])
            .common
            .resolve(&DEFAULTS)
            .expect("defaults are valid");
        assert_eq!(defaults.inbox_retention, Duration::from_secs(30 * 86_400));
        let settings = Cli::parse_from(["order-service", "--inbox-retention", "12h"])
            .common
            .resolve(&DEFAULTS)
            .expect("a valid retention");
        assert_eq!(settings.inbox_retention, Duration::from_secs(12 * 3600));

        for (retention, delays) in [("0s", "1s"), ("2m", "1s,5s,30s,2m"), ("1s", "1s")] {
            let error = Cli::parse_from([
                "order-service",
                "--inbox-retention",
                retention,
                "--retry-delays",
                delays,
            ])
            .common
            .resolve(&DEFAULTS)
            .expect_err("a retention the retries outlast");
            assert!(
                format!("{error:#}").contains("INBOX_RETENTION"),
                "{retention} with {delays}: {error:#}"
            );
        }
        let unparsable = Cli::try_parse_from(["order-service", "--inbox-retention", "a month"])
            .expect_err("not a duration");
        assert!(unparsable.to_string().contains("is not a duration like"));
    }

    #[test]
    fn an_invalid_namespace_is_a_clear_error() {
        let error = Cli::parse_from(["user-service", "--bus-namespace", "a b"])
            .common
            .resolve(&DEFAULTS)
            .expect_err("invalid namespace");
        assert!(format!("{error:#}").contains("BUS_NAMESPACE"));
    }
}
