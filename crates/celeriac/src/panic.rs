//! Panics inside tasks become failures, never a dead worker, and their
//! failure says where the task panicked.
//!
//! The location comes from a panic hook installed the first time a task
//! runs: it records where each panic happened (on the panicking thread)
//! and then calls the hook that was there before, so panic messages are
//! printed as they were.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use serde_json::Value;

use crate::task_error::{RUST_EXCEPTION_MODULE, SourceLocation};
use crate::{TaskError, TaskFuture};

thread_local! {
    /// Where the last panic on this thread happened.
    static LAST_PANIC: RefCell<Option<SourceLocation>> = const { RefCell::new(None) };
}

/// Installs the location-recording hook, once per process.
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(location) = info.location() {
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(location.into()));
            }
            previous(info);
        }));
    });
}

/// Where the last panic on this thread happened, forgotten once read.
fn take_location() -> Option<SourceLocation> {
    LAST_PANIC.with(|last| last.borrow_mut().take())
}

/// Runs a task's future, turning a panic into a `TaskPanicked` failure.
/// `#[task]` wraps every generated task in it, and the worker wraps every
/// task it runs, so hand-written tasks are covered too.
pub fn catch_panic<F>(future: F) -> TaskFuture
where
    F: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    install_hook();
    Box::pin(CatchPanic(Box::pin(future)))
}

/// Runs a blocking task body on tokio's blocking pool; a panic there is a
/// `TaskPanicked` failure saying where it happened. `#[task]` uses it for
/// plain `fn` tasks.
pub async fn run_blocking<T, F>(body: F) -> Result<T, TaskError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    install_hook();
    let run = tokio::task::spawn_blocking(move || {
        catch_unwind(AssertUnwindSafe(body)).map_err(|payload| panicked(payload.as_ref()))
    });
    match run.await {
        Ok(result) => result,
        Err(error) => Err(join_error(error)),
    }
}

/// Turns a failed `spawn_blocking` (a panic or a cancellation) into a failure.
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

/// The failure for a panic caught on this thread.
fn panicked(payload: &(dyn Any + Send)) -> TaskError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    let error = TaskError::python(
        RUST_EXCEPTION_MODULE,
        "TaskPanicked",
        format!("the task panicked: {message}"),
    );
    match take_location() {
        Some(location) => error.at(location),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_are_failures_that_say_where() {
        let line = line!() + 2;
        let failed = catch_panic(async {
            panic!("deliberate");
        })
        .await
        .unwrap_err();
        assert_eq!(failed.exception_info().exc_type, "TaskPanicked");
        let at = failed.location().expect("the hook recorded the location");
        assert!(at.file.ends_with("panic.rs") && at.line == line, "{at:?}");
        let blocking = run_blocking(|| -> u32 { panic!("in a blocking task") })
            .await
            .unwrap_err();
        assert!(blocking.message().contains("in a blocking task"));
        assert!(
            blocking
                .location()
                .is_some_and(|at| at.file.ends_with("panic.rs"))
        );
    }
}
