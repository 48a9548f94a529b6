//! Rate limits set wrongly stop the worker at start. (A limited task's
//! rate is measured alone, in `tests/faults/rate_limit.rs`.)

use anyhow::{Result, ensure};
use celeriac::App;
use celeriac_demo::tasks as demo;
use celeriac_tests::{broker_url, unique};
use celeriac_worker::{Worker, WorkerConfig, WorkerError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_for_a_task_the_worker_lacks_stops_it_at_start() -> Result<()> {
    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .build()
        .await?;
    for (task, rate, expected) in [
        ("demo.nope", "1/s", "demo.nope, which is not registered"),
        (
            "demo.add",
            "ten/s",
            "rate_limits for demo.add: Invalid rate limit string",
        ),
    ] {
        let config = WorkerConfig {
            queues: vec![unique("rate-limit-config")],
            rate_limits: [(task.to_owned(), rate.to_owned())].into(),
            ..WorkerConfig::default()
        };
        match Worker::new(app.clone(), config).run_until(async {}).await {
            Err(WorkerError::Config(why)) => ensure!(
                why.contains(expected),
                "the error for {task}={rate} does not say {expected:?}: {why}"
            ),
            other => anyhow::bail!("{task}={rate} started a worker: {other:?}"),
        }
    }
    app.close().await;
    Ok(())
}
