//! The request context of a running task (Celery's `self.request` with
//! `bind=True`).
//!
//! While a worker runs a task, the request is also available through
//! [`current`], so tasks sent from inside a task get `parent_id` and `root_id`
//! automatically, as in Celery.

use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::time::now;
use celeriac_protocol::trace::TraceContext;
use celeriac_protocol::{ExtendedMeta, Headers, ResultMeta, State, TaskMessage};
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::Value;

use crate::result::{BackendError, ResultBackend};
use crate::task_error::{RetryRequest, TaskError};

/// A random, non-zero span id.
fn new_span_id() -> u64 {
    fastrand::u64(1..)
}

/// Where a message came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The exchange it was published to (`""` is the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its AMQP priority.
    pub priority: Option<u8>,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
}

/// The context of one task execution.
#[derive(Debug, Clone)]
pub struct Request {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// How many times this task has been retried.
    pub retries: u32,
    /// Id of the first task of the workflow.
    pub root_id: Option<String>,
    /// Id of the task that sent this one.
    pub parent_id: Option<String>,
    /// Group id, if the task is part of a group.
    pub group: Option<String>,
    /// Earliest start time, if one was set.
    pub eta: Option<DateTime<FixedOffset>>,
    /// Expiry, if one was set.
    pub expires: Option<DateTime<FixedOffset>>,
    /// Name of the worker running the task.
    pub hostname: String,
    /// Delivery details.
    pub delivery_info: DeliveryInfo,
    /// Where results go (`rpc://`).
    pub reply_to: Option<String>,
    /// Correlation id of the message.
    pub correlation_id: Option<String>,
    /// Custom headers sent with the task.
    pub headers: Headers,
    /// The display form of the args the message carried (`argsrepr`), which
    /// a producer may have masked; result stores that show arguments use it.
    pub argsrepr: Option<String>,
    /// The display form of the kwargs the message carried (`kwargsrepr`).
    pub kwargsrepr: Option<String>,
    /// Signalled when the task's soft time limit passes.
    pub soft_limit: SoftLimit,
    /// This run's W3C trace context, when the message carried one: the
    /// sender's trace, with a span id of this run's own. Tasks sent from
    /// this one (inside it, or as its callbacks and next steps) carry it
    /// on, so one trace follows a request across Python and Rust tasks.
    pub trace: Option<TraceContext>,
    /// Where this task's states are stored, set by the worker.
    results: Option<Arc<ResultContext>>,
}

/// What a task's stored states carry beyond the state itself.
#[derive(Debug)]
struct ResultContext {
    backend: Arc<dyn ResultBackend>,
    /// `result_extended` fields, when they are on.
    extended: Option<ExtendedMeta>,
}

/// The soft time limit of a running task: the worker signals it when the
/// limit passes, and the task may finish up (Celery raises
/// `SoftTimeLimitExceeded` inside the task instead).
///
/// ```no_run
/// # async fn demo(request: celeriac::Request) {
/// tokio::select! {
///     () = request.soft_limit.reached() => { /* save progress, return early */ }
///     () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct SoftLimit(tokio_util::sync::CancellationToken);

impl SoftLimit {
    /// Waits until the soft limit passes (forever if it never does).
    pub async fn reached(&self) {
        self.0.cancelled().await;
    }

    /// Whether the soft limit has passed.
    pub fn is_reached(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Signals the limit (the worker calls this).
    pub fn signal(&self) {
        self.0.cancel();
    }
}

impl Request {
    /// The request for a decoded message.
    pub fn from_message(
        message: &TaskMessage,
        delivery_info: DeliveryInfo,
        hostname: impl Into<String>,
    ) -> Request {
        let h = &message.headers;
        Request {
            id: h.id.clone(),
            task: h.task.clone(),
            retries: u32::try_from(h.retries).unwrap_or(0),
            root_id: h.root_id.clone(),
            parent_id: h.parent_id.clone(),
            group: h.group.clone(),
            eta: h.eta,
            expires: h.expires,
            hostname: hostname.into(),
            delivery_info,
            reply_to: message.properties.reply_to.clone(),
            correlation_id: message.properties.correlation_id.clone(),
            headers: h.extra.clone(),
            argsrepr: h.argsrepr.clone(),
            kwargsrepr: h.kwargsrepr.clone(),
            soft_limit: SoftLimit::default(),
            trace: TraceContext::from_headers(h).map(|sender| sender.with_span(new_span_id())),
            results: None,
        }
    }

    /// Stores this task's states in `backend` (the worker sets this), with
    /// the `result_extended` fields of `message` when `extended` is on.
    pub fn with_results(
        mut self,
        backend: Arc<dyn ResultBackend>,
        message: &TaskMessage,
        extended: bool,
    ) -> Request {
        let extended = extended.then(|| ExtendedMeta {
            name: Some(message.headers.task.clone()),
            args: Value::Array(message.body.args.to_vec()),
            kwargs: Value::Object(message.body.kwargs.values().clone()),
            worker: Some(self.hostname.clone()),
            retries: Some(i64::from(self.retries)),
            queue: Some(self.delivery_info.routing_key.clone()),
        });
        self.results = Some(Arc::new(ResultContext { backend, extended }));
        self
    }

    /// The result document this task stores for `status` with `result`:
    /// its parent, group and (when on) `result_extended` fields filled in,
    /// and `date_done` for ready states.
    pub fn result_meta(&self, status: State, result: Value) -> ResultMeta {
        let ready = status.is_ready();
        let mut meta = ResultMeta::new(&self.id, status, result);
        meta.parent_id.clone_from(&self.parent_id);
        meta.group_id.clone_from(&self.group);
        meta.extended = self.results.as_ref().and_then(|r| r.extended.clone());
        if ready {
            meta.date_done = Some(now());
        }
        meta
    }

    /// Stores a custom state with metadata, e.g. progress, while the task
    /// runs (Celery's `self.update_state(state="PROGRESS", meta={...})`).
    /// Python reads it as `AsyncResult.state == "PROGRESS"` and
    /// `AsyncResult.info`.
    ///
    /// ```no_run
    /// # async fn demo(request: celeriac::Request) -> Result<(), celeriac::BackendError> {
    /// request.update_state("PROGRESS", serde_json::json!({"done": 40, "total": 100})).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Fails with [`BackendError::Unsupported`] when the worker stores no
    /// results for this task (no backend, or results ignored).
    pub async fn update_state(&self, state: &str, meta: Value) -> Result<(), BackendError> {
        let Some(context) = &self.results else {
            return Err(BackendError::Unsupported {
                backend: "absent",
                what: "update_state for this task",
                fix: "configure a result backend (and do not ignore this task's results)",
            });
        };
        let meta = self.result_meta(State::parse(state), meta);
        context.backend.store(&meta, self).await
    }

    /// A request for calling a task directly (tests, tools).
    pub fn detached(task: impl Into<String>, id: impl Into<String>) -> Request {
        let id = id.into();
        Request {
            root_id: Some(id.clone()),
            id,
            task: task.into(),
            retries: 0,
            parent_id: None,
            group: None,
            eta: None,
            expires: None,
            hostname: String::new(),
            delivery_info: DeliveryInfo::default(),
            reply_to: None,
            correlation_id: None,
            headers: Headers::new(),
            argsrepr: None,
            kwargsrepr: None,
            soft_limit: SoftLimit::default(),
            trace: None,
            results: None,
        }
    }

    /// Starts a retry request (Celery's `self.retry(...)`):
    /// `return Err(request.retry().countdown(Duration::from_secs(5)).because(err))`.
    pub fn retry(&self) -> Retry {
        Retry::default()
    }
}

/// A retry being built; converts into the [`TaskError`] a task returns.
#[derive(Debug, Default)]
#[must_use = "return it as the task's error: `return Err(request.retry().into())`"]
pub struct Retry {
    request: RetryRequest,
    cause: Option<TaskError>,
}

impl Retry {
    /// Retry after `delay` (instead of the task's retry policy).
    pub fn countdown(mut self, delay: Duration) -> Retry {
        self.request.countdown = Some(delay);
        self
    }

    /// Retry at `eta`.
    pub fn eta(mut self, eta: DateTime<Utc>) -> Retry {
        self.request.eta = Some(eta);
        self
    }

    /// Use this `max_retries` for this decision.
    pub fn max_retries(mut self, max: u32) -> Retry {
        self.request.max_retries = Some(max);
        self
    }

    /// The error that caused the retry (stored with the `RETRY` state and, if
    /// retries run out, the final failure).
    pub fn because(mut self, error: impl Into<TaskError>) -> TaskError {
        self.cause = Some(error.into());
        self.into()
    }
}

impl From<Retry> for TaskError {
    fn from(retry: Retry) -> TaskError {
        TaskError::retry(retry.request, retry.cause)
    }
}

tokio::task_local! {
    // Shared, so that putting a request in scope copies none of it.
    static CURRENT: Arc<Request>;
}

/// The request of the task running on this tokio task, if any.
pub fn current() -> Option<Request> {
    CURRENT.try_with(|request| Request::clone(request)).ok()
}

/// The request in scope, shared rather than copied.
pub(crate) fn current_shared() -> Option<Arc<Request>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `future` with `request` as the [`current`] request (the worker does
/// this around every task, with the request it keeps for the task's
/// outcome shared: an `Arc<Request>` goes in without a copy).
pub async fn scope<F: Future>(request: impl Into<Arc<Request>>, future: F) -> F::Output {
    CURRENT.scope(request.into(), future).await
}
