//! Scenario 8: a burst of countdown tasks with ordinary tasks behind it, on
//! a worker with default settings. How long the ordinary tasks take from
//! their send to done; how fast the burst leaves the queue for the delay
//! queues, beside raw lapin publishing as many messages with confirms to a
//! plain queue and through the delay queues, and beside raw lapin moving
//! them there as the producer publishes them; how late the last countdown
//! task runs, beside how late the last of raw lapin's delayed messages
//! reaches a raw consumer; and a worker process's peak memory through one
//! burst.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use celeriac::protocol::RawMessage;
use celeriac::{App, TaskCall};
use serde_json::{Value, json};

use crate::library::{self, InProcessWorker, WorkerShape};
use crate::measure;
use crate::memory::WorkerProcess;
use crate::plan::task_message;
use crate::raw::{self, RawAck};
use crate::report::EtaRow;

use super::{Bench, MULTI_ACK_EVERY};

/// Ordinary tasks sent behind each burst.
const ORDINARY: u64 = 100;

/// Celery's delay levels, whose depths say when a burst has come back.
const DELAY_LEVELS: u32 = celeriac_broker::delay::LEVELS;

impl Bench {
    /// Runs the ETA burst scenario for each burst size, interleaving the
    /// worker and the raw baselines each round, then measures a worker
    /// process's memory through one more burst.
    pub(super) async fn eta(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("eta").await?;
        let app = library::producer(&self.url, &queue, None).await?;
        let message = task_message("demo.add")?;
        // The raw baseline publishes into the delay queues directly.
        self.broker.prepare_delayed_delivery(&queue).await?;
        let windows = self.sizes.eta_burst_windows.clone();
        for burst in self.sizes.eta_bursts.clone() {
            // Long enough for the burst to leave the queue before it is due.
            let due_in = Duration::from_secs((burst / 2_000).clamp(5, 60));
            let mut rows: Vec<EtaRow> = windows
                .iter()
                .map(|&window| EtaRow::new(burst, due_in, window))
                .collect();
            for round in 1..=self.sizes.rounds {
                eprintln!("eta {burst}: round {round}/{}", self.sizes.rounds);
                let took = raw::publish(&self.raw, &queue, &message, burst, 1_000).await?;
                let raw_publish = burst as f64 / took.as_secs_f64();
                self.broker.purge_queue(&queue).await?;

                let due = Instant::now() + due_in;
                let took =
                    raw::publish_delayed(&self.raw, &queue, &message, burst, 1_000, due).await?;
                let raw_delayed_publish = burst as f64 / took.as_secs_f64();
                self.drain_returned(&queue, burst).await?;
                let raw_late = Instant::now().saturating_duration_since(due);
                for row in &mut rows {
                    row.raw_publish_per_s.push(raw_publish);
                    row.raw_delayed_publish_per_s.push(raw_delayed_publish);
                    row.raw_last_late_s.push(raw_late.as_secs_f64());
                }
                for row in &mut rows {
                    self.eta_round(&app, &queue, &message, row).await?;
                }
            }
            for row in &mut rows {
                eprintln!(
                    "eta {burst}: a worker process's memory through one burst (window {})",
                    row.burst_window
                );
                row.worker_process_peak_kib = Some(
                    self.eta_worker_peak(&app, &queue, burst, due_in, row.burst_window)
                        .await?,
                );
            }
            self.eta.extend(rows);
        }
        self.broker.purge_queue(&queue).await?;
        app.close().await;
        Ok(())
    }

    /// One round of a burst with one burst window: raw lapin's relay with
    /// that window, then the worker's send → done and lateness, into `row`.
    async fn eta_round(
        &mut self,
        app: &App,
        queue: &str,
        message: &RawMessage,
        row: &mut EtaRow,
    ) -> anyhow::Result<()> {
        let burst = row.burst;
        let due_in = Duration::from_secs_f64(row.due_in_s);
        // The move itself, raw: a producer publishes the burst to the queue
        // while a relay moves it to the delay queues.
        let due = Instant::now() + due_in;
        let start = Instant::now();
        let (published, relayed) = tokio::join!(
            raw::publish(&self.raw, queue, message, burst, 1_000),
            raw::relay_delayed(&self.raw, queue, burst, row.burst_window, due)
        );
        published?;
        relayed?;
        row.raw_relay_per_s
            .push(burst as f64 / start.elapsed().as_secs_f64());
        self.drain_returned(queue, burst).await?;

        let mut shape = WorkerShape::plain(self.concurrency);
        shape.eta_burst_window = row.burst_window;
        let worker = InProcessWorker::start(&self.url, queue, shape).await?;
        // A worker that has been up a moment: its delay topology is
        // declared (in the background at start, ~1 s).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let start = Instant::now();
        let due = start + due_in;
        send_burst(app, burst, due_in).await?;
        let ordinary_sent = Instant::now();
        library::send_many(app, ORDINARY).await?;
        worker.wait_for_successes(ORDINARY).await?;
        row.ordinary_done_s
            .push(ordinary_sent.elapsed().as_secs_f64());
        row.cleared_per_s
            .push(burst as f64 / start.elapsed().as_secs_f64());
        if let Some(kib) = measure::own_memory_kib("VmRSS") {
            row.rss_waiting_kib = row.rss_waiting_kib.max(kib);
        }
        worker.wait_for_successes(ORDINARY + burst).await?;
        let late = Instant::now().saturating_duration_since(due);
        row.last_late_s.push(late.as_secs_f64());
        worker.stop().await
    }

    /// The peak RSS (`VmHWM`, KiB) of a `celeriac-demo worker` process
    /// through one burst of `burst` countdown tasks with ordinary tasks
    /// behind it, moved with a window of `burst_window`: while it moves the
    /// burst out, while the burst waits and while it runs the burst once
    /// due.
    async fn eta_worker_peak(
        &self,
        app: &App,
        queue: &str,
        burst: u64,
        due_in: Duration,
        burst_window: u16,
    ) -> anyhow::Result<u64> {
        // Messages other apps left in the delay queues stay there; the
        // burst is back once the levels hold no more than that again.
        let others = self.delay_levels_depth().await?;
        let window = burst_window.to_string();
        let mut worker = WorkerProcess::start_with(
            &self.broker,
            &self.url,
            queue,
            self.concurrency,
            &["--eta-burst-window", &window],
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let due = Instant::now() + due_in;
        send_burst(app, burst, due_in).await?;
        library::send_many(app, ORDINARY).await?;
        let deadline = due + Duration::from_secs(600);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (ready, _) = self.broker.queue_counts(queue).await?.unwrap_or_default();
            if Instant::now() > due && ready == 0 && self.delay_levels_depth().await? <= others {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the worker process had not run the burst of {burst} 10 minutes after it was due"
                );
            }
        }
        worker.wait_drained(&self.broker, queue).await?;
        let peak = worker.memory_kib("VmHWM")?;
        worker.stop().await;
        Ok(peak)
    }

    /// Takes `burst` delayed messages back from `queue` as they come due,
    /// as a raw consumer that does nothing else would.
    async fn drain_returned(&self, queue: &str, burst: u64) -> anyhow::Result<()> {
        raw::drain(&self.raw, queue, burst, 400, RawAck::Every(MULTI_ACK_EVERY)).await?;
        Ok(())
    }

    /// Messages in all of Celery's delay levels.
    async fn delay_levels_depth(&self) -> anyhow::Result<u64> {
        let mut depth = 0;
        for level in 0..DELAY_LEVELS {
            let name = celeriac_broker::delay::level_name(level);
            let (ready, _) = self
                .broker
                .queue_counts(&name)
                .await
                .with_context(|| format!("reading the depth of {name}"))?
                .unwrap_or_default();
            depth += u64::from(ready);
        }
        Ok(depth)
    }
}

/// Sends `burst` `demo.add` tasks all due `due_in` from now, as a
/// countdown burst is within the time it takes to encode it.
async fn send_burst(app: &App, burst: u64, due_in: Duration) -> anyhow::Result<()> {
    let eta = chrono::Utc::now() + chrono::Duration::from_std(due_in)?;
    let countdown =
        (0..burst).map(|_| TaskCall::<Value>::new("demo.add", vec![json!(1), json!(2)]).eta(eta));
    app.send_many(countdown).await?;
    Ok(())
}
