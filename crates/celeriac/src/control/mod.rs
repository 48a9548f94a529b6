//! Remote control from Rust: what Python's `app.control` and `celery
//! inspect` / `celery control` do, answered by Python and Rust workers
//! alike.
//!
//! ```no_run
//! # async fn demo(app: celeriac::App) -> Result<(), celeriac::Error> {
//! use std::time::Duration;
//! let control = app.control().timeout(Duration::from_secs(2));
//! for reply in control.ping().await? {
//!     println!("{}: {:?}", reply.node, reply.value);
//! }
//! control.clone().to(["celeriac@w1"]).rate_limit("images.resize", "10/m").await?;
//! control.revoke(&["d9c1f0c2-…"], false).await?;
//! # Ok(()) }
//! ```
//!
//! Inspect commands (`ping`, `stats`, `active`, ...) are calls: every
//! worker that acts answers, and the replies are gathered until as many as
//! there are destinations arrived or none came for the timeout (1 s by
//! default, as in Celery). `shutdown` is a cast: workers do not answer it.

mod mailbox;

use std::time::Duration;

use celeriac_protocol::control::{
    ControlOutcome, ControlRequest, QueueDoc, RequestInfo, ScheduledInfo, WorkerStats,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

pub(crate) use mailbox::Mailbox;

use crate::{App, Error};

/// Celery's default time to wait for control replies.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Remote control of the workers an app's broker serves (`app.control()`).
#[derive(Debug, Clone)]
pub struct Control {
    app: App,
    destination: Option<Vec<String>>,
    timeout: Duration,
}

/// One worker's reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<T> {
    /// The worker's node name.
    pub node: String,
    /// What it answered, or why that is not a `T`.
    pub value: Result<T, ReplyError>,
}

/// Why a worker's reply is not the expected value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    /// The worker answered `{"error": ...}`: it could not do it.
    #[error("{0}")]
    Refused(String),
    /// The reply is not shaped as expected.
    #[error("unexpected reply ({detail}): {raw}")]
    Shape {
        /// What did not fit.
        detail: String,
        /// The reply as received.
        raw: Value,
    },
}

impl App {
    /// Remote control of this broker's workers, Python's included.
    pub fn control(&self) -> Control {
        Control {
            app: self.clone(),
            destination: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Control {
    /// Limits the commands to these node names (`celery -d`).
    pub fn to<S: Into<String>>(mut self, nodes: impl IntoIterator<Item = S>) -> Control {
        self.destination = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// How long to wait for the next reply before giving up (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Control {
        self.timeout = timeout;
        self
    }

    fn request(&self, method: &str, arguments: Value) -> ControlRequest {
        let mut request = ControlRequest::new(method);
        if let Value::Object(arguments) = arguments {
            request.arguments = arguments;
        }
        request.destination.clone_from(&self.destination);
        request
    }

    /// Sends `method` with `arguments` (an object) and gathers the raw
    /// replies: the escape hatch for commands without a typed method.
    pub async fn call(&self, method: &str, arguments: Value) -> Result<Vec<Reply<Value>>, Error> {
        let limit = self.destination.as_ref().map(Vec::len).filter(|n| *n > 0);
        let replies = self
            .app
            .mailbox()
            .call(self.request(method, arguments), self.timeout, limit)
            .await?;
        Ok(replies
            .into_iter()
            .map(|r| Reply {
                node: r.node,
                value: Ok(r.value),
            })
            .collect())
    }

    /// Sends `method` with `arguments` without waiting for replies.
    pub async fn cast(&self, method: &str, arguments: Value) -> Result<(), Error> {
        self.app
            .mailbox()
            .cast(&self.request(method, arguments), self.timeout)
            .await
    }

    async fn typed<T: DeserializeOwned>(
        &self,
        method: &str,
        arguments: Value,
    ) -> Result<Vec<Reply<T>>, Error> {
        Ok(self
            .call(method, arguments)
            .await?
            .into_iter()
            .map(|reply| Reply {
                node: reply.node,
                value: reply.value.and_then(decode),
            })
            .collect())
    }

    /// `ping`: every worker that is up answers `pong`.
    pub async fn ping(&self) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("ping", json!({})).await
    }

    /// `stats`: pool, totals per task, uptime, prefetch, resource usage.
    pub async fn stats(&self) -> Result<Vec<Reply<WorkerStats>>, Error> {
        self.typed("stats", json!({})).await
    }

    /// `active`: the tasks running now.
    pub async fn active(&self) -> Result<Vec<Reply<Vec<RequestInfo>>>, Error> {
        self.typed("active", json!({"safe": null})).await
    }

    /// `reserved`: tasks received and waiting to run.
    pub async fn reserved(&self) -> Result<Vec<Reply<Vec<RequestInfo>>>, Error> {
        self.typed("reserved", json!({"safe": null})).await
    }

    /// `scheduled`: tasks held until their ETA.
    pub async fn scheduled(&self) -> Result<Vec<Reply<Vec<ScheduledInfo>>>, Error> {
        self.typed("scheduled", json!({"safe": null})).await
    }

    /// `registered`: the task names each worker runs.
    pub async fn registered(&self) -> Result<Vec<Reply<Vec<String>>>, Error> {
        self.typed("registered", json!({"taskinfoitems": []})).await
    }

    /// `active_queues`: the queues each worker consumes.
    pub async fn active_queues(&self) -> Result<Vec<Reply<Vec<QueueDoc>>>, Error> {
        self.typed("active_queues", json!({})).await
    }

    /// `revoked`: the revoked task ids each worker remembers.
    pub async fn revoked(&self) -> Result<Vec<Reply<Vec<String>>>, Error> {
        self.typed("revoked", json!({})).await
    }

    /// `conf`: each worker's configuration.
    pub async fn conf(&self) -> Result<Vec<Reply<Map<String, Value>>>, Error> {
        self.typed("conf", json!({"with_defaults": false})).await
    }

    /// `query_task`: what each worker knows of these task ids
    /// (`{id: [state, request info]}`).
    pub async fn query_task(&self, ids: &[&str]) -> Result<Vec<Reply<Map<String, Value>>>, Error> {
        self.typed("query_task", json!({"ids": ids})).await
    }

    /// `revoke`: the tasks never run; with `terminate`, running async tasks
    /// are cancelled at their next await.
    pub async fn revoke(
        &self,
        ids: &[&str],
        terminate: bool,
    ) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        let arguments = json!({"task_id": ids, "terminate": terminate, "signal": "SIGTERM"});
        self.typed("revoke", arguments).await
    }

    /// `revoke_by_stamped_headers`: revokes tasks whose stamps match.
    pub async fn revoke_by_stamped_headers(
        &self,
        headers: Map<String, Value>,
        terminate: bool,
    ) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        let arguments = json!({"headers": headers, "terminate": terminate, "signal": "SIGTERM"});
        self.typed("revoke_by_stamped_headers", arguments).await
    }

    /// `rate_limit`: at most `rate` runs of `task` per worker (`"10/s"`,
    /// `"100/m"`, `"1000/h"`; `"0"` removes the limit).
    pub async fn rate_limit(
        &self,
        task: &str,
        rate: &str,
    ) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("rate_limit", json!({"task_name": task, "rate_limit": rate}))
            .await
    }

    /// `time_limit`: new soft and hard time limits for `task`, in seconds.
    pub async fn time_limit(
        &self,
        task: &str,
        soft: Option<f64>,
        hard: Option<f64>,
    ) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed(
            "time_limit",
            json!({"task_name": task, "soft": soft, "hard": hard}),
        )
        .await
    }

    /// `add_consumer`: start consuming `queue`.
    pub async fn add_consumer(&self, queue: &str) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("add_consumer", json!({"queue": queue})).await
    }

    /// `cancel_consumer`: stop consuming `queue`.
    pub async fn cancel_consumer(&self, queue: &str) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("cancel_consumer", json!({"queue": queue})).await
    }

    /// `pool_grow`: allow `n` more tasks at once.
    pub async fn pool_grow(&self, n: usize) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("pool_grow", json!({"n": n})).await
    }

    /// `pool_shrink`: allow `n` fewer tasks at once.
    pub async fn pool_shrink(&self, n: usize) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("pool_shrink", json!({"n": n})).await
    }

    /// `enable_events`: start sending task events.
    pub async fn enable_events(&self) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("enable_events", json!({})).await
    }

    /// `disable_events`: stop sending task events.
    pub async fn disable_events(&self) -> Result<Vec<Reply<ControlOutcome>>, Error> {
        self.typed("disable_events", json!({})).await
    }

    /// `shutdown`: workers finish their running tasks and exit (no reply).
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.cast("shutdown", json!({})).await
    }
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T, ReplyError> {
    if let Some(Value::String(error)) = value.as_object().and_then(|o| o.get("error"))
        && value.as_object().is_some_and(|o| o.len() == 1)
    {
        return Err(ReplyError::Refused(error.clone()));
    }
    serde_json::from_value(value.clone()).map_err(|e| ReplyError::Shape {
        detail: e.to_string(),
        raw: value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_refusals_and_odd_ones_say_so() {
        let refused: Result<ControlOutcome, _> = decode(json!({"error": "unknown task"}));
        assert_eq!(refused, Err(ReplyError::Refused("unknown task".into())));
        let odd: Result<Vec<String>, _> = decode(json!({"nope": 1}));
        assert!(matches!(odd, Err(ReplyError::Shape { .. })));
        let fine: Result<Vec<String>, _> = decode(json!(["demo.add"]));
        assert_eq!(fine, Ok(vec!["demo.add".to_owned()]));
    }
}
