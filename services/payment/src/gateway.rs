//! The payment gateway: a trait, and the deterministic simulator the service uses by default.
//!
//! The simulator is steered by the customer's e-mail, like a payment provider's test cards:
//! `+decline` in the local part is declined (`card_declined`), `+flaky` fails transiently twice
//! and then succeeds, `+fail` fails permanently; anything else succeeds.

use std::{collections::HashMap, future::Future, sync::Mutex};

use uuid::Uuid;

/// What to charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Also the idempotency key a real gateway would take.
    pub order_id: Uuid,
    pub customer_email: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// A gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded,
    Declined { reason: String },
}

/// A charge that did not get an answer.
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
/// `charge` can be called more than once for one order: a redelivery after a crash between the
/// charge and the commit, or a batch applied again without a message that failed in it. An
/// implementation must be idempotent per `order_id`, as payment providers' idempotency keys are.
pub trait PaymentGateway: Send + Sync + 'static {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeOutcome, GatewayError>> + Send;
}

/// Transient failures a `+flaky` customer's charge sees before it succeeds.
const FLAKY_FAILURES: u32 = 2;

/// The deterministic simulator.
#[derive(Debug, Default)]
pub struct SimulatedGateway {
    /// Failed attempts so far per `+flaky` order.
    flaky_attempts: Mutex<HashMap<Uuid, u32>>,
}

impl PaymentGateway for SimulatedGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let local = request
            .customer_email
            .rsplit_once('@')
            .map_or(request.customer_email.as_str(), |(local, _)| local);
        if local.contains("+decline") {
            return Ok(ChargeOutcome::Declined {
                reason: "card_declined".into(),
            });
        }
        if local.contains("+flaky") {
            let mut attempts = self
                .flaky_attempts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let failed = attempts.entry(request.order_id).or_default();
            if *failed < FLAKY_FAILURES {
                *failed += 1;
                return Err(GatewayError::Transient(format!(
                    "simulated timeout ({failed} of {FLAKY_FAILURES})"
                )));
            }
            attempts.remove(&request.order_id);
            return Ok(ChargeOutcome::Succeeded);
        }
        if local.contains("+fail") {
            return Err(GatewayError::Permanent("simulated processing error".into()));
        }
        Ok(ChargeOutcome::Succeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(email: &str) -> ChargeRequest {
        ChargeRequest {
            order_id: Uuid::new_v4(),
            customer_email: email.into(),
            amount_minor: 999,
            currency: "USD".into(),
        }
    }

    #[tokio::test]
    async fn an_ordinary_customer_is_charged() {
        let outcome = SimulatedGateway::default()
            .charge(&request("ada@example.com"))
            .await;
        assert_eq!(outcome, Ok(ChargeOutcome::Succeeded));
    }

    #[tokio::test]
    async fn decline_is_declined_with_card_declined() {
        let outcome = SimulatedGateway::default()
            .charge(&request("ada+decline@example.com"))
            .await;
        assert_eq!(
            outcome,
            Ok(ChargeOutcome::Declined {
                reason: "card_declined".into()
            })
        );
    }

    #[tokio::test]
    async fn flaky_fails_twice_then_succeeds() {
        let gateway = SimulatedGateway::default();
        let flaky = request("ada+flaky@example.com");
        assert!(matches!(
            gateway.charge(&flaky).await,
            Err(GatewayError::Transient(_))
        ));
        assert!(matches!(
            gateway.charge(&flaky).await,
            Err(GatewayError::Transient(_))
        ));
        assert_eq!(gateway.charge(&flaky).await, Ok(ChargeOutcome::Succeeded));
    }

    #[tokio::test]
    async fn fail_fails_permanently_every_time() {
        let gateway = SimulatedGateway::default();
        for _ in 0..3 {
            let outcome = gateway.charge(&request("ada+fail@example.com")).await;
            assert!(matches!(outcome, Err(GatewayError::Permanent(_))));
        }
    }

    #[tokio::test]
    async fn only_the_local_part_steers() {
        let outcome = SimulatedGateway::default()
            .charge(&request("ada@decline.example.com"))
            .await;
        assert_eq!(outcome, Ok(ChargeOutcome::Succeeded));
    }
}
