//! `eventsctl topology delete`: removes a namespace's queues and exchanges, to tear a stack
//! down or to have the services declare them again (another `QUEUE_TYPE`, other arguments).
//! Queues that still hold messages are kept unless the operator says to purge them. It names
//! what it deleted, and only what existed, so running it again says there is nothing left.

use std::io::Write;

use lapin::{
    Connection,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use messaging::Topology;

use crate::confirm;

/// What one queue of the namespace holds now.
struct Present {
    queue: String,
    messages: u32,
    consumers: u32,
}

/// Deletes `topology`'s queues and exchanges. Refuses while a consumer is attached to one of
/// them, and, unless `purge`, while one holds messages; asks first unless `yes`.
pub(crate) async fn delete(
    connection: &Connection,
    topology: &Topology,
    purge: bool,
    yes: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut present = Vec::new();
    for queue in topology.queues() {
        if let Some(found) = inspect(connection, &queue).await? {
            present.push(found);
        }
    }
    let listed = |pick: &dyn Fn(&Present) -> u32| {
        present
            .iter()
            .filter(|found| pick(found) > 0)
            .map(|found| format!("{} ({})", found.queue, pick(found)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let consumed = listed(&|found| found.consumers);
    anyhow::ensure!(
        consumed.is_empty(),
        "consumers are attached to {consumed}: stop the services first"
    );
    let waiting = listed(&|found| found.messages);
    anyhow::ensure!(
        waiting.is_empty() || purge,
        "messages wait in {waiting}: drain them first (run the services until their queues are \
         empty; replay or purge dead letters with `eventsctl dlq`), or pass --purge to delete \
         them with their queues"
    );
    let mut exchanges = Vec::new();
    for exchange in [topology.exchange(), topology.dead_letter_exchange()] {
        if exchange_exists(connection, &exchange).await? {
            exchanges.push(exchange);
        }
    }
    if present.is_empty() && exchanges.is_empty() {
        writeln!(
            out,
            "nothing to delete: no queue or exchange of namespace {:?}",
            topology.namespace().as_str()
        )?;
        return Ok(());
    }
    if !yes
        && !confirm(
            &format!(
                "Delete {} queue(s) and {} exchange(s) {}?",
                present.len(),
                exchanges.len(),
                exchanges.join(" and ")
            ),
            "delete",
        )?
    {
        writeln!(out, "nothing deleted")?;
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    for found in &present {
        channel
            .queue_delete(found.queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        writeln!(
            out,
            "deleted queue {} ({} message(s))",
            found.queue, found.messages
        )?;
    }
    for exchange in &exchanges {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
        writeln!(out, "deleted exchange {exchange}")?;
    }
    let _ = channel.close(200, "deleted".into()).await;
    Ok(())
}

/// Whether `exchange` exists.
async fn exchange_exists(connection: &Connection, exchange: &str) -> anyhow::Result<bool> {
    // A missing exchange closes the channel: one channel per exchange.
    let channel = connection.create_channel().await?;
    let exists = messaging::topology::exchange_exists(&channel, exchange).await?;
    if exists {
        let _ = channel.close(200, "inspected".into()).await;
    }
    Ok(exists)
}

/// `queue`'s messages and consumers, or `None` when it does not exist.
async fn inspect(connection: &Connection, queue: &str) -> anyhow::Result<Option<Present>> {
    // A missing queue closes the channel: one channel per queue.
    let channel = connection.create_channel().await?;
    let state = messaging::topology::inspect(&channel, queue).await?;
    if state.is_some() {
        let _ = channel.close(200, "inspected".into()).await;
    }
    Ok(state.map(|state| Present {
        queue: queue.to_owned(),
        messages: state.messages,
        consumers: state.consumers,
    }))
}
