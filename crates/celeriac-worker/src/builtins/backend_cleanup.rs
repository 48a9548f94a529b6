//! `celery.backend_cleanup`: deletes the results older than
//! `result_expires` from a store where they do not expire by themselves
//! (SQL databases). Celery's beat sends it daily at 04:00; on Redis and
//! `rpc://` it has nothing to do.

use celeriac::{
    App, Arguments, BACKEND_CLEANUP, Request, Task, TaskError, TaskFuture, TaskOptions,
};
use serde_json::Value;
use tracing::info;

/// The built-in `celery.backend_cleanup` task.
pub(crate) struct BackendCleanup {
    app: App,
}

impl BackendCleanup {
    pub(crate) fn new(app: App) -> BackendCleanup {
        BackendCleanup { app }
    }
}

impl Task for BackendCleanup {
    fn name(&self) -> &str {
        BACKEND_CLEANUP
    }

    fn options(&self) -> TaskOptions {
        TaskOptions {
            ignore_result: Some(true),
            ..TaskOptions::default()
        }
    }

    fn call(&self, _request: Request, args: Arguments) -> TaskFuture {
        let app = self.app.clone();
        Box::pin(async move {
            args.finish()?;
            let Some(backend) = app.result_backend() else {
                return Ok(Value::Null);
            };
            let deleted = backend.cleanup().await.map_err(TaskError::from_error)?;
            if deleted > 0 {
                info!(deleted, backend = %backend.url(), "deleted expired results");
            }
            Ok(Value::from(deleted))
        })
    }
}
