//! Scenarios 7 and 8: results stored in Redis, and in PostgreSQL (Celery's
//! database backend). For each store: a backlog drained by a worker that
//! ignores results, by one that stores them there, and by Python Celery
//! prefork storing them in the same place; round trips through the store
//! beside round trips through `rpc://` (and, for PostgreSQL, Redis).

use crate::library::{self, WorkerShape};
use crate::measure;

use super::Bench;

impl Bench {
    /// Runs the Redis results scenario, interleaving its variants each round.
    pub(super) async fn redis(&mut self) -> anyhow::Result<()> {
        let redis = self.redis.clone();
        self.result_store("redis", &redis, &["rpc://", redis.as_str()])
            .await
    }

    /// Runs the PostgreSQL results scenario in a scratch database of its
    /// own, dropped afterwards.
    pub(super) async fn postgres(&mut self) -> anyhow::Result<()> {
        let database = super::scratch_db::ScratchDatabase::create(&self.postgres).await?;
        let url = database.backend_url();
        let redis = self.redis.clone();
        let outcome = self
            .result_store("postgres", &url, &["rpc://", redis.as_str(), url.as_str()])
            .await;
        database.drop_it().await?;
        outcome
    }

    /// Drains with results ignored and stored at `url`, Python's drain into
    /// the same store, then round trips through each of `round_trips`.
    async fn result_store(
        &mut self,
        store: &str,
        url: &str,
        round_trips: &[&str],
    ) -> anyhow::Result<()> {
        let queue = self.queue(store).await?;
        let n = self.sizes.messages;
        let drain = format!("{store} drain");
        for round in 1..=self.sizes.rounds {
            eprintln!("{store}: round {round}/{}", self.sizes.rounds);
            for (variant, results) in [
                ("celeriac worker, results ignored".to_owned(), None),
                (
                    format!("celeriac worker, {store} results"),
                    Some(url.to_owned()),
                ),
            ] {
                let shape = WorkerShape {
                    results,
                    ..WorkerShape::plain(self.concurrency)
                };
                let (took, cpu) = self.worker_drain(&queue, shape).await?;
                self.record(&drain, &variant, n, took.as_secs_f64(), Some(cpu));
            }
            self.python_drain(&queue, &drain, Some((store, url)))
                .await?;
            for backend in round_trips {
                self.round_trips_through(&queue, store, backend).await?;
            }
        }
        self.broker.purge_queue(&queue).await?;
        Ok(())
    }

    /// One round of round trips (send, wait for the result) from
    /// `concurrency` callers, results through `backend`.
    async fn round_trips_through(
        &mut self,
        queue: &str,
        store: &str,
        backend: &str,
    ) -> anyhow::Result<()> {
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
            &format!("{store} round trips"),
            &format!("celeriac, {scheme}:// results, {callers} callers"),
            n,
            took.as_secs_f64(),
            Some(cpu),
        );
        Ok(())
    }
}
