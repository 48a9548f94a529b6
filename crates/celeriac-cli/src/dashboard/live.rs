//! What the dashboard shows live: queue depths sampled every few seconds
//! with their recent history, and the online workers with their active
//! tasks, asked by remote control (as `celery inspect active` asks).
//! Each sample is published as one [`Snapshot`] the pages and the
//! server-sent event streams read.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use celeriac::App;
use celeriac::broker::BrokerError;
use tokio::sync::watch;

use crate::dlq::{self, Shelf};

/// How long a queue's depth history reaches back.
pub(super) const HISTORY: Duration = Duration::from_secs(10 * 60);
/// How often the workers are asked what they run.
const WORKERS_EVERY: Duration = Duration::from_secs(5);
/// How long the dashboard waits for workers' replies.
const WORKERS_TIMEOUT: Duration = Duration::from_secs(1);

/// One sample of everything the live views show.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    /// When it was taken (`None` before the first sample).
    pub(super) taken: Option<SystemTime>,
    /// The watched queues, by name.
    pub(super) queues: Vec<QueueRow>,
    /// Delayed messages whose queue was deleted while they waited.
    pub(super) orphans: usize,
    /// Workers that answered the last poll.
    pub(super) workers: Vec<WorkerRow>,
    /// Whether the workers were asked at least once.
    pub(super) workers_asked: bool,
    /// Why the last sample failed, if it did.
    pub(super) error: Option<String>,
}

/// A watched queue.
#[derive(Debug, Clone, Default)]
pub(super) struct QueueRow {
    /// Its name.
    pub(super) name: String,
    /// Ready messages; `None` if the queue does not exist.
    pub(super) ready: Option<usize>,
    /// Consumers.
    pub(super) consumers: usize,
    /// Net change of ready messages per second since the last sample.
    pub(super) change_per_second: Option<f64>,
    /// Dead letters in its dead-letter queue.
    pub(super) dead: usize,
    /// Ready messages at each sample of the last [`HISTORY`], oldest first.
    pub(super) history: Vec<usize>,
}

/// An online worker.
#[derive(Debug, Clone, Default)]
pub(super) struct WorkerRow {
    /// Its node name (`celery@host`).
    pub(super) node: String,
    /// What it runs now.
    pub(super) active: Vec<ActiveTask>,
    /// The queues it consumes.
    pub(super) queues: Vec<String>,
}

/// A task a worker runs now.
#[derive(Debug, Clone, Default)]
pub(super) struct ActiveTask {
    /// Task id.
    pub(super) id: String,
    /// Task name.
    pub(super) name: String,
    /// When it started (Unix seconds).
    pub(super) started: Option<f64>,
}

/// The queues the dashboard watches: those it was told, and those the
/// workers say they consume.
#[derive(Debug, Clone, Default)]
pub(super) struct Watched(Arc<Mutex<BTreeSet<String>>>);

impl Watched {
    pub(super) fn new(queues: &[String]) -> Watched {
        Watched(Arc::new(Mutex::new(queues.iter().cloned().collect())))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The watched queues, in name order.
    pub(super) fn names(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    /// Whether `queue` is watched.
    pub(super) fn contains(&self, queue: &str) -> bool {
        self.lock().contains(queue)
    }

    fn extend(&self, queues: impl IntoIterator<Item = String>) {
        self.lock().extend(queues);
    }
}

/// Samples until `stop` fires, publishing each snapshot on `publish`; the
/// workers are polled alongside. Ends by dropping `publish`, which ends the
/// event streams of every open page.
pub(super) async fn run(
    app: App,
    watched: Watched,
    every: Duration,
    publish: watch::Sender<Arc<Snapshot>>,
    mut stop: watch::Receiver<bool>,
) {
    let workers = Arc::new(Mutex::new(None::<Vec<WorkerRow>>));
    let poller = tokio::spawn(poll_workers(app.clone(), watched.clone(), workers.clone()));
    let mut history: HashMap<String, VecDeque<usize>> = HashMap::new();
    let mut last: HashMap<String, (Instant, usize)> = HashMap::new();
    let points = (HISTORY.as_secs_f64() / every.as_secs_f64().max(0.1)).ceil() as usize;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        let mut snapshot = Snapshot {
            taken: Some(SystemTime::now()),
            ..Snapshot::default()
        };
        match sample(&app, &watched.names()).await {
            Ok((counts, orphans)) => {
                snapshot.orphans = orphans;
                for (name, ready, consumers, dead) in counts {
                    let now = Instant::now();
                    let change_per_second = match (ready, last.get(&name)) {
                        (Some(ready), Some(&(then, before))) => {
                            let seconds = now.duration_since(then).as_secs_f64();
                            (seconds > 0.0).then(|| (ready as f64 - before as f64) / seconds)
                        }
                        _ => None,
                    };
                    let points_of = history.entry(name.clone()).or_default();
                    if let Some(ready) = ready {
                        last.insert(name.clone(), (now, ready));
                        points_of.push_back(ready);
                        while points_of.len() > points {
                            points_of.pop_front();
                        }
                    }
                    snapshot.queues.push(QueueRow {
                        name,
                        ready,
                        consumers,
                        change_per_second,
                        dead,
                        history: points_of.iter().copied().collect(),
                    });
                }
            }
            Err(e) => snapshot.error = Some(e.to_string()),
        }
        let polled = workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        snapshot.workers_asked = polled.is_some();
        snapshot.workers = polled.unwrap_or_default();
        publish.send_replace(Arc::new(snapshot));
    }
    poller.abort();
}

/// Each queue's (name, ready, consumers, dead letters), and the orphans.
type Counts = Vec<(String, Option<usize>, usize, usize)>;

async fn sample(app: &App, queues: &[String]) -> Result<(Counts, usize), BrokerError> {
    let broker = app.broker();
    let mut counts = Vec::with_capacity(queues.len());
    for name in queues {
        let counted = broker.queue_counts(name).await?;
        let dead_letters = dlq::dead_letter_queue(broker, name).name;
        let dead = broker.queue_counts(&dead_letters).await?;
        counts.push((
            name.clone(),
            counted.map(|(ready, _)| ready as usize),
            counted.map_or(0, |(_, consumers)| consumers as usize),
            dead.map_or(0, |(messages, _)| messages as usize),
        ));
    }
    let orphans = broker
        .queue_counts(&Shelf::Orphans.queue(broker).name)
        .await?
        .map_or(0, |(messages, _)| messages as usize);
    Ok((counts, orphans))
}

/// Asks the workers what they run and consume, every [`WORKERS_EVERY`];
/// queues they consume become watched.
async fn poll_workers(app: App, watched: Watched, into: Arc<Mutex<Option<Vec<WorkerRow>>>>) {
    let mut ticks = tokio::time::interval(WORKERS_EVERY);
    loop {
        ticks.tick().await;
        let control = app.control().timeout(WORKERS_TIMEOUT);
        let (Ok(active), Ok(queues)) = (control.active().await, control.active_queues().await)
        else {
            continue;
        };
        let mut rows: Vec<WorkerRow> = active
            .into_iter()
            .map(|reply| WorkerRow {
                active: reply
                    .value
                    .unwrap_or_default()
                    .into_iter()
                    .map(|task| ActiveTask {
                        id: task.id,
                        name: task.name,
                        started: task.time_start,
                    })
                    .collect(),
                node: reply.node,
                queues: Vec::new(),
            })
            .collect();
        for reply in queues {
            let names: Vec<String> = reply
                .value
                .unwrap_or_default()
                .into_iter()
                .map(|queue| queue.name)
                // Per-worker broadcast queues come and go with their worker.
                .filter(|name| !name.starts_with("bcast."))
                .collect();
            watched.extend(names.iter().cloned());
            match rows.iter_mut().find(|row| row.node == reply.node) {
                Some(row) => row.queues = names,
                None => rows.push(WorkerRow {
                    node: reply.node,
                    queues: names,
                    ..WorkerRow::default()
                }),
            }
        }
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        *into.lock().unwrap_or_else(PoisonError::into_inner) = Some(rows);
    }
}
