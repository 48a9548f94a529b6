//! `celery.chord_unlock` (§5.6): joins a chord on a backend that cannot
//! count its header's results (SQL databases), by polling them. The
//! producer sends it one second after the chord, with the group id, the
//! body and the header's result tuples; while a header task is not ready
//! it retries itself every `interval` seconds (default 1), without limit
//! unless `max_retries` is set. Once every header task is ready it applies
//! the body with their results in order, or, if one failed, fails the body
//! with `ChordError` and sends the body's errbacks, as Celery does. It
//! runs the same whichever of a Python or a Rust worker takes it.

use std::time::Duration;

use celeriac::protocol::ExceptionInfo;
use celeriac::protocol::store::{ChordPart, ResultTuple, join};
use celeriac::result::ResultBackend;
use celeriac::{
    App, Apply, Arguments, CHORD_UNLOCK, Request, Signature, Task, TaskError, TaskFuture,
    TaskOptions,
};
use serde_json::Value;
use tracing::{error, info, warn};

use crate::chord::{body_failures, errbacks_of};

/// How long between polls when the message does not say (Celery's
/// `result_chord_retry_interval`).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The built-in `celery.chord_unlock` task.
pub(crate) struct ChordUnlock {
    app: App,
}

impl ChordUnlock {
    pub(crate) fn new(app: App) -> ChordUnlock {
        ChordUnlock { app }
    }
}

impl Task for ChordUnlock {
    fn name(&self) -> &str {
        CHORD_UNLOCK
    }

    fn options(&self) -> TaskOptions {
        TaskOptions {
            ignore_result: Some(true),
            ..TaskOptions::default()
        }
    }

    fn parameters(&self) -> &[&'static str] {
        &["group_id", "callback", "interval", "max_retries", "result"]
    }

    fn call(&self, request: Request, args: Arguments) -> TaskFuture {
        let app = self.app.clone();
        Box::pin(async move { unlock(&app, &request, args).await.map(|()| Value::Null) })
    }
}

/// One `celery.chord_unlock` call, its arguments read.
struct Unlock {
    group_id: String,
    body: Signature,
    interval: Duration,
    max_retries: Option<u32>,
    header: Vec<String>,
}

impl Unlock {
    /// Reads the arguments as Celery sends them; kwargs it adds later
    /// (such as `_chord_unlock_exchange_type`) are ignored.
    fn read(mut args: Arguments) -> Result<Unlock, TaskError> {
        let group_id: String = args.take(0, "group_id")?;
        let callback: Value = args.take(1, "callback")?;
        let interval: Option<f64> = args.take_optional(2, "interval")?;
        let max_retries: Option<u32> = args.take_optional(3, "max_retries")?;
        let result: Vec<Value> = args.take_optional(4, "result")?.unwrap_or_default();
        let body = Signature::from_json(&callback, "callback").map_err(|e| {
            TaskError::python("builtins", "TypeError", format!("{CHORD_UNLOCK}(): {e}"))
        })?;
        let header = result
            .iter()
            .map(|tuple| ResultTuple::from_json(tuple).map(|t| t.id().to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                TaskError::python(
                    "builtins",
                    "TypeError",
                    format!("{CHORD_UNLOCK}(): `result`: {e}"),
                )
            })?;
        let interval = interval
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(DEFAULT_INTERVAL, Duration::from_secs_f64);
        Ok(Unlock {
            group_id,
            body,
            interval,
            max_retries,
            header,
        })
    }

    /// The retry that polls again after `interval`.
    fn poll_again(&self, request: &Request, cause: Option<TaskError>) -> TaskError {
        let retry = request
            .retry()
            .countdown(self.interval)
            .max_retries(self.max_retries.unwrap_or(u32::MAX));
        match cause {
            Some(cause) => retry.because(cause),
            None => retry.into(),
        }
    }
}

async fn unlock(app: &App, request: &Request, args: Arguments) -> Result<(), TaskError> {
    let unlock = Unlock::read(args)?;
    let Some(backend) = app.result_backend() else {
        return Err(TaskError::new(format!(
            "{CHORD_UNLOCK} needs a result backend to read chord {}'s header results; start \
             this worker with the producer's result backend",
            unlock.group_id
        )));
    };
    match poll(backend.as_ref(), &unlock.header).await {
        Ok(Some(parts)) => complete(app, backend.as_ref(), request, &unlock, &parts).await,
        Ok(None) | Err(_) if out_of_retries(request, &unlock) => {
            let error = ExceptionInfo::new(
                "celery.exceptions",
                "ChordError",
                "chord_unlock could not be retried: MaxRetriesExceededError",
            );
            warn!(group = %unlock.group_id, "the chord's header is not ready and chord_unlock ran out of retries; failing its body");
            fail_body(app, backend.as_ref(), request, &unlock, &error).await
        }
        Ok(None) => Err(unlock.poll_again(request, None)),
        Err(e) => Err(unlock.poll_again(request, Some(TaskError::from_error(e)))),
    }
}

/// Whether this run was the last `max_retries` allows.
fn out_of_retries(request: &Request, unlock: &Unlock) -> bool {
    unlock.max_retries.is_some_and(|max| request.retries >= max)
}

/// Every header task's final result, in order, or `None` while one is not
/// ready.
async fn poll(
    backend: &dyn ResultBackend,
    header: &[String],
) -> Result<Option<Vec<ChordPart>>, celeriac::result::BackendError> {
    let mut parts = Vec::with_capacity(header.len());
    for id in header {
        match backend.get(id).await?.and_then(ChordPart::of_ready) {
            Some(part) => parts.push(part),
            None => return Ok(None),
        }
    }
    Ok(Some(parts))
}

/// Applies the body with the header's results, or fails it if a header
/// task failed or the body cannot be sent.
async fn complete(
    app: &App,
    backend: &dyn ResultBackend,
    request: &Request,
    unlock: &Unlock,
    parts: &[ChordPart],
) -> Result<(), TaskError> {
    let results = match join(parts) {
        Ok(results) => results,
        Err(failure) => {
            warn!(group = %unlock.group_id, dependency = %failure.task_id, "a chord header task failed; failing its body");
            return fail_body(app, backend, request, unlock, &failure.chord_error()).await;
        }
    };
    let apply = Apply {
        prepend: vec![Value::Array(results)],
        parent: Some(request),
        chain: None,
    };
    match app.apply_signature(&unlock.body, apply).await {
        Ok(_) => {
            info!(group = %unlock.group_id, body = %unlock.body.task, "chord complete; body sent");
            Ok(())
        }
        Err(e) => {
            error!(group = %unlock.group_id, body = %unlock.body.task, error = %e, "sending the chord's body failed; failing it");
            let error = ExceptionInfo::new(
                "celery.exceptions",
                "ChordError",
                format!("Callback error: {e}"),
            );
            fail_body(app, backend, request, unlock, &error).await
        }
    }
}

/// Stores `FAILURE` for the body (and its chain) and sends its errbacks;
/// if the store is away, polls again later rather than lose the failure.
async fn fail_body(
    app: &App,
    backend: &dyn ResultBackend,
    request: &Request,
    unlock: &Unlock,
    error: &ExceptionInfo,
) -> Result<(), TaskError> {
    for (failed, meta) in body_failures(&unlock.body, error) {
        if let Err(e) = backend.store(&meta, &failed).await {
            return Err(unlock.poll_again(request, Some(TaskError::from_error(e))));
        }
    }
    for (errback, apply) in errbacks_of(&unlock.body) {
        if let Err(e) = app.apply_signature(&errback, apply).await {
            error!(errback = %errback.task, error = %e, "sending a chord body's errback failed");
        }
    }
    Ok(())
}
