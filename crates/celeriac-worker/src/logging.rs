//! Log output: text for people, JSON lines for log pipelines. `RUST_LOG`
//! filters either when it is set.
//!
//! Lines logged while a task runs are inside its `task` span, so they carry
//! `task` (the name), `task_id`, `retries`, `queue` and, when the message
//! carried a W3C `traceparent`, `trace_id` (in JSON: under `"span"`).
//! Text lines are coloured only on a terminal, and never when `NO_COLOR`
//! is set: colour codes cost time and clutter files and log collectors.
//! Without colours they are written by [`crate::log_lines`].

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

use crate::log_lines::{PlainFields, PlainLine};

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the current task's span fields.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log_format must be text or json, got {other:?}")),
        }
    }
}

/// Sets up text logging: `RUST_LOG` if set, else `loglevel` for Celeriac.
/// The AMQP client's own log lines are off by default (Celeriac reports
/// what they mean); `RUST_LOG=lapin=debug` shows them.
pub fn init_logging(loglevel: &str) {
    init_logging_as(loglevel, LogFormat::Text);
}

/// Sets up logging in `format`, filtered as [`init_logging`] filters.
pub fn init_logging_as(loglevel: &str, format: LogFormat) {
    let colours = colours_wanted();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter(loglevel))
        .with_target(false)
        .with_ansi(colours);
    let _ = match format {
        LogFormat::Text if colours => builder.fmt_fields(PlainFields).try_init(),
        LogFormat::Text => builder
            .fmt_fields(PlainFields)
            .event_format(PlainLine)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The span export to flush when the worker exits (see
/// [`crate::otel::OtlpExport`]).
#[cfg(feature = "otel")]
pub(crate) type SpanExport = crate::otel::OtlpExport;

/// Without the `otel` feature there is no span export.
#[cfg(not(feature = "otel"))]
#[derive(Debug)]
pub(crate) enum SpanExport {}

#[cfg(not(feature = "otel"))]
impl SpanExport {
    /// Never called: no value of this type exists.
    pub(crate) fn shutdown(self) {
        match self {}
    }
}

/// Logging as [`init_logging_as`] sets it up and, when `otlp_endpoint` is
/// given, the task spans exported there (from the worker `node`).
pub(crate) fn init_logging_for_worker(
    loglevel: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    node: &str,
) -> Result<Option<SpanExport>, String> {
    let Some(endpoint) = otlp_endpoint else {
        init_logging_as(loglevel, format);
        return Ok(None);
    };
    #[cfg(feature = "otel")]
    {
        init_logging_exporting(loglevel, format, endpoint, node).map(Some)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = node;
        Err(format!(
            "otlp_endpoint is {endpoint:?}, but this worker was built without span export: \
             build it with the `otel` cargo feature (e.g. `cargo build --features celeriac-worker/otel`)"
        ))
    }
}

/// Logging, plus a layer exporting the spans at info and above (whatever
/// the log level) to the collector at `endpoint`.
#[cfg(feature = "otel")]
fn init_logging_exporting(
    loglevel: &str,
    format: LogFormat,
    endpoint: &str,
    node: &str,
) -> Result<SpanExport, String> {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let colours = colours_wanted();
    let lines = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(colours);
    let lines = match format {
        LogFormat::Text if colours => lines.fmt_fields(PlainFields).boxed(),
        LogFormat::Text => lines
            .fmt_fields(PlainFields)
            .event_format(PlainLine)
            .boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let (spans, export) = crate::otel::layer(endpoint, node).map_err(|e| e.to_string())?;
    let exported = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("lapin", LevelFilter::OFF);
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(env_filter(loglevel)))
        .with(spans.with_filter(exported))
        .try_init();
    Ok(export)
}

/// `RUST_LOG` if set, else `loglevel` for everything but the AMQP client.
fn env_filter(loglevel: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(format!("{loglevel},lapin=off")),
    }
}

/// Whether text lines get ANSI colours: stdout is a terminal and the
/// user did not ask for none (<https://no-color.org>).
fn colours_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_from_files_and_flags() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" Text ".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!(
            "yaml"
                .parse::<LogFormat>()
                .unwrap_err()
                .contains("text or json")
        );
    }
}
