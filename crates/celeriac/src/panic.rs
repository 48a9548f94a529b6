//! Panics inside tasks become failures, never a dead worker.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;

use crate::task_error::RUST_EXCEPTION_MODULE;
use crate::{TaskError, TaskFuture};

/// Runs a task's future, turning a panic into a `TaskPanicked` failure.
/// `#[task]` wraps every generated task in it, and the worker wraps every
/// task it runs, so hand-written tasks are covered too.
pub fn catch_panic<F>(future: F) -> TaskFuture
where
    F: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    Box::pin(CatchPanic(Box::pin(future)))
}

/// Turns a panic in a blocking task (a failed `spawn_blocking`) into a failure.
pub fn join_error(error: tokio::task::JoinError) -> TaskError {
    match error.try_into_panic() {
        Ok(payload) => panicked(payload.as_ref()),
        Err(error) => TaskError::new(format!("the task was cancelled: {error}")),
    }
}

struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future<Output = Result<Value, TaskError>>> Future for CatchPanic<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(panicked(payload.as_ref()))),
        }
    }
}

fn panicked(payload: &(dyn Any + Send)) -> TaskError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    TaskError::python(
        RUST_EXCEPTION_MODULE,
        "TaskPanicked",
        format!("the task panicked: {message}"),
    )
}
