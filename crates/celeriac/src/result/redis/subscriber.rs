//! Waiting for results on Redis pub/sub: one subscriber connection per
//! backend, shared by every waiter, so a waiting `AsyncResult` wakes on the
//! `PUBLISH` that stores its result instead of polling.
//!
//! A waiter subscribes to its result's channel *before* reading the key, so
//! a result stored in between is never missed. When the connection drops,
//! a background task reconnects (with backoff), subscribes every channel
//! again and tells each waiter to read its key again, which covers results
//! published while it was down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_lite::StreamExt as _;
use redis::aio::PubSubSink;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::connection::Store;

/// What a waiter hears on its channel.
#[derive(Debug, Clone)]
pub(crate) enum Heard {
    /// A document published on the channel.
    Published(Vec<u8>),
    /// The connection came back: read the key again.
    Resubscribed,
}

/// The shared subscriber of one backend.
pub(crate) struct Subscriber {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    channels: Mutex<HashMap<String, Channel>>,
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    started: std::sync::Once,
}

struct Channel {
    sender: broadcast::Sender<Heard>,
    waiters: usize,
}

/// One waiter's subscription; unsubscribes when its last waiter drops it.
pub(crate) struct Subscription {
    inner: Arc<Inner>,
    channel: String,
    receiver: broadcast::Receiver<Heard>,
}

impl Subscriber {
    /// A subscriber for `store`; it connects on the first subscription.
    pub(crate) fn new(store: Arc<Store>) -> Subscriber {
        Subscriber {
            inner: Arc::new(Inner {
                store,
                channels: Mutex::default(),
                sink: tokio::sync::Mutex::new(None),
                started: std::sync::Once::new(),
            }),
        }
    }

    /// Subscribes to `channel`. Returns once the server confirmed the
    /// subscription, or at once while disconnected (the reconnect
    /// subscribes it and the waiter then hears [`Heard::Resubscribed`]).
    pub(crate) async fn subscribe(&self, channel: &str) -> Subscription {
        let inner = &self.inner;
        inner.started.call_once(|| {
            tokio::spawn(keep_connected(Arc::downgrade(inner)));
        });
        let (receiver, first) = {
            let mut channels = inner.channels();
            let entry = channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel {
                    sender: broadcast::channel(16).0,
                    waiters: 0,
                });
            entry.waiters += 1;
            (entry.sender.subscribe(), entry.waiters == 1)
        };
        if first
            && let Some(sink) = inner.sink.lock().await.as_mut()
            && let Err(e) = sink.subscribe(channel).await
        {
            debug!(error = %e, "subscribing failed; the reconnect will subscribe again");
        }
        Subscription {
            inner: inner.clone(),
            channel: channel.to_owned(),
            receiver,
        }
    }
}

impl Inner {
    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn broadcast(&self, channel: &str, heard: Heard) {
        if let Some(entry) = self.channels().get(channel) {
            let _ = entry.sender.send(heard);
        }
    }
}

impl Subscription {
    /// The next thing heard; [`Heard::Resubscribed`] also when messages were
    /// missed (the waiter reads the key again).
    pub(crate) async fn next(&mut self) -> Heard {
        match self.receiver.recv().await {
            Ok(heard) => heard,
            Err(_) => Heard::Resubscribed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut channels = self.inner.channels();
            match channels.get_mut(&self.channel) {
                Some(entry) if entry.waiters <= 1 => {
                    channels.remove(&self.channel);
                    true
                }
                Some(entry) => {
                    entry.waiters -= 1;
                    false
                }
                None => false,
            }
        };
        if last && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            let channel = std::mem::take(&mut self.channel);
            runtime.spawn(async move {
                if inner.channels().contains_key(&channel) {
                    return; // someone subscribed again meanwhile
                }
                if let Some(sink) = inner.sink.lock().await.as_mut() {
                    let _ = sink.unsubscribe(&channel).await;
                }
            });
        }
    }
}

/// Keeps the subscriber connection up while the backend exists: connects,
/// subscribes every channel, forwards messages, and starts over after a
/// loss.
async fn keep_connected(inner: Weak<Inner>) {
    let mut attempt: u32 = 0;
    loop {
        let Some(alive) = inner.upgrade() else {
            return;
        };
        let connected = match alive.store.client().await {
            Ok(client) => client
                .get_async_pubsub()
                .await
                .map_err(|e| alive.store.error("subscribing", &e)),
            Err(e) => Err(e),
        };
        let pubsub = match connected {
            Ok(pubsub) => pubsub,
            Err(e) => {
                if attempt == 3 {
                    warn!(error = %e, "the result store's subscriber cannot connect; retrying");
                }
                drop(alive);
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        attempt = 0;
        let (mut sink, mut stream) = pubsub.split();
        // Hold the sink's lock from the snapshot of the channels until the
        // sink is in place: a waiter arriving meanwhile either is in the
        // snapshot or subscribes itself once it gets the lock.
        let mut slot = alive.sink.lock().await;
        let channels: Vec<String> = alive.channels().keys().cloned().collect();
        if !channels.is_empty() && sink.subscribe(&channels).await.is_err() {
            continue;
        }
        *slot = Some(sink);
        drop(slot);
        for channel in &channels {
            alive.broadcast(channel, Heard::Resubscribed);
        }
        drop(alive);
        while let Some(message) = stream.next().await {
            let Some(alive) = inner.upgrade() else {
                return;
            };
            alive.broadcast(
                message.get_channel_name(),
                Heard::Published(message.get_payload_bytes().to_vec()),
            );
        }
        let Some(alive) = inner.upgrade() else {
            return;
        };
        *alive.sink.lock().await = None;
        alive.store.lost().await;
        debug!("the result store's subscriber connection was lost; reconnecting");
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(5))
        .min(Duration::from_secs(3))
}
