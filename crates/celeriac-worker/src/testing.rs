//! Integration tests of your own tasks against a real RabbitMQ: a worker
//! running in the test's process on a queue of its own, and the same app to
//! send with. (For unit tests without a broker, see `celeriac::testing`.)
//!
//! ```no_run
//! use std::time::Duration;
//! use celeriac::{task, App};
//! use celeriac_worker::testing::TestWorker;
//!
//! #[task(name = "shop.total")]
//! async fn total(prices: Vec<u32>) -> u32 {
//!     prices.iter().sum()
//! }
//!
//! # async fn test() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = TestWorker::start(App::builder().result_backend("rpc://").task(total)).await?;
//! let sum = total::new(vec![3, 4]).apply_async(worker.app()).await?;
//! assert_eq!(sum.get(Duration::from_secs(10)).await?, 7);
//! worker.stop().await?;
//! # Ok(()) }
//! ```
//!
//! The broker is `CELERIAC_TEST_BROKER` if set, else the builder's (or
//! Celery's default URL). A broker that does not answer is an error saying
//! so, never a silently skipped test.

use celeriac::broker::BrokerError;
use celeriac::{App, AppBuilder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Summary, Worker, WorkerConfig, WorkerError};

/// A worker running in this process on a fresh queue, for tests.
#[derive(Debug)]
pub struct TestWorker {
    app: App,
    queue: String,
    stop: CancellationToken,
    running: JoinHandle<Result<Summary, WorkerError>>,
}

impl TestWorker {
    /// Builds `builder` with a fresh default queue (`celeriac-test.<uuid>`)
    /// and starts a worker (concurrency 4) consuming it. Tasks sent through
    /// [`app`](Self::app) without a queue or route of their own go there.
    pub async fn start(builder: AppBuilder) -> Result<TestWorker, WorkerError> {
        let config = WorkerConfig {
            concurrency: 4,
            // A test worker starts at once: no second spent asking peers
            // for revoked ids.
            mingle: false,
            ..WorkerConfig::default()
        };
        TestWorker::start_with(builder, config).await
    }

    /// Like [`start`](Self::start) with worker settings of your own (its
    /// `queues` are replaced by the fresh queue, and the default node name
    /// by one of its own, so test workers running at once each answer
    /// remote control).
    pub async fn start_with(
        builder: AppBuilder,
        config: WorkerConfig,
    ) -> Result<TestWorker, WorkerError> {
        let queue = format!("celeriac-test.{}", uuid_like());
        let mut builder = builder.default_queue(queue.clone());
        if let Ok(url) = std::env::var("CELERIAC_TEST_BROKER") {
            builder = builder.broker_url(url);
        }
        let app = builder.build().await?;
        let hostname = if config.hostname == WorkerConfig::default().hostname {
            format!("test@{queue}")
        } else {
            config.hostname.clone()
        };
        let config = WorkerConfig {
            queues: vec![queue.clone()],
            hostname,
            ..config
        };
        let stop = CancellationToken::new();
        let worker = Worker::new(app.clone(), config);
        let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
        Ok(TestWorker {
            app,
            queue,
            stop,
            running,
        })
    }

    /// The app the worker runs, to send tasks and read results with.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The worker's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops the worker gracefully, deletes its queue, dead-letter queue and
    /// exchange, and closes the connection; returns what the worker did.
    pub async fn stop(self) -> Result<Summary, WorkerError> {
        self.stop.cancel();
        let summary = self
            .running
            .await
            .map_err(|e| WorkerError::Config(format!("the test worker panicked: {e}")))??;
        let broker = self.app.broker();
        let dead = broker.config().dead_letter.queue_for(&self.queue);
        cleanup(broker.delete_queue(&self.queue).await)?;
        cleanup(broker.delete_queue(&dead.name).await)?;
        cleanup(broker.delete_exchange(&self.queue).await.map(|()| 0))?;
        self.app.close().await;
        Ok(summary)
    }
}

fn cleanup(result: Result<u32, BrokerError>) -> Result<(), WorkerError> {
    result.map(|_| ()).map_err(WorkerError::from)
}

/// A unique suffix: process id, time and a counter.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}.{nanos}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
