//! What a task returns when it does not succeed.
//!
//! A [`TaskError`] becomes a Celery failure whose `exc_type`, `exc_module`
//! and `exc_message` make Python's `AsyncResult.get()` raise an exception
//! carrying the message (§4.2). Any `std::error::Error` converts with `?`;
//! [`TaskError::python`] picks a real Python exception type instead.
//! A retry request ([`crate::Request::retry`]) is a `TaskError` too, so
//! `return Err(request.retry().countdown(..).into())` reads naturally.

use std::error::Error as StdError;
use std::fmt;
use std::panic::Location;
use std::time::Duration;

use celeriac_protocol::ExceptionInfo;
use chrono::{DateTime, Utc};

/// The module Python sees for errors raised by Rust code. It does not exist
/// in Python, so `AsyncResult.get()` raises a stand-in class with the Rust
/// error's type name.
pub const RUST_EXCEPTION_MODULE: &str = "celeriac.exceptions";

/// How a task ended, when it did not return a value.
#[derive(Debug)]
pub enum TaskErrorKind {
    /// The task failed.
    Failure,
    /// The task asked to be retried.
    Retry(RetryRequest),
    /// The task asked for its message to be rejected (`requeue` puts it back
    /// on the queue; otherwise it is dead-lettered).
    Reject {
        /// Put the message back on the queue.
        requeue: bool,
    },
}

/// What a retry asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryRequest {
    /// Delay before the next attempt (default: the task's retry policy).
    pub countdown: Option<Duration>,
    /// Or an absolute time for the next attempt.
    pub eta: Option<DateTime<Utc>>,
    /// Overrides the task's `max_retries` for this decision.
    pub max_retries: Option<u32>,
}

/// A task's failure, retry request or rejection. One pointer wide, so
/// `Result<T, TaskError>` stays small.
pub struct TaskError(Box<Inner>);

struct Inner {
    kind: TaskErrorKind,
    exc_type: String,
    exc_module: String,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    /// Where the error was made (the `?` or the constructor call), or where
    /// the task panicked.
    location: Option<SourceLocation>,
}

/// A place in the source: where a task's error was raised or its panic
/// happened, for the traceback stored with its failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// The source file, as the compiler names it.
    pub file: String,
    /// The line.
    pub line: u32,
    /// The column.
    pub column: u32,
}

impl From<&Location<'_>> for SourceLocation {
    fn from(location: &Location<'_>) -> SourceLocation {
        SourceLocation {
            file: location.file().to_owned(),
            line: location.line(),
            column: location.column(),
        }
    }
}

impl TaskError {
    /// A failure with a message; Python sees `celeriac.exceptions.TaskError`.
    ///
    /// ```
    /// let err = celeriac::TaskError::new("image too large");
    /// assert_eq!(err.exception_info().message(), "image too large");
    /// ```
    #[track_caller]
    pub fn new(message: impl Into<String>) -> TaskError {
        TaskError::python(RUST_EXCEPTION_MODULE, "TaskError", message)
    }

    /// A failure that Python raises as `exc_module.exc_type(message)`, e.g.
    /// `TaskError::python("builtins", "ValueError", "bad width")`.
    #[track_caller]
    pub fn python(exc_module: &str, exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError(Box::new(Inner {
            kind: TaskErrorKind::Failure,
            exc_type: exc_type.to_owned(),
            exc_module: exc_module.to_owned(),
            message: message.into(),
            source: None,
            location: Some(Location::caller().into()),
        }))
    }

    /// A failure wrapping any error. Common standard errors become the
    /// Python exception a Python caller would catch (see
    /// [`python_exception`]): an `std::io::Error` of kind `NotFound` is a
    /// `FileNotFoundError`, any other an `OSError`, a failed number parse
    /// a `ValueError`. Other errors keep their Rust type name, in module
    /// [`RUST_EXCEPTION_MODULE`].
    ///
    /// ```
    /// use celeriac::TaskError;
    /// let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file: a.png");
    /// let info = TaskError::from_error(missing).exception_info();
    /// assert_eq!((info.exc_module.as_deref(), info.exc_type.as_str()), (Some("builtins"), "FileNotFoundError"));
    /// ```
    #[track_caller]
    pub fn from_error<E: StdError + Send + Sync + 'static>(error: E) -> TaskError {
        let (exc_module, exc_type) =
            python_exception(&error).unwrap_or((RUST_EXCEPTION_MODULE, short_type_name::<E>()));
        TaskError(Box::new(Inner {
            kind: TaskErrorKind::Failure,
            exc_type: exc_type.to_owned(),
            exc_module: exc_module.to_owned(),
            message: error.to_string(),
            source: Some(Box::new(error)),
            location: Some(Location::caller().into()),
        }))
    }

    /// A failure from anything displayable (e.g. an `anyhow::Error`).
    #[track_caller]
    pub fn from_display(error: impl fmt::Display) -> TaskError {
        TaskError::new(error.to_string())
    }

    /// A retry request; usually built with [`crate::Request::retry`].
    #[track_caller]
    pub fn retry(request: RetryRequest, cause: Option<TaskError>) -> TaskError {
        let here = Some(Location::caller().into());
        let (exc_type, exc_module, message, source, location) = match cause {
            Some(c) => {
                let c = *c.0;
                (
                    c.exc_type,
                    c.exc_module,
                    c.message,
                    c.source,
                    c.location.or(here),
                )
            }
            None => (
                "Retry".to_owned(),
                "celery.exceptions".to_owned(),
                "Retry requested".to_owned(),
                None,
                here,
            ),
        };
        TaskError(Box::new(Inner {
            kind: TaskErrorKind::Retry(request),
            exc_type,
            exc_module,
            message,
            source,
            location,
        }))
    }

    /// Asks for the message to be rejected; `requeue` puts it back on the
    /// queue, otherwise it is dead-lettered with this error.
    #[track_caller]
    pub fn reject(requeue: bool, message: impl Into<String>) -> TaskError {
        TaskError(Box::new(Inner {
            kind: TaskErrorKind::Reject { requeue },
            exc_type: "Reject".to_owned(),
            exc_module: "celery.exceptions".to_owned(),
            message: message.into(),
            source: None,
            location: Some(Location::caller().into()),
        }))
    }

    /// This error as raised at `location` instead (a panic's location).
    pub fn at(mut self, location: SourceLocation) -> TaskError {
        self.0.location = Some(location);
        self
    }

    /// The argument-binding failure Python callers expect: a `TypeError`.
    #[track_caller]
    pub(crate) fn type_error(message: impl Into<String>) -> TaskError {
        TaskError::python("builtins", "TypeError", message)
    }

    /// Whether the task ended this way (failure, retry or reject).
    pub fn kind(&self) -> &TaskErrorKind {
        &self.0.kind
    }

    /// Whether the underlying error is of type `E` (for retry policies).
    pub fn is<E: StdError + 'static>(&self) -> bool {
        self.0.source.as_ref().is_some_and(|s| s.is::<E>())
    }

    /// The underlying error, if this wraps one.
    pub fn source_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.0.source.as_deref()
    }

    /// The error text.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Where the error was raised: the `?` that converted it, the call that
    /// built it, or where the task panicked.
    pub fn location(&self) -> Option<&SourceLocation> {
        self.0.location.as_ref()
    }

    /// A traceback for Python's `AsyncResult.traceback`, in Python's layout:
    /// where the error was raised in task `task`, the exception, and the
    /// chain of Rust errors that caused it.
    ///
    /// ```text
    /// Traceback (most recent call last):
    ///   File "src/tasks.rs", line 12, column 9, in images.resize
    /// ImageError: cannot decode image
    /// Caused by: invalid PNG header
    /// ```
    pub fn traceback(&self, task: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("Traceback (most recent call last):\n");
        match &self.0.location {
            Some(at) => {
                let _ = writeln!(
                    out,
                    "  File \"{}\", line {}, column {}, in {task}",
                    at.file, at.line, at.column
                );
            }
            None => {
                let _ = writeln!(out, "  (in the Rust task {task}; location unknown)");
            }
        }
        let _ = writeln!(out, "{}: {}", self.0.exc_type, self.0.message);
        let mut cause = self.0.source.as_deref().and_then(StdError::source);
        while let Some(error) = cause {
            let _ = writeln!(out, "Caused by: {error}");
            cause = error.source();
        }
        out
    }

    /// The exception as Celery stores it in a result.
    pub fn exception_info(&self) -> ExceptionInfo {
        ExceptionInfo::new(&self.0.exc_module, &self.0.exc_type, self.0.message.clone())
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for TaskError {
    #[track_caller]
    fn from(error: E) -> TaskError {
        TaskError::from_error(error)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.0.kind)
            .field("exc_type", &self.0.exc_type)
            .field("exc_module", &self.0.exc_module)
            .field("message", &self.0.message)
            .finish()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.exc_type, self.0.message)
    }
}

/// The Python exception (module, type) for a standard Rust error, where a
/// Python caller would expect one:
///
/// | Rust | Python |
/// |---|---|
/// | `std::io::Error` of kind `NotFound`, `PermissionDenied`, `AlreadyExists`, `TimedOut`, `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `BrokenPipe`, `Interrupted`, `WouldBlock`, `IsADirectory`, `NotADirectory` | `FileNotFoundError`, `PermissionError`, `FileExistsError`, `TimeoutError`, `ConnectionRefusedError`, `ConnectionResetError`, `ConnectionAbortedError`, `BrokenPipeError`, `InterruptedError`, `BlockingIOError`, `IsADirectoryError`, `NotADirectoryError` |
/// | any other `std::io::Error` | `OSError` |
/// | `ParseIntError`, `ParseFloatError`, `ParseBoolError`, `Utf8Error`, `FromUtf8Error`, `serde_json::Error` | `ValueError` |
/// | `tokio::time::error::Elapsed` | `TimeoutError` |
///
/// All in module `builtins`. `None` for any other error.
pub fn python_exception(error: &(dyn StdError + 'static)) -> Option<(&'static str, &'static str)> {
    use std::io::ErrorKind;
    let python = |exc_type| Some(("builtins", exc_type));
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        return python(match io.kind() {
            ErrorKind::NotFound => "FileNotFoundError",
            ErrorKind::PermissionDenied => "PermissionError",
            ErrorKind::AlreadyExists => "FileExistsError",
            ErrorKind::TimedOut => "TimeoutError",
            ErrorKind::ConnectionRefused => "ConnectionRefusedError",
            ErrorKind::ConnectionReset => "ConnectionResetError",
            ErrorKind::ConnectionAborted => "ConnectionAbortedError",
            ErrorKind::BrokenPipe => "BrokenPipeError",
            ErrorKind::Interrupted => "InterruptedError",
            ErrorKind::WouldBlock => "BlockingIOError",
            ErrorKind::IsADirectory => "IsADirectoryError",
            ErrorKind::NotADirectory => "NotADirectoryError",
            _ => "OSError",
        });
    }
    let value_error = error.is::<std::num::ParseIntError>()
        || error.is::<std::num::ParseFloatError>()
        || error.is::<std::str::ParseBoolError>()
        || error.is::<std::str::Utf8Error>()
        || error.is::<std::string::FromUtf8Error>()
        || error.is::<serde_json::Error>();
    if value_error {
        return python("ValueError");
    }
    if error.is::<tokio::time::error::Elapsed>() {
        return python("TimeoutError");
    }
    None
}

/// `my_crate::errors::ImageError` → `ImageError` (generic arguments dropped).
fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct ImageError;
    impl fmt::Display for ImageError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot decode image")
        }
    }
    impl StdError for ImageError {}

    #[test]
    fn rust_errors_keep_their_type_name_and_message() {
        let err: TaskError = ImageError.into();
        let info = err.exception_info();
        assert_eq!(
            (info.exc_type.as_str(), info.message()),
            ("ImageError", "cannot decode image".to_owned())
        );
        assert_eq!(info.exc_module.as_deref(), Some(RUST_EXCEPTION_MODULE));
        assert!(err.is::<ImageError>());
        assert!(!err.is::<std::io::Error>());
    }

    #[test]
    fn standard_errors_become_the_python_exception_a_caller_expects() {
        use std::io::{Error, ErrorKind};
        let info = |err: TaskError| {
            let info = err.exception_info();
            (info.exc_module.unwrap_or_default(), info.exc_type)
        };
        let builtin = |t: &str| ("builtins".to_owned(), t.to_owned());
        assert_eq!(
            info(Error::new(ErrorKind::NotFound, "x").into()),
            builtin("FileNotFoundError")
        );
        assert_eq!(
            info(Error::other("disk on fire").into()),
            builtin("OSError")
        );
        assert_eq!(
            info("x".parse::<u8>().unwrap_err().into()),
            builtin("ValueError")
        );
        let json = serde_json::from_str::<u8>("[").unwrap_err();
        assert_eq!(info(json.into()), builtin("ValueError"));
        let io: TaskError = Error::new(ErrorKind::TimedOut, "slow").into();
        assert!(io.is::<Error>(), "the source stays inspectable");
        assert_eq!(io.message(), "slow");
    }

    #[test]
    fn tracebacks_say_where_the_error_was_raised() {
        fn fails() -> Result<(), TaskError> {
            Err(std::io::Error::other("disk full"))?;
            Ok(())
        }
        let err = fails().unwrap_err();
        let location = err.location().expect("the ? records where");
        assert!(location.file.ends_with("task_error.rs"), "{location:?}");
        let traceback = err.traceback("files.save");
        assert!(traceback.starts_with("Traceback (most recent call last):\n"));
        assert!(traceback.contains(&format!("line {}", location.line)));
        assert!(traceback.contains("in files.save"));
        assert!(traceback.contains("OSError: disk full"), "{traceback}");
    }

    #[test]
    fn retries_carry_their_cause() {
        let cause = TaskError::python("builtins", "ConnectionError", "refused");
        let retry = TaskError::retry(RetryRequest::default(), Some(cause));
        assert!(matches!(retry.kind(), TaskErrorKind::Retry(_)));
        assert_eq!(retry.exception_info().exc_type, "ConnectionError");
    }
}
