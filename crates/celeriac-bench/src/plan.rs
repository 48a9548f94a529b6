//! What a run measures: the scenarios, how much work each does, and the
//! message every scenario sends.

use celeriac_protocol::{RawMessage, TaskMessage};
use serde::Serialize;
use serde_json::json;

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// Publishing with confirms: raw lapin, `apply()`, `send_many()`, Python.
    Publish,
    /// Draining a backlog of no-op tasks.
    Drain,
    /// Memory of a worker process: idle, on a backlog, across many tasks.
    Memory,
    /// Send and read back the result, many callers.
    Results,
    /// Enqueue→start and enqueue→result at a trickle and under load.
    Latency,
    /// How late a beat's sends arrive, many every-second entries at once.
    Beat,
    /// Results stored in Redis: drain and round trips, beside ignoring
    /// results, `rpc://`, and Python Celery with the same Redis.
    Redis,
    /// Results stored in PostgreSQL (Celery's database backend): drain and
    /// round trips, beside ignoring results, `rpc://`, Redis, and Python
    /// Celery with the same database.
    Postgres,
    /// A burst of countdown tasks with ordinary tasks behind it.
    Eta,
    /// Large task bodies (1 KB to 1 MB): raw lapin, the worker, Python.
    Payload,
}

/// How much work each measurement does.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sizes {
    /// Messages per throughput measurement.
    pub(crate) messages: u64,
    /// Messages per Python Celery measurement (fewer in a quick run: it is
    /// much slower).
    pub(crate) python_messages: u64,
    /// Rounds of each scenario.
    pub(crate) rounds: usize,
    /// Round trips (send, then read the result) per measurement.
    pub(crate) round_trips: u64,
    /// Tasks sent at a trickle (10/s) for the latency scenario.
    pub(crate) trickle: u64,
    /// Seconds of offered load for the loaded latency scenario.
    pub(crate) loaded_seconds: f64,
    /// Backlog a worker process starts on in the memory scenario.
    pub(crate) memory_backlog: u64,
    /// Tasks the memory scenario's worker runs in all.
    pub(crate) memory_total: u64,
    /// Every-second entries of the beat scenario's schedule.
    pub(crate) beat_entries: usize,
    /// Sends the beat scenario measures.
    pub(crate) beat_sends: u64,
    /// Countdown tasks in each burst of the ETA scenario.
    pub(crate) eta_bursts: Vec<u64>,
    /// The burst consumer's windows the ETA scenario's worker runs with,
    /// each in every round.
    pub(crate) eta_burst_windows: Vec<u16>,
    /// Body sizes of the payload scenario, in bytes.
    pub(crate) payload_bytes: Vec<usize>,
    /// Bytes of task bodies in each of the payload scenario's backlogs.
    pub(crate) payload_backlog_bytes: u64,
    /// Messages in a payload backlog at least and at most, whatever the
    /// size.
    pub(crate) payload_messages_range: (u64, u64),
}

impl Sizes {
    /// The default sizes, or the quick ones, with overrides (an empty
    /// `eta_bursts` keeps the default bursts, an empty `eta_burst_windows`
    /// the worker's default window).
    pub(crate) fn new(
        quick: bool,
        messages: Option<u64>,
        rounds: Option<usize>,
        eta_bursts: Vec<u64>,
        eta_burst_windows: Vec<u16>,
    ) -> Sizes {
        let base = if quick {
            Sizes {
                messages: 2_000,
                python_messages: 500,
                rounds: 1,
                round_trips: 500,
                trickle: 20,
                loaded_seconds: 1.0,
                memory_backlog: 5_000,
                memory_total: 20_000,
                beat_entries: 50,
                beat_sends: 100,
                eta_bursts: vec![500],
                eta_burst_windows: vec![celeriac_worker::BURST_WINDOW],
                payload_bytes: vec![1_000, 100_000, 1_000_000],
                payload_backlog_bytes: 20_000_000,
                payload_messages_range: (50, 2_000),
            }
        } else {
            Sizes {
                messages: 50_000,
                // The same backlog as Celeriac's: a ratio between a long
                // drain and a short one would flatter whichever warms up
                // slower.
                python_messages: 50_000,
                rounds: 3,
                round_trips: 10_000,
                trickle: 200,
                loaded_seconds: 5.0,
                memory_backlog: 100_000,
                memory_total: 1_000_000,
                beat_entries: 100,
                beat_sends: 1_000,
                eta_bursts: vec![2_000, 100_000],
                eta_burst_windows: vec![celeriac_worker::BURST_WINDOW],
                payload_bytes: vec![1_000, 10_000, 100_000, 1_000_000],
                payload_backlog_bytes: 200_000_000,
                payload_messages_range: (200, 20_000),
            }
        };
        Sizes {
            messages: messages.unwrap_or(base.messages),
            rounds: rounds.unwrap_or(base.rounds).max(1),
            eta_bursts: if eta_bursts.is_empty() {
                base.eta_bursts
            } else {
                eta_bursts
            },
            eta_burst_windows: if eta_burst_windows.is_empty() {
                base.eta_burst_windows
            } else {
                eta_burst_windows
            },
            ..base
        }
    }
}

impl Sizes {
    /// Messages in the payload scenario's backlog of `bytes`-long tasks:
    /// the same bytes for every size, within the message range.
    pub(crate) fn payload_messages(&self, bytes: usize) -> u64 {
        let (least, most) = self.payload_messages_range;
        (self.payload_backlog_bytes / bytes.max(1) as u64).clamp(least, most)
    }
}

/// An encoded `task(1, 2)` message, as a Celeriac producer sends it.
pub(crate) fn task_message(task: &str) -> anyhow::Result<RawMessage> {
    let id = uuid::Uuid::new_v4().to_string();
    Ok(TaskMessage::new(task, id)
        .with_args(vec![json!(1), json!(2)])
        .encode()?)
}
