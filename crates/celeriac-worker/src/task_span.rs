//! The `tracing` span of one task's run.
//!
//! Its target is this module, `celeriac_worker::task_span`, so a log filter
//! can drop it without dropping the worker's own lines:
//! `RUST_LOG=info,lapin=off,celeriac_worker::task_span=off`.

use celeriac::{Request, TaskErrorKind};
use tracing::field::Empty;
use tracing::{Span, info_span};

use crate::execute::Ran;

/// Opens the span of a task's run: its name (`task`), `task_id`,
/// retries, queue, the `trace_id` it continues (if its message carried
/// one) and, once [`record_outcome`] says, its outcome. `otel.name` and
/// `otel.kind` are set only when spans are exported over OTLP (the `otel`
/// feature).
pub(crate) fn open(request: &Request, queue: &str) -> Span {
    info_span!(
        "task",
        task = request.task.as_str(),
        task_id = request.id.as_str(),
        retries = request.retries,
        queue,
        trace_id = request
            .trace
            .map(|trace| tracing::field::display(trace.trace_id_hex())),
        outcome = Empty,
        otel.name = Empty,
        otel.kind = Empty,
    )
}

/// Records how the run ended on its span.
pub(crate) fn record_outcome(span: &Span, ran: &Ran) {
    let outcome = outcome_of(ran);
    span.record("outcome", outcome);
    #[cfg(feature = "otel")]
    crate::otel::mark_outcome(span, outcome);
}

/// What a run's result means, for its span.
fn outcome_of(ran: &Ran) -> &'static str {
    match ran {
        Ran::Finished(Ok(_)) => "succeeded",
        Ran::Finished(Err(err)) => match err.kind() {
            TaskErrorKind::Retry(_) => "retry",
            TaskErrorKind::Reject { .. } => "rejected",
            TaskErrorKind::Failure => "failed",
        },
        Ran::Terminated => "terminated",
    }
}
