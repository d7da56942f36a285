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
    /// How many waited in the queue when it was opened.
    waiting: u32,
    /// How many were read (and held): at most the bound the fetch was given.
    read: usize,
    /// Those of the read ones that were kept.
    messages: Vec<Delivery>,
}

impl Fetched {
    async fn release(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}

/// What a bounded read of the dead-letter queues found for one correlation id.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The dead letters with the correlation id.
    pub(crate) found: Vec<DeadLetter>,
    /// Messages read, across the queues.
    pub(crate) read: usize,
    /// Dead-letter queues read.
    pub(crate) queues: usize,
    /// Queues read only in part, at the bound: (queue, read, waiting).
    pub(crate) partial: Vec<(String, usize, u32)>,
    /// Dead-letter queues that do not exist, skipped.
    pub(crate) missing: Vec<String>,
}

/// One dead letter, as its failure headers describe it.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) queue: String,
    pub(crate) message_id: String,
    pub(crate) event_type: String,
    pub(crate) kind: String,
    pub(crate) attempts: Option<i64>,
    pub(crate) reason: Option<String>,
    /// When it last failed (`last_failure_time`), if the header says.
    pub(crate) failed_at: Option<DateTime<Utc>>,
    /// The user its payload names (`user_id`), if it decodes and names one.
    pub(crate) user_id: Option<String>,
}

impl DeadLetter {
    fn of(queue: &str, message: &Delivery) -> Self {
        let properties = &message.properties;
        let event_type = event_type(properties);
        let user_id = payload::to_json(&event_type, &message.data)
            .ok()
            .and_then(|json| json.get("userId")?.as_str().map(str::to_owned))
            .filter(|id| !id.is_empty());
        Self {
            queue: queue.to_owned(),
            message_id: message_id(properties),
            kind: failure_kind(properties),
            attempts: integer_header(properties, ATTEMPTS_HEADER),
            reason: text_header(properties, FAILURE_MESSAGE_HEADER),
            failed_at: failure_time(properties),
            user_id,
            event_type,
        }
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
        Ok(state.with_context(|| no_such_queue(queue))?.messages)
    }

    /// Fetches every message waiting in `subscription`'s DLQ, unacknowledged.
    async fn fetch(&self, subscription: &Subscription) -> anyhow::Result<Fetched> {
        let queue = self.topology.dead_letter_queue(subscription);
        self.fetch_kept(subscription, usize::MAX, |_| true)
            .await?
            .with_context(|| no_such_queue(&queue))
    }

    /// Reads up to `max` of the messages waiting in `subscription`'s DLQ, unacknowledged, and
    /// keeps those `keep` accepts (the others' bodies are dropped at once; the broker holds them
    /// until the channel closes). `None` when the queue does not exist.
    async fn fetch_kept(
        &self,
        subscription: &Subscription,
        max: usize,
        keep: impl Fn(&Delivery) -> bool,
    ) -> anyhow::Result<Option<Fetched>> {
        // A missing queue closes the channel: one channel per queue.
        let channel = self.connection.create_channel().await?;
        let queue = self.topology.dead_letter_queue(subscription);
        let Some(state) = messaging::topology::inspect(&channel, &queue).await? else {
            return Ok(None);
        };
        let waiting = state.messages;
        let mut read = 0;
        let mut messages = Vec::new();
        while read < max.min(waiting as usize) {
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?
            {
                Some(message) => {
                    read += 1;
                    if keep(&message.delivery) {
                        messages.push(message.delivery);
                    }
                }
                None => break,
            }
        }
        Ok(Some(Fetched {
            channel,
            queue,
            waiting,
            read,
            messages,
        }))
    }

    /// The dead letters whose `correlation_id` is `correlation_id`, reading at most `max` of
    /// each dead-letter queue; a queue that does not exist is skipped.
    pub(crate) async fn of_correlation(
        &self,
        correlation_id: &str,
        max: usize,
    ) -> anyhow::Result<Scan> {
        let mut scan = Scan::default();
        for subscription in &self.subscriptions {
            let of_flow = |message: &Delivery| {
                message
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == correlation_id)
            };
            let Some(fetched) = self.fetch_kept(subscription, max, of_flow).await? else {
                scan.missing
                    .push(self.topology.dead_letter_queue(subscription));
                continue;
            };
            scan.read += fetched.read;
            scan.queues += 1;
            if fetched.read < fetched.waiting as usize {
                scan.partial
                    .push((fetched.queue.clone(), fetched.read, fetched.waiting));
            }
            scan.found.extend(
                fetched
                    .messages
                    .iter()
                    .map(|message| DeadLetter::of(&fetched.queue, message)),
            );
            fetched.release().await;
        }
        Ok(scan)
    }

    pub(crate) async fn list(&self, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
        writeln!(out, "{:<56} {:>8}", "DEAD-LETTER QUEUE", "MESSAGES")?;
        for subscription in &self.subscriptions {
            let fetched = self.fetch(subscription).await?;
            writeln!(out, "{:<56} {:>8}", fetched.queue, fetched.read)?;
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
            let fetched = self.fetch(subscription).await?;
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
            let fetched = self.fetch(subscription).await?;
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

fn no_such_queue(queue: &str) -> String {
    format!("queue {queue} does not exist: is BUS_NAMESPACE right, and has a service started?")
}

fn matches(filter: &Filter, message: &Delivery) -> bool {
    let properties = &message.properties;
    let failed_at = failure_time(properties);
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

/// When the message last failed, if its `last_failure_time` header says.
fn failure_time(properties: &BasicProperties) -> Option<DateTime<Utc>> {
    text_header(properties, LAST_FAILURE_HEADER)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
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
