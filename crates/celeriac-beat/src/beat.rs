//! The beat loop: stand by until this beat holds the lock, then send each
//! entry's ticks on time through the app's confirmed producer path, sleeping
//! until the next due time in between (no polling).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use celeriac::App;
use celeriac::protocol::time::format_time;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::BeatError;
use crate::leader::Leadership;
use crate::metrics::{self, BeatMetrics};
use crate::schedule::{self, Entry};
use crate::scheduler::{State, Tick, plan};
use crate::store::StateFile;

/// Header naming the entry a message was sent for.
pub const ENTRY_HEADER: &str = "x-celeriac-beat-entry";
/// Header holding the due time a message was sent for (ISO 8601).
pub const DUE_HEADER: &str = "x-celeriac-beat-due";

/// Most sends of one plan in flight at once.
const SENDS_IN_FLIGHT: usize = 256;

/// How long a standby waits between attempts to take the lock.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// A periodic scheduler.
#[derive(Debug)]
pub struct Beat {
    app: App,
    entries: Vec<Entry>,
    schedule_file: Option<PathBuf>,
    state_file: Option<StateFile>,
    cluster: String,
    grace: chrono::Duration,
    metrics: BeatMetrics,
    metrics_addr: Option<SocketAddr>,
}

impl Beat {
    /// A beat sending `entries` through `app`, as member of cluster
    /// `cluster` (beats of one cluster elect one active member).
    /// Entries Celery's beat adds by itself are added here too (see
    /// [`with_automatic_entries`]).
    pub fn new(app: App, entries: Vec<Entry>, cluster: impl Into<String>) -> Beat {
        let entries = with_automatic_entries(&app, entries);
        Beat {
            app,
            entries,
            schedule_file: None,
            state_file: None,
            cluster: cluster.into(),
            grace: chrono::Duration::seconds(2),
            metrics: BeatMetrics::new(),
            metrics_addr: None,
        }
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` while running.
    pub fn metrics_addr(mut self, addr: SocketAddr) -> Beat {
        self.metrics_addr = Some(addr);
        self
    }

    /// The beat's metrics, to serve from a program's own HTTP server.
    pub fn metrics(&self) -> BeatMetrics {
        self.metrics.clone()
    }

    /// Reloads entries from this file on SIGHUP.
    pub fn schedule_file(mut self, path: PathBuf) -> Beat {
        self.schedule_file = Some(path);
        self
    }

    /// Keeps the state in this file too (written atomically on every send).
    pub fn state_file(mut self, path: PathBuf) -> Beat {
        self.state_file = Some(StateFile::new(path));
        self
    }

    /// Runs until `shutdown` completes.
    ///
    /// Fails only if the local state file cannot be read or the metrics
    /// address cannot be bound; broker trouble is logged and retried.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), BeatError> {
        let stop = CancellationToken::new();
        let _stop_listener = stop.clone().drop_guard();
        if let Some(addr) = self.metrics_addr {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| BeatError::Listen { addr, source })?;
            metrics::serve(listener, self.metrics.clone(), self.app.clone(), stop);
        }
        let outcome = self.run_beat(shutdown).await;
        self.metrics.leading(false);
        outcome
    }

    /// The beat loop of [`run_until`](Self::run_until).
    async fn run_beat(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), BeatError> {
        tokio::pin!(shutdown);
        let leadership = Leadership::new(self.app.broker().clone(), &self.cluster);
        let mut reload = reload_signal();
        loop {
            // Stand by until this beat holds the lock.
            loop {
                match leadership.acquire().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "cannot reach the beat lock; retrying"),
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(STANDBY_RETRY) => {}
                }
            }
            let mut state = match &self.state_file {
                Some(file) => file.load()?,
                None => State::default(),
            };
            match leadership.load().await {
                Ok(Some(shared)) => state.merge(&shared),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "cannot read the shared beat state; using the local one");
                }
            }
            info!(cluster = %self.cluster, entries = self.entries.len(), "this beat is active");
            self.metrics.leading(true);

            // Active: send what is due, sleep until the next due time.
            loop {
                let now = Utc::now();
                let plan = plan(&self.entries, &mut state, now, self.grace);
                if !plan.ticks.is_empty() || !plan.skipped.is_empty() {
                    match leadership.acquire().await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!("another beat took over; standing by");
                            self.metrics.leading(false);
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot confirm the beat lock; retrying");
                            tokio::time::sleep(STANDBY_RETRY).await;
                            continue;
                        }
                    }
                    for (index, missed) in &plan.skipped {
                        let entry = &self.entries[*index].name;
                        info!(entry = %entry, missed, "skipped missed runs (catch_up = skip)");
                        self.metrics.skipped(entry, u64::from(*missed));
                    }
                    self.send_all(&plan.ticks).await;
                    if let Err(e) = leadership.save(&state).await {
                        warn!(error = %e, "cannot share the beat state; a standby might repeat these sends");
                    }
                    if let Some(file) = &self.state_file
                        && let Err(e) = file.save(&state)
                    {
                        error!("{e}");
                    }
                }
                let sleep = plan.next_wake.map_or(Duration::from_secs(3600), |wake| {
                    (wake - Utc::now()).to_std().unwrap_or(Duration::ZERO)
                });
                tokio::select! {
                    () = &mut shutdown => {
                        info!("beat stopping");
                        return Ok(());
                    }
                    () = tokio::time::sleep(sleep) => {}
                    Some(()) = reload.recv() => self.reload(),
                }
            }
        }
    }

    /// Sends the ticks of one plan concurrently (at most [`SENDS_IN_FLIGHT`]
    /// at a time), so that of many entries due at once the last is not late
    /// by the sum of the others' confirms. Returns when all are done.
    async fn send_all(&self, ticks: &[Tick]) {
        let mut in_flight = JoinSet::new();
        for tick in ticks {
            if in_flight.len() >= SENDS_IN_FLIGHT {
                log_panic(in_flight.join_next().await);
            }
            let entry = self.entries[tick.entry].clone();
            in_flight.spawn(send(
                self.app.clone(),
                entry,
                tick.clone(),
                self.metrics.clone(),
            ));
        }
        while let Some(done) = in_flight.join_next().await {
            log_panic(Some(done));
        }
    }

    fn reload(&mut self) {
        let Some(path) = &self.schedule_file else {
            return;
        };
        match schedule::load(path) {
            Ok(entries) => {
                info!(entries = entries.len(), "reloaded the schedule");
                self.entries = with_automatic_entries(&self.app, entries);
            }
            Err(e) => error!("reloading the schedule failed, keeping the old one: {e}"),
        }
    }
}

/// The schedule's `entries` plus the one Celery's beat adds by itself: the
/// daily `celery.backend_cleanup` when the app's result backend keeps
/// results until they are deleted (SQL databases), unless the schedule
/// already sends that task.
fn with_automatic_entries(app: &App, mut entries: Vec<Entry>) -> Vec<Entry> {
    if !app.result_backend().is_some_and(|b| b.needs_cleanup()) {
        return entries;
    }
    match schedule::add_backend_cleanup(&mut entries) {
        Ok(true) => info!(
            "the result backend keeps results until deleted: scheduled {} daily at 04:00 UTC",
            schedule::BACKEND_CLEANUP
        ),
        Ok(false) => {}
        Err(e) => error!("could not schedule {}: {e}", schedule::BACKEND_CLEANUP),
    }
    entries
}

/// Sends one tick; a failure is logged and the tick is not retried (the
/// next due time follows), as Celery beat does.
async fn send(app: App, entry: Entry, tick: Tick, metrics: BeatMetrics) {
    let due = format_time(&tick.due);
    let task_id = tick_id(&entry.name, tick.due);
    let mut call = app
        .send_task(&entry.task)
        .args(&entry.args)
        .kwargs(&entry.kwargs)
        .task_id(task_id.clone())
        .header(ENTRY_HEADER, entry.name.clone())
        .header(DUE_HEADER, due.clone());
    let options = &entry.options;
    if let Some(queue) = &options.queue {
        call = call.queue(queue.clone());
    }
    if let Some(exchange) = &options.exchange {
        call = call.exchange(exchange.clone());
    }
    if let Some(key) = &options.routing_key {
        call = call.routing_key(key.clone());
    }
    if let Some(priority) = options.priority {
        call = call.priority(priority);
    }
    if let Some(expires) = options.expires.filter(|s| s.is_finite() && *s > 0.0) {
        call = call.expires_in(Duration::from_secs_f64(expires));
    }
    for (name, value) in &options.headers {
        match celeriac::HeaderValue::from_json(value) {
            Ok(v) => call = call.header(name.clone(), v),
            Err(e) => {
                warn!(entry = %entry.name, header = %name, error = %e, "skipping a header AMQP cannot carry");
            }
        }
    }
    match call.apply().await {
        Ok(_) => {
            info!(entry = %entry.name, task = %entry.task, id = %task_id, due = %due, covers = tick.covers, "sent");
            let late = (Utc::now() - tick.due)
                .num_microseconds()
                .unwrap_or(i64::MAX);
            metrics.sent(&entry.name, late as f64 / 1e6);
        }
        Err(e) => {
            error!(entry = %entry.name, task = %entry.task, due = %due, error = %e, "sending failed");
            metrics.failed(&entry.name);
        }
    }
}

/// Logs a send that panicked (a bug; the other sends are unaffected).
fn log_panic(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        error!(error = %e, "a send panicked");
    }
}

/// The task id of an entry's tick: the same for the same entry and due time,
/// so a tick that is ever sent twice carries one id.
pub fn tick_id(entry: &str, due: DateTime<Utc>) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("celeriac-beat/{entry}/{}", due.timestamp_micros()).as_bytes(),
    )
    .to_string()
}

/// SIGHUP notifications (never, where there are no signals).
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            if sender.send(()).await.is_err() {
                return;
            }
        }
    });
    #[cfg(not(unix))]
    drop(sender);
    receiver
}
