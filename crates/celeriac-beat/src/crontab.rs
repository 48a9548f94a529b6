//! Celery's `crontab` schedule (§8.3), with Celery's semantics rather than
//! cron's:
//!
//! - fields `minute` (0–59), `hour` (0–23), `day_of_week` (0–6, **0 is
//!   Sunday**; names `sun`…`sat`), `day_of_month` (1–31), `month_of_year`
//!   (1–12);
//! - each field accepts `*`, numbers, lists (`1,15`), ranges (`1-5`, also
//!   wrapping like `fri-mon`), steps (`*/15`, `1-30/7`);
//! - **all fields are AND-ed**: `day_of_month=13, day_of_week=fri` is
//!   Friday the 13th (cron would run on every 13th *and* every Friday).
//!
//! The `cron` crate was not used: its day-of-week numbering and its OR of the
//! two day fields differ from Celery, so a translation would be wrong for
//! exactly the schedules people port from Celery.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{
    DateTime, Datelike as _, Duration, LocalResult, NaiveDate, NaiveDateTime, Offset as _,
    TimeZone as _, Timelike as _, Utc,
};
use chrono_tz::Tz;
use serde::Deserialize;

/// A crontab field that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid crontab {field} {value:?}: {problem}")]
pub struct CrontabError {
    /// Which field.
    pub field: &'static str,
    /// What was given.
    pub value: String,
    /// What is wrong.
    pub problem: String,
}

/// The five fields as a user writes them (Celery's `crontab(...)` keywords).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrontabSpec {
    /// Minutes, default `*`.
    #[serde(default = "star")]
    pub minute: String,
    /// Hours, default `*`.
    #[serde(default = "star")]
    pub hour: String,
    /// Days of the week, default `*` (0 = Sunday).
    #[serde(default = "star")]
    pub day_of_week: String,
    /// Days of the month, default `*`.
    #[serde(default = "star")]
    pub day_of_month: String,
    /// Months, default `*`.
    #[serde(default = "star")]
    pub month_of_year: String,
}

fn star() -> String {
    "*".to_owned()
}

impl Default for CrontabSpec {
    fn default() -> Self {
        CrontabSpec {
            minute: star(),
            hour: star(),
            day_of_week: star(),
            day_of_month: star(),
            month_of_year: star(),
        }
    }
}

/// A parsed crontab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crontab {
    spec: CrontabSpec,
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    days_of_week: BTreeSet<u32>,
    days_of_month: BTreeSet<u32>,
    months: BTreeSet<u32>,
}

/// How far ahead to search before declaring a crontab never matches
/// (Feb 29 on a given weekday can be 40 years apart, around 2100, which
/// is not a leap year).
const SEARCH_DAYS: i64 = 366 * 41;

impl Crontab {
    /// Parses the five fields.
    ///
    /// ```
    /// use celeriac_beat::crontab::{Crontab, CrontabSpec};
    /// let friday_13th = Crontab::parse(&CrontabSpec {
    ///     minute: "0".into(), hour: "9".into(), day_of_month: "13".into(), day_of_week: "fri".into(),
    ///     ..CrontabSpec::default()
    /// }).unwrap();
    /// assert_eq!(friday_13th.days_of_week().collect::<Vec<_>>(), [5]);
    /// ```
    pub fn parse(spec: &CrontabSpec) -> Result<Crontab, CrontabError> {
        let crontab = Crontab {
            minutes: parse_field("minute", &spec.minute, 0, 59, None)?,
            hours: parse_field("hour", &spec.hour, 0, 23, None)?,
            days_of_week: parse_field("day_of_week", &spec.day_of_week, 0, 6, Some(&WEEKDAYS))?,
            days_of_month: parse_field("day_of_month", &spec.day_of_month, 1, 31, None)?,
            months: parse_field("month_of_year", &spec.month_of_year, 1, 12, Some(&MONTHS))?,
            spec: spec.clone(),
        };
        let longest = |month: u32| match month {
            2 => 29,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let possible = crontab
            .months
            .iter()
            .any(|m| crontab.days_of_month.iter().any(|d| *d <= longest(*m)));
        if !possible {
            return Err(CrontabError {
                field: "day_of_month",
                value: spec.day_of_month.clone(),
                problem: format!("never occurs in month_of_year {:?}", spec.month_of_year),
            });
        }
        Ok(crontab)
    }

    /// The fields as written.
    pub fn spec(&self) -> &CrontabSpec {
        &self.spec
    }

    /// The minutes it runs at.
    pub fn minutes(&self) -> impl Iterator<Item = u32> + '_ {
        self.minutes.iter().copied()
    }

    /// The hours it runs at.
    pub fn hours(&self) -> impl Iterator<Item = u32> + '_ {
        self.hours.iter().copied()
    }

    /// The days of the week it runs on (0 = Sunday).
    pub fn days_of_week(&self) -> impl Iterator<Item = u32> + '_ {
        self.days_of_week.iter().copied()
    }

    /// The days of the month it runs on.
    pub fn days_of_month(&self) -> impl Iterator<Item = u32> + '_ {
        self.days_of_month.iter().copied()
    }

    /// The months it runs in.
    pub fn months(&self) -> impl Iterator<Item = u32> + '_ {
        self.months.iter().copied()
    }

    fn date_matches(&self, date: NaiveDate) -> bool {
        self.months.contains(&date.month())
            && self.days_of_month.contains(&date.day())
            && self
                .days_of_week
                .contains(&date.weekday().num_days_from_sunday())
    }

    /// The first run strictly after `after`, in time zone `tz`.
    ///
    /// DST policy: a local time that does not exist (the hour skipped when
    /// clocks spring forward) runs at the same wall-clock offset into the
    /// new hour (02:30 runs at 03:30), and a local time that happens twice
    /// (clocks fall back) runs once, at its first occurrence.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let start = local.with_second(0)?.with_nanosecond(0)?;
        for offset in 0..SEARCH_DAYS {
            let date = start.date() + Duration::days(offset);
            if !self.date_matches(date) {
                continue;
            }
            for &hour in &self.hours {
                for &minute in &self.minutes {
                    let naive = date.and_hms_opt(hour, minute, 0)?;
                    if naive < start {
                        continue;
                    }
                    if let Some(instant) = resolve(tz, naive)
                        && instant > after
                    {
                        return Some(instant);
                    }
                }
            }
        }
        None
    }
}

impl fmt::Display for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.spec;
        write!(
            f,
            "crontab(minute={}, hour={}, day_of_week={}, day_of_month={}, month_of_year={})",
            s.minute, s.hour, s.day_of_week, s.day_of_month, s.month_of_year
        )
    }
}

/// A local wall-clock time as an instant, per the DST policy above.
fn resolve(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            // In the gap: the offset before the jump, applied to the wall time,
            // lands the same distance past the jump.
            let before = tz
                .from_local_datetime(&(naive - Duration::hours(3)))
                .earliest()?;
            let shifted = naive - before.offset().fix().local_minus_utc_duration();
            Some(Utc.from_utc_datetime(&shifted))
        }
    }
}

trait OffsetDuration {
    fn local_minus_utc_duration(&self) -> Duration;
}

impl OffsetDuration for chrono::FixedOffset {
    fn local_minus_utc_duration(&self) -> Duration {
        Duration::seconds(i64::from(self.local_minus_utc()))
    }
}

/// Day names for `day_of_week`, numbered from 0 (Sunday).
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// Month names for `month_of_year`, numbered from 1 (January): index + 1.
const MONTHS: [&str; 13] = [
    "", "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses one field into the set of values it allows. `names` are the
/// names its values may also be given by (numbered by position).
fn parse_field(
    field: &'static str,
    text: &str,
    min: u32,
    max: u32,
    names: Option<&[&str]>,
) -> Result<BTreeSet<u32>, CrontabError> {
    let fail = |problem: String| CrontabError {
        field,
        value: text.to_owned(),
        problem,
    };
    let number = |s: &str| -> Result<u32, CrontabError> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u32>() {
            return if (min..=max).contains(&n) {
                Ok(n)
            } else {
                Err(fail(format!("{n} is outside {min}-{max}")))
            };
        }
        let lower = s.to_ascii_lowercase();
        if let Some(names) = names
            && lower.len() >= 3
            && let Some(i) = names
                .iter()
                .position(|n| !n.is_empty() && lower.starts_with(n))
        {
            return Ok(u32::try_from(i).unwrap_or(0));
        }
        let hint = match names {
            Some(names) => format!(
                " or a name ({}-{})",
                names.iter().find(|n| !n.is_empty()).unwrap_or(&""),
                names[names.len() - 1]
            ),
            None => String::new(),
        };
        Err(fail(format!("{s:?} is not a number{hint}")))
    };
    let mut values = BTreeSet::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(fail("empty list item".into()));
        }
        let (range, step) =
            match part.split_once('/') {
                Some((range, step)) => {
                    let step: u32 =
                        step.trim().parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                            fail(format!("step {step:?} is not a positive number"))
                        })?;
                    (range.trim(), step)
                }
                None => (part, 1),
            };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a)?, number(b)?)
        } else if step > 1 {
            return Err(fail(format!(
                "{part:?}: a step needs a range or `*` (Celery does not support `N/step`; write `{range}-{max}/{step}`)"
            )));
        } else {
            let n = number(range)?;
            (n, n)
        };
        let span: Vec<u32> = if from <= to {
            (from..=to).collect()
        } else {
            // A wrapping range, like `fri-mon`.
            (from..=max).chain(min..=to).collect()
        };
        values.extend(span.into_iter().step_by(step as usize));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(minute: &str, hour: &str, dow: &str, dom: &str, moy: &str) -> Crontab {
        Crontab::parse(&CrontabSpec {
            minute: minute.into(),
            hour: hour.into(),
            day_of_week: dow.into(),
            day_of_month: dom.into(),
            month_of_year: moy.into(),
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn fields_parse_like_celery() {
        assert_eq!(
            cron("*/15", "*", "*", "*", "*")
                .minutes()
                .collect::<Vec<_>>(),
            [0, 15, 30, 45]
        );
        assert_eq!(
            cron("1-30/7", "*", "*", "*", "*")
                .minutes()
                .collect::<Vec<_>>(),
            [1, 8, 15, 22, 29]
        );
        assert_eq!(
            cron("*", "*", "mon-fri", "*", "*")
                .days_of_week()
                .collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            cron("*", "*", "fri-mon", "*", "*")
                .days_of_week()
                .collect::<Vec<_>>(),
            [0, 1, 5, 6]
        );
        assert_eq!(
            cron("*", "*", "sun,sat", "*", "*")
                .days_of_week()
                .collect::<Vec<_>>(),
            [0, 6]
        );
        assert_eq!(
            cron("*", "*", "*", "*/10", "*")
                .days_of_month()
                .collect::<Vec<_>>(),
            [1, 11, 21, 31]
        );
    }

    #[test]
    fn bad_fields_say_why() {
        let err = Crontab::parse(&CrontabSpec {
            minute: "61".into(),
            ..CrontabSpec::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid crontab minute \"61\": 61 is outside 0-59"
        );
        assert!(
            Crontab::parse(&CrontabSpec {
                day_of_week: "7".into(),
                ..CrontabSpec::default()
            })
            .is_err()
        );
        let step = Crontab::parse(&CrontabSpec {
            minute: "5/15".into(),
            ..CrontabSpec::default()
        })
        .unwrap_err();
        assert!(step.problem.contains("5-59/15"), "{step}");
    }

    #[test]
    fn day_fields_are_anded() {
        let friday_13th = cron("0", "9", "fri", "13", "*");
        let next = friday_13th
            .next_after(at("2026-01-01T00:00:00Z"), Tz::UTC)
            .unwrap();
        assert_eq!(next, at("2026-02-13T09:00:00Z"));
    }

    #[test]
    fn month_ends_and_leap_days() {
        let on_31st = cron("0", "0", "*", "31", "*");
        assert_eq!(
            on_31st
                .next_after(at("2026-04-01T00:00:00Z"), Tz::UTC)
                .unwrap(),
            at("2026-05-31T00:00:00Z")
        );
        let leap = cron("0", "0", "*", "29", "2");
        assert_eq!(
            leap.next_after(at("2026-03-01T00:00:00Z"), Tz::UTC)
                .unwrap(),
            at("2028-02-29T00:00:00Z")
        );
    }

    #[test]
    fn dst_gaps_and_repeats() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let half_past_two = cron("30", "2", "*", "*", "*");
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let spring = half_past_two
            .next_after(at("2026-03-28T12:00:00Z"), berlin)
            .unwrap();
        assert_eq!(spring, at("2026-03-29T01:30:00Z"), "runs at 03:30 CEST");
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let autumn = half_past_two
            .next_after(at("2026-10-24T12:00:00Z"), berlin)
            .unwrap();
        assert_eq!(autumn, at("2026-10-25T00:30:00Z"), "the first 02:30 (CEST)");
        let after = half_past_two.next_after(autumn, berlin).unwrap();
        assert_eq!(after, at("2026-10-26T01:30:00Z"), "not the second 02:30");
    }
}
