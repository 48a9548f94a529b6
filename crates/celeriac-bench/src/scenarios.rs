//! The scenarios, each measuring Celeriac and its baselines interleaved.

use std::time::Duration;

use anyhow::Context as _;
use celeriac_broker::{Broker, BrokerConfig, Queue};
use celeriac_protocol::{RawMessage, TaskMessage};
use serde::Serialize;
use serde_json::json;

use crate::beat;
use crate::library::{self, InProcessWorker, WorkerShape};
use crate::measure::{self, percentile};
use crate::memory::{MemoryReport, WorkerProcess};
use crate::python::PythonCelery;
use crate::raw::{self, RawAck};
use crate::report::{BeatRow, Check, LatencyRow, Percentiles, Results, Throughput};

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
}

/// How much work each measurement does.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Sizes {
    /// Messages per throughput measurement.
    pub(crate) messages: u64,
    /// Messages per Python Celery measurement (it is much slower).
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
}

impl Sizes {
    /// The default sizes, or the quick ones, with overrides.
    pub(crate) fn new(quick: bool, messages: Option<u64>, rounds: Option<usize>) -> Sizes {
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
            }
        } else {
            Sizes {
                messages: 50_000,
                python_messages: 5_000,
                rounds: 3,
                round_trips: 10_000,
                trickle: 200,
                loaded_seconds: 5.0,
                memory_backlog: 100_000,
                memory_total: 1_000_000,
                beat_entries: 100,
                beat_sends: 1_000,
            }
        };
        Sizes {
            messages: messages.unwrap_or(base.messages),
            rounds: rounds.unwrap_or(base.rounds).max(1),
            ..base
        }
    }
}

/// Transmit window of the raw publisher, and of the backlog fills.
const FILL_WINDOW: usize = 5_000;
/// Raw consumers ack every this many deliveries in the multi-ack baseline,
/// the same as the worker's default `ack_batch`.
const MULTI_ACK_EVERY: u64 = 32;

/// One benchmark run: its connections, queues and collected results.
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
}

impl Bench {
    /// Connects to the broker at `url`.
    pub(crate) async fn connect(
        url: &str,
        sizes: Sizes,
        concurrency: usize,
        python: Option<PythonCelery>,
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
        })
    }

    /// Runs every scenario.
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
        let checks = checks(&self.throughput, &self.latency, self.memory.as_ref());
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
            checks,
        }
    }

    fn prefetch(&self) -> u16 {
        u16::try_from(self.concurrency * 4).unwrap_or(u16::MAX)
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
        let app = library::producer(&self.url, &queue, false).await?;
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
        self.broker.purge_queue(queue).await?;
        raw::publish(&self.raw, queue, &task_message(task)?, count, FILL_WINDOW).await?;
        Ok(())
    }

    /// Scenario 2: draining a backlog of no-op tasks.
    async fn drain(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("drain").await?;
        let n = self.sizes.messages;
        let prefetch = self.prefetch();
        for round in 1..=self.sizes.rounds {
            eprintln!("drain: round {round}/{}", self.sizes.rounds);
            for (variant, ack) in [
                ("raw lapin, ack each".to_owned(), RawAck::EachMessage),
                (
                    format!("raw lapin, multi-ack every {MULTI_ACK_EVERY}"),
                    RawAck::Every(MULTI_ACK_EVERY),
                ),
            ] {
                self.fill(&queue, "demo.add", n).await?;
                let cpu = measure::own_cpu();
                let took = raw::drain(&self.raw, &queue, n, prefetch, ack).await?;
                let cpu = measure::own_cpu().saturating_sub(cpu);
                self.record("drain", &variant, n, took.as_secs_f64(), Some(cpu));
            }
            for (variant, ack_batch) in [
                ("celeriac worker, ack_batch 32", 32),
                ("celeriac worker, ack_batch 1", 1),
            ] {
                self.fill(&queue, "demo.add", n).await?;
                let shape = WorkerShape {
                    concurrency: self.concurrency,
                    ack_batch,
                    results: false,
                };
                let cpu = measure::own_cpu();
                let start = std::time::Instant::now();
                let worker = InProcessWorker::start(&self.url, &queue, shape).await?;
                worker.wait_for_successes(n).await?;
                let took = start.elapsed();
                let cpu = measure::own_cpu().saturating_sub(cpu);
                worker.stop().await?;
                self.record("drain", variant, n, took.as_secs_f64(), Some(cpu));
            }
            if let Some(python) = self.python.clone() {
                let n = self.sizes.python_messages;
                let cores = std::thread::available_parallelism().map_or(1, usize::from);
                self.fill(&queue, "interop.add", n).await?;
                let (took, cpu) = python.drain(&self.broker, &self.url, &queue, cores).await?;
                self.record(
                    "drain",
                    &format!("python celery prefork -c {cores}"),
                    n,
                    took.as_secs_f64(),
                    Some(cpu),
                );
            }
        }
        self.broker.purge_queue(&queue).await?;
        Ok(())
    }

    /// Scenario 5: a `celeriac-worker` process's memory.
    async fn memory(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("memory").await?;
        let concurrency = self.concurrency;
        eprintln!("memory: idle worker");
        let idle = WorkerProcess::start(&self.broker, &self.url, &queue, concurrency).await?;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
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

    /// A producer and an in-process worker on `queue`, both with `rpc://`
    /// results (the worker acks as by default).
    async fn producer_and_worker_with_results(
        &self,
        queue: &str,
    ) -> anyhow::Result<(celeriac::App, InProcessWorker)> {
        let app = library::producer(&self.url, queue, true).await?;
        let shape = WorkerShape {
            concurrency: self.concurrency,
            ack_batch: 32,
            results: true,
        };
        let worker = InProcessWorker::start(&self.url, queue, shape).await?;
        Ok((app, worker))
    }

    /// Scenario 3: send and read back the result, `concurrency` callers.
    /// Returns the median rate.
    async fn round_trips(&mut self) -> anyhow::Result<f64> {
        let queue = self.queue("results").await?;
        let (app, worker) = self.producer_and_worker_with_results(&queue).await?;
        let n = self.sizes.round_trips;
        let callers = self.concurrency as u64;
        let variant = format!("celeriac, rpc:// results, {callers} callers");
        for round in 1..=self.sizes.rounds {
            eprintln!("results: round {round}/{}", self.sizes.rounds);
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
        let (app, worker) = self.producer_and_worker_with_results(&queue).await?;
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

/// An encoded `task(1, 2)` message, as a Celeriac producer sends it.
pub(crate) fn task_message(task: &str) -> anyhow::Result<RawMessage> {
    let id = uuid::Uuid::new_v4().to_string();
    Ok(TaskMessage::new(task, id)
        .with_args(vec![json!(1), json!(2)])
        .encode()?)
}

impl Percentiles {
    fn of(samples: &[f64]) -> Percentiles {
        Percentiles {
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            max: percentile(samples, 100.0),
        }
    }
}

/// The targets, as ratios between rows of this run.
fn checks(
    throughput: &[Throughput],
    latency: &[LatencyRow],
    memory: Option<&MemoryReport>,
) -> Vec<Check> {
    let rate = |scenario: &str, prefix: &str| {
        throughput
            .iter()
            .find(|t| t.scenario == scenario && t.variant.starts_with(prefix))
            .map(|t| t.median_per_s)
    };
    let mut checks = Vec::new();
    let mut ratio = |name: &str, a: Option<f64>, b: Option<f64>, at_least: f64| {
        if let (Some(a), Some(b)) = (a, b) {
            checks.push(Check::at_least(name, a / b, at_least, "×"));
        }
    };
    let worker = rate("drain", "celeriac worker, ack_batch 32");
    ratio(
        "worker drain / raw multi-ack consume",
        worker,
        rate("drain", "raw lapin, multi-ack"),
        0.5,
    );
    ratio(
        "worker drain / Python Celery prefork",
        worker,
        rate("drain", "python"),
        10.0,
    );
    ratio(
        "worker drain (ack_batch 1) / raw consume, ack each",
        rate("drain", "celeriac worker, ack_batch 1"),
        rate("drain", "raw lapin, ack each"),
        0.9,
    );
    let apply = rate("publish", "celeriac apply()");
    ratio(
        "apply() / raw publish, 1000 in flight",
        apply,
        rate("publish", "raw lapin, 1000"),
        0.8,
    );
    ratio(
        "apply() / Python send_task",
        apply,
        rate("publish", "python"),
        3.0,
    );
    let bulk = rate("publish", "celeriac send_many()");
    ratio(
        "send_many() / raw publish, 5000 in flight",
        bulk,
        rate("publish", "raw lapin, 5000"),
        0.8,
    );
    ratio(
        "send_many() / Python send_task",
        bulk,
        rate("publish", "python"),
        3.0,
    );
    if let Some(trickle) = latency.first() {
        checks.push(Check::at_most(
            "enqueue→start p99 at a trickle",
            trickle.enqueue_to_start_ms.p99,
            5.0,
            "ms",
        ));
    }
    if let Some(cpu) = throughput
        .iter()
        .find(|t| t.variant == "celeriac worker, ack_batch 32")
        .and_then(|t| t.cpu_us_per_task_median())
    {
        checks.push(Check::at_most(
            "process CPU per no-op task in the worker",
            cpu,
            20.0,
            "µs",
        ));
    }
    if let Some(memory) = memory {
        let megabytes = memory.backlog_peak_kib as f64 * 1024.0 / 1e6;
        checks.push(Check::at_most(
            "worker peak RSS on the backlog",
            megabytes,
            30.0,
            "MB",
        ));
        checks.push(Check::at_most(
            "worker RSS growth across the tasks (last / first)",
            memory.growth(),
            1.1,
            "×",
        ));
    }
    checks
}
