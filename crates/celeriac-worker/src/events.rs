//! Events for Flower and `celery events` (§7): worker events (online,
//! a heartbeat every `--heartbeat-interval`, offline) always, task events
//! when turned on (`-E`, or the `enable_events` command Flower sends).
//!
//! Task events are buffered and sent as `task.multi` batches, as Python
//! workers send them: at most 24 in a batch and never older than 100 ms.
//! Sending never blocks a task: events that cannot be sent (the broker is
//! away) are dropped with a debug line, as Celery drops them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac::App;
use celeriac::broker::control::event_exchange;
use celeriac::protocol::event::{self, Event, Stamp, WorkerStatus, utcoffset};
use chrono::Local;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::tracker::{Tracker, unix_now};

/// Task events sent together at most (Celery's `buffer_limit`).
const BATCH: usize = 24;
/// What worker events name as the software (`py-celery` for Python).
const SW_IDENT: &str = "celeriac";
/// Longest a task event waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The worker's event dispatcher.
pub(crate) struct Events {
    app: App,
    stamp: Stamp,
    task_events: AtomicBool,
    /// Seconds between heartbeats; `None` without heartbeats.
    heartbeat: Option<Duration>,
    buffer: Mutex<Vec<Event>>,
    full: Notify,
}

impl Events {
    /// A dispatcher for worker `hostname` on `app`'s broker.
    pub(crate) fn new(
        app: App,
        hostname: &str,
        task_events: bool,
        heartbeat: Option<Duration>,
    ) -> Events {
        Events {
            app,
            stamp: Stamp {
                hostname: hostname.to_owned(),
                pid: std::process::id(),
                utcoffset: utcoffset(Local::now().offset().local_minus_utc()),
            },
            task_events: AtomicBool::new(task_events),
            heartbeat,
            buffer: Mutex::default(),
            full: Notify::new(),
        }
    }

    fn buffer(&self) -> MutexGuard<'_, Vec<Event>> {
        self.buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether task events are on.
    pub(crate) fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; returns whether they were on.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    /// Queues a task event, if task events are on. `make` runs only then,
    /// so a worker without events builds none.
    pub(crate) fn task(&self, make: impl FnOnce() -> Event) {
        if !self.task_events() {
            return;
        }
        let event = self.stamped(make());
        let mut buffer = self.buffer();
        buffer.push(event);
        if buffer.len() >= BATCH {
            self.full.notify_one();
        }
    }

    fn stamped(&self, event: Event) -> Event {
        event.stamped(&self.stamp, self.app.clock().forward(), unix_now())
    }

    /// Sends a worker event now (`worker-online`, `worker-heartbeat`, ...).
    pub(crate) async fn worker(&self, kind: &str, tracker: &Tracker) {
        let status = WorkerStatus {
            freq: self.heartbeat.unwrap_or(Duration::ZERO).as_secs_f64(),
            active: tracker.running(),
            processed: tracker.processed(),
            loadavg: loadavg(),
            sw_ident: SW_IDENT.into(),
            sw_ver: env!("CARGO_PKG_VERSION").into(),
            sw_sys: os_name().into(),
        };
        self.send(&[self.stamped(Event::worker(kind, &status))])
            .await;
    }

    /// Answers the `heartbeat` command (Flower and `celery events` send it
    /// when they start): a `worker-heartbeat` with `freq` 5 and the
    /// software fields only, exactly as Celery answers it.
    pub(crate) async fn wake_up(&self) {
        let event = Event::new("worker-heartbeat")
            .with("freq", serde_json::json!(5))
            .with("sw_ident", serde_json::json!(SW_IDENT))
            .with("sw_ver", serde_json::json!(env!("CARGO_PKG_VERSION")))
            .with("sw_sys", serde_json::json!(os_name()));
        self.send(&[self.stamped(event)]).await;
    }

    async fn send(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let (routing_key, message) = event::encode(events, &self.stamp.hostname);
        if let Err(e) = self
            .app
            .broker()
            .publish_transient(&event_exchange(), &routing_key, &message)
            .await
        {
            debug!(error = %e, events = events.len(), "could not send events; dropping them");
        }
    }

    /// Sends buffered task events.
    pub(crate) async fn flush(&self) {
        loop {
            let batch: Vec<Event> = {
                let mut buffer = self.buffer();
                let take = buffer.len().min(BATCH);
                buffer.drain(..take).collect()
            };
            if batch.is_empty() {
                return;
            }
            self.send(&batch).await;
        }
    }

    /// Runs until `stop`: flushes task events, sends heartbeats.
    pub(crate) async fn run(self: Arc<Self>, tracker: Arc<Tracker>, stop: CancellationToken) {
        self.worker("worker-online", &tracker).await;
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut heartbeat = self.heartbeat.map(tokio::time::interval);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = flush.tick() => self.flush().await,
                () = self.full.notified() => self.flush().await,
                _ = async { heartbeat.as_mut()?.tick().await; Some(()) }, if heartbeat.is_some() => {
                    self.worker("worker-heartbeat", &tracker).await;
                }
            }
        }
        self.flush().await;
        self.worker("worker-offline", &tracker).await;
    }
}

/// The 1, 5 and 15 minute load averages, rounded up to 2 decimals as
/// Celery rounds them; zeros where the system does not say.
fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().map_or(0.0, |v| (v * 100.0).ceil() / 100.0));
    [
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
    ]
}

/// The OS as Python's `platform.system()` names it.
fn os_name() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}
