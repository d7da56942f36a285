//! The `dlq` commands.

use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel, Connection,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable},
};
use messaging::{
    Publisher, Topology,
    retry::{
        ATTEMPTS_HEADER, CONSUMER_HEADER, FAILURE_KIND_HEADER, FAILURE_MESSAGE_HEADER,
        FIRST_FAILURE_HEADER, LAST_FAILURE_HEADER, ORIGINAL_EXCHANGE_HEADER,
        ORIGINAL_ROUTING_KEY_HEADER, integer_header, text_header,
    },
    topology::Subscription,
    trust::ORIGINAL_USER_ID_HEADER,
};
use serde_json::json;

use crate::{Filter, confirm, payload};

/// Headers a failure added; a replay removes them so the message starts afresh.
const FAILURE_HEADERS: &[&str] = &[
    ATTEMPTS_HEADER,
    FAILURE_KIND_HEADER,
    FAILURE_MESSAGE_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_FAILURE_HEADER,
    CONSUMER_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    ORIGINAL_USER_ID_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// The dead-letter queues of one namespace.
pub(crate) struct DeadLetters<'a> {
    connection: &'a Connection,
    /// The broker user `connection` logged in as.
    user: String,
    topology: Topology,
    subscriptions: Vec<&'static Subscription>,
}

/// Dead letters fetched, unacknowledged, from one queue; they go back when `channel` closes.
struct Fetched {
    channel: Channel,
    queue: String,
    messages: Vec<Delivery>,
}

impl Fetched {
    async fn release(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

impl<'a> DeadLetters<'a> {
    pub(crate) fn new(
        connection: &'a Connection,
        user: String,
        topology: Topology,
        subscriptions: Vec<&'static Subscription>,
    ) -> Self {
        Self {
            connection,
            user,
            topology,
            subscriptions,
        }
    }

    /// How many messages wait in `queue`; an error if it does not exist.
    async fn depth(&self, channel: &Channel, queue: &str) -> anyhow::Result<u32> {
        let state = messaging::topology::inspect(channel, queue).await?;
        let state = state.with_context(|| {
            format!(
                "queue {queue} does not exist: is BUS_NAMESPACE right, and has a service started?"
            )
        })?;
        Ok(state.messages)
    }

    /// Fetches up to `max` of the messages waiting in `subscription`'s DLQ, unacknowledged.
    async fn fetch(&self, subscription: &Subscription, max: usize) -> anyhow::Result<Fetched> {
        let channel = self.connection.create_channel().await?;
        let queue = self.topology.dead_letter_queue(subscription);
        let waiting = self.depth(&channel, &queue).await?;
        let mut messages = Vec::new();
        while messages.len() < max.min(waiting as usize) {
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?
            {
                Some(message) => messages.push(message.delivery),
                None => break,
            }
        }
        Ok(Fetched {
            channel,
            queue,
            messages,
        })
    }

    pub(crate) async fn list(&self, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
        writeln!(out, "{:<56} {:>8}", "DEAD-LETTER QUEUE", "MESSAGES")?;
        for subscription in &self.subscriptions {
            let fetched = self.fetch(subscription, usize::MAX).await?;
            writeln!(out, "{:<56} {:>8}", fetched.queue, fetched.messages.len())?;
            let mut summary: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
            for message in &fetched.messages {
                let key = (
                    event_type(&message.properties),
                    failure_kind(&message.properties),
                );
                let entry = summary.entry(key).or_default();
                entry.0 += 1;
                entry.1 =
                    text_header(&message.properties, FAILURE_MESSAGE_HEADER).unwrap_or_default();
            }
            for ((kind, failure), (count, last_error)) in summary {
                writeln!(
                    out,
                    "  {count:>6}  {kind}  {failure}  last error: {last_error}"
                )?;
            }
            fetched.release().await;
        }
        Ok(())
    }

    pub(crate) async fn show(
        &self,
        filter: &Filter,
        limit: usize,
        out: &mut (dyn Write + Send),
    ) -> anyhow::Result<()> {
        let mut shown = 0;
        for subscription in &self.subscriptions {
            let fetched = self.fetch(subscription, usize::MAX).await?;
            for message in fetched.messages.iter().filter(|m| matches(filter, m)) {
                if shown == limit {
                    break;
                }
                shown += 1;
                let rendered = serde_json::to_string_pretty(&describe(&fetched.queue, message))?;
                writeln!(out, "{rendered}")?;
            }
            fetched.release().await;
        }
        if shown == 0 {
            writeln!(out, "no dead letters match")?;
        }
        Ok(())
    }

    pub(crate) async fn replay(
        &self,
        filter: &Filter,
        dry_run: bool,
        rate: f64,
        out: &mut (dyn Write + Send),
    ) -> anyhow::Result<()> {
        let publisher = Publisher::open(
            self.connection,
            self.topology.exchange(),
            "eventsctl".into(),
            self.user.clone(),
        )
        .await
        .context("cannot open a publishing channel")?;
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut replayed = 0;
        for subscription in &self.subscriptions {
            let fetched = self.fetch(subscription, usize::MAX).await?;
            for message in fetched.messages.iter().filter(|m| matches(filter, m)) {
                let (exchange, routing_key) =
                    self.original_route(subscription, &message.properties);
                let id = message_id(&message.properties);
                if dry_run {
                    writeln!(
                        out,
                        "would replay {id} ({}) to {exchange} / {routing_key}",
                        event_type(&message.properties)
                    )?;
                    replayed += 1;
                    continue;
                }
                pace.tick().await;
                publisher
                    .forward(
                        &exchange,
                        &routing_key,
                        &message.data,
                        fresh(&message.properties),
                    )
                    .await
                    .with_context(|| {
                        format!("cannot replay {id}; it stays in {}", fetched.queue)
                    })?;
                message
                    .ack(BasicAckOptions::default())
                    .await
                    .with_context(|| {
                        format!("{id} was replayed but stays in {} too", fetched.queue)
                    })?;
                writeln!(
                    out,
                    "replayed {id} ({}) to {exchange} / {routing_key}",
                    event_type(&message.properties)
                )?;
                replayed += 1;
            }
            fetched.release().await;
        }
        let verb = if dry_run { "would replay" } else { "replayed" };
        writeln!(out, "{verb} {replayed} message(s)")?;
        Ok(())
    }

    pub(crate) async fn purge(
        &self,
        yes: bool,
        out: &mut (dyn Write + Send),
    ) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
        let queues: Vec<_> = self
            .subscriptions
            .iter()
            .map(|s| self.topology.dead_letter_queue(s))
            .collect();
        let mut total = 0;
        for queue in &queues {
            total += self.depth(&channel, queue).await?;
        }
        if !yes
            && !confirm(
                &format!("Delete {total} dead letter(s) from {}?", queues.join(", ")),
                "purge",
            )?
        {
            writeln!(out, "nothing purged")?;
            return Ok(());
        }
        for queue in &queues {
            let purged = channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await?;
            writeln!(out, "purged {purged} message(s) from {queue}")?;
        }
        let _ = channel.close(200, "purged".into()).await;
        Ok(())
    }

    /// Where the message was first published; the subscription's route when the headers do not
    /// say (a message dead-lettered by the broker itself).
    fn original_route(
        &self,
        subscription: &Subscription,
        properties: &BasicProperties,
    ) -> (String, String) {
        match (
            text_header(properties, ORIGINAL_EXCHANGE_HEADER),
            text_header(properties, ORIGINAL_ROUTING_KEY_HEADER),
        ) {
            (Some(exchange), Some(routing_key)) => (exchange, routing_key),
            _ => (
                self.topology.exchange(),
                subscription.routing_key.to_owned(),
            ),
        }
    }
}

fn matches(filter: &Filter, message: &Delivery) -> bool {
    let properties = &message.properties;
    let failed_at = text_header(properties, LAST_FAILURE_HEADER)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    (filter.message_ids.is_empty() || filter.message_ids.contains(&message_id(properties)))
        && filter
            .event_type
            .as_ref()
            .is_none_or(|t| *t == event_type(properties))
        && filter
            .since
            .is_none_or(|since| failed_at.is_some_and(|at| at >= since))
        && filter
            .until
            .is_none_or(|until| failed_at.is_some_and(|at| at < until))
}

/// The message as it was first published, without what its failures added.
fn fresh(properties: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(original) = properties.headers() {
        for (name, value) in original.inner() {
            if !FAILURE_HEADERS.contains(&name.as_str()) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers.insert(
        "replayed_time".into(),
        AMQPValue::LongString(Utc::now().to_rfc3339().into()),
    );
    let replayed = properties.clone().with_headers(headers);
    // Under its producer's user_id, which consumers check: the broker allows that only to the
    // producer's own broker user or one tagged `impersonator` (build-support/docs/design.md, Security).
    match text_header(properties, ORIGINAL_USER_ID_HEADER) {
        Some(producer) => replayed.with_user_id(producer.as_str().into()),
        None => replayed,
    }
}

fn message_id(properties: &BasicProperties) -> String {
    properties
        .message_id()
        .as_ref()
        .map_or_else(|| "(no message_id)".to_owned(), |id| id.to_string())
}

fn event_type(properties: &BasicProperties) -> String {
    properties
        .kind()
        .as_ref()
        .map_or_else(|| "(no type)".to_owned(), |kind| kind.to_string())
}

fn failure_kind(properties: &BasicProperties) -> String {
    text_header(properties, FAILURE_KIND_HEADER).unwrap_or_else(|| "rejected".to_owned())
}

fn describe(queue: &str, message: &Delivery) -> serde_json::Value {
    let properties = &message.properties;
    let kind = event_type(properties);
    let (payload, payload_error) = match payload::to_json(&kind, &message.data) {
        Ok(json) => (json, None),
        Err(error) => (serde_json::Value::Null, Some(error)),
    };
    json!({
        "queue": queue,
        "message_id": message_id(properties),
        "type": kind,
        "correlation_id": properties.correlation_id().as_ref().map(|c| c.to_string()),
        "app_id": properties.app_id().as_ref().map(|a| a.to_string()),
        "failure": {
            "kind": failure_kind(properties),
            "message": text_header(properties, FAILURE_MESSAGE_HEADER),
            "attempts": integer_header(properties, ATTEMPTS_HEADER),
            "first_failure_time": text_header(properties, FIRST_FAILURE_HEADER),
            "last_failure_time": text_header(properties, LAST_FAILURE_HEADER),
            "consumer": text_header(properties, CONSUMER_HEADER),
            "original_exchange": text_header(properties, ORIGINAL_EXCHANGE_HEADER),
            "original_routing_key": text_header(properties, ORIGINAL_ROUTING_KEY_HEADER),
        },
        "payload_bytes": message.data.len(),
        "payload": payload,
        "payload_error": payload_error,
    })
}
