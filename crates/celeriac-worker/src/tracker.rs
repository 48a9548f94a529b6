//! What the worker holds right now, for `inspect` and revocation: every
//! admitted task from receipt to settlement, in one of three phases
//! (reserved: waiting for a slot; scheduled: held for its ETA; active:
//! running), with the tokens that revoke or terminate it. Also the counts
//! `stats` and heartbeats report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use celeriac::broker::Delivery;
use celeriac::protocol::TaskMessage;
use celeriac::protocol::control::{DeliveryInfoDoc, RequestInfo, ScheduledInfo};
use celeriac::protocol::repr::{args_repr, kwargs_repr};
use celeriac::protocol::time::format_time;
use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

/// Where a held task is.
#[derive(Debug, Clone)]
enum Phase {
    /// Received, waiting for a free slot.
    Reserved,
    /// Held until its ETA.
    Scheduled(DateTime<FixedOffset>),
    /// Running since (Unix seconds, and a monotonic instant).
    Active(f64, Instant),
}

/// One held task.
struct Entry {
    message: Arc<TaskMessage>,
    delivery: DeliveryInfoDoc,
    phase: Phase,
    /// Cancelled when the task is revoked: a task not yet running is then
    /// settled as revoked at once.
    revoked: CancellationToken,
    /// Cancelled to terminate the task while it runs.
    terminate: CancellationToken,
    /// Whether the task runs on a blocking thread (cannot be terminated).
    blocking: bool,
}

/// A revoked or terminated task found among those held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// The task id.
    pub(crate) id: String,
    /// Whether it is running.
    pub(crate) running: bool,
    /// Whether it runs on a blocking thread.
    pub(crate) blocking: bool,
}

/// Every task the worker holds, and what it has accepted since it started.
#[derive(Default)]
pub(crate) struct Tracker {
    entries: Mutex<HashMap<u64, Entry>>,
    next_key: AtomicU64,
    /// Tasks accepted since start, by name (`stats.total`).
    totals: Mutex<HashMap<String, u64>>,
    /// Tasks accepted since start (heartbeats' `processed`).
    processed: AtomicU64,
}

/// A task's place in the [`Tracker`], removed when dropped.
pub(crate) struct Tracked<'a> {
    tracker: &'a Tracker,
    key: u64,
    /// Cancelled when the task is revoked.
    pub(crate) revoked: CancellationToken,
    /// Cancelled when the task is to be terminated while running.
    pub(crate) terminate: CancellationToken,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.tracker.entries().remove(&self.key);
    }
}

impl Tracked<'_> {
    /// The task is held for its ETA.
    pub(crate) fn scheduled(&self, eta: DateTime<FixedOffset>) {
        self.set(Phase::Scheduled(eta));
    }

    /// The task waits for a slot again (its ETA came).
    pub(crate) fn reserved(&self) {
        self.set(Phase::Reserved);
    }

    /// The task starts running.
    pub(crate) fn started(&self) {
        self.set(Phase::Active(unix_now(), Instant::now()));
    }

    /// Seconds since the task started running (0 if it has not).
    pub(crate) fn runtime(&self) -> f64 {
        match self.tracker.entries().get(&self.key).map(|e| &e.phase) {
            Some(Phase::Active(_, since)) => since.elapsed().as_secs_f64(),
            _ => 0.0,
        }
    }

    fn set(&self, phase: Phase) {
        if let Some(entry) = self.tracker.entries().get_mut(&self.key) {
            entry.phase = phase;
        }
    }
}

impl Tracker {
    fn entries(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn totals_lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an accepted task, reserved until it runs.
    pub(crate) fn accept(
        &self,
        delivery: &Delivery,
        message: &Arc<TaskMessage>,
        blocking: bool,
    ) -> Tracked<'_> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (revoked, terminate) = (CancellationToken::new(), CancellationToken::new());
        let entry = Entry {
            message: message.clone(),
            delivery: DeliveryInfoDoc {
                exchange: delivery.exchange.clone(),
                routing_key: delivery.routing_key.clone(),
                priority: delivery.priority(),
                redelivered: delivery.redelivered,
            },
            phase: Phase::Reserved,
            revoked: revoked.clone(),
            terminate: terminate.clone(),
            blocking,
        };
        self.entries().insert(key, entry);
        self.processed.fetch_add(1, Ordering::Relaxed);
        *self
            .totals_lock()
            .entry(shown_name(message).to_owned())
            .or_default() += 1;
        Tracked {
            tracker: self,
            key,
            revoked,
            terminate,
        }
    }

    /// Marks the held tasks `matches` picks as revoked (and, with
    /// `terminate`, terminates running async ones); returns them.
    pub(crate) fn revoke(
        &self,
        terminate: bool,
        matches: impl Fn(&TaskMessage) -> bool,
    ) -> Vec<Held> {
        let entries = self.entries();
        let mut held = Vec::new();
        for entry in entries.values().filter(|e| matches(&e.message)) {
            let running = matches!(entry.phase, Phase::Active(..));
            if !running {
                entry.revoked.cancel();
            } else if terminate && !entry.blocking {
                entry.terminate.cancel();
            }
            held.push(Held {
                id: entry.message.headers.id.clone(),
                running,
                blocking: entry.blocking,
            });
        }
        held
    }

    /// The running tasks (`inspect active`).
    pub(crate) fn active(&self, hostname: &str, safe: bool) -> Vec<RequestInfo> {
        self.infos(hostname, safe, |p| matches!(p, Phase::Active(..)))
    }

    /// The tasks waiting for a slot (`inspect reserved`).
    pub(crate) fn reserved(&self, hostname: &str, safe: bool) -> Vec<RequestInfo> {
        self.infos(hostname, safe, |p| matches!(p, Phase::Reserved))
    }

    /// The tasks held for their ETA (`inspect scheduled`).
    pub(crate) fn scheduled(&self, hostname: &str, safe: bool) -> Vec<ScheduledInfo> {
        let entries = self.entries();
        entries
            .values()
            .filter_map(|e| match e.phase {
                Phase::Scheduled(eta) => Some(ScheduledInfo {
                    eta: format_time(&eta),
                    // Celery's timer priority for ETA tasks.
                    priority: 6,
                    request: info(e, hostname, safe),
                }),
                _ => None,
            })
            .collect()
    }

    /// `query_task`: `{id: [state, info]}` for the ids held.
    pub(crate) fn query(&self, ids: &[String], hostname: &str) -> Map<String, Value> {
        let entries = self.entries();
        entries
            .values()
            .filter(|e| ids.contains(&e.message.headers.id))
            .map(|e| {
                let state = match e.phase {
                    Phase::Active(..) => "active",
                    Phase::Reserved => "reserved",
                    Phase::Scheduled(_) => "scheduled",
                };
                (
                    e.message.headers.id.clone(),
                    json!([state, info(e, hostname, false)]),
                )
            })
            .collect()
    }

    fn infos(
        &self,
        hostname: &str,
        safe: bool,
        phase: impl Fn(&Phase) -> bool,
    ) -> Vec<RequestInfo> {
        self.entries()
            .values()
            .filter(|e| phase(&e.phase))
            .map(|e| info(e, hostname, safe))
            .collect()
    }

    /// Tasks running now.
    pub(crate) fn running(&self) -> usize {
        self.entries()
            .values()
            .filter(|e| matches!(e.phase, Phase::Active(..)))
            .count()
    }

    /// Deliveries held now: reserved, scheduled or running.
    pub(crate) fn held(&self) -> usize {
        self.entries().len()
    }

    /// Tasks accepted since start.
    pub(crate) fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Tasks accepted since start, by name.
    pub(crate) fn totals(&self) -> Map<String, Value> {
        self.totals_lock()
            .iter()
            .map(|(name, n)| (name.clone(), json!(n)))
            .collect()
    }
}

/// The name Celery shows for a task: its shadow name, if it has one.
pub(crate) fn shown_name(message: &TaskMessage) -> &str {
    message
        .headers
        .shadow
        .as_deref()
        .unwrap_or(&message.headers.task)
}

/// Celery's `Request.info()`; with `safe`, args and kwargs as repr text.
fn info(entry: &Entry, hostname: &str, safe: bool) -> RequestInfo {
    let message = &entry.message;
    let (args, kwargs) = if safe {
        (
            json!(args_repr(&message.body.args)),
            json!(kwargs_repr(&message.body.kwargs)),
        )
    } else {
        (
            Value::Array(message.body.args.to_vec()),
            Value::Object(message.body.kwargs.values().clone()),
        )
    };
    let time_start = match entry.phase {
        Phase::Active(at, _) => Some(at),
        _ => None,
    };
    RequestInfo {
        id: message.headers.id.clone(),
        name: shown_name(message).to_owned(),
        args,
        kwargs,
        kind: message.headers.task.clone(),
        hostname: hostname.to_owned(),
        time_start,
        acknowledged: false,
        delivery_info: entry.delivery.clone(),
        worker_pid: time_start.map(|_| std::process::id()),
    }
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}
