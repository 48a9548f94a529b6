//! The supervised connection: one AMQP connection per [`Broker`], watched by
//! a background task that reconnects after a loss.
//!
//! On a loss (broker restart, `rabbitmqctl close_connection`, network drop,
//! missed heartbeats) the supervisor marks the link down, reconnects with
//! bounded, jittered exponential backoff (trying the failover URLs in turn),
//! re-declares every queue declared through this handle, opens fresh
//! confirming publisher channels (`mandatory` and transient), and publishes
//! the new session. Consumers watch the same link and re-subscribe (see
//! `consume`). Deliveries from the dead connection keep their dead acker:
//! their tags are void, and the broker has already requeued them.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_lite::{Stream, StreamExt as _};
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::ChannelId;
use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::declare::declare_queue;
use crate::error::CHANNELS_FAILED;
use crate::returns::ReturnDesk;
use crate::topology::Queue;
use crate::{BrokerConfig, BrokerError, BrokerUrl, LoginMethod};

type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// A handle on the broker: cheap to clone, shared by producers and consumers.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("urls", &self.shared.config.urls.to_string())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    link: watch::Sender<Link>,
    /// Queues declared through this handle, re-declared after a reconnect.
    topology: Mutex<Vec<Queue>>,
    /// Held while a send declares its destination queue, so that many
    /// concurrent first sends to a new queue declare it once.
    pub(crate) declaring: tokio::sync::Mutex<()>,
    /// The broker's `connection.blocked` reason while it blocks us.
    blocked: Mutex<Option<String>>,
    /// Set once the delay topology is declared (on first delayed publish).
    pub(crate) delay_declared: tokio::sync::OnceCell<()>,
    /// Queues bound to the delay topology's delivery exchange.
    delay_bound: Mutex<HashSet<String>>,
    /// Held while a delayed publish binds its queue to the delay topology,
    /// so that many concurrent first moves to a queue bind it once (each
    /// binding takes a channel: a burst of 2,000 moves used to open 2,000
    /// and run out of the connection's channels).
    pub(crate) delay_binding: tokio::sync::Mutex<()>,
    /// Broadcast queues' fanout exchanges this handle declared (durable:
    /// once is enough).
    broadcast_exchanges: Mutex<HashSet<String>>,
    /// Exchanges transient publishes declared, by connection generation.
    exchanges_ready: Mutex<HashSet<(u64, String)>>,
    /// Connections opened after the first one (successful reconnects).
    reconnects: AtomicU64,
    /// Publishes a lost connection left unconfirmed, sent again.
    pub(crate) resent: AtomicU64,
    pub(crate) shutdown: CancellationToken,
}

/// The state of the connection, as consumers and publishers see it.
#[derive(Clone)]
pub(crate) enum Link {
    Down(String),
    Up(Arc<Session>),
    Closed,
}

/// One live connection and its publisher channels.
pub(crate) struct Session {
    /// Increases by one per (re)connection.
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    /// Confirmed `mandatory` publishes (tasks, results).
    publisher: tokio::sync::Mutex<Publisher>,
    /// Confirmed transient publishes (events, control replies), kept off
    /// the `mandatory` channel: they are never returned, and need not wait
    /// for the returns of the `mandatory` publishes in flight.
    transient: tokio::sync::Mutex<Channel>,
}

/// The confirming channel for `mandatory` publishes and the desk that
/// matches its returns to their publishes (`returns.rs`).
#[derive(Clone)]
pub(crate) struct Publisher {
    pub(crate) channel: Channel,
    pub(crate) returns: Arc<ReturnDesk>,
    /// Held while lapin numbers a publish and queues its frames
    /// (`publish.rs`, `hand_over`).
    pub(crate) numbering: Arc<Mutex<()>>,
}

impl Publisher {
    async fn open(connection: &Connection) -> Result<Publisher, lapin::Error> {
        Ok(Publisher {
            channel: confirming_channel(connection).await?,
            returns: ReturnDesk::new(),
            numbering: Arc::default(),
        })
    }

    /// Closes this (replaced) publisher's channel once the confirms in
    /// flight on it have arrived and every publish on it has been decided
    /// (a decision may still send probes on it), or after
    /// [`RENEWED_CHANNEL_GRACE`], when any still undecided are in doubt and
    /// sent again by their publishers.
    fn retire(self, reason: &'static str) {
        tokio::spawn(async move {
            let settled = async {
                let _ = self.channel.wait_for_confirms().await;
                while !self.returns.is_idle() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let _ = tokio::time::timeout(RENEWED_CHANNEL_GRACE, settled).await;
            let _ = self.channel.close(200, reason.into()).await;
        });
    }
}

impl Session {
    /// The confirming channel for `mandatory` publishes, reopened if a
    /// channel error closed it, and replaced if its return desk lost
    /// track of a confirm (`ReturnDesk::is_blind`).
    pub(crate) async fn publisher(&self) -> Result<Publisher, lapin::Error> {
        let mut publisher = self.publisher.lock().await;
        if !publisher.channel.status().connected() {
            debug!("reopening the publisher channel");
            *publisher = Publisher::open(&self.connection).await?;
        } else if publisher.returns.is_blind() {
            debug!("replacing the publisher channel: a publish on it was abandoned mid-write");
            let fresh = Publisher::open(&self.connection).await?;
            std::mem::replace(&mut *publisher, fresh).retire("a publish was abandoned mid-write");
        }
        Ok(publisher.clone())
    }

    /// The confirming channel for transient publishes, reopened if a
    /// channel error closed it.
    pub(crate) async fn transient_publisher(&self) -> Result<Channel, lapin::Error> {
        let mut channel = self.transient.lock().await;
        if !channel.status().connected() {
            debug!("reopening the transient publisher channel");
            *channel = confirming_channel(&self.connection).await?;
        }
        Ok(channel.clone())
    }

    /// Replaces the publisher channel with a fresh one after channel
    /// `nacked` got a negative confirm, unless another publish already did.
    ///
    /// On RabbitMQ 3.10, a channel that first published to a quorum queue
    /// while its leader's node was just lost keeps being nacked until that
    /// node returns, even once a new leader is elected; a new channel is
    /// confirmed at once (`tests/faults/cluster.rs`). The old channel is
    /// closed once what is in flight on it has been decided
    /// ([`Publisher::retire`]), so nothing sent on it is lost.
    pub(crate) async fn renew_publisher(&self, nacked: ChannelId) {
        let mut publisher = self.publisher.lock().await;
        if publisher.channel.id() != nacked || !self.is_connected() {
            return;
        }
        match Publisher::open(&self.connection).await {
            Ok(fresh) => {
                debug!(
                    channel = nacked,
                    "publisher channel renewed after a negative confirm"
                );
                std::mem::replace(&mut *publisher, fresh)
                    .retire("renewed after a negative confirm");
            }
            Err(e) => debug!(error = %e, "could not open a fresh publisher channel"),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// How long a publisher channel replaced after a nack stays open for the
/// confirms still in flight on it.
const RENEWED_CHANNEL_GRACE: Duration = Duration::from_secs(60);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Broker {
    /// Connects (trying each URL once, in order) and starts the supervisor
    /// that keeps the connection alive from then on.
    ///
    /// Fails with [`BrokerError::Connect`] if no URL answers now; a caller
    /// that wants to wait for the broker to come up retries this.
    pub async fn connect(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let (link, _) = watch::channel(Link::Down("connecting".into()));
        let shared = Arc::new(Shared {
            config,
            link,
            topology: Mutex::new(Vec::new()),
            declaring: tokio::sync::Mutex::new(()),
            blocked: Mutex::new(None),
            delay_declared: tokio::sync::OnceCell::new(),
            delay_bound: Mutex::default(),
            delay_binding: tokio::sync::Mutex::new(()),
            broadcast_exchanges: Mutex::default(),
            exchanges_ready: Mutex::default(),
            reconnects: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
        });
        let (session, events) =
            establish(&shared, 1)
                .await
                .map_err(|detail| BrokerError::Connect {
                    urls: shared.config.urls.to_string(),
                    detail,
                })?;
        shared.link.send_replace(Link::Up(session.clone()));
        tokio::spawn(supervise(shared.clone(), session, events));
        Ok(Broker { shared })
    }

    /// The configuration this handle was made with.
    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Remembers `queue` for re-declaration after reconnects.
    pub(crate) fn remember(&self, queue: &Queue) {
        let mut topology = lock(&self.shared.topology);
        if !topology.contains(queue) {
            topology.push(queue.clone());
        }
    }

    /// Stops re-declaring the queue named `name` after reconnects.
    pub(crate) fn forget(&self, name: &str) {
        lock(&self.shared.topology).retain(|q| q.name != name);
    }

    /// Whether `queue` was declared through this handle.
    pub(crate) fn is_declared(&self, queue: &Queue) -> bool {
        lock(&self.shared.topology).contains(queue)
    }

    /// Whether `queue` is bound to the delay topology's delivery exchange.
    pub(crate) fn delay_bound(&self, queue: &str) -> bool {
        lock(&self.shared.delay_bound).contains(queue)
    }

    /// Whether a transient publish already declared `exchange` on the
    /// connection of `generation`.
    pub(crate) fn exchange_ready(&self, generation: u64, exchange: &str) -> bool {
        lock(&self.shared.exchanges_ready).contains(&(generation, exchange.to_owned()))
    }

    /// Records that `exchange` is declared on the connection of `generation`.
    pub(crate) fn mark_exchange_ready(&self, generation: u64, exchange: &str) {
        let mut ready = lock(&self.shared.exchanges_ready);
        ready.retain(|(g, _)| *g == generation);
        ready.insert((generation, exchange.to_owned()));
    }

    /// Records that `queue` is bound to the delay topology.
    pub(crate) fn mark_delay_bound(&self, queue: &str) {
        lock(&self.shared.delay_bound).insert(queue.to_owned());
    }

    /// Whether this handle declared the broadcast exchange `name`.
    pub(crate) fn broadcast_exchange_declared(&self, name: &str) -> bool {
        lock(&self.shared.broadcast_exchanges).contains(name)
    }

    /// Records that this handle declared the broadcast exchange `name`.
    pub(crate) fn mark_broadcast_exchange(&self, name: &str) {
        lock(&self.shared.broadcast_exchanges).insert(name.to_owned());
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared.link.borrow(), Link::Up(s) if s.is_connected())
    }

    /// Why the connection is down right now (the last error of the
    /// reconnect attempts), `None` while it is up.
    pub fn down_reason(&self) -> Option<String> {
        match &*self.shared.link.borrow() {
            Link::Up(s) if s.is_connected() => None,
            Link::Up(_) => Some("the connection is closing".into()),
            Link::Down(reason) => Some(reason.clone()),
            Link::Closed => Some("the broker handle is closed".into()),
        }
    }

    /// How many times the connection was lost and opened again.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// How many publishes a lost connection cut off before their confirm,
    /// so that they were sent again (each may then be stored twice).
    pub fn publishes_resent(&self) -> u64 {
        self.shared.resent.load(Ordering::Relaxed)
    }

    /// The broker's reason for blocking publishers (memory or disk alarm),
    /// while it does.
    pub fn blocked_reason(&self) -> Option<String> {
        lock(&self.shared.blocked).clone()
    }

    /// Closes the connection and stops reconnecting; consumers end.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let mut link = self.shared.link.subscribe();
        let closed = async {
            while !matches!(&*link.borrow_and_update(), Link::Closed) {
                if link.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
    }

    /// The live session, waiting up to `publish_wait` for a lost connection
    /// to come back.
    pub(crate) async fn session(&self) -> Result<Arc<Session>, BrokerError> {
        self.session_until(Instant::now() + self.shared.config.publish_wait)
            .await
    }

    pub(crate) async fn session_until(
        &self,
        deadline: Instant,
    ) -> Result<Arc<Session>, BrokerError> {
        let mut link = self.shared.link.subscribe();
        let started = Instant::now();
        loop {
            let last_error = match &*link.borrow_and_update() {
                Link::Up(session) if session.is_connected() => return Ok(session.clone()),
                Link::Up(_) => "connection lost".to_owned(),
                Link::Down(error) => error.clone(),
                Link::Closed => return Err(BrokerError::Closed),
            };
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BrokerError::Closed),
                Err(_) => {
                    return Err(BrokerError::Unavailable {
                        urls: self.shared.config.urls.to_string(),
                        waited: started.elapsed(),
                        detail: last_error,
                    });
                }
            }
        }
    }

    /// A receiver of link changes, for consumers.
    pub(crate) fn watch_link(&self) -> watch::Receiver<Link> {
        self.shared.link.subscribe()
    }
}

/// Opens one AMQP connection to `url`.
async fn open(url: &BrokerUrl, config: &BrokerConfig) -> Result<Connection, String> {
    let heartbeat = url.heartbeat.unwrap_or(config.heartbeat);
    let timeout = url.connect_timeout.unwrap_or(config.connect_timeout);
    let uri = AMQPUri {
        scheme: if url.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: url.user.clone(),
                password: url.password().to_owned(),
            },
            host: url.host.clone(),
            port: url.port,
        },
        vhost: url.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: Some(u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX)),
            connection_timeout: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            auth_mechanism: Some(match url.login_method {
                LoginMethod::Plain => SASLMechanism::Plain,
                LoginMethod::AmqPlain => SASLMechanism::AMQPlain,
                LoginMethod::External => SASLMechanism::External,
            }),
            ..AMQPQueryString::default()
        },
    };
    let tls = tls_config(url)?;
    let properties =
        ConnectionProperties::default().with_connection_name(config.connection_name.clone().into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    // The client's own timeout covers the TCP connect; this one also covers
    // a broker that accepts TCP but never finishes the AMQP handshake.
    let connect = Connection::connect_uri_with_config(uri, properties, tls, runtime);
    match tokio::time::timeout(timeout + Duration::from_secs(1), connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

fn tls_config(url: &BrokerUrl) -> Result<OwnedTLSConfig, String> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let options = &url.tls_options;
    let cert_chain = match &options.ca_file {
        Some(path) => Some(
            String::from_utf8(read(path, "CA file")?)
                .map_err(|_| format!("the CA file {} is not PEM text", path.display()))?,
        ),
        None => None,
    };
    let identity = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read(cert, "client certificate")?,
            key: read(key, "client key")?,
        }),
        (None, None) => None,
        _ => return Err("ssl_certfile and ssl_keyfile must be given together".into()),
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

async fn confirming_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Connects to the first URL that answers, re-declares the remembered
/// topology and opens the publisher channels (`mandatory`, transient).
async fn establish(
    shared: &Shared,
    generation: u64,
) -> Result<(Arc<Session>, EventStream), String> {
    let mut errors = Vec::new();
    let mut failed = |url: &BrokerUrl, error: String| {
        debug!(url = %url, error = %error, "connection attempt failed");
        errors.push(if shared.config.urls.len() > 1 {
            format!("{url}: {error}")
        } else {
            error
        });
    };
    for url in shared.config.urls.iter() {
        let connection = match open(url, &shared.config).await {
            Ok(c) => c,
            Err(e) => {
                failed(url, e);
                continue;
            }
        };
        let events: EventStream = Box::pin(connection.events_listener());
        let queues = lock(&shared.topology).clone();
        // A node that takes the connection but fails its channels, or does
        // not answer for them within the connect timeout, is passed over
        // like one that refuses the connection.
        let timeout = url.connect_timeout.unwrap_or(shared.config.connect_timeout);
        let channels = async {
            redeclare(&connection, &queues).await;
            let publisher = Publisher::open(&connection).await?;
            let transient = confirming_channel(&connection).await?;
            Ok::<_, lapin::Error>((publisher, transient))
        };
        let failure = match tokio::time::timeout(timeout, channels).await {
            Ok(Ok(channels)) => Ok(channels),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let (publisher, transient) = match failure {
            Ok(channels) => channels,
            Err(why) => {
                failed(url, format!("{CHANNELS_FAILED}: {why}"));
                if connection.status().connected() {
                    let closing = connection.close(200, "channels failed".into());
                    let _ = tokio::time::timeout(timeout, closing).await;
                }
                continue;
            }
        };
        info!(url = %url, generation, "connected to RabbitMQ");
        let session = Arc::new(Session {
            generation,
            connection,
            publisher: tokio::sync::Mutex::new(publisher),
            transient: tokio::sync::Mutex::new(transient),
        });
        return Ok((session, events));
    }
    Err(errors.join("; "))
}

async fn redeclare(connection: &Connection, queues: &[Queue]) {
    for queue in queues {
        let channel = match connection.create_channel().await {
            Ok(c) => c,
            Err(e) => {
                warn!(queue = %queue.name, error = %e, "cannot re-declare after reconnect");
                return;
            }
        };
        if let Err(e) = declare_queue(&channel, queue).await {
            warn!(queue = %queue.name, error = %e, "re-declaring after reconnect failed");
        }
        if channel.status().connected() {
            let _ = channel.close(200, "declared".into()).await;
        }
    }
}

async fn supervise(shared: Arc<Shared>, mut session: Arc<Session>, mut events: EventStream) {
    loop {
        let Some(reason) = watch_session(&shared, &session, &mut events).await else {
            let _ = session
                .connection
                .close(200, "celeriac shutting down".into())
                .await;
            shared.link.send_replace(Link::Closed);
            return;
        };
        warn!(generation = session.generation, reason = %reason, "lost the connection to RabbitMQ; reconnecting");
        shared.link.send_replace(Link::Down(reason));
        let mut attempt = 0;
        (session, events) = loop {
            tokio::select! {
                () = shared.shutdown.cancelled() => {
                    shared.link.send_replace(Link::Closed);
                    return;
                }
                () = tokio::time::sleep(shared.config.reconnect_delay(attempt)) => {}
            }
            match establish(&shared, session.generation + 1).await {
                Ok(next) => break next,
                Err(e) => {
                    debug!(attempt, error = %e, "reconnect attempt failed");
                    shared.link.send_replace(Link::Down(e));
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        *lock(&shared.blocked) = None;
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.link.send_replace(Link::Up(session.clone()));
    }
}

/// Waits until the session's connection is lost (returning why) or the
/// broker handle is closed (returning `None`).
async fn watch_session(
    shared: &Shared,
    session: &Session,
    events: &mut EventStream,
) -> Option<String> {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return None,
            event = events.next() => match event {
                Some(Event::Error(e)) if !session.is_connected() => return Some(e.to_string()),
                Some(Event::Error(e)) => debug!(error = %e, "channel-level error"),
                Some(Event::ConnectionBlocked(reason)) => {
                    warn!(reason = %reason, "RabbitMQ is blocking publishers");
                    *lock(&shared.blocked) = Some(reason);
                }
                Some(Event::ConnectionUnblocked) => {
                    info!("RabbitMQ unblocked publishers");
                    *lock(&shared.blocked) = None;
                }
                Some(_) => {}
                None => return Some("the connection's event stream ended".into()),
            },
            _ = tick.tick() => {
                if !session.is_connected() {
                    return Some("the connection was closed".into());
                }
            }
        }
    }
}
