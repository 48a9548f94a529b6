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

use chrono::{
    DateTime, Datelike as _, FixedOffset, NaiveDate, NaiveDateTime, TimeZone as _, Timelike as _,
    Utc,
};

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
    let mut text = format_naive(&fixed.naive_local());
    push_offset(&mut text, fixed.offset().local_minus_utc());
    text
}

/// Formats a naive date-time as Python's `isoformat()` does (no offset).
///
/// Written digit by digit: every result document carries one, and
/// formatting machinery costs thousands of instructions a call.
pub fn format_naive(time: &NaiveDateTime) -> String {
    let mut text = String::with_capacity(32);
    match u32::try_from(time.year()) {
        Ok(year) if year <= 9999 => push_digits(&mut text, year, 4),
        // Outside Python's datetime range; chrono spells it.
        _ => text.push_str(&time.format("%Y").to_string()),
    }
    for (separator, value) in [
        ('-', time.month()),
        ('-', time.day()),
        ('T', time.hour()),
        (':', time.minute()),
        (':', time.second()),
    ] {
        text.push(separator);
        push_digits(&mut text, value, 2);
    }
    let micros = time.nanosecond() / 1_000 % 1_000_000;
    if micros != 0 {
        text.push('.');
        push_digits(&mut text, micros, 6);
    }
    text
}

/// Appends `value` in decimal, zero-padded to `width` digits.
fn push_digits(text: &mut String, value: u32, width: u32) {
    let mut divisor = 10u32.pow(width.saturating_sub(1));
    // Wider values than `width` keep all their digits.
    while divisor.checked_mul(10).is_some_and(|d| d <= value) {
        divisor *= 10;
    }
    while divisor > 0 {
        let digit = u8::try_from(value / divisor % 10).unwrap_or(0);
        text.push(char::from(b'0' + digit));
        divisor /= 10;
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

/// Appends a UTC offset as Python writes it: `+HH:MM`, or `+HH:MM:SS`
/// when it has seconds.
fn push_offset(text: &mut String, seconds: i32) {
    text.push(if seconds < 0 { '-' } else { '+' });
    let abs = seconds.unsigned_abs();
    push_digits(text, abs / 3600, 2);
    text.push(':');
    push_digits(text, abs % 3600 / 60, 2);
    if !abs.is_multiple_of(60) {
        text.push(':');
        push_digits(text, abs % 60, 2);
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
    fn formats_like_chrono_spells_isoformat() {
        let offsets = [0, 3600, -18_000, 19_800, 3661, -86_399];
        let stamps = [
            "0001-01-01T00:00:00",
            "1999-12-31T23:59:59.000001",
            "2026-06-07T08:09:10.5",
            "9999-12-31T23:59:59.999999",
        ];
        for stamp in stamps {
            let naive = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.f").unwrap();
            let micros = naive.nanosecond() / 1_000;
            let mut expected = naive.format("%Y-%m-%dT%H:%M:%S").to_string();
            if micros != 0 {
                expected.push_str(&format!(".{micros:06}"));
            }
            assert_eq!(format_naive(&naive), expected);
            for offset in offsets {
                let zone = FixedOffset::east_opt(offset).unwrap();
                let time = zone.from_local_datetime(&naive).unwrap();
                let abs = offset.unsigned_abs();
                let sign = if offset < 0 { '-' } else { '+' };
                let mut zone_text = format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60);
                if abs % 60 != 0 {
                    zone_text.push_str(&format!(":{:02}", abs % 60));
                }
                assert_eq!(format_time(&time), format!("{expected}{zone_text}"));
            }
        }
    }

    #[test]
    fn now_has_microsecond_precision() {
        assert_eq!(now().nanosecond() % 1_000, 0);
    }
}
