//! The user service's command line and environment.

use std::time::Duration;

use service_kit::{CommonArgs, ServiceDefaults, healthcheck::ServiceCommand};

/// Name, database and port when nothing else is configured.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "user-service",
    database: "users",
    grpc_port: 50051,
    metrics_port: 9091,
    consumer_workers: 1,
};

/// Most CreateUser calls written in one transaction, unless configured.
pub const DEFAULT_CREATE_USER_BATCH_MAX: usize = 64;
/// Flows allowed in the chain before CreateUser is refused, unless configured: about the fewest
/// that keep the chain at its peak throughput on the development machine (benchmark.md), so
/// that pushing harder adds refusals, not latency.
pub const DEFAULT_CREATE_USER_MAX_BACKLOG: u64 = 1024;
/// How long a flow counts in flight without its `payment_processed` being seen, unless
/// configured.
pub const DEFAULT_CREATE_USER_FLOW_EXPIRY: Duration = Duration::from_secs(60);
/// The largest `CREATE_USER_BATCH_MAX` taken: a batch is held in memory and sent as one
/// statement's arrays, and a busy instance has no more calls in flight than
/// `GRPC_CONCURRENCY_LIMIT` anyway.
const CREATE_USER_BATCH_LIMIT: usize = 4096;

/// Every setting is a flag and an environment variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "user-service",
    version,
    about = "Registers users and publishes user_created"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
    #[command(flatten)]
    pub ingress: Ingress,
}

/// How CreateUser calls come in: the user service's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Ingress {
    /// Most CreateUser calls written in one transaction: the calls that arrive while one is
    /// written share the next, and nothing waits for a batch to fill (1 writes each call alone).
    #[arg(
        long,
        env = "CREATE_USER_BATCH_MAX",
        default_value_t = DEFAULT_CREATE_USER_BATCH_MAX,
        value_parser = batch_max
    )]
    pub create_user_batch_max: usize,
    /// Flows allowed in the chain (the flows this instance started and has not seen end, or
    /// the outbox rows and ready messages of the work queues, whichever is more) before
    /// CreateUser answers RESOURCE_EXHAUSTED with a RetryInfo; 0 turns the limit off.
    #[arg(
        long,
        env = "CREATE_USER_MAX_BACKLOG",
        default_value_t = DEFAULT_CREATE_USER_MAX_BACKLOG
    )]
    pub create_user_max_backlog: u64,
    /// How long a flow counts in flight without its payment_processed being seen (a charge
    /// dead-lettered, an event lost): `60s`, `2m`.
    #[arg(
        long,
        env = "CREATE_USER_FLOW_EXPIRY",
        default_value = "60s",
        value_parser = flow_expiry
    )]
    pub create_user_flow_expiry: Duration,
}

impl Default for Ingress {
    fn default() -> Self {
        Self {
            create_user_batch_max: DEFAULT_CREATE_USER_BATCH_MAX,
            create_user_max_backlog: DEFAULT_CREATE_USER_MAX_BACKLOG,
            create_user_flow_expiry: DEFAULT_CREATE_USER_FLOW_EXPIRY,
        }
    }
}

fn batch_max(raw: &str) -> Result<usize, String> {
    match raw.trim().parse() {
        Ok(calls) if (1..=CREATE_USER_BATCH_LIMIT).contains(&calls) => Ok(calls),
        _ => Err(format!(
            "{raw:?} is not a number of calls from 1 to {CREATE_USER_BATCH_LIMIT}"
        )),
    }
}

fn flow_expiry(raw: &str) -> Result<Duration, String> {
    match messaging::retry::parse_duration(raw.trim()) {
        Some(expiry) if !expiry.is_zero() => Ok(expiry),
        _ => Err(format!(
            "{raw:?} is not a duration above zero, such as 60s or 2m"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_create_user_batch_max_defaults_to_64_and_is_configurable() {
        assert_eq!(
            Cli::parse_from(["user-service"]).ingress,
            Ingress::default()
        );
        assert_eq!(Ingress::default().create_user_batch_max, 64);
        let cli = Cli::parse_from(["user-service", "--create-user-batch-max", "1"]);
        assert_eq!(cli.ingress.create_user_batch_max, 1);
    }

    #[test]
    fn the_backlog_limit_is_configurable_and_0_turns_it_off() {
        let cli = Cli::parse_from(["user-service", "--create-user-max-backlog", "0"]);
        assert_eq!(cli.ingress.create_user_max_backlog, 0);
        assert!(Cli::try_parse_from(["user-service", "--create-user-max-backlog=-1"]).is_err());
    }

    #[test]
    fn flows_expire_after_60_seconds_unless_configured() {
        assert_eq!(
            Ingress::default().create_user_flow_expiry,
            Duration::from_secs(60)
        );
        let cli = Cli::parse_from(["user-service", "--create-user-flow-expiry", "2m"]);
        assert_eq!(
            cli.ingress.create_user_flow_expiry,
            Duration::from_secs(120)
        );
        for bad in ["0s", "soon", "-1s"] {
            let flag = format!("--create-user-flow-expiry={bad}");
            let error = Cli::try_parse_from(["user-service", flag.as_str()])
                .expect_err("an invalid expiry");
            assert!(
                error.to_string().contains("CREATE_USER_FLOW_EXPIRY"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_bad_create_user_batch_max_is_a_clear_error() {
        for bad in ["0", "-1", "many", "4097"] {
            let flag = format!("--create-user-batch-max={bad}");
            let error = Cli::try_parse_from(["user-service", flag.as_str()])
                .expect_err("an invalid batch size");
            let message = error.to_string();
            assert!(
                message.contains("CREATE_USER_BATCH_MAX")
                    && message.contains("is not a number of calls from 1 to 4096"),
                "{message}"
            );
        }
    }
}
