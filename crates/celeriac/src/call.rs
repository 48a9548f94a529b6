//! Sending tasks: typed calls (`add::new(2, 2)`) and calls by name
//! (`app.send_task("reports.build")`), with Celery's `apply_async` options.

use std::marker::PhantomData;
use std::time::Duration;

use celeriac_protocol::trace::TraceContext;
use celeriac_protocol::{Headers, Signature};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{App, AsyncResult, Error};

/// `apply_async` options. Unset fields fall back to the task's options,
/// then to the app's settings.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Task id (default: a new UUID).
    pub task_id: Option<String>,
    /// Run no earlier than this long after sending.
    pub countdown: Option<Duration>,
    /// Run no earlier than this time.
    pub eta: Option<DateTime<Utc>>,
    /// Revoke if not started within this long after sending.
    pub expires_in: Option<Duration>,
    /// Revoke if not started by this time.
    pub expires_at: Option<DateTime<Utc>>,
    /// Message priority.
    pub priority: Option<u8>,
    /// Destination queue.
    pub queue: Option<String>,
    /// Destination exchange.
    pub exchange: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Custom headers (Celery's `headers=`).
    pub headers: Headers,
    /// Callbacks applied to the result on success (Celery's `link`).
    pub link: Vec<Signature>,
    /// Callbacks applied on failure (Celery's `link_error`).
    pub link_error: Vec<Signature>,
    /// Store no result.
    pub ignore_result: Option<bool>,
    /// Hard time limit.
    pub time_limit: Option<Duration>,
    /// Soft time limit.
    pub soft_time_limit: Option<Duration>,
    /// Name shown instead of the task name in logs and results.
    pub shadow: Option<String>,
    /// Unique for this long: while a task of the same name and arguments
    /// (or the same [`unique_key`](Self::unique_key)) is queued or
    /// running, sending returns its id instead of enqueueing another
    /// (overrides the task's `unique_for`).
    pub unique_for: Option<Duration>,
    /// What makes the task unique, instead of its arguments.
    pub unique_key: Option<String>,
}

/// Where a call sits in a workflow: set when a worker applies a callback,
/// errback or chain step, never by users directly.
#[derive(Debug, Clone, Default)]
pub(crate) struct Workflow {
    /// Remaining chain steps, in reverse order (embed `chain`).
    pub(crate) chain: Option<Vec<Signature>>,
    /// Group id and index of this call (the index is absent for a chord's
    /// body, which carries its header's group id).
    pub(crate) group: Option<(String, Option<i64>)>,
    /// The chord body, for a member of a chord's header (embed `chord`).
    pub(crate) chord: Option<Signature>,
    /// The reply queue named in the signature's options.
    pub(crate) reply_to: Option<String>,
    /// The task that sent this one, when not the current task.
    pub(crate) parent: Option<(String, Option<String>)>,
    /// The trace context of the task that sent this one, when not the
    /// current task.
    pub(crate) trace: Option<TraceContext>,
}

/// The option setters shared by [`TaskCall`] and [`SendTask`].
macro_rules! option_setters {
    ($($field:ident).+) => {
        /// Sets the task id (default: a new UUID).
        pub fn task_id(mut self, id: impl Into<String>) -> Self {
            self.$($field).+.task_id = Some(id.into());
            self
        }

        /// Runs the task no earlier than `delay` after sending.
        pub fn countdown(mut self, delay: std::time::Duration) -> Self {
            self.$($field).+.countdown = Some(delay);
            self
        }

        /// Runs the task no earlier than `eta`.
        pub fn eta(mut self, eta: chrono::DateTime<chrono::Utc>) -> Self {
            self.$($field).+.eta = Some(eta);
            self
        }

        /// Revokes the task if it has not started within `delay` of sending.
        pub fn expires_in(mut self, delay: std::time::Duration) -> Self {
            self.$($field).+.expires_in = Some(delay);
            self
        }

        /// Revokes the task if it has not started by `at`.
        pub fn expires_at(mut self, at: chrono::DateTime<chrono::Utc>) -> Self {
            self.$($field).+.expires_at = Some(at);
            self
        }

        /// Sets the message priority (on a queue with `x-max-priority`,
        /// higher runs first).
        pub fn priority(mut self, priority: u8) -> Self {
            self.$($field).+.priority = Some(priority);
            self
        }

        /// Sends to `queue` instead of the routed one.
        pub fn queue(mut self, queue: impl Into<String>) -> Self {
            self.$($field).+.queue = Some(queue.into());
            self
        }

        /// Publishes to `exchange`.
        pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
            self.$($field).+.exchange = Some(exchange.into());
            self
        }

        /// Publishes with `routing_key`.
        pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
            self.$($field).+.routing_key = Some(routing_key.into());
            self
        }

        /// Adds a custom header (Celery's `headers=`).
        pub fn header(mut self, name: impl Into<String>, value: impl Into<$crate::HeaderValue>) -> Self {
            self.$($field).+.headers.insert(name.into(), value.into());
            self
        }

        /// Applies `callback` to the result on success (Celery's `link`).
        pub fn link(mut self, callback: impl Into<$crate::Signature>) -> Self {
            self.$($field).+.link.push(callback.into());
            self
        }

        /// Applies `errback` with the task id on failure (Celery's `link_error`).
        pub fn link_error(mut self, errback: impl Into<$crate::Signature>) -> Self {
            self.$($field).+.link_error.push(errback.into());
            self
        }

        /// Stores no result (and waits for none).
        pub fn ignore_result(mut self, ignore: bool) -> Self {
            self.$($field).+.ignore_result = Some(ignore);
            self
        }

        /// Sets the hard time limit.
        pub fn time_limit(mut self, limit: std::time::Duration) -> Self {
            self.$($field).+.time_limit = Some(limit);
            self
        }

        /// Sets the soft time limit.
        pub fn soft_time_limit(mut self, limit: std::time::Duration) -> Self {
            self.$($field).+.soft_time_limit = Some(limit);
            self
        }

        /// Shows `name` instead of the task name in logs and results.
        pub fn shadow(mut self, name: impl Into<String>) -> Self {
            self.$($field).+.shadow = Some(name.into());
            self
        }

        /// Makes the task unique for `ttl`: while one of the same name and
        /// arguments (or [`unique_key`](Self::unique_key)) is queued or
        /// running, sending returns its id instead of enqueueing another.
        pub fn unique_for(mut self, ttl: std::time::Duration) -> Self {
            self.$($field).+.unique_for = Some(ttl);
            self
        }

        /// Makes tasks of this name unique by `key` (for example an account
        /// id) instead of by their arguments; needs a `unique_for` here or
        /// on the task.
        pub fn unique_key(mut self, key: impl Into<String>) -> Self {
            self.$($field).+.unique_key = Some(key.into());
            self
        }
    };
}

/// A task call ready to send, typed by the task's output `O`.
///
/// `#[task]` generates `my_task::new(args...)` returning one of these.
#[derive(Debug, Clone)]
pub struct TaskCall<O = Value> {
    pub(crate) name: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Map<String, Value>,
    pub(crate) options: SendOptions,
    pub(crate) error: Option<String>,
    pub(crate) workflow: Workflow,
    pub(crate) immutable: bool,
    _output: PhantomData<fn() -> O>,
}

impl<O: DeserializeOwned> TaskCall<O> {
    /// A call of task `name` with positional arguments.
    pub fn new(name: impl Into<String>, args: Vec<Value>) -> TaskCall<O> {
        TaskCall {
            name: name.into(),
            args,
            kwargs: Map::new(),
            options: SendOptions::default(),
            error: None,
            workflow: Workflow::default(),
            immutable: false,
            _output: PhantomData,
        }
    }

    /// A call whose arguments are serialized here; a value that cannot be
    /// serialized makes `apply_async` fail with an error naming the parameter.
    #[doc(hidden)]
    pub fn from_serialized(
        name: &str,
        args: Vec<(&'static str, Result<Value, serde_json::Error>)>,
    ) -> TaskCall<O> {
        let mut call = TaskCall::new(name, Vec::with_capacity(args.len()));
        for (param, value) in args {
            match value {
                Ok(v) => call.args.push(v),
                Err(e) => {
                    call.error.get_or_insert_with(|| {
                        format!("argument '{param}' cannot be serialized: {e}")
                    });
                }
            }
        }
        call
    }

    /// Sets a keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        let name = name.into();
        match serde_json::to_value(value) {
            Ok(v) => {
                self.kwargs.insert(name, v);
            }
            Err(e) => {
                self.error.get_or_insert_with(|| {
                    format!("keyword argument '{name}' cannot be serialized: {e}")
                });
            }
        }
        self
    }

    option_setters!(options);

    /// The task name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The call as a Celery signature, for `link`, chains and Python tools.
    pub fn signature(&self) -> Signature {
        self.options.to_signature(
            Signature::new(self.name.clone())
                .with_args(self.args.clone())
                .with_kwargs(self.kwargs.clone()),
            self.immutable,
        )
    }

    /// Makes the call immutable when used as a callback or chain step: the
    /// parent's result is not prepended to its args (Celery's `.si()`).
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// Sends the call and returns once the broker has confirmed it.
    pub async fn apply_async(self, app: &App) -> Result<AsyncResult<O>, Error> {
        // Boxed: sending's future is several kilobytes, which every caller's
        // own future would otherwise hold and move about.
        Box::pin(app.send_call(self)).await
    }
}

impl<O> From<TaskCall<O>> for Signature {
    fn from(call: TaskCall<O>) -> Signature {
        call.options.to_signature(
            Signature::new(call.name)
                .with_args(call.args)
                .with_kwargs(call.kwargs),
            call.immutable,
        )
    }
}

impl SendOptions {
    /// `signature` with these options in its `options`, named as Celery's
    /// `apply_async` names them.
    fn to_signature(&self, mut signature: Signature, immutable: bool) -> Signature {
        let mut set = |key: &str, value: Value| {
            signature.options.insert(key.to_owned(), value);
        };
        let text = |v: &Option<String>| v.clone().map(Value::String);
        for (key, value) in [
            ("task_id", text(&self.task_id)),
            ("queue", text(&self.queue)),
            ("exchange", text(&self.exchange)),
            ("routing_key", text(&self.routing_key)),
            ("shadow", text(&self.shadow)),
            ("priority", self.priority.map(Value::from)),
            (
                "countdown",
                self.countdown.map(|d| Value::from(d.as_secs_f64())),
            ),
            (
                "eta",
                self.eta
                    .map(|t| Value::String(celeriac_protocol::time::format_time(&t))),
            ),
            (
                "expires",
                self.expires_in
                    .map(|d| Value::from(d.as_secs_f64()))
                    .or_else(|| {
                        self.expires_at
                            .map(|t| Value::String(celeriac_protocol::time::format_time(&t)))
                    }),
            ),
            ("ignore_result", self.ignore_result.map(Value::Bool)),
            (
                "time_limit",
                self.time_limit.map(|d| Value::from(d.as_secs_f64())),
            ),
            (
                "soft_time_limit",
                self.soft_time_limit.map(|d| Value::from(d.as_secs_f64())),
            ),
        ] {
            if let Some(value) = value {
                set(key, value);
            }
        }
        if !self.headers.is_empty() {
            let headers = self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            set("headers", Value::Object(headers));
        }
        for link in &self.link {
            signature = signature.with_link(link.clone());
        }
        for errback in &self.link_error {
            signature = signature.with_link_error(errback.clone());
        }
        if immutable {
            signature = signature.immutable();
        }
        signature
    }
}

/// A call of a task by name (e.g. one defined in Python), from
/// [`App::send_task`].
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// let result = app.send_task("reports.build").args((42,)).kwargs(json!({"fmt": "pdf"})).apply().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SendTask {
    app: App,
    call: TaskCall<Value>,
}

impl SendTask {
    pub(crate) fn new(app: App, name: &str) -> SendTask {
        SendTask {
            app,
            call: TaskCall::new(name, Vec::new()),
        }
    }

    /// Sets the positional arguments: anything that serializes to a JSON
    /// array (a tuple, a `Vec`, `json!([...])`).
    pub fn args(mut self, args: impl Serialize) -> Self {
        match serde_json::to_value(args) {
            Ok(Value::Array(items)) => self.call.args = items,
            Ok(other) => {
                self.call.error = Some(format!(
                    "args must serialize to a JSON array (e.g. a tuple), got {other}"
                ));
            }
            Err(e) => self.call.error = Some(format!("args cannot be serialized: {e}")),
        }
        self
    }

    /// Sets the keyword arguments: anything that serializes to a JSON object.
    pub fn kwargs(mut self, kwargs: impl Serialize) -> Self {
        match serde_json::to_value(kwargs) {
            Ok(Value::Object(map)) => self.call.kwargs = map,
            Ok(other) => {
                self.call.error = Some(format!(
                    "kwargs must serialize to a JSON object, got {other}"
                ));
            }
            Err(e) => self.call.error = Some(format!("kwargs cannot be serialized: {e}")),
        }
        self
    }

    option_setters!(call.options);

    /// The call as a Celery signature.
    pub fn signature(&self) -> Signature {
        self.call.signature()
    }

    /// Sends the task and returns once the broker has confirmed it.
    pub async fn apply(self) -> Result<AsyncResult<Value>, Error> {
        // Boxed, as in `TaskCall::apply_async`.
        Box::pin(self.app.send_call(self.call)).await
    }
}
