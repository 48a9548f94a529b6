//! W3C trace context in task messages.
//!
//! `opentelemetry-instrumentation-celery` injects the producer's context
//! into the task message's headers (`traceparent`, and `tracestate` when
//! there is one) and extracts it from the request in the worker; Celeriac
//! reads and writes the same headers, so a trace crosses Python and Rust
//! tasks in either direction.

use crate::header::HeaderValue;
use crate::task_headers::TaskHeaders;

/// The header holding the W3C `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The header holding the W3C `tracestate` (vendor data, passed on as is).
pub const TRACESTATE_HEADER: &str = "tracestate";

/// A W3C trace context (version `00`): the trace, the span that is the
/// parent of whatever receives it, and the trace flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// The parent span id (never zero).
    pub span_id: u64,
    /// Trace flags; `0x01` is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`; later
    /// versions are read by their first four fields, as the spec says).
    /// `None` for anything malformed or with an all-zero id.
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        let mut fields = traceparent.trim().split('-');
        let version = fields.next()?;
        let trace = fields.next()?;
        let span = fields.next()?;
        let flags = fields.next()?;
        let exact_fields = fields.next().is_none();
        let hex = |text: &str, len: usize| {
            text.len() == len
                && text
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && !exact_fields) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let context = TraceContext {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// The context a task message carries, if it carries a valid one.
    pub fn from_headers(headers: &TaskHeaders) -> Option<TraceContext> {
        match headers.extra.get(TRACEPARENT_HEADER)? {
            HeaderValue::Str(text) => TraceContext::parse(text),
            _ => None,
        }
    }

    /// The same trace, with `span_id` as the parent of what comes next.
    pub fn with_span(self, span_id: u64) -> TraceContext {
        TraceContext { span_id, ..self }
    }

    /// The trace id as 32 lowercase hex digits (as trace UIs show it).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let context = TraceContext::parse(SAMPLE).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(context.flags, 1);
        assert_eq!(context.traceparent(), SAMPLE);
    }

    #[test]
    fn malformed_or_zero_contexts_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(TraceContext::parse(later).is_some());
    }

    #[test]
    fn a_new_span_keeps_the_trace_and_flags() {
        let context = TraceContext::parse(SAMPLE).unwrap().with_span(0xabc);
        assert_eq!(
            context.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
    }
}
