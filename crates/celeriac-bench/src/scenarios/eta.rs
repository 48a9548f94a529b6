//! Scenario 8: a burst of countdown tasks with ordinary tasks behind it, on
//! a worker with default settings. How long the ordinary tasks take from
//! their send to done, how fast the burst leaves the queue for the delay
//! queues beside raw lapin publishing the same number of messages with
//! confirms, how late the last countdown task runs, and the process's
//! memory while the burst waits.

use std::time::{Duration, Instant};

use celeriac::TaskCall;
use serde_json::{Value, json};

use crate::library::{self, InProcessWorker, WorkerShape};
use crate::measure;
use crate::plan::task_message;
use crate::raw;
use crate::report::EtaRow;

use super::Bench;

/// Ordinary tasks sent behind each burst.
const ORDINARY: u64 = 100;

impl Bench {
    /// Runs the ETA burst scenario for each burst size, interleaving the
    /// worker and the raw baseline each round.
    pub(super) async fn eta(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("eta").await?;
        let app = library::producer(&self.url, &queue, None).await?;
        let message = task_message("demo.add")?;
        for &burst in self.sizes.eta_bursts {
            // Long enough for the burst to leave the queue before it is due.
            let due_in = Duration::from_secs((burst / 2_000).clamp(5, 60));
            let mut row = EtaRow::new(burst, due_in);
            for round in 1..=self.sizes.rounds {
                eprintln!("eta {burst}: round {round}/{}", self.sizes.rounds);
                let took = raw::publish(&self.raw, &queue, &message, burst, 1_000).await?;
                row.raw_publish_per_s
                    .push(burst as f64 / took.as_secs_f64());
                self.broker.purge_queue(&queue).await?;

                let shape = WorkerShape {
                    concurrency: self.concurrency,
                    ack_batch: 32,
                    results: None,
                    task_events: false,
                    metrics: false,
                };
                let worker = InProcessWorker::start(&self.url, &queue, shape).await?;
                // A worker that has been up a moment: its delay topology is
                // declared (in the background at start, ~1 s).
                tokio::time::sleep(Duration::from_secs(2)).await;
                // The whole burst is due at one instant, as a countdown
                // burst is within the time it takes to encode it.
                let start = Instant::now();
                let due = start + due_in;
                let eta = chrono::Utc::now() + chrono::Duration::from_std(due_in)?;
                let countdown = (0..burst)
                    .map(|_| TaskCall::<Value>::new("demo.add", vec![json!(1), json!(2)]).eta(eta));
                app.send_many(countdown).await?;
                let ordinary_sent = Instant::now();
                library::send_many(&app, ORDINARY).await?;
                worker.wait_for_successes(ORDINARY).await?;
                let ordinary_done = ordinary_sent.elapsed();
                row.ordinary_done_s.push(ordinary_done.as_secs_f64());
                row.cleared_per_s
                    .push(burst as f64 / start.elapsed().as_secs_f64());
                if let Some(kib) = measure::own_memory_kib("VmRSS") {
                    row.rss_waiting_kib = row.rss_waiting_kib.max(kib);
                }
                worker.wait_for_successes(ORDINARY + burst).await?;
                let late = Instant::now().saturating_duration_since(due);
                row.last_late_s.push(late.as_secs_f64());
                worker.stop().await?;
            }
            self.eta.push(row);
        }
        self.broker.purge_queue(&queue).await?;
        app.close().await;
        Ok(())
    }
}
