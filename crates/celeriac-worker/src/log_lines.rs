//! Text log lines written with plain string copies.
//!
//! `tracing_subscriber`'s default text output formats every field value,
//! span name and separator through `write!` and its styling code. A worker
//! logging at info writes two lines per task, each with the task span in
//! front, so that machinery was most of what the span cost (counted with
//! callgrind: docs/observability.md, "Cost"). Here strings are copied as
//! they are and only other values go through their `Debug` formatting.
//!
//! The lines read as the default ones do without colours:
//! `2026-12-06T06:34:26.123456Z  INFO task{task=demo.add task_id=…}: task started`.

use std::cell::RefCell;
use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// Fields as `name=value`, separated by spaces; the message bare. A string
/// is written as it is unless it is empty or holds a space, a quote, an
/// `=` or a control character; then it is quoted as `Debug` quotes it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    /// A span's fields are kept in a string of their own that starts empty;
    /// written piece by piece it would be reallocated at each doubling, so
    /// they are gathered in a reused buffer and copied over at once.
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        STAGING.with(|staging| match staging.try_borrow_mut() {
            Ok(mut staged) => {
                staged.clear();
                write_fields(Writer::new(&mut *staged), &fields)?;
                writer.write_str(&staged)
            }
            // A value whose formatting logs (re-entering here) is written
            // straight to the line.
            Err(_) => write_fields(writer, &fields),
        })
    }

    /// Fields recorded on a span after it opened (its outcome) are
    /// appended after a space, gathered first so the span's string grows
    /// once.
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        STAGING.with(|staging| match staging.try_borrow_mut() {
            Ok(mut staged) => {
                staged.clear();
                staged.push(' ');
                write_fields(Writer::new(&mut *staged), fields)?;
                current.fields.push_str(&staged);
                Ok(())
            }
            Err(_) => {
                current.fields.push(' ');
                write_fields(current.as_writer(), fields)
            }
        })
    }
}

thread_local! {
    /// Where [`PlainFields`] gathers one record's fields.
    static STAGING: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// Writes `fields` to `writer`.
fn write_fields(writer: Writer<'_>, fields: &impl RecordFields) -> fmt::Result {
    let mut visitor = FieldWriter {
        writer,
        separator: "",
        result: Ok(()),
    };
    fields.record(&mut visitor);
    visitor.result
}

/// Writes one record's fields, remembering the first error.
struct FieldWriter<'writer> {
    writer: Writer<'writer>,
    separator: &'static str,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    /// Writes the separator and, unless it is the message, `name=`.
    fn start(&mut self, field: &Field) -> fmt::Result {
        self.writer.write_str(self.separator)?;
        self.separator = " ";
        if field.name() != "message" {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        Ok(())
    }

    fn str_field(&mut self, field: &Field, value: &str) -> fmt::Result {
        self.start(field)?;
        if field.name() == "message" || is_bare(value) {
            self.writer.write_str(value)
        } else {
            write!(self.writer, "{value:?}")
        }
    }

    fn debug_field(&mut self, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
        self.start(field)?;
        write!(self.writer, "{value:?}")
    }

    fn number_field(&mut self, field: &Field, negative: bool, magnitude: u64) -> fmt::Result {
        self.start(field)?;
        if negative {
            self.writer.write_char('-')?;
        }
        self.writer.write_str(decimal(magnitude, &mut [0; 20]))
    }
}

/// `n` in decimal digits, written into the end of `digits`.
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &str {
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10` is below 10, so the cast keeps it whole.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (n % 10) as u8;
        digits[start] = b'0' + digit;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[start..]).unwrap_or("?")
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.str_field(field, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.number_field(field, false, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.number_field(field, value < 0, value.unsigned_abs());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.debug_field(field, value);
        }
    }
}

/// Whether `value` reads unambiguously without quotes after `name=`.
fn is_bare(value: &str) -> bool {
    // Every byte is looked at, without an early exit, so the loop compiles
    // to a few vector instructions per 16 bytes.
    let ambiguous = value.bytes().fold(false, |found, b| {
        found | (b <= b' ') | (b == b'"') | (b == b'=') | (b == 0x7f)
    });
    !value.is_empty() && !ambiguous
}

/// One line per event without colours: time, level, the spans it is in
/// (`name{fields}:`), then its fields.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlainLine;

impl<S, N> FormatEvent<S, N> for PlainLine
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut writer)?;
        writer.write_str(level_column(*event.metadata().level()))?;
        if let Some(mut scope) = ctx.event_scope()
            && let Some(innermost) = scope.next()
        {
            // Mostly the event is in the task span alone; otherwise the
            // spans are written outermost first.
            if innermost.parent().is_none() {
                write_span::<_, N>(&mut writer, &innermost)?;
            } else {
                for span in innermost.scope().from_root() {
                    write_span::<_, N>(&mut writer, &span)?;
                }
            }
            writer.write_char(' ')?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// Writes `name{fields}:` for one span.
fn write_span<S, N>(writer: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result
where
    S: for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    writer.write_str(span.name())?;
    let extensions = span.extensions();
    if let Some(fields) = extensions.get::<FormattedFields<N>>()
        && !fields.is_empty()
    {
        writer.write_char('{')?;
        writer.write_str(fields)?;
        writer.write_char('}')?;
    }
    writer.write_char(':')
}

/// The level between spaces, right-aligned to five characters as the
/// default format aligns it.
fn level_column(level: Level) -> &'static str {
    match level {
        Level::ERROR => " ERROR ",
        Level::WARN => "  WARN ",
        Level::INFO => "  INFO ",
        Level::DEBUG => " DEBUG ",
        Level::TRACE => " TRACE ",
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn line_of(log: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .fmt_fields(PlainFields)
            .event_format(PlainLine)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_line_has_time_level_span_and_fields() {
        let line = line_of(|| {
            let span = info_span!(
                "task",
                task = "demo.add",
                retries = 2_u32,
                outcome = tracing::field::Empty
            );
            span.record("outcome", "succeeded");
            span.in_scope(|| info!(runtime = 0.5, note = "two words", "task started"));
        });
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.ends_with('Z') && time.contains('T'), "{line}");
        assert_eq!(
            rest,
            " INFO task{task=demo.add retries=2 outcome=succeeded}: task started runtime=0.5 note=\"two words\"\n"
        );
    }

    #[test]
    fn nested_spans_are_written_outermost_first() {
        let line = line_of(|| {
            let task = info_span!("task", task = "demo.add");
            let _task = task.enter();
            let step = info_span!("step", n = 1_u64);
            let _step = step.enter();
            info!("inside");
        });
        assert!(
            line.ends_with(" INFO task{task=demo.add}:step{n=1}: inside\n"),
            "{line:?}"
        );
    }

    #[test]
    fn a_line_outside_spans_has_no_context() {
        let line = line_of(|| tracing::warn!(id = "", "empty id"));
        assert!(line.ends_with("  WARN empty id id=\"\"\n"), "{line:?}");
    }

    #[test]
    fn integers_are_written_in_decimal() {
        let line = line_of(|| {
            info!(
                zero = 0_u64,
                big = u64::MAX,
                low = i64::MIN,
                minus = -7_i64,
                "n"
            );
        });
        assert!(
            line.ends_with(
                " INFO n zero=0 big=18446744073709551615 low=-9223372036854775808 minus=-7\n"
            ),
            "{line:?}"
        );
    }

    #[test]
    fn values_that_would_read_ambiguously_are_quoted() {
        assert!(is_bare("demo.add"));
        assert!(is_bare("caf\u{e9}"));
        for value in ["", "a b", "a=b", "say \"hi\"", "tab\there", "line\nbreak"] {
            assert!(!is_bare(value), "{value:?}");
        }
    }
}
