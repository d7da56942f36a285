//! The supervised connection to RabbitMQ.
//!
//! A background task connects with exponential back-off, declares the topology, opens the
//! confirm-mode publish channel and announces it on a watch channel. When the connection or the
//! channel dies it announces `None`, and starts over, so nothing else has to handle reconnects:
//! the outbox relay and the consumers just follow the watch.

use std::{sync::Arc, time::Duration};

use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    publisher::Publisher,
    topology::{Subscription, Topology},
};

/// How often the supervisor checks that the connection is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest a connection attempt (handshake and topology) may take: a broker that accepts the TCP
/// connection while it is still starting can otherwise stall the handshake for good.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What the supervisor needs to connect.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// `amqp://user:password@host:port/vhost`. Never logged.
    pub url: String,
    pub topology: Topology,
    /// The producing service's name: AMQP `app_id` and the connection's name.
    pub app_id: String,
    /// The queues this service consumes: their declaration must succeed.
    pub owned: Vec<Subscription>,
}

/// A live connection, with the topology declared.
#[derive(Debug, Clone)]
pub struct Connected {
    pub connection: Arc<Connection>,
    pub publisher: Publisher,
}

/// A handle on the supervised connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    state: watch::Receiver<Option<Connected>>,
    topology: Topology,
    app_id: String,
}

impl Bus {
    /// Starts supervising the connection on `tracker`; it is closed once `stop` is cancelled.
    pub fn start(settings: BusSettings, tracker: &TaskTracker, stop: CancellationToken) -> Self {
        let (sender, state) = watch::channel(None);
        let topology = settings.topology.clone();
        let app_id = settings.app_id.clone();
        tracker.spawn(supervise(settings, sender, stop));
        Self {
            state,
            topology,
            app_id,
        }
    }

    /// The name of the service this bus publishes for.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The topology this bus declares.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The live connection, if there is one now.
    pub fn current(&self) -> Option<Connected> {
        self.state.borrow().clone()
    }

    /// Follows the connection: each change is a reconnect or a loss.
    pub fn watch(&self) -> watch::Receiver<Option<Connected>> {
        self.state.clone()
    }
}

async fn supervise(
    settings: BusSettings,
    state: watch::Sender<Option<Connected>>,
    stop: CancellationToken,
) {
    let mut retry_in = FIRST_RETRY;
    while !stop.is_cancelled() {
        let attempt = tokio::select! {
            _ = stop.cancelled() => break,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&settings)) => {
                attempt.unwrap_or_else(|_| Err(ConnectError::TimedOut(CONNECT_TIMEOUT)))
            }
        };
        match attempt {
            Ok(connected) => {
                tracing::info!(exchange = %settings.topology.exchange(), "connected to RabbitMQ");
                retry_in = FIRST_RETRY;
                let connection = connected.connection.clone();
                let publisher = connected.publisher.clone();
                state.send_replace(Some(connected));
                let stopping = wait_until_lost(&connection, &publisher, &stop).await;
                state.send_replace(None);
                if stopping {
                    if let Err(error) = connection.close(200, "shutting down".into()).await {
                        tracing::debug!(%error, "closing the RabbitMQ connection");
                    }
                    break;
                }
                tracing::warn!("lost the RabbitMQ connection; reconnecting");
            }
            Err(error) => {
                tracing::warn!(%error, ?retry_in, "cannot reach RabbitMQ; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry_in) => {}
                }
                retry_in = (retry_in * 2).min(MAX_RETRY);
            }
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("no connection within {0:?}")]
    TimedOut(Duration),
}

async fn connect(settings: &BusSettings) -> Result<Connected, ConnectError> {
    let properties =
        ConnectionProperties::default().with_connection_name(settings.app_id.clone().into());
    let connection = Connection::connect(&settings.url, properties).await?;
    settings
        .topology
        .declare(&connection, &settings.owned)
        .await?;
    let publisher = Publisher::open(
        &connection,
        settings.topology.exchange(),
        settings.app_id.clone(),
    )
    .await?;
    Ok(Connected {
        connection: Arc::new(connection),
        publisher,
    })
}

/// Returns `true` when asked to stop, `false` when the connection or the channel died.
async fn wait_until_lost(
    connection: &Connection,
    publisher: &Publisher,
    stop: &CancellationToken,
) -> bool {
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return true,
            _ = check.tick() => {
                if !connection.status().connected() || !publisher.is_open() {
                    return false;
                }
            }
        }
    }
}
