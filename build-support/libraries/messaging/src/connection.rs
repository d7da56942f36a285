//! The supervised connection to RabbitMQ.
//!
//! A background task connects with exponential back-off, declares the topology, opens the
//! confirm-mode publish channel and announces it on a watch channel. When the connection or the
//! channel dies it announces `None`, and starts over, so nothing else has to handle reconnects:
//! the outbox relay and the consumers just follow the watch.
//!
//! Given a cluster's nodes ([`BrokerAddresses`]), it starts with a node picked at random and,
//! when a connection is lost, connects to the next node of the list that answers: the node that
//! failed is tried last. A publish whose confirm never came when the connection was lost is a
//! publish that did not happen (the outbox row stays, and is published again).
//!
//! A connection whose broker stops answering (a stalled or blackholed network, a broker that no
//! longer reads) does not close by itself. Two mechanisms notice it: AMQP heartbeats, negotiated
//! at [`BusSettings::heartbeat`], make the client close a connection that received nothing for
//! two heartbeats (and the broker drop a silent client); and a probe, a round trip on a channel
//! of its own every half heartbeat, marks the bus unresponsive when an answer takes longer than
//! one heartbeat, so health says NOT_SERVING within two heartbeats, before the connection is
//! replaced, and SERVING again as soon as the broker answers.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use lapin::{Channel, Connection, ConnectionProperties, options::BasicQosOptions, uri::AMQPUri};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    addresses::BrokerAddresses,
    limits::MAX_FRAME_BYTES,
    publisher::Publisher,
    topology::{self, DeclareError, QueueState, Subscription, Topology},
    trust::TrustedProducers,
};

/// How often the supervisor checks that the connection is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest a connection attempt to one node (handshake and topology) may take: a broker that
/// accepts the TCP connection while it is still starting can otherwise stall the handshake for
/// good.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// The heartbeat when none is configured: a stalled connection is noticed within seconds.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// What the supervisor needs to connect.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// The broker's node or nodes (`AMQP_URL`; its `Debug` prints no password).
    pub addresses: BrokerAddresses,
    pub topology: Topology,
    /// The producing service's name: AMQP `app_id` and the connection's name.
    pub app_id: String,
    /// The queues this service consumes: their declaration must succeed.
    pub owned: Vec<Subscription>,
    /// The AMQP heartbeat to negotiate (whole seconds, at least one), unless the URL sets one.
    pub heartbeat: Duration,
    /// Who may produce each event this service consumes.
    pub trusted_producers: TrustedProducers,
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
    responsive: watch::Receiver<bool>,
    topology: Topology,
    app_id: String,
    user: String,
    trusted_producers: TrustedProducers,
}

impl Bus {
    /// Starts supervising the connection on `tracker`; it is closed once `stop` is cancelled.
    pub fn start(settings: BusSettings, tracker: &TaskTracker, stop: CancellationToken) -> Self {
        let (sender, state) = watch::channel(None);
        let (responsive_sender, responsive) = watch::channel(true);
        let topology = settings.topology.clone();
        let app_id = settings.app_id.clone();
        let user = settings.addresses.user().to_owned();
        let trusted_producers = settings.trusted_producers.clone();
        tracker.spawn(supervise(settings, sender, responsive_sender, stop));
        Self {
            state,
            responsive,
            topology,
            app_id,
            user,
            trusted_producers,
        }
    }

    /// Whether a delivery of `event` with `properties` came from a producer this service trusts
    /// for it (see [`crate::trust`]).
    pub fn trusts(&self, event: &str, properties: &lapin::BasicProperties) -> bool {
        self.trusted_producers.trusts(event, properties, &self.user)
    }

    /// Who produced a delivery, as [`Bus::trusts`] judges it.
    pub fn producer_of(&self, properties: &lapin::BasicProperties) -> Option<String> {
        crate::trust::producer(properties, &self.user)
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

    /// Whether the broker answers on the current connection: `false` while a probe waits longer
    /// than a heartbeat for its answer (a stalled connection), `true` again once one is answered.
    pub fn watch_responsive(&self) -> watch::Receiver<bool> {
        self.responsive.clone()
    }
}

async fn supervise(
    settings: BusSettings,
    state: watch::Sender<Option<Connected>>,
    responsive: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut retry_in = FIRST_RETRY;
    let mut next = settings.addresses.first_choice();
    while !stop.is_cancelled() {
        let attempt = tokio::select! {
            _ = stop.cancelled() => break,
            attempt = connect_any(&settings, next) => attempt,
        };
        match attempt {
            Ok((connected, probe, node)) => {
                tracing::info!(
                    exchange = %settings.topology.exchange(),
                    node = %settings.addresses.shown(node),
                    "connected to RabbitMQ"
                );
                retry_in = FIRST_RETRY;
                // After a loss, the next node first.
                next = node + 1;
                let connection = connected.connection.clone();
                let publisher = connected.publisher.clone();
                responsive.send_replace(true);
                state.send_replace(Some(connected));
                let watching = Watching {
                    connection: &connection,
                    publisher: &publisher,
                    probe: &probe,
                    heartbeat: heartbeat_of(&settings.addresses.uri(node), settings.heartbeat),
                    responsive: &responsive,
                };
                let stopping = watching.until_lost(&stop).await;
                state.send_replace(None);
                responsive.send_replace(true);
                if stopping {
                    if let Err(error) = connection.close(200, "shutting down".into()).await {
                        tracing::debug!(%error, "closing the RabbitMQ connection");
                    }
                    break;
                }
                tracing::warn!(
                    node = %settings.addresses.shown(node),
                    "lost the RabbitMQ connection; reconnecting"
                );
            }
            Err(error) => {
                if matches!(error, ConnectError::Topology(DeclareError::Inequivalent(_))) {
                    // Only an operator can settle this; the service waits for it, not serving.
                    tracing::error!(%error, ?retry_in, "cannot declare the topology; retrying");
                } else {
                    tracing::warn!(
                        %error,
                        nodes = settings.addresses.len(),
                        ?retry_in,
                        "cannot reach RabbitMQ; retrying"
                    );
                }
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
    #[error(transparent)]
    Topology(#[from] DeclareError),
    #[error("no connection within {0:?}")]
    TimedOut(Duration),
    #[error(
        "the broker negotiated frame_max = {0}, over the {MAX_FRAME_BYTES} bytes this service's \
         threads are sized for (a frame that large could nest headers deeper than they hold): \
         set frame_max = {MAX_FRAME_BYTES} (RabbitMQ's default) in rabbitmq.conf"
    )]
    FrameMax(u32),
}

/// Reads queues' states by passive declarations on a channel of the bus's current connection,
/// kept between readings and opened again when it closed (a passive declaration of a missing
/// queue closes it) or the connection changed.
#[derive(Debug, Default)]
pub struct QueueProbe {
    channel: Option<Channel>,
}

impl QueueProbe {
    /// What `queue` holds now; `None` when it is not declared (yet).
    pub async fn inspect(&mut self, bus: &Bus, queue: &str) -> anyhow::Result<Option<QueueState>> {
        let open = match self.channel.take() {
            Some(open) if open.status().connected() => open,
            _ => {
                let Some(Connected { connection, .. }) = bus.current() else {
                    anyhow::bail!("no broker connection");
                };
                connection.create_channel().await?
            }
        };
        let state = topology::inspect(&open, queue).await?;
        if state.is_some() {
            self.channel = Some(open);
        }
        Ok(state)
    }
}

/// The broker user an AMQP URL logs in as (`guest` when it names none, as AMQP URLs default).
pub fn broker_user(url: &str) -> String {
    url.parse::<AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| AMQPUri::default().authority.userinfo.username)
}

/// The heartbeat in whole seconds, as AMQP negotiates it.
fn heartbeat_seconds(heartbeat: Duration) -> u16 {
    u16::try_from(heartbeat.as_secs().max(1)).unwrap_or(u16::MAX)
}

/// The heartbeat a connection to `uri` runs with: the URL's `heartbeat` if it sets one, else
/// `configured`.
fn heartbeat_of(uri: &AMQPUri, configured: Duration) -> Duration {
    let from_url = uri.query.heartbeat.filter(|&seconds| seconds > 0);
    Duration::from_secs(u64::from(
        from_url.unwrap_or_else(|| heartbeat_seconds(configured)),
    ))
}

/// Tries each node once, from `start`, until one connects (see [`connect`]); the node, or the
/// last node's error.
async fn connect_any(
    settings: &BusSettings,
    start: usize,
) -> Result<(Connected, Channel, usize), ConnectError> {
    let mut last = None;
    for node in settings.addresses.in_turn_from(start) {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(settings, node))
            .await
            .unwrap_or_else(|_| Err(ConnectError::TimedOut(CONNECT_TIMEOUT)));
        match attempt {
            Ok((connected, probe)) => return Ok((connected, probe, node)),
            Err(error) => {
                tracing::debug!(node = %settings.addresses.shown(node), %error, "cannot use this node");
                last = Some(error);
            }
        }
    }
    Err(last.expect("a list holds at least one node"))
}

/// Connects to `node`, declares the topology, opens the publisher and the probe's channel.
async fn connect(
    settings: &BusSettings,
    node: usize,
) -> Result<(Connected, Channel), ConnectError> {
    let mut uri = settings.addresses.uri(node);
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(heartbeat_seconds(settings.heartbeat));
    }
    let properties =
        ConnectionProperties::default().with_connection_name(settings.app_id.clone().into());
    let user = uri.authority.userinfo.username.clone();
    let connection = Connection::connect_uri(uri, properties).await?;
    let frame_max = connection.configuration().frame_max();
    if frame_max > MAX_FRAME_BYTES {
        let _ = connection.close(200, "frame_max too large".into()).await;
        return Err(ConnectError::FrameMax(frame_max));
    }
    settings
        .topology
        .declare(&connection, &settings.owned)
        .await?;
    let publisher = Publisher::open(
        &connection,
        settings.topology.exchange(),
        settings.app_id.clone(),
        user,
    )
    .await?;
    let probe = connection.create_channel().await?;
    let connected = Connected {
        connection: Arc::new(connection),
        publisher,
    };
    Ok((connected, probe))
}

/// What the supervisor watches while a connection is up.
struct Watching<'a> {
    connection: &'a Connection,
    publisher: &'a Publisher,
    probe: &'a Channel,
    heartbeat: Duration,
    responsive: &'a watch::Sender<bool>,
}

impl Watching<'_> {
    /// Returns `true` when asked to stop, `false` when the connection or a channel died.
    /// Meanwhile probes the broker every half heartbeat, and says whether it answers: a probe
    /// unanswered for a heartbeat marks the bus unresponsive, its answer responsive again.
    async fn until_lost(&self, stop: &CancellationToken) -> bool {
        let mut check = tokio::time::interval(LIVENESS_CHECK);
        let mut probe = tokio::time::interval(self.heartbeat / 2);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Option<(Instant, RoundTrip<'_>)> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return true,
                _ = check.tick() => {
                    if !self.connection.status().connected()
                        || !self.publisher.is_open()
                        || !self.probe.status().connected()
                    {
                        return false;
                    }
                    if let Some((sent, _)) = &pending
                        && sent.elapsed() > self.heartbeat
                        && self.responsive.send_replace(false)
                    {
                        tracing::warn!(
                            heartbeat = ?self.heartbeat,
                            "RabbitMQ has not answered for a heartbeat; the connection is stalled"
                        );
                    }
                }
                _ = probe.tick(), if pending.is_none() => {
                    let round_trip = self.probe.basic_qos(0, BasicQosOptions::default());
                    pending = Some((Instant::now(), Box::pin(round_trip)));
                }
                answered = async { pending.as_mut().expect("a probe is pending").1.as_mut().await },
                    if pending.is_some() =>
                {
                    pending = None;
                    match answered {
                        Ok(()) => {
                            if !self.responsive.send_replace(true) {
                                tracing::info!("RabbitMQ answers again");
                            }
                        }
                        // A failed probe means a dead channel, which the next check sees.
                        Err(error) => tracing::debug!(%error, "the broker probe failed"),
                    }
                }
            }
        }
    }
}

/// A probe's round trip to the broker.
type RoundTrip<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), lapin::Error>> + Send + 'a>>;
