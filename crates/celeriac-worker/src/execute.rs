//! Running one task: its arguments bound, its request in scope, its soft
//! limit signalled and its hard limit enforced; a panic is a failure; a
//! terminate (remote control) drops it at its next await.

use std::sync::Arc;

use celeriac::protocol::TaskMessage;
use celeriac::{Arguments, Request, Task, TaskError, TaskOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::limits::TimeLimits;

/// How a run ended.
pub(crate) enum Ran {
    /// The task returned (or failed, panicked, ran out of time).
    Finished(Result<Value, TaskError>),
    /// Remote control terminated it.
    Terminated,
}

/// Runs `task` for `message`. The hard limit (the message's, else one set
/// by remote control, else the task's) drops the task's future when it
/// passes; the soft limit signals [`Request::soft_limit`]; `terminate`
/// drops it too.
pub(crate) async fn execute(
    task: Arc<dyn Task>,
    request: &Arc<Request>,
    message: &Arc<TaskMessage>,
    options: &TaskOptions,
    overrides: Option<TimeLimits>,
    terminate: &CancellationToken,
) -> Ran {
    let limits = &message.headers.timelimit;
    let overrides = overrides.unwrap_or(TimeLimits {
        soft: options.soft_time_limit,
        hard: options.time_limit,
    });
    let hard = limits
        .hard
        .and_then(celeriac::protocol::Seconds::as_duration)
        .or(overrides.hard);
    let soft = limits
        .soft
        .and_then(celeriac::protocol::Seconds::as_duration)
        .or(overrides.soft);
    let args = Arguments::of_message(message.clone());
    // The task takes its request by value: one copy, made here. The scope
    // shares the worker's own.
    let future = celeriac::request::scope(
        Arc::clone(request),
        celeriac::catch_panic(task.call(Request::clone(request), args)),
    );
    let soft_timer = soft.map(|limit| {
        let signal = request.soft_limit.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            signal.signal();
        })
    });
    // The task's future is pinned here and awaited through a reference, so
    // a task's state holds it once (`timeout` would otherwise take it by
    // value and hold a second copy). `timeout` rather than a sleep beside
    // it: it checks its deadline even when the task has used up tokio's
    // cooperative budget, so a task busy on ready resources still stops.
    let mut future = std::pin::pin!(future);
    let limited = async {
        match hard {
            Some(limit) => tokio::time::timeout(limit, future.as_mut())
                .await
                .unwrap_or_else(|_| {
                    Err(TaskError::python(
                        "celery.exceptions",
                        "TimeLimitExceeded",
                        format!("TimeLimitExceeded({})", limit.as_secs_f64()),
                    ))
                }),
            None => future.as_mut().await,
        }
    };
    let ran = tokio::select! {
        result = limited => Ran::Finished(result),
        () = terminate.cancelled() => Ran::Terminated,
    };
    if let Some(timer) = soft_timer {
        timer.abort();
    }
    ran
}
