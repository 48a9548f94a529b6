//! Celery's time values (`eta`, `expires`, `date_done`), §1.7.
//!
//! Parsing is lenient, like the Python worker's `dateutil.isoparse`: `T` or a
//! space between date and time, 0–9 fractional digits, `Z`, `±HH:MM`, `±HHMM`
//! or `±HH` offsets, and a naive value (no offset) means UTC. A bare date
//! means midnight UTC.
//!
//! Formatting follows Python's `datetime.isoformat()`: microseconds only when
//! non-zero, and `+00:00` rather than `Z`, so every Celery version (including
//! Python < 3.11 `fromisoformat`) reads what we write.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone as _, Timelike as _, Utc};

/// Parses an ISO 8601 date-time the way Celery's worker does.
///
/// Returns `None` when the text is not a date-time.
///
/// ```
/// use celeriac_protocol::time::parse_time;
/// let t = parse_time("2026-11-28T04:58:30.140079Z").unwrap();
/// assert_eq!(t.to_rfc3339(), "2026-11-28T04:58:30.140079+00:00");
/// let naive = parse_time("2026-01-01T00:00:00").unwrap();
/// assert_eq!(naive.offset().local_minus_utc(), 0);
/// ```
pub fn parse_time(text: &str) -> Option<DateTime<FixedOffset>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t);
    }
    let normalized = normalize(text);
    const WITH_OFFSET: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z"];
    for format in WITH_OFFSET {
        if let Ok(t) = DateTime::parse_from_str(&normalized, format) {
            return Some(t);
        }
    }
    const NAIVE: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"];
    for format in NAIVE {
        if let Ok(t) = NaiveDateTime::parse_from_str(&normalized, format) {
            return Some(utc(t));
        }
    }
    let date = NaiveDate::parse_from_str(&normalized, "%Y-%m-%d").ok()?;
    Some(utc(date.and_hms_opt(0, 0, 0)?))
}

/// Formats a time as Python's `datetime.isoformat()` does.
///
/// ```
/// use celeriac_protocol::time::{format_time, parse_time};
/// let t = parse_time("2030-01-02T03:04:05+00:00").unwrap();
/// assert_eq!(format_time(&t), "2030-01-02T03:04:05+00:00");
/// let t = parse_time("2030-01-02T03:04:05.5+01:00").unwrap();
/// assert_eq!(format_time(&t), "2030-01-02T03:04:05.500000+01:00");
/// ```
pub fn format_time<Tz: chrono::TimeZone>(time: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let fixed = time.fixed_offset();
    let base = fixed.format("%Y-%m-%dT%H:%M:%S");
    let micros = fixed.nanosecond() / 1_000 % 1_000_000;
    let offset = format_offset(fixed.offset().local_minus_utc());
    if micros == 0 {
        format!("{base}{offset}")
    } else {
        format!("{base}.{micros:06}{offset}")
    }
}

/// Formats a naive date-time as Python's `isoformat()` does (no offset).
pub fn format_naive(time: &NaiveDateTime) -> String {
    let base = time.format("%Y-%m-%dT%H:%M:%S");
    match time.nanosecond() / 1_000 % 1_000_000 {
        0 => base.to_string(),
        micros => format!("{base}.{micros:06}"),
    }
}

/// The current time in UTC, truncated to microseconds as Python keeps it.
pub fn now() -> DateTime<FixedOffset> {
    let now = Utc::now();
    let truncated = now
        .with_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now);
    truncated.fixed_offset()
}

fn utc(naive: NaiveDateTime) -> DateTime<FixedOffset> {
    Utc.from_utc_datetime(&naive).fixed_offset()
}

/// Maps the separators and offsets `dateutil` accepts onto chrono's formats.
fn normalize(text: &str) -> String {
    let mut s = text.replacen(' ', "T", 1);
    if s.ends_with('Z') || s.ends_with('z') {
        s.pop();
        s.push_str("+00:00");
    }
    // A `±HH` offset with no minutes: chrono's %z wants minutes.
    if let Some(pos) = s.rfind(['+', '-'])
        && pos > 10
        && s.len() - pos == 3
    {
        s.push_str("00");
    }
    s
}

fn format_offset(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let abs = seconds.unsigned_abs();
    let (hours, minutes, secs) = (abs / 3600, abs % 3600 / 60, abs % 60);
    if secs == 0 {
        format!("{sign}{hours:02}:{minutes:02}")
    } else {
        format!("{sign}{hours:02}:{minutes:02}:{secs:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_python_accepts() {
        let cases = [
            (
                "2026-11-28T04:58:30.140079+00:00",
                "2026-11-28T04:58:30.140079+00:00",
            ),
            ("2026-11-28T04:58:30Z", "2026-11-28T04:58:30+00:00"),
            ("2026-11-28T04:58:30", "2026-11-28T04:58:30+00:00"),
            ("2026-11-28 04:58:30.5", "2026-11-28T04:58:30.500000+00:00"),
            ("2026-11-28T04:58:30+0100", "2026-11-28T04:58:30+01:00"),
            ("2026-11-28T04:58:30-05", "2026-11-28T04:58:30-05:00"),
            (
                "2026-11-28T04:58:30.123+05:30",
                "2026-11-28T04:58:30.123000+05:30",
            ),
            ("2026-11-28T04:58", "2026-11-28T04:58:00+00:00"),
            ("2026-11-28", "2026-11-28T00:00:00+00:00"),
        ];
        for (input, expected) in cases {
            let parsed = parse_time(input).unwrap_or_else(|| panic!("{input} did not parse"));
            assert_eq!(format_time(&parsed), expected, "input {input}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_time() {
        for input in [
            "",
            "tomorrow",
            "1700000000",
            "2026-13-01T00:00:00",
            "2026-11-28T25:00",
        ] {
            assert!(parse_time(input).is_none(), "{input} parsed");
        }
    }

    #[test]
    fn now_has_microsecond_precision() {
        assert_eq!(now().nanosecond() % 1_000, 0);
    }
}
