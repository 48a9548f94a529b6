//! Log output: text for people, JSON lines for log pipelines. `RUST_LOG`
//! filters either when it is set.
//!
//! Lines logged while a task runs are inside its `task` span, so they carry
//! `task` (the name), `task_id`, `retries`, `queue` and, when the message
//! carried a W3C `traceparent`, `trace_id` (in JSON: under `"span"`).
//! Text lines are coloured only on a terminal, and never when `NO_COLOR`
//! is set: colour codes cost time and clutter files and log collectors.

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

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
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(format!("{loglevel},lapin=off")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colours_wanted());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
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
