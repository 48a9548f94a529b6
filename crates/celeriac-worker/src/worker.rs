//! The worker loop: consume, hand each delivery to `handle`, and shut down
//! gracefully.
//!
//! Concurrency is a semaphore of `concurrency` permits held while a task
//! runs; deliveries waiting for a permit or an ETA hold no permit. Prefetch
//! (`concurrency × prefetch_multiplier`, per consumer) bounds what sits in
//! memory.
//!
//! Shutdown: consumers are cancelled (no new deliveries, channel kept open),
//! waiting deliveries are handed back unstarted, running tasks get
//! `shutdown_timeout` to finish and settle, then the consumer channel
//! closes. What is still unacked then goes back to the queue through the
//! broker. The app's connection stays open: producers in the same process
//! may share it ([`App::close`] closes it).

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use std::time::{Duration, Instant};

use celeriac::App;
use celeriac::broker::{ConsumeOptions, Queue};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::builtins;
use crate::burst::{self, Bursts};
use crate::context::Context;
use crate::control;
use crate::eta_holds::EtaHolds;
use crate::events::Events;
use crate::handle::handle;
use crate::isolation::Isolation;
use crate::limits::{Limits, Pool};
use crate::metrics::{self, Metrics, node_host};
use crate::outbox::Outbox;
use crate::rate_limits::RateLimits;
use crate::revoked::Revoked;
use crate::starts::Starts;
use crate::{Stats, Summary, WorkerConfig};

/// A worker over an [`App`]'s registered tasks.
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), celeriac_worker::WorkerError> {
/// use celeriac_worker::{Worker, WorkerConfig};
/// let config = WorkerConfig { queues: vec!["images".into()], concurrency: 32, ..WorkerConfig::default() };
/// let summary = Worker::new(app, config).run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    app: App,
    config: WorkerConfig,
    stats: Arc<Stats>,
    metrics: OnceLock<Metrics>,
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Consuming could not start (e.g. a queue declaration clash).
    #[error(transparent)]
    Broker(#[from] celeriac::broker::BrokerError),
    /// The app could not be built.
    #[error(transparent)]
    App(#[from] celeriac::Error),
    /// The configuration is invalid.
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

impl Worker {
    /// A worker for `app` with `config`.
    pub fn new(app: App, config: WorkerConfig) -> Worker {
        Worker {
            app,
            config,
            stats: Arc::default(),
            metrics: OnceLock::new(),
        }
    }

    /// The worker's Prometheus metrics, recorded from the start of
    /// [`run_until`](Self::run_until) on; serve [`Metrics::render`] from
    /// your own HTTP server, or set `metrics_addr` for the worker's own
    /// listener. Without either, the worker records no metrics.
    pub fn metrics(&self) -> Metrics {
        self.metrics
            .get_or_init(|| {
                Metrics::new(
                    &self.config.hostname,
                    self.app.registry().names().map(str::to_owned),
                    &self
                        .app
                        .metrics_with_hostname(node_host(&self.config.hostname)),
                )
            })
            .clone()
    }

    /// Live outcome counts (also returned when the worker stops).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Summary, WorkerError> {
        if self.config.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1".into()));
        }
        let metrics = if self.config.metrics_addr.is_some() {
            self.metrics()
        } else {
            self.metrics
                .get()
                .cloned()
                .unwrap_or_else(Metrics::disabled)
        };
        let listener = match self.config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                WorkerError::Config(format!(
                    "cannot listen on metrics_addr {addr}: {e}; choose a free port or another address"
                ))
            })?),
            None => None,
        };
        let rates = RateLimits::configured(&self.app, &self.config.rate_limits)
            .map_err(WorkerError::Config)?;
        results_readable_by_id(&self.app)?;
        global_limits_can_be_kept(&self.app, &self.config)?;
        let queues: Vec<Queue> = self
            .config
            .queues
            .iter()
            .map(|name| self.app.router().queue_named(name))
            .collect::<Result<_, _>>()
            .map_err(celeriac::Error::from)?;
        let mut consumer = self
            .app
            .broker()
            .consume_with(
                ConsumeOptions {
                    queues,
                    prefetch: self.config.prefetch(),
                },
                self.config.ack_policy(),
            )
            .await?;
        let (revoked, clock) =
            Revoked::open(self.config.statedb.clone()).map_err(WorkerError::Config)?;
        self.app.clock().adjust(clock);
        let (bursts, burst_requests) = Bursts::new(self.config.prefetch());
        let tasks = builtins::with_builtins(&self.app);
        let ctx = Arc::new(Context {
            pool: Pool::new(self.config.concurrency),
            shutdown: CancellationToken::new(),
            stop: CancellationToken::new(),
            outbox: Outbox::new(
                self.app.clone(),
                self.config.result_store_timeout,
                metrics.clone(),
            ),
            stats: self.stats.clone(),
            consumer: consumer.handle(),
            tracker: Arc::default(),
            revoked,
            events: Arc::new(Events::new(
                self.app.clone(),
                &self.config.hostname,
                self.config.task_events,
                self.config.heartbeat,
            )),
            eta_holds: EtaHolds::new(self.config.eta_holds()),
            bursts,
            limits: Limits::default(),
            rates,
            global_starts: Starts::default(),
            started: Instant::now(),
            metrics: metrics.clone(),
            loop_turned: AtomicU64::new(0),
            isolation: Isolation::default(),
            task_options: Context::resolve_task_options(&self.app, &tasks),
            tasks,
            decode: self.app.decode_options(),
            app: self.app.clone(),
            config: self.config.clone(),
        });
        metrics.watch(&ctx);
        let services = Services::start(&ctx, burst_requests, listener).await?;
        info!(
            hostname = %self.config.hostname,
            queues = ?self.config.queues,
            concurrency = self.config.concurrency,
            prefetch = self.config.prefetch(),
            task_events = self.config.task_events,
            remote_control = self.config.remote_control,
            metrics_addr = ?self.config.metrics_addr,
            tasks = ?self.app.registry().names().collect::<Vec<_>>(),
            "worker ready"
        );

        let mut running = JoinSet::new();
        let mut turns = tokio::time::interval(LOOP_TICK);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = turns.tick() => ctx.loop_turns(),
                () = ctx.stop.cancelled() => break,
                delivery = consumer.next() => match delivery {
                    Some(delivery) => {
                        running.spawn(handle(ctx.clone(), delivery));
                        // Free finished tasks now: reaping one per turn of
                        // this loop lets them pile up (each holds its
                        // message) whenever deliveries win the select.
                        while running.try_join_next().is_some() {}
                    }
                    None => {
                        warn!("the consumer ended (broker handle closed)");
                        break;
                    }
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }

        info!(
            running = running.len(),
            "shutting down: no new tasks; waiting for running ones"
        );
        consumer.cancel().await;
        ctx.shutdown.cancel();
        while let Some(delivery) = consumer.try_next() {
            running.spawn(handle(ctx.clone(), delivery));
        }
        let drained = tokio::time::timeout(self.config.shutdown_timeout, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                unfinished = running.len(),
                timeout = ?self.config.shutdown_timeout,
                "tasks still running at the shutdown timeout; their messages go back to the queue"
            );
            running.abort_all();
        }
        consumer.flush_acks().await;
        consumer.stop();
        services.stop(&ctx).await;
        let summary = self.stats.summary();
        info!(?summary, "worker stopped");
        Ok(summary)
    }
}

/// How often the worker loop marks itself alive (for `/healthz`).
const LOOP_TICK: Duration = Duration::from_secs(1);

/// How often the state db is written while it changes.
const STATEDB_SYNC: Duration = Duration::from_secs(1);

/// What runs beside the task loop: the metrics listener, remote control,
/// events and the state db's writer, stopped after the tasks.
struct Services {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Services {
    /// Serves the metrics and probes, subscribes to the control queue,
    /// mingles, starts the event dispatcher and the state db's writer,
    /// readies the delay topology and runs burst consumers when asked.
    async fn start(
        ctx: &Arc<Context>,
        burst_requests: mpsc::Receiver<String>,
        metrics_listener: Option<TcpListener>,
    ) -> Result<Services, WorkerError> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(listener) = metrics_listener {
            let metrics = ctx.metrics.clone();
            tasks.push(metrics::serve(listener, metrics, ctx, stop.clone()));
        }
        if ctx.config.remote_control
            && let Some(pidbox) = control::subscribe(ctx).await?
        {
            if ctx.config.mingle {
                control::mingle(ctx).await;
            }
            tasks.push(tokio::spawn(control::serve(
                ctx.clone(),
                pidbox,
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(
            ctx.events.clone().run(ctx.tracker.clone(), stop.clone()),
        ));
        tasks.push(tokio::spawn(prepare_delayed_delivery(
            ctx.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(burst::serve(ctx.clone(), burst_requests)));
        if ctx.revoked.persistent() {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(STATEDB_SYNC);
                while !stop.is_cancelled() {
                    tokio::select! {
                        _ = every.tick() => save_statedb(&ctx),
                        () = stop.cancelled() => {}
                    }
                }
            }));
        }
        Ok(Services { stop, tasks })
    }

    /// Stops them (sending `worker-offline`) and writes the state db.
    async fn stop(self, ctx: &Context) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        save_statedb(ctx);
    }
}

/// Declares the delay topology and binds the consumed queues to it, so
/// the first ETA task moved out or retry with backoff does not wait for
/// the broker to declare 28 levels. A failure is only logged: the first
/// delayed publish tries again.
async fn prepare_delayed_delivery(ctx: Arc<Context>, stop: CancellationToken) {
    let broker = ctx.app.broker();
    for queue in &ctx.config.queues {
        tokio::select! {
            prepared = broker.prepare_delayed_delivery(queue) => {
                if let Err(e) = prepared {
                    debug!(error = %e, "could not declare the delay topology yet");
                    return;
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

fn save_statedb(ctx: &Context) {
    if let Err(e) = ctx.revoked.save_if_changed(ctx.app.clock().value()) {
        warn!(error = %e, "could not save the state db");
    }
}

/// Tasks with `global_concurrency` keep leases in the app's backend, and
/// count them by a parameter they have.
fn global_limits_can_be_kept(app: &App, config: &WorkerConfig) -> Result<(), WorkerError> {
    let keeps_leases = app
        .result_backend()
        .is_some_and(|backend| backend.leases().is_some());
    for name in app.registry().names() {
        let options = app.task_options(name);
        global_rate_can_be_kept(app, config, name, &options)?;
        if options.global_concurrency.is_none() {
            continue;
        }
        if !keeps_leases {
            return Err(WorkerError::Config(format!(
                "task {name} has global_concurrency, whose leases are kept in the result \
                 store: give the app a Redis result backend (redis://)"
            )));
        }
        if config.global_lease < Duration::from_secs(1) {
            return Err(WorkerError::Config(
                "global_lease must be at least a second: leases are renewed every third of it"
                    .into(),
            ));
        }
        let parameters = app
            .registry()
            .get(name)
            .map(|t| t.parameters())
            .unwrap_or_default();
        if let Some(key) = &options.limit_key
            && !parameters.is_empty()
            && !parameters.contains(&key.as_str())
        {
            return Err(WorkerError::Config(format!(
                "task {name} counts its global limit by limit_key {key:?}, which is not one \
                 of its parameters ({})",
                parameters.join(", ")
            )));
        }
    }
    Ok(())
}

/// A task with `global_rate_limit` keeps its schedule in the app's
/// backend, has a readable rate, and no per-worker rate as well.
fn global_rate_can_be_kept(
    app: &App,
    config: &WorkerConfig,
    name: &str,
    options: &celeriac::TaskOptions,
) -> Result<(), WorkerError> {
    let Some(rate) = &options.global_rate_limit else {
        return Ok(());
    };
    let keeps_schedules = app
        .result_backend()
        .is_some_and(|backend| backend.slots().is_some());
    if !keeps_schedules {
        return Err(WorkerError::Config(format!(
            "task {name} has global_rate_limit, whose schedule is kept in the result store: \
             give the app a Redis result backend (redis://)"
        )));
    }
    crate::rate_limits::parse_rate(rate)
        .map_err(|why| WorkerError::Config(format!("task {name}: global_rate_limit: {why}")))?;
    if options.rate_limit.is_some() || config.rate_limits.contains_key(name) {
        return Err(WorkerError::Config(format!(
            "task {name} has both a global_rate_limit and a per-worker rate_limit: keep one"
        )));
    }
    Ok(())
}

/// Tasks with `skip_succeeded` read their id's result before running: the
/// app's backend must keep results by id.
fn results_readable_by_id(app: &App) -> Result<(), WorkerError> {
    let readable = app
        .result_backend()
        .is_some_and(|backend| backend.keeps_results_by_id());
    if readable {
        return Ok(());
    }
    let backend = app
        .result_backend()
        .map_or_else(|| "no result backend".to_owned(), |b| b.url());
    match app
        .registry()
        .names()
        .find(|name| app.task_options(name).skip_succeeded == Some(true))
    {
        Some(name) => Err(WorkerError::Config(format!(
            "task {name} has skip_succeeded, which reads each task id's result before \
             running it, but the app has {backend}: give it a result backend that keeps \
             results by id (redis://)"
        ))),
        None => Ok(()),
    }
}
