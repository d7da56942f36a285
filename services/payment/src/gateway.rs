//! The payment gateway: a trait, and the simulator the service uses by default.
//!
//! The simulator behaves like a payment provider with idempotency keys: the same key always
//! gets the first final outcome back and never moves money twice, its records are durable and
//! written in transactions of its own (never the service's, so a rollback or a restart of the
//! service does not make it forget), and it answers after a configurable latency. It is steered
//! by the customer's e-mail, like a provider's test cards: `+decline` in the local part is
//! declined (`card_declined`), `+flaky` fails transiently twice per key and then succeeds,
//! `+fail` fails permanently; anything else succeeds.

use std::{future::Future, time::Duration};

use sqlx::PgPool;
use uuid::Uuid;

/// What to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The provider's idempotency key: every call for one charge carries the same key, and the
    /// provider answers a repeated key with the first call's outcome instead of charging again.
    /// The payment service uses the order id.
    pub idempotency_key: Uuid,
    pub order_id: Uuid,
    pub customer_email: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// A gateway's final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded,
    Declined { reason: String },
}

/// A charge that did not get a final answer; asking again with the same key is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Worth retrying: a timeout, an outage.
    #[error("payment gateway unavailable: {0}")]
    Transient(String),
    /// Retrying cannot help.
    #[error("payment gateway failed permanently: {0}")]
    Permanent(String),
}

/// Charges orders.
///
/// The payment service calls `charge` outside any database transaction, after it recorded the
/// payment's intent, and may call it more than once for one charge (a crash or a redelivery
/// before the outcome was recorded, a retry after a timeout): always with the same
/// `idempotency_key`. An implementation must pass the key to its provider, so that a repeated
/// call returns the first outcome and never charges again, and must not hold a database
/// transaction of the service's.
pub trait PaymentGateway: Send + Sync + 'static {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeOutcome, GatewayError>> + Send;
}

/// How long the simulator takes to answer: a fixed time or a uniformly random one in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    min: Duration,
    max: Duration,
}

impl Latency {
    /// No latency.
    pub const NONE: Self = Self {
        min: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// Always `latency`.
    pub fn fixed(latency: Duration) -> Self {
        Self {
            min: latency,
            max: latency,
        }
    }

    /// `100ms`, or a range `50ms..200ms`.
    pub fn parse(raw: &str) -> Option<Self> {
        let parse = |raw: &str| messaging::retry::parse_duration(raw.trim());
        match raw.split_once("..") {
            Some((min, max)) => {
                let (min, max) = (parse(min)?, parse(max)?);
                (min <= max).then_some(Self { min, max })
            }
            None => parse(raw).map(Self::fixed),
        }
    }

    /// One draw.
    fn sample(self) -> Duration {
        let spread = self.max - self.min;
        if spread.is_zero() {
            return self.min;
        }
        // Random bits from a v4 UUID: no generator of our own to seed.
        let random = Uuid::new_v4().as_u64_pair().0;
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        self.min + spread.mul_f64(fraction)
    }
}

/// Transient failures a `+flaky` customer's charge sees before it succeeds.
const FLAKY_FAILURES: i32 = 2;

/// The test card an e-mail stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Ordinary,
    Decline,
    Flaky,
    Fail,
}

impl Card {
    /// Only the local part steers, as with a provider's test cards.
    fn of(email: &str) -> Self {
        let local = email.rsplit_once('@').map_or(email, |(local, _)| local);
        if local.contains("+decline") {
            Self::Decline
        } else if local.contains("+flaky") {
            Self::Flaky
        } else if local.contains("+fail") {
            Self::Fail
        } else {
            Self::Ordinary
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Ordinary => "ordinary",
            Self::Decline => "decline",
            Self::Flaky => "flaky",
            Self::Fail => "fail",
        }
    }
}

/// The simulator, keeping its records in the `simulated_charges` table (its own, written in
/// transactions of its own).
#[derive(Debug, Clone)]
pub struct SimulatedGateway {
    pool: PgPool,
    latency: Latency,
}

impl SimulatedGateway {
    /// A simulator recording in `pool`'s database and answering after `latency`.
    pub fn new(pool: PgPool, latency: Latency) -> Self {
        Self { pool, latency }
    }
}

impl PaymentGateway for SimulatedGateway {
    #[tracing::instrument(skip_all, fields(idempotency_key = %request.idempotency_key))]
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let latency = self.latency.sample();
        // A zero sleep still waits for the timer's next tick (up to a millisecond): skip it.
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let card = Card::of(&request.customer_email);
        // One statement, so one transaction of the simulator's own: the first call for a key
        // creates its record; a later one sees the record locked and updated atomically. A key
        // with a final outcome keeps it; otherwise the card decides, counting failed attempts.
        let recorded: Result<(i32, Option<String>), sqlx::Error> = sqlx::query_as(
            "insert into simulated_charges as c \
               (idempotency_key, order_id, amount_minor, currency, card, calls, failed_attempts, outcome) \
             values ($1, $2, $3, $4, $5, 1, \
                     case when $5 in ('flaky', 'fail') then 1 else 0 end, \
                     case $5 when 'ordinary' then 'succeeded' when 'decline' then 'declined' end) \
             on conflict (idempotency_key) do update set \
               calls = c.calls + 1, \
               last_call_time = now(), \
               failed_attempts = case \
                 when c.outcome is null and ($5 = 'fail' or ($5 = 'flaky' and c.failed_attempts < $6)) \
                 then c.failed_attempts + 1 else c.failed_attempts end, \
               outcome = case \
                 when c.outcome is not null then c.outcome \
                 when $5 = 'ordinary' or ($5 = 'flaky' and c.failed_attempts >= $6) then 'succeeded' \
                 when $5 = 'decline' then 'declined' end \
             returning failed_attempts, outcome",
        )
        .bind(request.idempotency_key)
        .bind(request.order_id)
        .bind(request.amount_minor)
        .bind(&request.currency)
        .bind(card.as_str())
        .bind(FLAKY_FAILURES)
        .fetch_one(&self.pool)
        .await;
        let (failed_attempts, outcome) = recorded
            .map_err(|error| GatewayError::Transient(format!("simulator unavailable: {error}")))?;
        match outcome.as_deref() {
            Some("succeeded") => Ok(ChargeOutcome::Succeeded),
            Some(_) => Ok(ChargeOutcome::Declined {
                reason: "card_declined".into(),
            }),
            None if card == Card::Flaky => Err(GatewayError::Transient(format!(
                "simulated timeout ({failed_attempts} of {FLAKY_FAILURES})"
            ))),
            None => Err(GatewayError::Permanent("simulated processing error".into())),
        }
    }
}

/// What the simulator did for one order, for tests and the chaos ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct SimulatedCharges {
    /// Charges that moved money: keys whose outcome is `succeeded`.
    pub successful: i64,
    /// Calls under any of the order's keys.
    pub calls: i64,
}

/// The simulator's record of `order_id`.
pub async fn simulated_charges(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<SimulatedCharges, sqlx::Error> {
    sqlx::query_as(
        "select count(*) filter (where outcome = 'succeeded') as successful, \
                coalesce(sum(calls), 0)::bigint as calls \
         from simulated_charges where order_id = $1",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_part_picks_the_card() {
        assert_eq!(Card::of("ada@example.com"), Card::Ordinary);
        assert_eq!(Card::of("ada+decline@example.com"), Card::Decline);
        assert_eq!(Card::of("ada+flaky@example.com"), Card::Flaky);
        assert_eq!(Card::of("ada+fail@example.com"), Card::Fail);
        assert_eq!(Card::of("ada@decline.example.com"), Card::Ordinary);
    }

    #[test]
    fn latency_is_fixed_or_a_range() {
        assert_eq!(
            Latency::parse("100ms"),
            Some(Latency::fixed(Duration::from_millis(100)))
        );
        let range = Latency::parse("50ms..200ms").expect("a range");
        for _ in 0..100 {
            let drawn = range.sample();
            assert!(
                (Duration::from_millis(50)..=Duration::from_millis(200)).contains(&drawn),
                "{drawn:?}"
            );
        }
        assert_eq!(
            Latency::parse("0ms").map(Latency::sample),
            Some(Duration::ZERO)
        );
        assert_eq!(Latency::parse("200ms..50ms"), None);
        assert_eq!(Latency::parse("soon"), None);
    }
}
