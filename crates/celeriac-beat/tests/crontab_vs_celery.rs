//! Celeriac's crontab against Python Celery 5.7's own results
//! (`tests/data/crontab_celery.json`, made by `generate_crontab_table.py`
//! with the pinned Celery): parsed fields, the next run after the last one,
//! and five runs after that, over DST changes, month ends and leap years.
//!
//! Deliberate differences are listed (and checked) below, not skipped.

use celeriac_beat::crontab::{Crontab, CrontabSpec};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

fn table() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/crontab_celery.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("the Celery table exists"))
        .expect("valid JSON")
}

fn instant(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

fn spec(value: &Value) -> CrontabSpec {
    let field = |name: &str| value[name].as_str().unwrap_or("*").to_owned();
    CrontabSpec {
        minute: field("minute"),
        hour: field("hour"),
        day_of_week: field("day_of_week"),
        day_of_month: field("day_of_month"),
        month_of_year: field("month_of_year"),
    }
}

fn list(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|v| v as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Cases where Celery's answer is a bug we do not copy: restarted inside the
/// repeated hour of a fall-back night, Celery reads a slot later in that hour
/// as its *first* occurrence (already past) and reports it due on every tick
/// until the hour ends (1,202 sends in the generator's simulation). We run
/// the slot once, at its second occurrence.
const CELERY_FALL_BACK_LOOP: [&str; 2] = [
    "berlin_30min_restart_in_repeated_hour",
    "berlin_30min_catch_up_in_repeated_hour",
];

#[test]
fn next_runs_match_celery() {
    let table = table();
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let mut compared = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let crontab =
            Crontab::parse(&spec(&case["crontab"])).unwrap_or_else(|e| panic!("{name}: {e}"));
        let fields = &case["fields"];
        assert_eq!(
            crontab.minutes().collect::<Vec<_>>(),
            list(&fields["minute"]),
            "{name}: minute"
        );
        assert_eq!(
            crontab.hours().collect::<Vec<_>>(),
            list(&fields["hour"]),
            "{name}: hour"
        );
        assert_eq!(
            crontab.days_of_week().collect::<Vec<_>>(),
            list(&fields["day_of_week"]),
            "{name}: day_of_week"
        );
        assert_eq!(
            crontab.days_of_month().collect::<Vec<_>>(),
            list(&fields["day_of_month"]),
            "{name}: day_of_month"
        );
        assert_eq!(
            crontab.months().collect::<Vec<_>>(),
            list(&fields["month_of_year"]),
            "{name}: month_of_year"
        );

        let tz: Tz = case["timezone"]
            .as_str()
            .unwrap_or("UTC")
            .parse()
            .expect("zone");
        let last_run = instant(&case["last_run"]);
        let next = crontab.next_after(last_run, tz).expect("a next run");
        if CELERY_FALL_BACK_LOOP.contains(&name) {
            assert!(next > last_run, "{name}: we run later slots once");
            continue;
        }
        assert_eq!(
            next,
            instant(&case["next_run"]),
            "{name}: next run after {last_run}"
        );
        let mut previous = next;
        for (i, expected) in case["following_runs"]
            .as_array()
            .expect("runs")
            .iter()
            .enumerate()
        {
            let following = crontab.next_after(previous, tz).expect("a following run");
            assert_eq!(
                following,
                instant(expected),
                "{name}: run {} after {previous}",
                i + 2
            );
            previous = following;
        }
        compared += 1;
    }
    assert!(compared >= 25, "only {compared} cases compared");
}

/// Celery's parser accepts things that are almost certainly mistakes; we
/// refuse them with a clear error instead.
fn deliberate_parser_difference(field: &str, value: &str) -> bool {
    let v = value.trim();
    // Month names in day_of_week ('mar' -> 3) and weekday names in
    // month_of_year ('mon' -> January).
    let crossed = (field == "day_of_week"
        && [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ]
        .iter()
        .any(|m| v.to_lowercase().contains(m)))
        || (field == "month_of_year"
            && ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
                .iter()
                .any(|d| v.to_lowercase().contains(d)));
    // Trailing junk Celery ignores, and '1_0' read as 10.
    let junk = ["1-2-3", "1-5 foo", "*/15 junk", "1_0"].contains(&v);
    crossed || junk
}

#[test]
fn fields_parse_like_celery_or_are_refused_on_purpose() {
    let table = table();
    for case in table["parser_cases"].as_array().expect("parser cases") {
        let field = case["field"].as_str().unwrap_or_default();
        let value = case["value"].as_str().unwrap_or_default();
        let mut spec = CrontabSpec::default();
        for (key, v) in case["context"].as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or("*").to_owned();
            match key.as_str() {
                "minute" => spec.minute = v,
                "hour" => spec.hour = v,
                "day_of_week" => spec.day_of_week = v,
                "day_of_month" => spec.day_of_month = v,
                "month_of_year" => spec.month_of_year = v,
                _ => {}
            }
        }
        let slot = match field {
            "minute" => &mut spec.minute,
            "hour" => &mut spec.hour,
            "day_of_week" => &mut spec.day_of_week,
            "day_of_month" => &mut spec.day_of_month,
            _ => &mut spec.month_of_year,
        };
        *slot = value.to_owned();
        let ours = Crontab::parse(&spec);
        let celery = case["result"].as_array().map(|_| list(&case["result"]));
        if deliberate_parser_difference(field, value) {
            assert!(
                ours.is_err(),
                "{field}={value:?}: we refuse what Celery reads as {celery:?}"
            );
            continue;
        }
        match (celery, ours) {
            (Some(expected), Ok(crontab)) => {
                let got: Vec<u32> = match field {
                    "minute" => crontab.minutes().collect(),
                    "hour" => crontab.hours().collect(),
                    "day_of_week" => crontab.days_of_week().collect(),
                    "day_of_month" => crontab.days_of_month().collect(),
                    _ => crontab.months().collect(),
                };
                assert_eq!(got, expected, "{field}={value:?}");
            }
            (None, Err(_)) => {}
            (Some(expected), Err(e)) => {
                panic!("{field}={value:?}: Celery reads {expected:?}, we refuse: {e}")
            }
            (None, Ok(_)) => panic!(
                "{field}={value:?}: Celery refuses ({}), we accept",
                case["error"]
            ),
        }
    }
}
