//! The broker step of the ceiling: persistent messages of the events through a durable queue.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use messaging::{Envelope, consumer::take_ready, queues::QueueRole};
use uuid::Uuid;

use super::{CeilingArgs, Latency, Sampling, Step};

/// Persistent messages of the events' sizes through a durable queue: three publishers (one
/// relay per service) publishing batches with confirms, `workers` consumers acking each batch
/// with one `multiple` ack; then one message at a time, publish to delivery, back to back and
/// spaced out.
pub(super) async fn broker(
    args: &CeilingArgs,
    span: Duration,
    events: &[Envelope],
) -> anyhow::Result<Step> {
    let amqp = args.broker.connect().await?;
    let queue = format!("loadgen.ceiling.{}", Uuid::new_v4().simple());
    let setup = amqp.create_channel().await?;
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args.queue_type.arguments(QueueRole::Plain),
        )
        .await?;
    let measured = broker_steps(args, &amqp, &queue, span, events).await;
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), amqp.close(200, "done".into())).await;
    let (throughput, latency) = measured?;
    Ok(Step {
        name: "broker: publish, confirm, consume, ack",
        throughput,
        unit: "msg",
        per_flow: 3.0,
        latency,
        hops: 3.0,
    })
}

/// The flow's events (one of each, as the services wrote them), with their AMQP properties.
pub(super) fn messages(events: &[Envelope]) -> Vec<(Vec<u8>, BasicProperties)> {
    events
        .iter()
        .map(|envelope| (envelope.payload.clone(), envelope.properties("loadgen")))
        .collect()
}

pub(super) async fn broker_steps(
    args: &CeilingArgs,
    amqp: &Connection,
    queue: &str,
    span: Duration,
    events: &[Envelope],
) -> anyhow::Result<(f64, Latency)> {
    anyhow::ensure!(!events.is_empty(), "no event to publish");
    let messages = Arc::new(messages(events));
    let batch = args.batch.max(1);

    // Consumers count what they acked until told to stop.
    let consumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut consumers = Vec::new();
    let mut consumer_channels = Vec::new();
    for worker in 0..args.workers.max(1) {
        let channel = amqp.create_channel().await?;
        let tag = format!("ceiling-{worker}");
        consumer_channels.push((channel.clone(), tag.clone()));
        channel.basic_qos(64, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (consumed, stop) = (consumed.clone(), stop.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = deliveries.next() => next,
                };
                let Some(Ok(first)) = first else { return };
                // As the consumer batches: what the broker has already pushed, acked at once.
                let mut received = vec![first];
                let ended = take_ready(&mut deliveries, &mut received, batch);
                let n = received.len();
                let Some(last) = received.pop() else {
                    return;
                };
                if last.ack(BasicAckOptions { multiple: n > 1 }).await.is_err() {
                    return;
                }
                consumed.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if ended.is_some() {
                    return;
                }
            }
        }));
    }

    let started = Instant::now();
    let deadline = started + span;
    let mut publishers = Vec::new();
    for _ in 0..3 {
        let channel = amqp.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (messages, queue) = (messages.clone(), queue.to_owned());
        publishers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut confirms = Vec::with_capacity(batch);
                for i in 0..batch {
                    let (payload, properties) = &messages[i % messages.len()];
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            payload,
                            properties.clone(),
                        )
                        .await?;
                    confirms.push(confirm);
                }
                for confirm in futures_util::future::join_all(confirms).await {
                    anyhow::ensure!(confirm?.is_ack(), "the broker nacked a message");
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for publisher in futures_util::future::join_all(publishers).await {
        publisher??;
    }
    tokio::time::sleep_until(deadline.into()).await;
    let throughput = consumed.load(std::sync::atomic::Ordering::Relaxed) as f64
        / started.elapsed().as_secs_f64();
    // Each consumer cancelled and its cancel-ok awaited before its channel closes: a consumer
    // merely dropped sends its cancel in the background, and a cancel-ok arriving on a channel
    // already closing is a protocol error that closes the whole connection.
    for (channel, tag) in &consumer_channels {
        channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await?;
    }
    stop.cancel();
    for consumer in consumers {
        consumer.await?;
    }
    // Closed, so the broker neither keeps delivering to them nor holds their unacked messages
    // back from the one-at-a-time samples.
    for (channel, _) in consumer_channels {
        channel.close(200, "done".into()).await?;
    }

    // One at a time: publish, then wait for that message's delivery (each sample its own
    // message id, so a message left over from the throughput step is never taken for it).
    let channel = amqp.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .queue_purge(queue.into(), Default::default())
        .await?;
    let deliveries = channel
        .basic_consume(
            queue.into(),
            "ceiling-latency".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let deliveries = tokio::sync::Mutex::new(deliveries);
    let mut sent = 0;
    let latency = Sampling::new(args)
        .take(|| {
            let (payload, properties) = &messages[sent % messages.len()];
            sent += 1;
            let (channel, deliveries) = (&channel, &deliveries);
            async move {
                let id = Uuid::new_v4().to_string();
                let properties = properties.clone().with_message_id(id.as_str().into());
                let mut deliveries = deliveries.lock().await;
                let started = Instant::now();
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        payload,
                        properties,
                    )
                    .await?;
                loop {
                    let delivery = deliveries.next().await.context("the consumer stopped")??;
                    let ours = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .is_some_and(|message_id| message_id.as_str() == id);
                    let took = started.elapsed();
                    delivery.ack(BasicAckOptions::default()).await?;
                    if ours {
                        confirm.await?;
                        return Ok(took);
                    }
                }
            }
        })
        .await?;
    channel
        .basic_cancel("ceiling-latency".into(), BasicCancelOptions::default())
        .await?;
    drop(deliveries);
    Ok((throughput, latency))
}
