//! The scenarios, each measuring Celeriac and its baselines interleaved.

// The raw-lapin baselines: the one place outside celeriac-broker that
// uses lapin (see clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::Context as _;
use celeriac_broker::{Broker, BrokerConfig, Queue};
use celeriac_protocol::RawMessage;

use crate::beat;
use crate::checks::checks;
use crate::library::{self, InProcessWorker, WorkerShape};
use crate::measure::{self};
use crate::memory::{MemoryReport, WorkerProcess};
use crate::plan::{Scenario, Sizes, task_message};
use crate::python::PythonCelery;
use crate::raw::{self, RawAck};
use crate::report::{BeatRow, EtaRow, LatencyRow, Percentiles, Results, Throughput};
use crate::spans::SpanSwitch;

mod eta;
mod payload;
mod scratch_db;

pub(crate) use payload::{PayloadPeak, scenario_name};
mod stores;

/// Transmit window of the raw publisher, and of the backlog fills.
const FILL_WINDOW: usize = 5_000;
/// The most message bytes a backlog fill keeps unconfirmed at once.
const FILL_BYTES_IN_FLIGHT: usize = 64 << 20;
/// Raw consumers ack every this many deliveries in the multi-ack baseline,
/// the same as the worker's default `ack_batch`, and like the worker's at
/// most half the prefetch window (a consumer waiting for more deliveries
/// than its window before acking would wait forever).
const MULTI_ACK_EVERY: u64 = 32;

/// One benchmark run: its connections, queues and collected results.
/// Where the result-store scenarios keep results.
#[derive(Debug, Clone)]
pub(crate) struct ResultStores {
    /// The Redis the `redis` scenario writes to.
    pub(crate) redis: String,
    /// The PostgreSQL server (a `postgresql://` URL) the `postgres`
    /// scenario creates its scratch database on.
    pub(crate) postgres: String,
}

pub(crate) struct Bench {
    url: String,
    broker: Broker,
    raw: lapin::Connection,
    python: Option<PythonCelery>,
    sizes: Sizes,
    concurrency: usize,
    queues: Vec<String>,
    throughput: Vec<Throughput>,
    latency: Vec<LatencyRow>,
    memory: Option<MemoryReport>,
    beat: Vec<BeatRow>,
    eta: Vec<EtaRow>,
    /// A worker process's peak memory through the largest payloads.
    payload_peak: Option<PayloadPeak>,
    /// The Redis the `redis` scenario stores results in.
    redis: String,
    /// The PostgreSQL server the `postgres` scenario makes its database on.
    postgres: String,
    /// Records the worker's per-task spans during one drain variant.
    spans: SpanSwitch,
}

impl Bench {
    /// Connects to the broker at `url`.
    pub(crate) async fn connect(
        url: &str,
        sizes: Sizes,
        concurrency: usize,
        python: Option<PythonCelery>,
        stores: &ResultStores,
    ) -> anyhow::Result<Bench> {
        let config = BrokerConfig::from_url(url).context("the broker URL")?;
        let broker = Broker::connect(config)
            .await
            .with_context(|| format!("connecting to {url}: is RabbitMQ running?"))?;
        Ok(Bench {
            url: url.to_owned(),
            raw: raw::connect(url).await?,
            broker,
            python,
            sizes,
            concurrency: concurrency.max(1),
            queues: Vec::new(),
            throughput: Vec::new(),
            latency: Vec::new(),
            memory: None,
            beat: Vec::new(),
            eta: Vec::new(),
            payload_peak: None,
            redis: stores.redis.clone(),
            postgres: stores.postgres.clone(),
            spans: SpanSwitch::install(),
        })
    }

    /// Runs the `selected` scenarios (all if empty). Latency needs the
    /// round-trip rate, so selecting it runs the round trips too.
    pub(crate) async fn run(&mut self, selected: &[Scenario]) -> anyhow::Result<()> {
        let wants = |s: Scenario| selected.is_empty() || selected.contains(&s);
        if wants(Scenario::Publish) {
            self.publish().await?;
        }
        if wants(Scenario::Drain) {
            self.drain().await?;
        }
        if wants(Scenario::Memory) {
            self.memory().await?;
        }
        if wants(Scenario::Results) || wants(Scenario::Latency) {
            let round_trip_rate = self.round_trips().await?;
            if wants(Scenario::Latency) {
                self.latencies(round_trip_rate).await?;
            }
        }
        if wants(Scenario::Beat) {
            self.beat().await?;
        }
        if wants(Scenario::Redis) {
            self.redis().await?;
        }
        if wants(Scenario::Postgres) {
            self.postgres().await?;
        }
        if wants(Scenario::Eta) {
            self.eta().await?;
        }
        if wants(Scenario::Payload) {
            self.payload().await?;
        }
        Ok(())
    }

    /// Deletes the benchmark's queues.
    pub(crate) async fn clean_up(&self) {
        for queue in &self.queues {
            if let Err(e) = self.broker.delete_queue(queue).await {
                eprintln!("warning: could not delete benchmark queue {queue}: {e}");
            }
        }
    }

    /// The collected results and the targets they are checked against.
    pub(crate) fn into_results(self) -> Results {
        let checks = checks(
            &self.throughput,
            &self.latency,
            self.memory.as_ref(),
            &self.eta,
            &self.sizes.payload_bytes,
        );
        Results {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            worker_concurrency: self.concurrency,
            prefetch: self.prefetch(),
            sizes: self.sizes,
            python: self.python.is_some(),
            peak_rss_kib: measure::own_memory_kib("VmHWM"),
            throughput: self.throughput,
            latency: self.latency,
            memory: self.memory,
            beat: self.beat,
            eta: self.eta,
            payload_peak: self.payload_peak,
            checks,
        }
    }

    fn prefetch(&self) -> u16 {
        u16::try_from(self.concurrency * 4).unwrap_or(u16::MAX)
    }

    /// How many deliveries the raw multi-ack consumers ack at once: at
    /// most half the prefetch window, as the worker's batch is.
    fn multi_ack_every(&self) -> u64 {
        MULTI_ACK_EVERY.min(u64::from(self.prefetch() / 2)).max(1)
    }

    /// A fresh, empty queue with Celery's default arguments.
    async fn queue(&mut self, scenario: &str) -> anyhow::Result<String> {
        let name = format!("celeriac-bench.{}.{scenario}", std::process::id());
        self.broker
            .declare(&Queue::celery_default(name.clone()))
            .await?;
        self.broker.purge_queue(&name).await?;
        self.queues.push(name.clone());
        Ok(name)
    }

    fn record(
        &mut self,
        scenario: &str,
        variant: &str,
        messages: u64,
        seconds: f64,
        cpu: Option<Duration>,
    ) {
        let rate = messages as f64 / seconds;
        let cpu_us = cpu.map(|c| c.as_secs_f64() * 1e6 / messages as f64);
        match self
            .throughput
            .iter_mut()
            .find(|t| t.scenario == scenario && t.variant == variant)
        {
            Some(row) => row.add(rate, cpu_us),
            None => {
                let mut row = Throughput::new(scenario, variant, messages);
                row.add(rate, cpu_us);
                self.throughput.push(row);
            }
        }
    }

    /// Scenario 1: publishing with confirms.
    async fn publish(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("publish").await?;
        let app = library::producer(&self.url, &queue, None).await?;
        let message = task_message("demo.add")?;
        let n = self.sizes.messages;
        for round in 1..=self.sizes.rounds {
            eprintln!("publish: round {round}/{}", self.sizes.rounds);
            for window in [1_000, FILL_WINDOW] {
                let cpu = measure::own_cpu();
                let took = raw::publish(&self.raw, &queue, &message, n, window).await?;
                let cpu = measure::own_cpu().saturating_sub(cpu);
                self.record(
                    "publish",
                    &format!("raw lapin, {window} in flight"),
                    n,
                    took.as_secs_f64(),
                    Some(cpu),
                );
                self.broker.purge_queue(&queue).await?;
            }
            let cpu = measure::own_cpu();
            let took = library::publish(&app, n, 1_000).await?;
            let cpu = measure::own_cpu().saturating_sub(cpu);
            self.record(
                "publish",
                "celeriac apply(), 1000 callers",
                n,
                took.as_secs_f64(),
                Some(cpu),
            );
            self.broker.purge_queue(&queue).await?;
            let cpu = measure::own_cpu();
            let took = library::send_many(&app, n).await?;
            let cpu = measure::own_cpu().saturating_sub(cpu);
            self.record(
                "publish",
                "celeriac send_many()",
                n,
                took.as_secs_f64(),
                Some(cpu),
            );
            self.broker.purge_queue(&queue).await?;
            if let Some(python) = self.python.clone() {
                let n = self.sizes.python_messages;
                let took = python.publish(&self.url, &queue, n).await?;
                self.record(
                    "publish",
                    "python send_task loop",
                    n,
                    took.as_secs_f64(),
                    None,
                );
                self.broker.purge_queue(&queue).await?;
            }
        }
        app.close().await;
        Ok(())
    }

    /// Fills `queue` with `count` copies of a `task` message.
    async fn fill(&self, queue: &str, task: &str, count: u64) -> anyhow::Result<()> {
        self.fill_with(queue, &task_message(task)?, count).await
    }

    /// Fills `queue` with `count` copies of `message`, keeping at most
    /// [`FILL_WINDOW`] messages and [`FILL_BYTES_IN_FLIGHT`] bytes
    /// unconfirmed.
    async fn fill_with(&self, queue: &str, message: &RawMessage, count: u64) -> anyhow::Result<()> {
        self.broker.purge_queue(queue).await?;
        let window = (FILL_BYTES_IN_FLIGHT / message.body.len().max(1)).clamp(1, FILL_WINDOW);
        raw::publish(&self.raw, queue, message, count, window).await?;
        Ok(())
    }

    /// Scenario 2: draining a backlog of no-op tasks.
    async fn drain(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("drain").await?;
        let n = self.sizes.messages;
        let prefetch = self.prefetch();
        let multi_ack_every = self.multi_ack_every();
        for round in 1..=self.sizes.rounds {
            eprintln!("drain: round {round}/{}", self.sizes.rounds);
            for (variant, ack) in [
                ("raw lapin, ack each".to_owned(), RawAck::EachMessage),
                (
                    "raw lapin, ack each, pipelined".to_owned(),
                    RawAck::EachPipelined,
                ),
                (
                    format!("raw lapin, multi-ack every {multi_ack_every}"),
                    RawAck::Every(multi_ack_every),
                ),
            ] {
                self.fill(&queue, "demo.add", n).await?;
                let cpu = measure::own_cpu();
                let took = raw::drain(&self.raw, &queue, n, prefetch, ack).await?;
                let cpu = measure::own_cpu().saturating_sub(cpu);
                self.record("drain", &variant, n, took.as_secs_f64(), Some(cpu));
            }
            for (variant, ack_batch, task_events, metrics, spans) in [
                ("celeriac worker, ack_batch 32", 32, false, false, false),
                (
                    "celeriac worker, ack_batch 32, task events",
                    32,
                    true,
                    false,
                    false,
                ),
                (
                    "celeriac worker, ack_batch 32, metrics",
                    32,
                    false,
                    true,
                    false,
                ),
                (
                    "celeriac worker, ack_batch 32, task spans",
                    32,
                    false,
                    false,
                    true,
                ),
                ("celeriac worker, ack_batch 1", 1, false, false, false),
            ] {
                let shape = WorkerShape {
                    ack_batch,
                    task_events,
                    metrics,
                    ..WorkerShape::plain(self.concurrency)
                };
                self.spans.record(spans);
                let drained = self.worker_drain(&queue, shape).await;
                self.spans.record(false);
                let (took, cpu) = drained?;
                self.record("drain", variant, n, took.as_secs_f64(), Some(cpu));
            }
            self.python_drain(&queue, "drain", None).await?;
        }
        self.broker.purge_queue(&queue).await?;
        Ok(())
    }

    /// Fills `queue` with `sizes.messages` no-op tasks and drains them with
    /// an in-process worker of `shape`; returns the time from the worker's
    /// start to the last success, and the process CPU used meanwhile.
    async fn worker_drain(
        &self,
        queue: &str,
        shape: WorkerShape,
    ) -> anyhow::Result<(Duration, Duration)> {
        let n = self.sizes.messages;
        self.fill(queue, "demo.add", n).await?;
        self.drain_filled(queue, shape, n).await
    }

    /// Fills `queue` with `n` copies of `message` and drains them with an
    /// in-process worker of `shape`, as [`worker_drain`](Self::worker_drain).
    async fn worker_drain_of(
        &self,
        queue: &str,
        shape: WorkerShape,
        message: &RawMessage,
        n: u64,
    ) -> anyhow::Result<(Duration, Duration)> {
        self.fill_with(queue, message, n).await?;
        self.drain_filled(queue, shape, n).await
    }

    /// Drains the `n` tasks in `queue` with an in-process worker of
    /// `shape`; the time from its start to the last success, and the
    /// process CPU used meanwhile.
    async fn drain_filled(
        &self,
        queue: &str,
        shape: WorkerShape,
        n: u64,
    ) -> anyhow::Result<(Duration, Duration)> {
        let cpu = measure::own_cpu();
        let start = std::time::Instant::now();
        let worker = InProcessWorker::start(&self.url, queue, shape).await?;
        worker.wait_for_successes(n).await?;
        let took = start.elapsed();
        let cpu = measure::own_cpu().saturating_sub(cpu);
        worker.stop().await?;
        Ok((took, cpu))
    }

    /// If the Python baselines are on: fills `queue` with Python no-op tasks
    /// and drains them with a prefork worker (one process a core) storing
    /// results in `backend` (a store's name and URL; none if `None`);
    /// records the rate in `scenario`.
    async fn python_drain(
        &mut self,
        queue: &str,
        scenario: &str,
        backend: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let n = self.sizes.python_messages;
        let message = task_message("interop.add")?;
        self.python_drain_of(queue, scenario, backend, &message, n)
            .await
    }

    /// As [`python_drain`](Self::python_drain), on `n` copies of `message`.
    async fn python_drain_of(
        &mut self,
        queue: &str,
        scenario: &str,
        backend: Option<(&str, &str)>,
        message: &RawMessage,
        n: u64,
    ) -> anyhow::Result<()> {
        let Some(python) = self.python.clone() else {
            return Ok(());
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        self.fill_with(queue, message, n).await?;
        let (took, cpu) = python
            .drain(
                &self.broker,
                &self.url,
                queue,
                n,
                cores,
                backend.map(|b| b.1),
            )
            .await?;
        let with = match backend {
            Some((store, _)) => format!(", {store} results"),
            None => String::new(),
        };
        self.record(
            scenario,
            &format!("python celery prefork -c {cores}{with}"),
            n,
            took.as_secs_f64(),
            Some(cpu),
        );
        Ok(())
    }

    /// Scenario 5: a worker process's memory.
    async fn memory(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("memory").await?;
        let concurrency = self.concurrency;
        eprintln!("memory: idle worker");
        let idle = WorkerProcess::start(&self.broker, &self.url, &queue, concurrency).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss_kib = idle.memory_kib("VmRSS")?;
        idle.stop().await;

        let backlog = self.sizes.memory_backlog;
        eprintln!("memory: {backlog}-task backlog");
        self.fill(&queue, "demo.add", backlog).await?;
        let mut worker = WorkerProcess::start(&self.broker, &self.url, &queue, concurrency).await?;
        worker.wait_drained(&self.broker, &queue).await?;
        let backlog_peak_kib = worker.memory_kib("VmHWM")?;
        let mut rss_after_chunks_kib = vec![worker.memory_kib("VmRSS")?];
        let message = task_message("demo.add")?;
        let mut total = backlog;
        while total < self.sizes.memory_total {
            let chunk = backlog.min(self.sizes.memory_total - total);
            raw::publish(&self.raw, &queue, &message, chunk, FILL_WINDOW).await?;
            worker.wait_drained(&self.broker, &queue).await?;
            total += chunk;
            rss_after_chunks_kib.push(worker.memory_kib("VmRSS")?);
            eprintln!("memory: {total} tasks");
        }
        worker.stop().await;
        self.memory = Some(MemoryReport {
            concurrency,
            idle_rss_kib,
            backlog,
            backlog_peak_kib,
            rss_after_chunks_kib,
            total_tasks: total,
        });
        Ok(())
    }

    /// A producer and an in-process worker on `queue`, both with results in
    /// `backend` (the worker acks as by default).
    async fn producer_and_worker_with_results(
        &self,
        queue: &str,
        backend: &str,
    ) -> anyhow::Result<(celeriac::App, InProcessWorker)> {
        let app = library::producer(&self.url, queue, Some(backend)).await?;
        let shape = WorkerShape {
            results: Some(backend.to_owned()),
            ..WorkerShape::plain(self.concurrency)
        };
        let worker = InProcessWorker::start(&self.url, queue, shape).await?;
        Ok((app, worker))
    }

    /// Scenario 3: send and read back the result, `concurrency` callers.
    /// Returns the median rate.
    async fn round_trips(&mut self) -> anyhow::Result<f64> {
        let queue = self.queue("results").await?;
        let (app, worker) = self
            .producer_and_worker_with_results(&queue, "rpc://")
            .await?;
        let n = self.sizes.round_trips;
        let callers = self.concurrency as u64;
        let variant = format!("celeriac, rpc:// results, {callers} callers");
        let raw_variant = format!("raw lapin request/reply, {callers} callers");
        // The same request bytes, and a reply the size of the worker's
        // result document.
        let request = task_message("demo.add")?;
        let reply = serde_json::to_vec(&serde_json::json!({
            "status": "SUCCESS", "result": 3, "traceback": null, "children": [],
            "date_done": "2026-12-07T00:00:00.000000+00:00",
            "task_id": "4f3c1a2e-9b7d-4c6a-8e5f-1d2b3c4d5e6f",
        }))?;
        let raw_queue = self.queue("results-raw").await?;
        for round in 1..=self.sizes.rounds {
            eprintln!("results: round {round}/{}", self.sizes.rounds);
            let cpu = measure::own_cpu();
            let took = raw::round_trips(
                &self.raw,
                &raw_queue,
                &request,
                &reply,
                n,
                callers,
                self.prefetch(),
            )
            .await?;
            let cpu = measure::own_cpu().saturating_sub(cpu);
            self.record("results", &raw_variant, n, took.as_secs_f64(), Some(cpu));

            let cpu = measure::own_cpu();
            let took = library::round_trips(&app, n, callers).await?;
            let cpu = measure::own_cpu().saturating_sub(cpu);
            self.record("results", &variant, n, took.as_secs_f64(), Some(cpu));
        }
        worker.stop().await?;
        app.close().await;
        Ok(self
            .throughput
            .iter()
            .find(|t| t.variant == variant)
            .map_or(100.0, |t| t.median_per_s))
    }

    /// Scenario 4: latency at a trickle and at half the round-trip rate.
    async fn latencies(&mut self, round_trip_rate: f64) -> anyhow::Result<()> {
        let queue = self.queue("latency").await?;
        let (app, worker) = self
            .producer_and_worker_with_results(&queue, "rpc://")
            .await?;
        // Warm up the connections and the reply queue.
        library::latencies(&app, 10, 100.0).await?;
        let loaded_rate = (round_trip_rate / 2.0).max(1.0);
        let loaded_count = (loaded_rate * self.sizes.loaded_seconds).ceil() as u64;
        for (label, rate, count) in [
            ("trickle, 10 tasks/s".to_owned(), 10.0, self.sizes.trickle),
            (
                format!("50% of the round-trip rate, {loaded_rate:.0} tasks/s"),
                loaded_rate,
                loaded_count,
            ),
        ] {
            eprintln!("latency: {label}");
            let samples = library::latencies(&app, count, rate).await?;
            let start: Vec<f64> = samples.iter().map(|l| l.to_start).collect();
            let result: Vec<f64> = samples.iter().map(|l| l.to_result).collect();
            self.latency.push(LatencyRow {
                load: label,
                rate_per_s: rate,
                tasks: count,
                enqueue_to_start_ms: Percentiles::of(&start),
                enqueue_to_result_ms: Percentiles::of(&result),
            });
        }
        worker.stop().await?;
        app.close().await;
        Ok(())
    }

    /// Scenario 6: many every-second entries; how late each send reaches a
    /// consumer after its due time, from the beat and from raw lapin.
    async fn beat(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("beat").await?;
        let (entries, sends) = (self.sizes.beat_entries, self.sizes.beat_sends);
        let mut raw_samples = Vec::new();
        let mut beat_samples = Vec::new();
        for round in 1..=self.sizes.rounds {
            eprintln!(
                "beat: round {round}/{}, {entries} sends a second, {sends} sends",
                self.sizes.rounds
            );
            raw_samples.extend(
                beat::raw_lateness_ms(&self.raw, &self.broker, &queue, entries, sends).await?,
            );
            beat_samples.extend(
                beat::beat_lateness_ms(&self.url, &self.broker, &queue, entries, sends).await?,
            );
        }
        self.broker.purge_queue(&queue).await?;
        for (variant, samples) in [
            (
                format!("raw lapin, {entries} publishes every second"),
                raw_samples,
            ),
            (
                format!("celeriac beat, {entries} entries every = 1"),
                beat_samples,
            ),
        ] {
            self.beat.push(BeatRow {
                variant,
                sends: samples.len() as u64,
                due_to_delivered_ms: Percentiles::of(&samples),
            });
        }
        Ok(())
    }
}
