//! Running one task: its arguments bound, its request in scope, its soft
//! limit signalled and its hard limit enforced; a panic is a failure.

use std::sync::Arc;

use celeriac::protocol::TaskMessage;
use celeriac::{Arguments, Request, Task, TaskError, TaskOptions};
use serde_json::Value;

/// Runs `task` for `message`. The hard limit (the message's, else the
/// task's) drops the task's future when it passes; the soft limit signals
/// [`Request::soft_limit`].
pub(crate) async fn execute(
    task: Arc<dyn Task>,
    request: &Request,
    message: &TaskMessage,
    options: &TaskOptions,
) -> Result<Value, TaskError> {
    let limits = &message.headers.timelimit;
    let hard = limits
        .hard
        .and_then(celeriac::protocol::Seconds::as_duration)
        .or(options.time_limit);
    let soft = limits
        .soft
        .and_then(celeriac::protocol::Seconds::as_duration)
        .or(options.soft_time_limit);
    let args = Arguments::new(
        &message.headers.task,
        message.body.args.clone(),
        message.body.kwargs.clone(),
    );
    let future = celeriac::request::scope(
        request.clone(),
        celeriac::catch_panic(task.call(request.clone(), args)),
    );
    let soft_timer = soft.map(|limit| {
        let signal = request.soft_limit.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            signal.signal();
        })
    });
    let result = match hard {
        Some(limit) => tokio::time::timeout(limit, future)
            .await
            .unwrap_or_else(|_| {
                Err(TaskError::python(
                    "celery.exceptions",
                    "TimeLimitExceeded",
                    format!("TimeLimitExceeded({})", limit.as_secs_f64()),
                ))
            }),
        None => future.await,
    };
    if let Some(timer) = soft_timer {
        timer.abort();
    }
    result
}
