//! SIGTERM during a batch: a worker process (`celeriac-demo worker`) stops taking work,
//! finishes what runs, hands back what it had not started, and exits 0. A
//! second worker then finishes the batch: every task runs, and none that
//! had finished runs twice.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use celeriac::{App, AsyncResult, State};
use celeriac_tests::broker_url;
use celeriac_tests::worker::{binary, count_ready};
use serde_json::Value;

fn start_worker(queue: &str) -> Child {
    Command::new(binary("celeriac-demo").expect("the celeriac-demo binary is built"))
        .args([
            "worker",
            "--broker",
            &broker_url(),
            "--result-backend",
            "rpc://",
            "-Q",
            queue,
        ])
        .args(["-c", "4", "--shutdown-timeout", "20", "--loglevel", "warn"])
        .stdin(Stdio::null())
        .spawn()
        .expect("celeriac-demo worker starts")
}

fn terminate(worker: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
}

fn wait_exit(mut worker: Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = worker.try_wait().expect("wait works") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = worker.kill();
            panic!("the worker did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_batch_loses_and_duplicates_nothing() {
    let queue = format!(
        "celeriac-test.shutdown.{:016x}",
        std::process::id() as u64 * 7919
    );
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .default_queue(queue.clone())
        .build()
        .await
        .expect("RabbitMQ is reachable (set CELERIAC_TEST_BROKER or run scripts/ensure-rabbitmq)");
    let first = start_worker(&queue);

    let mut results: Vec<AsyncResult<Value>> = Vec::new();
    for _ in 0..40 {
        results.push(
            app.send_task("demo.sleep")
                .args((0.3,))
                .apply()
                .await
                .expect("sent"),
        );
    }
    // Let the first worker get going, then stop it mid-batch.
    while count_ready(&results).await < 8 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    terminate(&first);
    let status = tokio::task::spawn_blocking(move || wait_exit(first, Duration::from_secs(30)))
        .await
        .expect("joined");
    assert!(status.success(), "the worker exited with {status}");
    let done_by_first = count_ready(&results).await;
    assert!(
        done_by_first < 40,
        "the batch finished before SIGTERM; the test proves nothing"
    );

    let second = start_worker(&queue);
    for result in &results {
        result
            .get(Duration::from_secs(60))
            .await
            .expect("every task completes");
    }
    for result in &results {
        assert_eq!(
            result.history(),
            [State::Success],
            "task {} ran more than once or failed",
            result.id()
        );
    }
    println!(
        "first worker finished {done_by_first} of 40 before SIGTERM; the second finished the rest"
    );
    terminate(&second);
    let status = tokio::task::spawn_blocking(move || wait_exit(second, Duration::from_secs(30)))
        .await
        .expect("joined");
    assert!(status.success(), "the second worker exited with {status}");
    let _ = app.broker().delete_queue(&queue).await;
    let _ = app.broker().delete_exchange(&queue).await;
    app.close().await;
}
