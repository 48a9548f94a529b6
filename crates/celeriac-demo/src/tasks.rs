//! Demo tasks, served by `celeriac-demo worker` and used by the README's
//! quick start, the interop tests and the benchmarks.

use std::time::Duration;

use celeriac::{AppBuilder, Request, TaskError, TaskResult, task};
use serde_json::Value;

/// `demo.add(x, y)`: the sum.
#[task(name = "demo.add")]
pub async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// `demo.sleep(seconds)`: waits, then returns the seconds.
#[task(name = "demo.sleep")]
pub async fn sleep(seconds: f64) -> f64 {
    tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
    seconds
}

/// `demo.fail(message)`: raises `ValueError(message)` on the Python side.
#[task(name = "demo.fail")]
pub async fn fail(message: String) -> TaskResult<()> {
    Err(TaskError::python("builtins", "ValueError", message))
}

/// `demo.flaky(failures)`: asks to be retried `failures` times (0.1 s
/// apart), then succeeds.
#[task(name = "demo.flaky", bind = true, max_retries = 10)]
pub async fn flaky(request: Request, failures: u32) -> TaskResult<String> {
    if request.retries < failures {
        let cause = TaskError::python(
            "builtins",
            "ConnectionError",
            format!("attempt {} fails", request.retries + 1),
        );
        return Err(request
            .retry()
            .countdown(Duration::from_millis(100))
            .because(cause));
    }
    Ok(format!("succeeded after {} retries", request.retries))
}

/// `demo.retry_once(seconds)`: asks to be retried once, `seconds` later (a
/// backoff), then returns when it ran (Unix seconds).
#[task(name = "demo.retry_once", bind = true, max_retries = 1)]
pub async fn retry_once(request: Request, seconds: f64) -> TaskResult<f64> {
    if request.retries == 0 {
        let cause = TaskError::python("builtins", "ConnectionError", "first attempt fails");
        return Err(request
            .retry()
            .countdown(Duration::from_secs_f64(seconds.max(0.0)))
            .because(cause));
    }
    Ok(chrono::Utc::now().timestamp_micros() as f64 / 1e6)
}

/// `demo.echo(value)`: returns any JSON value unchanged (kombu envelopes
/// included).
#[task(name = "demo.echo")]
pub async fn echo(value: Value) -> Value {
    value
}

/// A document with a text and a batch of ids: what `demo.measure` takes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Document {
    /// The document's text.
    pub text: String,
    /// The ids it concerns.
    pub ids: Vec<u64>,
}

/// `demo.measure(document)`: the length of the document's text and the
/// number of its ids (a typed argument read straight from the message).
#[task(name = "demo.measure")]
pub async fn measure(document: Document) -> (usize, usize) {
    (document.text.len(), document.ids.len())
}

/// `demo.tsum(values)`: the sum of a list (a chord body).
#[task(name = "demo.tsum")]
pub async fn tsum(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

/// `demo.progress(steps, pause)`: reports `PROGRESS` with
/// `{"done": i, "total": steps}` after each step (`pause` seconds each),
/// then returns `steps`.
#[task(name = "demo.progress", bind = true)]
pub async fn progress(request: Request, steps: u32, pause: f64) -> TaskResult<u32> {
    for done in 1..=steps {
        tokio::time::sleep(Duration::from_secs_f64(pause.max(0.0))).await;
        request
            .update_state(
                "PROGRESS",
                serde_json::json!({"done": done, "total": steps}),
            )
            .await
            .map_err(TaskError::from_error)?;
    }
    Ok(steps)
}

/// `demo.cpu(iterations)`: CPU-bound busy work on the blocking pool.
#[task(name = "demo.cpu")]
pub fn cpu(iterations: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..iterations {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    x
}

/// `demo.now()`: the worker's clock when the task runs (Unix seconds).
#[task(name = "demo.now")]
pub async fn now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// `demo.trace_id()`: the W3C trace id this run continues (32 hex digits),
/// when its message carried a `traceparent`; `None` otherwise.
#[task(name = "demo.trace_id", bind = true)]
pub async fn trace_id(request: Request) -> Option<String> {
    request.trace.map(|trace| trace.trace_id_hex())
}

/// `demo.crash()`: aborts the whole worker process, for crash-loop tests.
/// Never route real traffic to a worker that registers it.
#[task(name = "demo.crash")]
pub fn crash() {
    std::process::abort()
}

/// `demo.hold(key, seconds)`: sleeps for `seconds`, at most two at once
/// per `key` across every worker (a global limit, kept in Redis). Served by
/// `celeriac-demo limits-worker`, not by the plain demo worker (which may
/// run without Redis).
#[task(name = "demo.hold", global_concurrency = 2, limit_key = "key")]
pub async fn hold(key: String, seconds: f64) -> f64 {
    let _ = key;
    tokio::time::sleep(Duration::from_secs_f64(seconds.max(0.0))).await;
    seconds
}

/// Registers the demo tasks under global limits (they need a Redis result
/// backend).
pub fn register_limited(app: AppBuilder) -> AppBuilder {
    app.task(hold)
}

/// Registers every demo task but those under global limits.
pub fn register(app: AppBuilder) -> AppBuilder {
    app.task(add)
        .task(sleep)
        .task(fail)
        .task(flaky)
        .task(retry_once)
        .task(echo)
        .task(measure)
        .task(cpu)
        .task(now)
        .task(trace_id)
        .task(crash)
        .task(tsum)
        .task(progress)
}
