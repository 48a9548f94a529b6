//! The [`ResultBackend`] trait every result store implements, and the
//! chord bookkeeping a store with a native counter offers ([`ChordStore`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use celeriac_protocol::sql_row::ResultColumn;
use celeriac_protocol::store::{ChordPart, ResultTuple};
use celeriac_protocol::{ResultMeta, State};

use super::BackendError;
use crate::Request;

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How results are kept, whichever backend keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSettings {
    /// How long results are kept (Celery's `result_expires`, default one
    /// day); `None` keeps them until forgotten.
    pub expires: Option<Duration>,
    /// Store the task's name, args, kwargs, worker, retries and queue with
    /// its result (Celery's `result_extended`). Default **true** in
    /// Celeriac (Celery's default is false), so operators reading results
    /// from Python see what ran.
    pub extended: bool,
    /// A prefix for every key (Celery's
    /// `result_backend_transport_options['global_keyprefix']`).
    pub key_prefix: Option<String>,
    /// How long a worker completing a chord may take to read the header's
    /// results before another may take over (Celery's
    /// `result_chord_join_timeout`, 3 s).
    pub chord_join_timeout: Duration,
    /// How the database backend writes its `result` column: JSON bytes
    /// (Celery 5.7 and later, the default) or a pickle (Celery 5.0 to 5.6,
    /// whose processes cannot read JSON there). Both are read.
    pub database_result_column: ResultColumn,
}

impl Default for ResultSettings {
    fn default() -> Self {
        ResultSettings {
            expires: Some(Duration::from_secs(86_400)),
            extended: true,
            key_prefix: None,
            chord_join_timeout: Duration::from_secs(3),
            database_result_column: ResultColumn::Json,
        }
    }
}

/// Where results are stored and read.
///
/// Producers call [`prepare`](Self::prepare) before publishing a task whose
/// result they want, and read with [`get`](Self::get) and
/// [`wait`](Self::wait); workers [`store`](Self::store) outcomes. Backends
/// that can count a chord's results natively offer [`chords`](Self::chords).
pub trait ResultBackend: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's URL, password redacted, for logs and errors.
    fn url(&self) -> String;

    /// The `reply_to` to put on task messages whose result is wanted
    /// (`rpc://` only).
    fn reply_to(&self) -> Option<&str> {
        None
    }

    /// Whether any client can read a task's result by its id (`rpc://`
    /// sends each result to its caller alone). Default true.
    fn keeps_results_by_id(&self) -> bool {
        true
    }

    /// Gets ready to receive the result of `task_id`; called before the task
    /// is published.
    fn prepare<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The task's current result document; `None` while there is none
    /// (`PENDING`).
    fn get<'a>(
        &'a self,
        task_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ResultMeta>, BackendError>>;

    /// Waits up to `timeout` for the task to reach a ready state; `None` on
    /// timeout.
    fn wait<'a>(
        &'a self,
        task_id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<ResultMeta>, BackendError>>;

    /// Every state this process has seen for `task_id`, in order.
    fn history(&self, task_id: &str) -> Vec<State>;

    /// Stores a result for the task `request` describes (worker side). A
    /// stored `SUCCESS` is never overwritten.
    fn store<'a>(
        &'a self,
        meta: &'a ResultMeta,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Deletes the task's result.
    fn forget<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Saves a group's members, so any process can restore it by id
    /// (Celery's `GroupResult.save`).
    fn save_group<'a>(&'a self, group: &'a ResultTuple) -> BoxFuture<'a, Result<(), BackendError>>;

    /// A saved group, by id.
    fn restore_group<'a>(
        &'a self,
        group_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ResultTuple>, BackendError>>;

    /// The locks of unique tasks (`unique_for`), if this backend keeps them
    /// (Redis); `None` for backends that cannot (`rpc://`).
    fn unique_locks(&self) -> Option<&dyn UniqueLocks> {
        None
    }

    /// The leases of global concurrency limits, if this backend keeps them
    /// (Redis); `None` for backends that cannot (`rpc://`).
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// The schedules of global rate limits, if this backend keeps them
    /// (Redis); `None` for backends that cannot (`rpc://`).
    fn slots(&self) -> Option<&dyn RateSlots> {
        None
    }

    /// The chord bookkeeping, if this backend counts chord results itself
    /// (Redis); `None` for backends that cannot run chords (`rpc://`).
    fn chords(&self) -> Option<&dyn ChordStore> {
        None
    }

    /// Whether chords on this backend are joined by polling, with the
    /// `celery.chord_unlock` task (stores without a counter to join on,
    /// such as SQL databases), as Celery joins them there.
    fn polls_chords(&self) -> bool {
        false
    }

    /// Whether results stay until [`cleanup`](Self::cleanup) deletes them
    /// (SQL databases), rather than expiring by themselves; then
    /// `celery.backend_cleanup` should run daily, as Celery's beat runs it.
    fn needs_cleanup(&self) -> bool {
        false
    }

    /// Deletes the results and saved groups older than `result_expires`
    /// (the `celery.backend_cleanup` task) and says how many; stores whose
    /// results expire by themselves have nothing to do.
    fn cleanup(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async { Ok(0) })
    }
}

/// Chord bookkeeping in the store (§4.5), the same protocol Python's
/// workers follow, so a header may run on any mix of Python and Rust
/// workers.
pub trait ChordStore: Send + Sync {
    /// Records the chord before its header is published: the header's
    /// size (Redis: the producer's `set_chord_size`) or its task ids
    /// (django-celery-results' `ChordCounter`), given here in order. A
    /// chord never completes without it.
    fn start_chord<'a>(
        &'a self,
        group_id: &'a str,
        header: &'a [String],
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Records one header task's final result and says whether the chord
    /// is now complete and this worker must apply the body. A header task
    /// recorded before (a redelivery) is not counted twice.
    fn part_return<'a>(
        &'a self,
        group_id: &'a str,
        group_index: Option<i64>,
        part: &'a ChordPart,
    ) -> BoxFuture<'a, Result<ChordJoin, BackendError>>;

    /// Extends the claim before the body is published, so no other worker
    /// takes over meanwhile; `false` if the claim was lost (then the body
    /// must not be published).
    fn extend_claim<'a>(
        &'a self,
        group_id: &'a str,
        claim: &'a ChordClaim,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Removes the chord's bookkeeping after its body was applied (or
    /// failed), leaving a marker so late copies of header tasks do nothing.
    fn finish<'a>(
        &'a self,
        group_id: &'a str,
        claim: &'a ChordClaim,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
}

/// What recording a chord part decided.
#[derive(Debug, Clone, PartialEq)]
pub enum ChordJoin {
    /// More header results are due, the chord already finished, or another
    /// worker holds the claim to apply the body.
    Waiting,
    /// Every header result is in and this worker holds the claim: join
    /// `parts` (in header order) and apply the body, then
    /// [`ChordStore::finish`].
    Complete {
        /// The header's results, in `group_index` order.
        parts: Vec<ChordPart>,
        /// This worker's claim on applying the body.
        claim: ChordClaim,
    },
}

/// A worker's claim on applying one chord's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChordClaim {
    /// A token only this claim holds.
    pub token: String,
}

/// The locks that keep at most one task of a kind queued or running
/// (`unique_for`): taken by the producer before it publishes, released by
/// the worker when the task is done, expiring on their own after their
/// time to live.
pub trait UniqueLocks: Send + Sync {
    /// Takes the lock `key` for `task_id` for `ttl`, unless a task holds it
    /// already: then that task's id (`Some`), and nothing changes.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        task_id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>>;

    /// Releases the lock `key` if `task_id` still holds it.
    fn release<'a>(
        &'a self,
        key: &'a str,
        task_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
}

/// Leases that cap how many tasks of a kind run at once across every
/// worker (`global_concurrency`). Each expires unless renewed, so a worker
/// killed while holding one does not keep it. Times are the store's own
/// clock, so workers' clocks need not agree.
pub trait Leases: Send + Sync {
    /// Takes one of `cap` leases on `key` for `holder`, for `ttl`: `false`
    /// when all are held (leases past their time are dropped first).
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        cap: u32,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Extends `holder`'s lease on `key` to `ttl` from now; `false` if it
    /// had already expired.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Gives `holder`'s lease on `key` back.
    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The leases held on `key` now (for tests and operators).
    fn held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u32, BackendError>>;
}

/// The schedules of global rate limits (`global_rate_limit`): per key, the
/// earliest moment the next run may start, on the store's own clock
/// (microseconds since the Unix epoch), so workers' clocks need not agree.
pub trait RateSlots: Send + Sync {
    /// Takes the next slot of `key`'s schedule (runs `interval` apart). A
    /// slot under `near` away is given as it is; any other is put at least
    /// `lead` away (the slots before go unused); none is given beyond
    /// `horizon`, and the schedule is then left as it was.
    fn take<'a>(
        &'a self,
        key: &'a str,
        gaps: SlotGaps,
    ) -> BoxFuture<'a, Result<Slot, BackendError>>;

    /// Keeps `key`'s schedule behind a slot given earlier (carried back by
    /// a deferred task); the store's clock.
    fn honour<'a>(
        &'a self,
        key: &'a str,
        slot: i64,
        interval: Duration,
    ) -> BoxFuture<'a, Result<i64, BackendError>>;
}

/// The spacing [`RateSlots::take`] works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotGaps {
    /// Between two runs.
    pub interval: Duration,
    /// A slot closer than this is given as it is (zero: none is).
    pub near: Duration,
    /// Any other slot is at least this far.
    pub lead: Duration,
    /// No slot is given further than this.
    pub horizon: Duration,
}

/// A slot taken from a global rate limit's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The slot (microseconds since the Unix epoch, the store's clock);
    /// `None` beyond the horizon.
    pub at: Option<i64>,
    /// The store's clock when it was taken.
    pub now: i64,
}
