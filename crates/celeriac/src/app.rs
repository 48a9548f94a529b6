//! The [`App`]: broker connection, task registry, routes, result backend.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use celeriac_broker::{
    Broker, BrokerConfig, Destination, Queue, QueueDefaults, QueueType, RouteOptions, Router,
};
use celeriac_protocol::event::LamportClock;
use celeriac_protocol::time::now;
use celeriac_protocol::trace::TRACEPARENT_HEADER;
use celeriac_protocol::{
    Compression, DecodeOptions, HeaderValue, RawMessage, Seconds, TaskMessage,
};
use serde::de::DeserializeOwned;

use crate::call::{SendTask, TaskCall};
use crate::metrics::SendMetrics;
use crate::registry::Registry;
use crate::result::{ResultBackend, ResultColumn, ResultSettings, open_backend};
use crate::topic::Topic;
use crate::unique::{self, UNIQUE_KEY_HEADER, UniqueLock};
use crate::{AsyncResult, Error, Security, Task, TaskOptions, request};

/// Environment variables read for the broker URL, in order.
pub const BROKER_URL_VARS: [&str; 2] = ["CELERIAC_BROKER_URL", "CELERY_BROKER_URL"];
/// Environment variables read for the result backend, in order.
pub const RESULT_BACKEND_VARS: [&str; 2] = ["CELERIAC_RESULT_BACKEND", "CELERY_RESULT_BACKEND"];

/// A Celeriac application: what producers send through and workers run.
/// Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    registry: Registry,
    router: Router,
    backend: Option<Arc<dyn ResultBackend>>,
    result_settings: ResultSettings,
    task_defaults: TaskOptions,
    compression: Option<Compression>,
    /// Message signing, if set up.
    security: Option<Security>,
    origin: String,
    /// The Lamport clock control messages and events carry.
    clock: Arc<LamportClock>,
    mailbox: crate::control::Mailbox,
    /// Send metrics, once [`App::metrics`] has turned them on.
    metrics: OnceLock<SendMetrics>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("broker", &self.inner.broker)
            .field("tasks", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Starts building an app.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// The registered tasks.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The broker connection.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// This app's send metrics (tasks sent by name and queue, send errors
    /// by reason, confirm latency, reconnects), turned on by the first
    /// call: call it at start-up, and serve
    /// [`render`](SendMetrics::render) from your HTTP server. A worker
    /// running this app serves them with its own on `--metrics-addr`.
    /// See [`crate::metrics`].
    pub fn metrics(&self) -> SendMetrics {
        let origin = &self.inner.origin;
        let hostname = origin.split_once('@').map_or(origin.as_str(), |(_, h)| h);
        self.metrics_with_hostname(hostname)
    }

    /// [`metrics`](Self::metrics), labelled `hostname=` this host name when
    /// this call turns them on (a worker passes its node name's host, so
    /// its `/metrics` has one `hostname` for its own series and these).
    pub fn metrics_with_hostname(&self, hostname: &str) -> SendMetrics {
        self.inner
            .metrics
            .get_or_init(|| {
                SendMetrics::new(
                    hostname,
                    self.inner.registry.names().map(str::to_owned),
                    self.inner.broker.clone(),
                )
            })
            .clone()
    }

    /// The send metrics if they are on (recording costs nothing otherwise).
    fn send_metrics(&self) -> Option<&SendMetrics> {
        self.inner.metrics.get()
    }

    /// The routes and queues.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The result backend, if one is configured.
    pub fn result_backend(&self) -> Option<&Arc<dyn ResultBackend>> {
        self.inner.backend.as_ref()
    }

    /// How results are kept (expiry, extended fields, key prefix).
    pub fn result_settings(&self) -> &ResultSettings {
        &self.inner.result_settings
    }

    /// A group saved with [`GroupResult::save`](crate::GroupResult::save)
    /// (by Rust or Python), by id; `None` if none is saved under it.
    pub async fn restore_group(
        &self,
        group_id: &str,
    ) -> Result<Option<crate::GroupResult>, crate::ResultError> {
        let backend = self
            .inner
            .backend
            .clone()
            .ok_or_else(|| crate::ResultError::NoBackend(group_id.to_owned()))?;
        crate::GroupResult::restore(backend, group_id).await
    }

    /// Message signing, if set up ([`AppBuilder::security`]).
    pub fn security(&self) -> Option<&Security> {
        self.inner.security.as_ref()
    }

    /// How this app decodes what it receives: signatures checked as
    /// [`security`](Self::security) says.
    pub fn decode_options(&self) -> DecodeOptions {
        self.security()
            .map_or_else(DecodeOptions::default, Security::decode_options)
    }

    /// The app-wide task defaults.
    pub fn task_defaults(&self) -> &TaskOptions {
        &self.inner.task_defaults
    }

    /// The options for task `name`: its own, then the app's defaults.
    pub fn task_options(&self, name: &str) -> TaskOptions {
        match self.inner.registry.get(name) {
            Some(task) => task.options().or(&self.inner.task_defaults),
            None => self.inner.task_defaults.clone(),
        }
    }

    /// Sends a task by name (for example one defined in Python).
    pub fn send_task(&self, name: &str) -> SendTask {
        SendTask::new(self.clone(), name)
    }

    /// A handle on the result of task `id`.
    pub fn async_result<T: DeserializeOwned>(&self, id: impl Into<String>) -> AsyncResult<T> {
        AsyncResult::new(id, self.inner.backend.clone())
    }

    /// The `origin` header of messages sent from this process
    /// (`gen<pid>@<host>`, as Python writes it).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The app's Lamport clock (§7.5), shared by its control messages and
    /// events.
    pub fn clock(&self) -> &Arc<LamportClock> {
        &self.inner.clock
    }

    pub(crate) fn mailbox(&self) -> &crate::control::Mailbox {
        &self.inner.mailbox
    }

    /// The topic exchange `name`, to publish events that every subscribing
    /// service's queue receives (durable fan-out; see [`Topic`]).
    ///
    /// ```no_run
    /// # async fn demo(app: &celeriac::App) -> Result<(), celeriac::Error> {
    /// use celeriac::TaskCall;
    /// use serde_json::{Value, json};
    ///
    /// let events = app.topic("events");
    /// let call = TaskCall::<Value>::new("events.order_created", vec![json!(42)]);
    /// events.publish("order.created", call).await?;
    /// # Ok(()) }
    /// ```
    pub fn topic(&self, name: impl Into<String>) -> Topic {
        Topic::new(self.clone(), celeriac_broker::Exchange::topic(name))
    }

    /// Closes the broker connection.
    pub async fn close(&self) {
        self.inner.broker.close().await;
    }

    pub(crate) async fn send_call<O: DeserializeOwned>(
        &self,
        call: TaskCall<O>,
    ) -> Result<AsyncResult<O>, Error> {
        let started = Instant::now();
        let name = self.send_metrics().map(|_| call.name.clone());
        let sent = async {
            let prepared = self.prepare_call(call)?;
            if let Some(holder) = self.ready_to_send(&prepared).await? {
                return Ok((holder, None));
            }
            if let Err(e) = self
                .inner
                .broker
                .send(&prepared.destination, &prepared.message)
                .await
            {
                self.release_unsent(&prepared).await;
                return Err(e.into());
            }
            Ok::<_, Error>((prepared.id, Some(prepared.destination)))
        }
        .await;
        if let (Some(metrics), Some(name)) = (self.send_metrics(), name) {
            match &sent {
                Ok((_, Some(destination))) => {
                    metrics.sent(&name, destination_queue(destination), started.elapsed());
                }
                Ok((_, None)) => {}
                Err(err) => metrics.failed(&name, err),
            }
        }
        let (id, _) = sent?;
        Ok(AsyncResult::new(id, self.inner.backend.clone()))
    }

    /// Sends many calls at once: messages are published back to back with
    /// their confirms pipelined (thousands in flight), which is several
    /// times faster than awaiting `apply_async` one by one.
    ///
    /// Returns once every message is confirmed by RabbitMQ and routed, with
    /// one [`AsyncResult`] per call, in order. On an error, calls before the
    /// failing one may have been sent.
    ///
    /// ```no_run
    /// # async fn demo(app: &celeriac::App) -> Result<(), celeriac::Error> {
    /// use celeriac::TaskCall;
    /// use serde_json::{Value, json};
    ///
    /// let calls = (0..1000).map(|i| TaskCall::<Value>::new("tasks.add", vec![json!(i), json!(1)]));
    /// let results = app.send_many(calls).await?;
    /// assert_eq!(results.len(), 1000);
    /// # Ok(()) }
    /// ```
    pub async fn send_many<O: DeserializeOwned>(
        &self,
        calls: impl IntoIterator<Item = TaskCall<O>>,
    ) -> Result<Vec<AsyncResult<O>>, Error> {
        let started = Instant::now();
        let metrics = self.send_metrics();
        let mut ids = Vec::new();
        let mut names = Vec::new();
        let mut batch = Vec::new();
        let mut claimed = Vec::new();
        for call in calls {
            let name = metrics.map(|_| call.name.clone());
            let prepared = match self.prepare_call(call) {
                Ok(prepared) => prepared,
                Err(err) => {
                    if let (Some(metrics), Some(name)) = (metrics, &name) {
                        metrics.failed(name, &err);
                    }
                    self.release_all_unsent(&claimed).await;
                    return Err(err);
                }
            };
            match self.ready_to_send(&prepared).await {
                Ok(None) => {}
                Ok(Some(holder)) => {
                    ids.push(holder);
                    continue;
                }
                Err(err) => {
                    if let (Some(metrics), Some(name)) = (metrics, &name) {
                        metrics.failed(name, &err);
                    }
                    self.release_all_unsent(&claimed).await;
                    return Err(err);
                }
            }
            let Prepared {
                id,
                destination,
                message,
                unique,
                ..
            } = prepared;
            if let Some(lock) = unique {
                claimed.push((lock, id.clone()));
            }
            ids.push(id);
            names.extend(name);
            batch.push((destination, message));
        }
        if let Err(err) = self.inner.broker.send_many(&batch).await {
            let err = Error::from(err);
            if let Some(metrics) = metrics {
                for name in &names {
                    metrics.failed(name, &err);
                }
            }
            self.release_all_unsent(&claimed).await;
            return Err(err);
        }
        if let Some(metrics) = metrics {
            let sent = names
                .iter()
                .zip(&batch)
                .map(|(name, (destination, _))| (name.as_str(), destination_queue(destination)));
            metrics.sent_batch(sent, started.elapsed());
        }
        Ok(ids
            .into_iter()
            .map(|id| AsyncResult::new(id, self.inner.backend.clone()))
            .collect())
    }

    /// Gets a prepared call ready to send: the result store ready for its
    /// result, then its unique lock taken if it has one. `None` to send
    /// it, or the id of the task already holding the lock.
    async fn ready_to_send(&self, prepared: &Prepared) -> Result<Option<String>, Error> {
        if let Some(store) = &prepared.store_to_ready {
            store.prepare(&prepared.id).await?;
        }
        match &prepared.unique {
            Some(lock) => unique::claim(self.inner.backend.as_ref(), lock, &prepared.id).await,
            None => Ok(None),
        }
    }

    /// Releases the unique lock of a call whose message was not sent.
    async fn release_unsent(&self, prepared: &Prepared) {
        if let Some(lock) = &prepared.unique {
            unique::release_unsent(self.inner.backend.as_ref(), lock, &prepared.id).await;
        }
    }

    /// Releases the unique locks (and their task ids) of calls whose
    /// messages were not sent.
    async fn release_all_unsent(&self, claimed: &[(UniqueLock, String)]) {
        for (lock, id) in claimed {
            unique::release_unsent(self.inner.backend.as_ref(), lock, id).await;
        }
    }

    /// The task id, destination, encoded message and unique lock of `call`.
    fn prepare_call<O>(&self, call: TaskCall<O>) -> Result<Prepared, Error> {
        if let Some(detail) = call.error {
            return Err(Error::Arguments {
                task: call.name,
                detail,
            });
        }
        let defaults = self.task_options(&call.name);
        let options = call.options;
        let id = options
            .task_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let sent_at = now();

        let unique = unique::lock_for(&call.name, &call.args, &call.kwargs, &options, &defaults)?;
        let mut message = TaskMessage::new(call.name.clone(), id.clone())
            .with_args(call.args)
            .with_kwargs(call.kwargs);
        let headers = &mut message.headers;
        headers.origin = Some(self.inner.origin.clone());
        let workflow = call.workflow;
        let current = request::current_shared();
        let trace = workflow
            .trace
            .or_else(|| current.as_ref().and_then(|r| r.trace));
        let parent = workflow
            .parent
            .or_else(|| current.map(|r| (r.id.clone(), r.root_id.clone())));
        if let Some((parent_id, root_id)) = parent {
            headers.root_id = Some(root_id.unwrap_or_else(|| parent_id.clone()));
            headers.parent_id = Some(parent_id);
        }
        if let Some((group, index)) = workflow.group {
            headers.group = Some(group);
            headers.group_index = index;
        }
        message.body.embed.chain = workflow.chain;
        message.body.embed.chord = workflow.chord.map(Box::new);
        headers.shadow = options.shadow;
        headers.extra = options.headers;
        if let Some(lock) = &unique {
            headers
                .extra
                .insert(UNIQUE_KEY_HEADER.into(), HeaderValue::Str(lock.key.clone()));
        }
        if !headers
            .extra
            .contains_key(celeriac_protocol::ENQUEUED_AT_HEADER)
        {
            headers.set_enqueued_at(sent_at);
        }
        if let Some(trace) = trace
            && !headers.extra.contains_key(TRACEPARENT_HEADER)
        {
            headers.extra.insert(
                TRACEPARENT_HEADER.into(),
                HeaderValue::Str(trace.traceparent()),
            );
        }
        headers.compression = self.inner.compression;
        headers.timelimit.hard = options.time_limit.or(defaults.time_limit).map(seconds);
        headers.timelimit.soft = options
            .soft_time_limit
            .or(defaults.soft_time_limit)
            .map(seconds);
        let ignore_result = options
            .ignore_result
            .or(defaults.ignore_result)
            .unwrap_or(false);
        headers.ignore_result = Some(ignore_result);
        if !options.link.is_empty() {
            message.body.embed.callbacks = Some(options.link);
        }
        if !options.link_error.is_empty() {
            message.body.embed.errbacks = Some(options.link_error);
        }
        if let Some(eta) = options.eta {
            message = message.with_eta(eta.fixed_offset());
        } else if let Some(countdown) = options.countdown {
            message = message.with_countdown(countdown, sent_at);
        }
        let expires = match (options.expires_at, options.expires_in.or(defaults.expires)) {
            (Some(at), _) => Some(at.fixed_offset()),
            (None, Some(delay)) => {
                Some(sent_at + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
            }
            (None, None) => None,
        };
        if let Some(expires) = expires {
            message = message.with_expires(expires, sent_at);
        }
        let priority = options.priority.or(defaults.priority);
        if let Some(p) = priority {
            message.properties.priority = Some(p);
        }

        if let Some(reply_to) = self.inner.backend.as_ref().and_then(|b| b.reply_to()) {
            // Callbacks report to us too, so their results can be read here
            // (Python applies a linked signature with its `reply_to` option).
            let linked = message
                .body
                .embed
                .callbacks
                .iter_mut()
                .chain(message.body.embed.errbacks.iter_mut());
            for signature in linked.flatten() {
                signature
                    .options
                    .entry("reply_to")
                    .or_insert_with(|| reply_to.into());
            }
        }
        let backend = self.inner.backend.clone().filter(|_| !ignore_result);
        let store_to_ready = if let Some(reply_to) = workflow.reply_to {
            // A signature names its own reply queue (its sender's).
            message.properties.reply_to = Some(reply_to);
            None
        } else if let Some(backend) = backend {
            message.properties.reply_to = backend.reply_to().map(str::to_owned);
            Some(backend)
        } else {
            None
        };
        let route = RouteOptions {
            queue: options.queue.or(defaults.queue),
            exchange: options.exchange,
            routing_key: options.routing_key,
            priority,
        };
        let destination = self.inner.router.resolve(&call.name, &route)?;
        Ok(Prepared {
            id,
            destination,
            message: message.into_signed(self.security().map(Security::signer))?,
            unique,
            store_to_ready,
        })
    }
}

/// A call ready to publish.
#[derive(Debug)]
struct Prepared {
    /// The task id.
    id: String,
    /// Where it goes.
    destination: Destination,
    /// The encoded message.
    message: RawMessage,
    /// The unique lock it must take first, if any.
    unique: Option<UniqueLock>,
    /// The result store to get ready for its result before it is sent
    /// ([`ResultBackend::prepare`]), if any.
    store_to_ready: Option<Arc<dyn ResultBackend>>,
}

/// Whole seconds as an int (as Python sends `time_limit=30`), else a float.
fn seconds(d: Duration) -> Seconds {
    if d.subsec_nanos() == 0 {
        Seconds::Int(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    } else {
        Seconds::Float(d.as_secs_f64())
    }
}

/// Builds an [`App`]. Settings not given in code come from the environment.
///
/// ```no_run
/// # async fn demo() -> Result<(), celeriac::Error> {
/// let app = celeriac::App::builder()
///     .broker_url("amqp://guest:guest@localhost:5672//")
///     .result_backend("rpc://")
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct AppBuilder {
    broker_url: Option<String>,
    broker_config: Option<BrokerConfig>,
    result_backend: Option<String>,
    result_settings: ResultSettings,
    default_queue: Option<Queue>,
    queues: Vec<Queue>,
    queue_defaults: QueueDefaults,
    create_missing_queues: Option<bool>,
    delay_queue_type: Option<QueueType>,
    routes: Vec<(String, RouteOptions)>,
    tasks: Vec<Arc<dyn Task>>,
    task_defaults: TaskOptions,
    compression: Option<Compression>,
    security: Option<Security>,
}

impl std::fmt::Debug for AppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field(
                "broker_url",
                &self.broker_url.as_deref().map(celeriac_broker::url::redact),
            )
            .field(
                "result_backend",
                &self
                    .result_backend
                    .as_deref()
                    .map(celeriac_broker::url::redact),
            )
            .field("queues", &self.queues.len())
            .field("routes", &self.routes.len())
            .field(
                "tasks",
                &self
                    .tasks
                    .iter()
                    .map(|t| t.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AppBuilder {
    /// The broker URL (`;`-separated for failover). Default: the
    /// `CELERIAC_BROKER_URL` or `CELERY_BROKER_URL` environment variable,
    /// else Celery's `amqp://guest:guest@localhost:5672//`.
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker_url = Some(url.into());
        self
    }

    /// Full broker settings (heartbeat, timeouts, dead-letter names, ...);
    /// wins over [`broker_url`](Self::broker_url).
    pub fn broker_config(mut self, config: BrokerConfig) -> Self {
        self.broker_config = Some(config);
        self
    }

    /// The result backend: `redis://host:6379/0` (also `rediss://`,
    /// `redis+socket://`, `sentinel://`, as Celery spells them) or `rpc://`;
    /// `disabled` for none. Default: `CELERIAC_RESULT_BACKEND` or
    /// `CELERY_RESULT_BACKEND`, else none (results are not stored, as in
    /// Celery).
    pub fn result_backend(mut self, url: impl Into<String>) -> Self {
        self.result_backend = Some(url.into());
        self
    }

    /// How long results are kept (Celery's `result_expires`, 1 day); zero
    /// keeps them until forgotten.
    pub fn result_expires(mut self, expires: Duration) -> Self {
        self.result_settings.expires = (!expires.is_zero()).then_some(expires);
        self
    }

    /// Whether results carry the task's name, args, kwargs, worker, retries
    /// and queue (Celery's `result_extended`). Default **true** (Celery's
    /// default is false).
    pub fn result_extended(mut self, extended: bool) -> Self {
        self.result_settings.extended = extended;
        self
    }

    /// How the database backend (`db+postgresql://`) writes the `result`
    /// column: [`ResultColumn::Json`] as Celery 5.7 and later (the default),
    /// or [`ResultColumn::Pickle`] when Python processes of Celery 5.0 to
    /// 5.6 share the tables, since they read only pickles there. Rows in
    /// either format are read whatever this says.
    pub fn database_result_column(mut self, column: ResultColumn) -> Self {
        self.result_settings.database_result_column = column;
        self
    }

    /// A prefix for every result store key (Celery's
    /// `result_backend_transport_options = {"global_keyprefix": ...}`).
    pub fn result_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.result_settings.key_prefix = Some(prefix.into());
        self
    }

    /// The default queue's name (Celery's `task_default_queue`, `celery`).
    pub fn default_queue(mut self, name: impl Into<String>) -> Self {
        self.default_queue = Some(Queue::celery_default(name));
        self
    }

    /// Declares a queue definition (an entry of Celery's `task_queues`):
    /// its exchange, binding and arguments (priorities, quorum, broker-native
    /// dead-lettering, TTLs). Producers and workers of this app declare it
    /// exactly so; configure the same on the Python side
    /// ([`Queue::python_declaration`] prints it).
    ///
    /// ```
    /// use celeriac::{Queue, QueueArguments, QueueType};
    /// let images = Queue::celery_default("images").with_arguments(QueueArguments {
    ///     queue_type: Some(QueueType::Quorum),
    ///     max_priority: Some(10),
    ///     ..QueueArguments::default()
    /// });
    /// let builder = celeriac::App::builder().queue(images);
    /// ```
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }

    /// `x-queue-type` of every queue that does not set its own (Celery's
    /// `task_default_queue_type`; default classic), and of beat's shared
    /// state slot.
    pub fn default_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_defaults.queue_type = Some(queue_type);
        self
    }

    /// `x-max-priority` of every queue that does not set its own (Celery's
    /// `task_queue_max_priority`; default none).
    pub fn queue_max_priority(mut self, max_priority: u8) -> Self {
        self.queue_defaults.max_priority = Some(max_priority);
        self
    }

    /// Whether sending to (or consuming) a queue that is not configured
    /// declares it with Celery's default shape (`true`, the default, as
    /// Celery's `task_create_missing_queues`) or is an error naming the
    /// queue (`false`).
    pub fn create_missing_queues(mut self, create: bool) -> Self {
        self.create_missing_queues = Some(create);
        self
    }

    /// `x-queue-type` of the delay queues that hold long ETAs and retries
    /// (Celery's `broker_native_delayed_delivery_queue_type`; default
    /// quorum).
    pub fn delay_queue_type(mut self, queue_type: QueueType) -> Self {
        self.delay_queue_type = Some(queue_type);
        self
    }

    /// Routes task names matching `pattern` (exact or glob, like
    /// `task_routes`).
    pub fn route(mut self, pattern: impl Into<String>, route: RouteOptions) -> Self {
        self.routes.push((pattern.into(), route));
        self
    }

    /// Adds routes tried before every route added so far, in the order
    /// given (the worker CLI puts its `--route` flags and config file's
    /// routes ahead of the program's own this way).
    pub fn routes_first(
        mut self,
        routes: impl IntoIterator<Item = (String, RouteOptions)>,
    ) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.append(&mut self.routes);
        self.routes = routes;
        self
    }

    /// Registers a task.
    pub fn task(mut self, task: impl Task) -> Self {
        self.tasks.push(Arc::new(task));
        self
    }

    /// App-wide task defaults (Celery's `task_*` settings: `max_retries`,
    /// `acks_late`, time limits, ...).
    pub fn task_defaults(mut self, defaults: TaskOptions) -> Self {
        self.task_defaults = defaults;
        self
    }

    /// Compresses task bodies (Celery's `task_compression`).
    pub fn task_compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// Signs every task message and `rpc://` result this app sends, and
    /// accepts only signed ones (Celery's `app.setup_security()`); see
    /// [`Security`].
    pub fn security(mut self, security: Security) -> Self {
        self.security = Some(security);
        self
    }

    /// Connects and builds the app.
    pub async fn build(self) -> Result<App, Error> {
        let mut broker_config = match self.broker_config {
            Some(config) => config,
            None => {
                let url = self
                    .broker_url
                    .or_else(|| env_first(&BROKER_URL_VARS))
                    .unwrap_or_else(|| celeriac_broker::url::DEFAULT_URL.to_owned());
                BrokerConfig::from_url(&url)?
            }
        };
        if let Some(queue_type) = self.delay_queue_type {
            broker_config.delay_queue_type = queue_type;
        }
        if let Some(queue_type) = self.queue_defaults.queue_type {
            broker_config.state_queue_type = queue_type;
            broker_config.dead_letter.queue_type = queue_type;
        }
        let mut router = Router::new(
            self.default_queue
                .unwrap_or_else(|| Queue::celery_default("celery")),
        )
        .queue_defaults(self.queue_defaults)
        .create_missing_queues(self.create_missing_queues.unwrap_or(true));
        for queue in self.queues {
            router = router.queue(queue);
        }
        for (pattern, route) in self.routes {
            router = router.route(&pattern, route)?;
        }
        let mut registry = Registry::default();
        for task in self.tasks {
            registry.register(task);
        }
        let broker = Broker::connect(broker_config).await?;
        let backend_url = self
            .result_backend
            .or_else(|| env_first(&RESULT_BACKEND_VARS));
        let backend = open_backend(
            backend_url.as_deref().unwrap_or(""),
            &broker,
            &self.result_settings,
            self.security.as_ref(),
        )?;
        let mut task_defaults = self.task_defaults;
        task_defaults.acks_late.get_or_insert(true);
        task_defaults.max_retries.get_or_insert(3);
        let clock = Arc::new(LamportClock::new());
        Ok(App {
            inner: Arc::new(Inner {
                mailbox: crate::control::Mailbox::new(
                    broker.clone(),
                    clock.clone(),
                    self.security.clone(),
                ),
                metrics: OnceLock::new(),
                clock,
                broker,
                registry,
                router,
                backend,
                result_settings: self.result_settings,
                task_defaults,
                compression: self.compression,
                security: self.security,
                origin: format!(
                    "gen{}@{}",
                    std::process::id(),
                    gethostname::gethostname().to_string_lossy()
                ),
            }),
        })
    }
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The queue a destination names, for the `queue_name` label: its queue,
/// else its routing key (what the default exchange routes by).
fn destination_queue(destination: &Destination) -> &str {
    destination
        .queue
        .as_ref()
        .map_or(&destination.routing_key, |queue| &queue.name)
}
