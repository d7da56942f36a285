//! The faults the ledger injects, one at a time, each with its recovery.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Connection, Consumer,
    message::Delivery,
    options::BasicAckOptions,
    types::{AMQPValue, FieldTable},
};
use messaging::{Topology, topology::SUBSCRIPTIONS};
use tonic_health::pb::health_check_response::ServingStatus;

use system_tests::ledger::{
    book::{DeadLetters, INJECTED_HEADER},
    stack::{HEARTBEAT, Stack},
};

use crate::stack::{ChaosStack, Service};

/// Events copied per routing key for the duplicates.
const DUPLICATES_PER_KEY: usize = 20;

/// One fault and its recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Nothing,
    Kill9(Service),
    Sigterm(Service),
    BrokerRestart,
    BrokerKill9,
    PostgresImmediateStop,
    BrokerConnectionsCut,
    BrokerConnectionsBlackholed,
    DuplicateEvents,
    Poison,
}

impl Fault {
    /// Every fault, in the order the ledger injects them.
    pub fn all() -> Vec<Self> {
        let mut faults = vec![Self::Nothing];
        faults.extend(Service::ALL.map(Self::Kill9));
        faults.extend(Service::ALL.map(Self::Sigterm));
        faults.extend([
            Self::BrokerRestart,
            Self::BrokerKill9,
            Self::PostgresImmediateStop,
            Self::BrokerConnectionsCut,
            Self::BrokerConnectionsBlackholed,
            Self::DuplicateEvents,
            Self::Poison,
        ]);
        faults
    }

    pub fn name(self) -> String {
        match self {
            Self::Nothing => "none".into(),
            Self::Kill9(service) => format!("kill -9 {}", service.binary()),
            Self::Sigterm(service) => format!("SIGTERM {}", service.binary()),
            Self::BrokerRestart => "broker restart".into(),
            Self::BrokerKill9 => "broker kill -9".into(),
            Self::PostgresImmediateStop => "postgres immediate stop".into(),
            Self::BrokerConnectionsCut => "broker connections cut".into(),
            Self::BrokerConnectionsBlackholed => {
                format!("broker blackholed {}s", 3 * HEARTBEAT.as_secs())
            }
            Self::DuplicateEvents => "duplicate events".into(),
            Self::Poison => "poison on every queue".into(),
        }
    }

    /// Injects the fault and recovers from it. `Err` says what did not behave (a dirty
    /// SIGTERM exit, health that did not notice a stall).
    pub async fn inject(
        self,
        stack: &mut ChaosStack,
        dead: &mut DeadLetters,
        taps: Option<&mut Taps>,
    ) -> Result<(), String> {
        match self {
            Self::Nothing => Ok(()),
            Self::Kill9(service) => {
                let process = stack.service(service);
                let status = process.signal("-KILL").await;
                process.restart().await;
                if status.success() {
                    return Err(format!("{} exited cleanly after SIGKILL", service.binary()));
                }
                Ok(())
            }
            Self::Sigterm(service) => {
                let process = stack.service(service);
                let status = process.signal("-TERM").await;
                let clean = status.success();
                let tail = process.log_tail(10);
                process.restart().await;
                if !clean {
                    return Err(format!(
                        "{} did not stop cleanly on SIGTERM ({status}):\n{tail}",
                        service.binary()
                    ));
                }
                Ok(())
            }
            Self::BrokerRestart => {
                stack.broker.stop_app().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                stack.broker.start_app().await;
                Ok(())
            }
            Self::BrokerKill9 => {
                stack.broker.kill_9().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                stack.broker.start_again().await;
                Ok(())
            }
            Self::PostgresImmediateStop => {
                stack.postgres.stop_immediately();
                tokio::time::sleep(Duration::from_secs(2)).await;
                stack.postgres.start_again().await;
                Ok(())
            }
            Self::BrokerConnectionsCut => {
                stack.proxy.cut();
                Ok(())
            }
            Self::BrokerConnectionsBlackholed => blackhole(stack).await,
            Self::DuplicateEvents => {
                let taps = taps.expect("taps run while duplicates are injected");
                let copies = taps.collect();
                if copies.is_empty() {
                    return Err("no event was captured to duplicate".into());
                }
                let topology = stack.topology().clone();
                republish(stack.amqp().await, &topology, &copies, 2).await;
                taps.copies = copies;
                Ok(())
            }
            Self::Poison => {
                let topology = stack.topology().clone();
                let amqp = stack.amqp().await;
                let types = [
                    "user.v1.UserCreated",
                    "order.v1.OrderCreated",
                    "payment.v1.PaymentProcessed",
                ];
                for (subscription, type_name) in SUBSCRIPTIONS.iter().zip(types) {
                    for (_, payload, properties) in test_support::poison(type_name) {
                        let mut headers = FieldTable::default();
                        headers.insert(INJECTED_HEADER.into(), AMQPValue::Boolean(true));
                        test_support::publish_raw(
                            amqp,
                            &topology,
                            subscription.routing_key,
                            &payload,
                            properties.with_headers(headers),
                        )
                        .await;
                        dead.poison_injected += 1;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Stalls every broker connection for three heartbeats: each service's health must say
/// NOT_SERVING within two.
async fn blackhole(stack: &mut ChaosStack) -> Result<(), String> {
    stack.proxy.blackhole(true);
    let started = tokio::time::Instant::now();
    let mut noticed: Vec<Option<Duration>> = vec![None; stack.services.len()];
    while started.elapsed() < 3 * HEARTBEAT {
        for (process, noticed) in stack.services.iter().zip(noticed.iter_mut()) {
            if noticed.is_none() && process.health().await == Some(ServingStatus::NotServing) {
                *noticed = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.proxy.blackhole(false);
    let late: Vec<String> = stack
        .services
        .iter()
        .zip(&noticed)
        .filter(|(_, noticed)| noticed.is_none_or(|after| after > 2 * HEARTBEAT))
        .map(|(process, noticed)| format!("{} ({noticed:?})", process.service.binary()))
        .collect();
    if late.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "health did not say NOT_SERVING within two heartbeats ({:?}): {}",
            2 * HEARTBEAT,
            late.join(", ")
        ))
    }
}

/// Private queues that copy the events of every routing key, for duplicating them.
pub struct Taps {
    consumers: Vec<(String, Consumer)>,
    /// What was duplicated at once, to send again late.
    pub copies: Vec<(String, Delivery)>,
}

impl Taps {
    pub async fn start(amqp: &Connection, topology: &Topology) -> Self {
        let mut consumers = Vec::new();
        for subscription in SUBSCRIPTIONS {
            let consumer = topology
                .watch(amqp, subscription.routing_key)
                .await
                .expect("a tap");
            consumers.push((subscription.routing_key.to_owned(), consumer));
        }
        Self {
            consumers,
            copies: Vec::new(),
        }
    }

    /// Up to [`DUPLICATES_PER_KEY`] events of each routing key taken so far.
    fn collect(&mut self) -> Vec<(String, Delivery)> {
        let mut copies = Vec::new();
        for (routing_key, consumer) in &mut self.consumers {
            let mut taken = 0;
            while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
                if taken < DUPLICATES_PER_KEY {
                    copies.push((routing_key.clone(), delivery));
                    taken += 1;
                }
            }
        }
        copies
    }

    /// Sends the copies again, once: the late duplicates.
    pub async fn send_late(&self, amqp: &Connection, topology: &Topology) {
        republish(amqp, topology, &self.copies, 1).await;
    }
}

/// Publishes each copy `times` times at once, as its producer did: same payload, same
/// `message_id`, same properties.
async fn republish(
    amqp: &Connection,
    topology: &Topology,
    copies: &[(String, Delivery)],
    times: usize,
) {
    let publisher = test_support::publisher(amqp, topology, "chaos-ledger").await;
    let exchange = topology.exchange();
    let sends = copies.iter().flat_map(|(routing_key, delivery)| {
        (0..times).map(|_| {
            publisher.forward(
                &exchange,
                routing_key,
                &delivery.data,
                delivery.properties.clone(),
            )
        })
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.expect("the broker takes the duplicate");
    }
    for (_, delivery) in copies {
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }
}
