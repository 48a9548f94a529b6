//! Scenario 7: results stored in Redis. A backlog drained by a worker that
//! ignores results, by one that stores them in Redis, and by Python Celery
//! prefork storing them in the same Redis; round trips through Redis beside
//! round trips through `rpc://`.

use crate::library::{self, WorkerShape};
use crate::measure;

use super::Bench;

impl Bench {
    /// Runs the Redis results scenario, interleaving its variants each round.
    pub(super) async fn redis(&mut self) -> anyhow::Result<()> {
        let redis = self.redis.clone();
        let queue = self.queue("redis").await?;
        let n = self.sizes.messages;
        for round in 1..=self.sizes.rounds {
            eprintln!("redis: round {round}/{}", self.sizes.rounds);
            for (variant, results) in [
                ("celeriac worker, results ignored", None),
                ("celeriac worker, redis results", Some(redis.clone())),
            ] {
                let shape = WorkerShape {
                    concurrency: self.concurrency,
                    ack_batch: 32,
                    results,
                    task_events: false,
                    metrics: false,
                };
                let (took, cpu) = self.worker_drain(&queue, shape).await?;
                self.record("redis drain", variant, n, took.as_secs_f64(), Some(cpu));
            }
            self.python_drain(&queue, "redis drain", Some(&redis))
                .await?;
            for backend in ["rpc://", redis.as_str()] {
                self.round_trips_through(&queue, backend).await?;
            }
        }
        self.broker.purge_queue(&queue).await?;
        Ok(())
    }

    /// One round of round trips (send, wait for the result) from
    /// `concurrency` callers, results through `backend`.
    async fn round_trips_through(&mut self, queue: &str, backend: &str) -> anyhow::Result<()> {
        let (app, worker) = self
            .producer_and_worker_with_results(queue, backend)
            .await?;
        let n = self.sizes.round_trips;
        let callers = self.concurrency as u64;
        let scheme = backend.split("://").next().unwrap_or(backend);
        let cpu = measure::own_cpu();
        let took = library::round_trips(&app, n, callers).await?;
        let cpu = measure::own_cpu().saturating_sub(cpu);
        worker.stop().await?;
        app.close().await;
        self.record(
            "redis round trips",
            &format!("celeriac, {scheme}:// results, {callers} callers"),
            n,
            took.as_secs_f64(),
            Some(cpu),
        );
        Ok(())
    }
}
