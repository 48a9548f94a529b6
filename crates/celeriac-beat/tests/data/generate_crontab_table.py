#!/usr/bin/env python3
"""Generate the crontab reference table from the pinned Python Celery.

Writes ``crontab_celery.json`` next to this file: what Celery's ``crontab``
schedule computes for a list of cases, so the Rust scheduler in
``celeriac-beat`` can be compared with it instant by instant.

Run with the interop venv (``scripts/setup-interop``) from the repository
root::

    .venv-interop/bin/python crates/celeriac-beat/tests/data/generate_crontab_table.py

Time zones come from Python's ``zoneinfo``, i.e. the system tz database
(``/usr/share/zoneinfo``) or, where there is none, the ``tzdata`` PyPI
package.  The database version used is stored in the table (``tzdata``).

How a case is evaluated
-----------------------

Each case is a crontab (the five fields as strings, exactly as a user
writes them), an IANA time zone and two instants, ``last_run`` and
``now``.  The schedule is built the way ``celery beat`` builds it for an
app configured with ``timezone = <zone>`` and ``enable_utc = True``::

    app = Celery(set_as_current=False)
    app.conf.timezone = zone
    app.conf.enable_utc = True
    sched = crontab(minute=..., hour=..., day_of_week=...,
                    day_of_month=..., month_of_year=...,
                    app=app, nowfun=clock)

``clock`` returns the fixed instant ``now`` converted to the zone (that is
what ``app.now()`` returns: an aware datetime in ``app.timezone``), and
``last_run_at`` is ``last_run`` converted to the zone (beat stores the
``app.now()`` of the run, so it is an aware datetime in the zone too).
``beat_cron_starting_deadline`` keeps its default (``None``).  Recorded:

* ``is_due`` / ``next_seconds``: the pair ``sched.is_due(last_run_at)``.
  When the task is due, Celery's ``next_seconds`` is the time from ``now``
  to the first run after ``now`` (it re-asks with ``last_run_at = now``);
  otherwise it is the time to the next run, clamped at 0.
* ``remaining_estimate``: ``sched.remaining_estimate(last_run_at)`` in
  seconds.  Negative when the next run after ``last_run_at`` is already
  in the past (beat was down, or see the DST notes).
* ``next_run``: ``now + remaining_estimate``, i.e. the run instant that
  Celery computes from ``last_run_at`` (before ``now`` when overdue).

``following_runs``: the five run instants after ``next_run``.  Starting
with ``prev = next_run``, each step builds the schedule with its clock
fixed at ``prev`` and appends ``prev + sched.remaining_estimate(prev)``,
which becomes the next ``prev``.  In words: the task ran exactly at the
computed instant and beat stored that instant as ``last_run_at``.  The
generator also checks that this is what beat itself sees: with the clock
at run ``k`` and ``last_run_at`` = run ``k-1``, ``is_due`` must be
``(True, run[k+1] - run[k])``.  Any mismatch (or a run that is not later
than the previous one) is written into the case's ``notes``.  When the
case is overdue (``next_run`` before ``now``) the iteration still starts
from ``next_run``: it follows the schedule, not a beat that would run the
task at ``now`` and store ``now``.

Celery computes a run as a wall-clock time in the zone and converts it
with Python's ``fold=0`` (its ``ffwd`` ends with ``+ timedelta(days=n)``,
which resets any fold taken from ``last_run_at``): a wall time in a DST
gap is read with the offset from before the gap (02:30 on a 02:00 -> 03:00
day becomes 03:30 of the new offset), a repeated wall time is the first
of its two occurrences.  See the DST cases' notes for what follows.

``fields``: the sets the crontab parsed each field into (sorted lists).

``parser_cases`` record, for single field values (plus other fields where
``context`` says so), what ``crontab(<field>=<value>, **context)`` does:
the sorted set it yields, or the exception it raises as
``"<ExceptionType>: <message>"``.  Going through ``crontab`` (rather than
``crontab_parser`` alone) adds its range check and the check that some
``day_of_month`` occurs in some ``month_of_year``.

Besides ``cases`` and ``parser_cases`` the table records the versions it
was made with (``celery``, ``python``, ``tzdata``); parser cases also carry
``context`` (the other crontab fields, usually ``{}``) and ``notes``.

Instants in the table are ISO 8601 strings with the UTC offset that the
case's zone has at that instant (Python's ``isoformat()``; microseconds
only when non-zero).  Input instants in ``CASES`` must be written with that
same offset; the generator refuses any other, to catch typos.
"""

import json
import platform
import re
import sys
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

import celery
from celery import Celery
from celery.schedules import crontab

OUTPUT = Path(__file__).resolve().parent / 'crontab_celery.json'

#: How many runs after ``next_run`` each case records.
FOLLOWING_RUNS = 5

#: crontab field names, in the order the JSON lists them.
FIELDS = ('minute', 'hour', 'day_of_week', 'day_of_month', 'month_of_year')

BERLIN = 'Europe/Berlin'
NEW_YORK = 'America/New_York'
SYDNEY = 'Australia/Sydney'
UTC = 'UTC'


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    timezone: str
    last_run: str
    now: str
    crontab: dict
    notes: str = ''


def case(name, timezone, last_run, now, notes='', *, minute='*', hour='*',
         day_of_week='*', day_of_month='*', month_of_year='*'):
    return Case(name, timezone, last_run, now, {
        'minute': minute, 'hour': hour, 'day_of_week': day_of_week,
        'day_of_month': day_of_month, 'month_of_year': month_of_year,
    }, notes)


# Calendar facts used below: 2026-05-05 is a Tuesday, 2026-05-08 a Friday,
# 2026-05-10 a Sunday; Friday the 13th falls in Feb, Mar and Nov 2026; the
# next Monday Feb 29 is in 2044 (then 2072, 2112: 2100 is no leap year).
# DST 2026: Berlin 03-29 02:00 -> 03:00 and 10-25 03:00 -> 02:00;
# New York 03-08 02:00 -> 03:00 and 11-01 02:00 -> 01:00; Sydney
# 10-04 02:00 -> 03:00 (starts) and 04-05 03:00 -> 02:00 (ends).
CASES = [
    # -- Field syntax, UTC ---------------------------------------------------
    case('every_minute', UTC,
         '2026-05-05T09:00:00.250000+00:00', '2026-05-05T09:00:30+00:00',
         'last_run carries sub-second noise, as a real beat last_run_at does'),
    case('every_15_minutes', UTC,
         '2026-05-05T09:15:00+00:00', '2026-05-05T09:20:00+00:00',
         minute='*/15'),
    case('every_15_minutes_hour_wrap', UTC,
         '2026-05-05T23:45:00+00:00', '2026-05-05T23:50:00+00:00',
         'wraps to the next day', minute='*/15'),
    case('range_with_step', UTC,
         '2026-05-05T09:29:00+00:00', '2026-05-05T09:40:00+00:00',
         '1-30/7 = 1,8,15,22,29', minute='1-30/7'),
    case('lists', UTC,
         '2026-05-05T12:40:00+00:00', '2026-05-05T13:00:00+00:00',
         minute='0,20,40', hour='8,12,18'),
    case('hour_range_step_and_list', UTC,
         '2026-05-05T16:00:00+00:00', '2026-05-05T16:30:00+00:00',
         '8-17/2,0 = 0,8,10,12,14,16', minute='0', hour='8-17/2,0'),
    case('weekdays_names', UTC,
         '2026-05-08T09:00:00+00:00', '2026-05-08T12:00:00+00:00',
         'Friday 09:00 -> Monday 09:00',
         minute='0', hour='9', day_of_week='mon-fri'),
    case('weekend_names_list', UTC,
         '2026-05-06T10:30:00+00:00', '2026-05-06T11:00:00+00:00',
         minute='30', hour='10', day_of_week='sun,sat'),
    case('day_of_week_0_is_sunday', UTC,
         '2026-05-10T00:00:00+00:00', '2026-05-10T00:00:00+00:00',
         'a single weekday: Sunday -> Sunday a week later',
         minute='0', hour='0', day_of_week='0'),
    case('weekly_from_other_day_before_hour', UTC,
         '2026-05-10T08:00:00+00:00', '2026-05-10T08:00:00+00:00',
         'Sunday 08:00, Mondays 09:00', minute='0', hour='9',
         day_of_week='mon'),
    case('due_exactly', UTC,
         '2026-05-05T08:00:00+00:00', '2026-05-05T09:00:00+00:00',
         'now is exactly the next run', minute='0'),
    case('overdue_hourly', UTC,
         '2026-05-05T07:00:00+00:00', '2026-05-05T09:10:00+00:00',
         'beat was down for two hours: next_run (08:00) is in the past; '
         'next_seconds counts to 10:00', minute='0'),
    case('overdue_weekly', UTC,
         '2026-04-20T09:00:00+00:00', '2026-05-05T09:00:00.500000+00:00',
         'last run two weeks ago (a Monday)',
         minute='0', hour='9', day_of_week='mon'),
    case('not_yet_due_same_minute', UTC,
         '2026-05-05T09:14:59.900000+00:00',
         '2026-05-05T09:14:59.950000+00:00',
         minute='*/15'),

    # -- Day/month restrictions (Celery ANDs day_of_month and day_of_week) --
    case('friday_13th', UTC,
         '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00',
         'day_of_month AND day_of_week, unlike cron(8) which ORs them',
         minute='0', hour='9', day_of_week='fri', day_of_month='13'),
    case('friday_13th_same_day_before_hour', UTC,
         '2026-02-13T08:00:00+00:00', '2026-02-13T08:30:00+00:00',
         minute='0', hour='9', day_of_week='fri', day_of_month='13'),
    case('month_range', UTC,
         '2026-08-01T06:00:00+00:00', '2026-08-01T06:00:00+00:00',
         '1st of June..August', minute='0', hour='6', day_of_month='1',
         month_of_year='6-8'),
    case('month_names_wrapping_range', UTC,
         '2026-02-15T12:00:00+00:00', '2026-03-01T00:00:00+00:00',
         'nov-feb wraps: 11,12,1,2', minute='0', hour='12',
         day_of_month='15', month_of_year='nov-feb'),
    case('quarterly', UTC,
         '2026-01-01T00:00:00+00:00', '2026-02-01T00:00:00+00:00',
         '*/3 months = 1,4,7,10', minute='0', hour='0', day_of_month='1',
         month_of_year='*/3'),
    case('mondays_in_january', UTC,
         '2026-01-26T08:00:00+00:00', '2026-01-26T08:00:00+00:00',
         'day_of_week with month_of_year (day_of_month *)',
         minute='0', hour='8', day_of_week='mon', month_of_year='1'),
    case('weekdays_via_day_of_month_path', UTC,
         '2026-05-08T09:00:00+00:00', '2026-05-08T09:00:00+00:00',
         "day_of_month '1-31' is not the string '*', so Celery takes its "
         'day_of_month search instead of the weekday shortcut; same runs '
         'as weekdays_names', minute='0', hour='9', day_of_week='mon-fri',
         day_of_month='1-31'),

    # -- Month ends and leap years ------------------------------------------
    case('day_31_skips_30_day_months', UTC,
         '2026-03-31T12:00:00+00:00', '2026-04-15T00:00:00+00:00',
         'April, June, September, November have no 31st',
         minute='0', hour='12', day_of_month='31'),
    case('day_29_to_31_non_leap_february', UTC,
         '2027-01-31T23:59:00+00:00', '2027-02-01T00:00:00+00:00',
         'February 2027 has none of 29-31',
         minute='59', hour='23', day_of_month='29-31'),
    case('feb_29_from_non_leap_year', UTC,
         '2026-03-01T00:00:00+00:00', '2026-03-01T00:00:00+00:00',
         minute='0', hour='0', day_of_month='29', month_of_year='2'),
    case('feb_29_in_leap_year', UTC,
         '2028-01-10T00:00:00+00:00', '2028-01-10T00:00:00+00:00',
         minute='0', hour='0', day_of_month='29', month_of_year='2'),
    case('yearly', UTC,
         '2026-06-15T10:00:00+00:00', '2026-06-15T10:00:00+00:00',
         "'0 0 1 1 *'", minute='0', hour='0', day_of_month='1',
         month_of_year='1'),
    case('yearly_just_ran', UTC,
         '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00.001000+00:00',
         minute='0', hour='0', day_of_month='1', month_of_year='1'),
    case('feb_29_on_monday', UTC,
         '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00',
         'long search: 2044, 2072, 2112 (2100 is not a leap year), ...',
         minute='0', hour='0', day_of_week='mon', day_of_month='29',
         month_of_year='2'),

    # -- DST: Europe/Berlin --------------------------------------------------
    case('berlin_daily_0230_spring_forward', BERLIN,
         '2026-03-28T02:30:00+01:00', '2026-03-29T01:00:00+01:00',
         '02:30 does not exist on 2026-03-29: Celery runs at 03:30+02:00 '
         '(the wall time read with the offset before the gap)',
         minute='30', hour='2'),
    case('berlin_daily_0230_spring_forward_due', BERLIN,
         '2026-03-28T02:30:00+01:00', '2026-03-29T03:31:00+02:00',
         'asked a minute after the shifted run', minute='30', hour='2'),
    case('berlin_daily_0230_fall_back', BERLIN,
         '2026-10-24T02:30:00+02:00', '2026-10-25T00:00:00+02:00',
         '02:30 happens twice on 2026-10-25: Celery runs once, at the '
         'first (+02:00)', minute='30', hour='2'),
    case('berlin_daily_0230_fall_back_second_occurrence', BERLIN,
         '2026-10-25T02:30:00+02:00', '2026-10-25T02:30:00+01:00',
         'ran at the first 02:30; asked again at the second 02:30',
         minute='30', hour='2'),
    case('berlin_hourly_spring_forward', BERLIN,
         '2026-03-29T00:30:00+01:00', '2026-03-29T00:30:00+01:00',
         'the nonexistent 02:00 becomes 03:00+02:00, which is also the '
         '03:00 run: one run, not two', minute='0'),
    case('berlin_hourly_fall_back', BERLIN,
         '2026-10-25T00:30:00+02:00', '2026-10-25T00:30:00+02:00',
         'the second 02:00 (+01:00) is skipped: 02:00+02:00 is followed '
         'by 03:00+01:00, two real hours later', minute='0'),
    case('berlin_hourly_restart_in_repeated_hour', BERLIN,
         '2026-10-25T02:10:00+01:00', '2026-10-25T02:10:00+01:00',
         'beat started (last_run_at = now) in the second 02:xx hour; no '
         'slot is left in that hour, so nothing odd happens', minute='0'),
    case('berlin_30min_spring_forward', BERLIN,
         '2026-03-29T01:10:00+01:00', '2026-03-29T01:10:00+01:00',
         minute='*/30'),
    case('berlin_30min_fall_back', BERLIN,
         '2026-10-25T01:40:00+02:00', '2026-10-25T01:40:00+02:00',
         '02:00 and 02:30 run once each, at +02:00; the repeated '
         '02:00+01:00 and 02:30+01:00 are skipped', minute='*/30'),
    case('berlin_30min_restart_in_repeated_hour', BERLIN,
         '2026-10-25T02:10:00+01:00', '2026-10-25T02:10:00+01:00',
         'beat started (last_run_at = now) in the second 02:xx hour. '
         'Celery bug: the next slot, 02:30, is read as the first 02:30 '
         '(+02:00), already past, so is_due is (True, 0.0), and stays so '
         'on every tick with last_run_at = now until 02:30+01:00: beat '
         'sends the task in a tight loop for 20 minutes',
         minute='*/30'),
    case('berlin_30min_catch_up_in_repeated_hour', BERLIN,
         '2026-10-25T01:30:00+02:00', '2026-10-25T02:10:00+01:00',
         'beat was down from 01:30+02:00 to 02:10+01:00: the catch-up run '
         'is due and next_seconds is 0.0, so the tight loop of '
         'berlin_30min_restart_in_repeated_hour follows',
         minute='*/30'),
    case('berlin_last_sunday_march_october_0230', BERLIN,
         '2026-03-01T00:00:00+01:00', '2026-03-01T00:00:00+01:00',
         'both transition days through the day_of_month search',
         minute='30', hour='2', day_of_week='sun', day_of_month='25-31',
         month_of_year='3,10'),
    case('berlin_last_sunday_from_second_occurrence', BERLIN,
         '2026-10-25T02:30:00+01:00', '2026-10-25T02:30:00+01:00',
         'last_run_at has fold=1; the next run (a nonexistent 02:30) does '
         'not inherit it', minute='30', hour='2', day_of_week='sun',
         day_of_month='25-31', month_of_year='3,10'),

    # -- DST: America/New_York (repeated hour is 01:xx) ----------------------
    case('new_york_daily_0230_spring_forward', NEW_YORK,
         '2026-03-07T02:30:00-05:00', '2026-03-07T12:00:00-05:00',
         '02:30 does not exist on 2026-03-08', minute='30', hour='2'),
    case('new_york_daily_0130_fall_back', NEW_YORK,
         '2026-10-31T01:30:00-04:00', '2026-10-31T12:00:00-04:00',
         '01:30 happens twice on 2026-11-01', minute='30', hour='1'),
    case('new_york_daily_0230_fall_back', NEW_YORK,
         '2026-10-31T02:30:00-04:00', '2026-10-31T12:00:00-04:00',
         '02:30 happens once on 2026-11-01, 25 hours after the previous',
         minute='30', hour='2'),
    case('new_york_hourly_spring_forward', NEW_YORK,
         '2026-03-08T00:30:00-05:00', '2026-03-08T00:30:00-05:00',
         minute='0'),
    case('new_york_hourly_fall_back', NEW_YORK,
         '2026-11-01T00:30:00-04:00', '2026-11-01T00:30:00-04:00',
         'the repeated 01:00 (-05:00) is skipped', minute='0'),
    case('new_york_30min_spring_forward', NEW_YORK,
         '2026-03-08T01:10:00-05:00', '2026-03-08T01:10:00-05:00',
         minute='*/30'),
    case('new_york_30min_fall_back', NEW_YORK,
         '2026-11-01T00:40:00-04:00', '2026-11-01T00:40:00-04:00',
         'the repeated 01:00 and 01:30 (-05:00) are skipped',
         minute='*/30'),

    # -- DST: Australia/Sydney (southern hemisphere) -------------------------
    case('sydney_daily_0230_dst_starts', SYDNEY,
         '2026-10-03T02:30:00+10:00', '2026-10-03T02:30:00+10:00',
         '02:30 does not exist on 2026-10-04', minute='30', hour='2'),
    case('sydney_daily_0230_dst_ends', SYDNEY,
         '2026-04-04T02:30:00+11:00', '2026-04-04T02:30:00+11:00',
         '02:30 happens twice on 2026-04-05', minute='30', hour='2'),
    case('sydney_hourly_dst_ends', SYDNEY,
         '2026-04-05T00:30:00+11:00', '2026-04-05T00:30:00+11:00',
         'the repeated 02:00 (+10:00) is skipped', minute='0'),
    case('sydney_30min_dst_starts', SYDNEY,
         '2026-10-04T01:10:00+10:00', '2026-10-04T01:10:00+10:00',
         minute='*/30'),
]


# (field, value, other crontab fields, notes)
PARSER_CASES = [
    ('minute', '*', {}, ''),
    ('minute', '*/15', {}, ''),
    ('minute', '1-30/7', {}, ''),
    ('minute', '0,20,40', {}, ''),
    ('minute', '5-5', {}, ''),
    ('minute', '50-10', {}, 'a range whose end is below its start wraps'),
    ('minute', '50-10/5', {}, 'the step applies to the wrapped list'),
    ('minute', '*/100', {}, 'a step beyond the range keeps the first value'),
    ('minute', '5/15', {}, "'N/step' (cron's 'from N every step') is not "
                            'supported'),
    ('minute', '*/0', {}, ''),
    ('minute', '*/', {}, ''),
    ('minute', '1-5/', {}, ''),
    ('minute', '', {}, ''),
    ('minute', '1,,2', {}, ''),
    ('minute', '60', {}, ''),
    ('minute', '-5', {}, ''),
    ('minute', '+5', {}, "int('+5') accepts the sign"),
    ('minute', '1_0', {}, "int('1_0') accepts the underscore"),
    ('minute', ' 5', {}, "int(' 5') accepts the blank"),
    ('minute', '1, 2', {}, 'blanks after commas are accepted'),
    ('minute', '1-2-3', {}, 'the range pattern is matched at the start '
                             'only: trailing text is ignored'),
    ('minute', '1-5 foo', {}, 'the range pattern is matched at the start '
                               'only: trailing text is ignored'),
    ('minute', '*/15 junk', {}, 'trailing text after a step is ignored'),
    ('minute', 'abc', {}, ''),
    ('hour', '*/5', {}, ''),
    ('hour', '8-17/2,0', {}, ''),
    ('hour', '22-2', {}, ''),
    ('hour', '24', {}, ''),
    ('day_of_week', '*', {}, ''),
    ('day_of_week', '0', {}, 'Sunday'),
    ('day_of_week', '7', {}, 'Sunday as 7 is not accepted'),
    ('day_of_week', '0-7', {}, ''),
    ('day_of_week', 'mon-fri', {}, ''),
    ('day_of_week', 'sun,sat', {}, ''),
    ('day_of_week', 'MON-Fri', {}, 'names are case-insensitive'),
    ('day_of_week', 'monday,Thursday', {}, 'only the first three letters '
                                           'count'),
    ('day_of_week', 'sat-sun', {}, 'wraps'),
    ('day_of_week', 'fri-mon', {}, 'wraps'),
    ('day_of_week', 'sun-sat', {}, ''),
    ('day_of_week', '*/2', {}, ''),
    ('day_of_week', '1-5/2', {}, ''),
    ('day_of_week', 'mar', {}, 'month names are tried before weekday names'),
    ('day_of_week', 'may', {}, 'month names are tried before weekday names'),
    ('day_of_week', 'jan-jun', {}, 'month names are tried before weekday '
                                   'names'),
    ('day_of_week', 'dec', {}, 'month names are tried before weekday names'),
    ('day_of_week', 'mo', {}, ''),
    ('day_of_month', '*', {}, ''),
    ('day_of_month', '*/3', {}, ''),
    ('day_of_month', '1-7,15-21', {}, ''),
    ('day_of_month', '2-30/2', {}, ''),
    ('day_of_month', '28-3', {}, 'wraps at 31'),
    ('day_of_month', '0', {}, ''),
    ('day_of_month', '32', {}, ''),
    ('day_of_month', '31', {'month_of_year': '4,6,9,11'}, ''),
    ('day_of_month', '30', {'month_of_year': '2'}, ''),
    ('day_of_month', '29', {'month_of_year': '2'}, 'accepted: Feb 29 exists '
                                                   'in leap years'),
    ('day_of_month', '31', {'month_of_year': '2,3'}, 'accepted: one month '
                                                     'has a 31st'),
    ('month_of_year', '*', {}, ''),
    ('month_of_year', '*/3', {}, ''),
    ('month_of_year', '2-12/2', {}, ''),
    ('month_of_year', 'jan-mar', {}, ''),
    ('month_of_year', 'nov-feb', {}, 'wraps'),
    ('month_of_year', 'December', {}, ''),
    ('month_of_year', 'mon', {}, 'weekday names are tried after month names: '
                                 'mon = 1 = January'),
    ('month_of_year', 'sun', {}, 'weekday names are tried after month names: '
                                 'sun = 0'),
    ('month_of_year', '0', {}, ''),
    ('month_of_year', '13', {}, ''),
]


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def make_schedule(fields, zone, now):
    """A crontab as beat builds it, in ``zone``, with its clock at ``now``."""
    app = Celery('crontab-table', set_as_current=False)
    app.conf.timezone = zone
    app.conf.enable_utc = True
    clock = now.astimezone(zoneinfo.ZoneInfo(zone))
    return crontab(**fields, app=app, nowfun=lambda: clock)


def parse_instant(text, zone):
    """Parse an ISO instant written with ``zone``'s offset at that instant."""
    parsed = datetime.fromisoformat(text)
    local = parsed.astimezone(zoneinfo.ZoneInfo(zone))
    if parsed.utcoffset() is None or parsed.utcoffset() != local.utcoffset():
        raise ValueError(f'{text}: not written with the offset of {zone} '
                         f'({local.isoformat()})')
    return local


def iso(instant, zone):
    return instant.astimezone(zoneinfo.ZoneInfo(zone)).isoformat()


def next_run_from(fields, zone, last_run_at, now):
    """``now + remaining_estimate(last_run_at)``, in ``zone``."""
    rem = make_schedule(fields, zone, now).remaining_estimate(last_run_at)
    instant = now.astimezone(dt_timezone.utc) + rem
    return rem, instant.astimezone(zoneinfo.ZoneInfo(zone))


def evaluate(c):
    last_run_at = parse_instant(c.last_run, c.timezone)
    now = parse_instant(c.now, c.timezone)
    sched = make_schedule(c.crontab, c.timezone, now)
    due, next_seconds = sched.is_due(last_run_at)
    rem, next_run = next_run_from(c.crontab, c.timezone, last_run_at, now)

    runs = [next_run]
    for _ in range(FOLLOWING_RUNS + 1):  # one extra, for the checks below
        runs.append(next_run_from(c.crontab, c.timezone, runs[-1],
                                  runs[-1])[1])
    notes = [c.notes] if c.notes else []
    notes += check_runs(c, runs)

    return {
        'name': c.name,
        'crontab': dict(c.crontab),
        'timezone': c.timezone,
        'last_run': iso(last_run_at, c.timezone),
        'now': iso(now, c.timezone),
        'is_due': due,
        'next_seconds': float(next_seconds),
        'remaining_estimate': rem.total_seconds(),
        'next_run': iso(next_run, c.timezone),
        'following_runs': [iso(r, c.timezone)
                           for r in runs[1:FOLLOWING_RUNS + 1]],
        'fields': {name: sorted(getattr(sched, name)) for name in FIELDS},
        'notes': '; '.join(notes),
    }


def check_runs(c, runs):
    """Problems with the iterated runs, as notes (empty when consistent)."""
    # Compare and subtract in UTC: aware datetimes sharing one tzinfo are
    # compared and subtracted by wall clock, which is wrong across DST.
    runs = [r.astimezone(dt_timezone.utc) for r in runs]
    problems = []
    for k in range(1, len(runs)):
        if runs[k] <= runs[k - 1]:
            problems.append(f'INCONSISTENT: run {k} {iso(runs[k], c.timezone)}'
                            f' is not after run {k - 1}')
    for k in range(1, len(runs) - 1):
        sched = make_schedule(c.crontab, c.timezone, runs[k])
        seen = sched.is_due(runs[k - 1].astimezone(sched.tz))
        wanted = (True, (runs[k + 1] - runs[k]).total_seconds())
        if tuple(seen) != wanted:
            problems.append(f'INCONSISTENT: at run {k} beat sees {tuple(seen)}'
                            f', iteration says {wanted}')
    return problems


def evaluate_parser_case(field_name, value, context, notes):
    try:
        sched = crontab(**{field_name: value}, **context)
    except Exception as exc:  # noqa: BLE001 - recording what Celery raises
        result, error = None, f'{type(exc).__name__}: {exc}'
    else:
        result, error = sorted(getattr(sched, field_name)), None
    return {'field': field_name, 'value': value, 'context': context,
            'result': result, 'error': error, 'notes': notes}


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def tz_database_version():
    """The IANA release of the tz database that ``zoneinfo`` reads."""
    for directory in zoneinfo.TZPATH:
        path = Path(directory) / 'tzdata.zi'
        if path.is_file():
            first = path.read_text(encoding='utf-8').split('\n', 1)[0]
            return first.removeprefix('# version ').strip()
    try:
        import tzdata  # noqa: PLC0415 - only when there is no system copy
    except ImportError:
        return 'unknown'
    return tzdata.IANA_VERSION


def dumps(document):
    """JSON with one item per line, except that integer lists stay on one."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return re.sub(
        r'\[[\d,\s-]*\]',
        lambda m: '[' + ', '.join(n.strip() for n in m.group(0)[1:-1]
                                  .split(',') if n.strip()) + ']',
        text)


def main():
    names = [c.name for c in CASES]
    if len(names) != len(set(names)):
        raise SystemExit('duplicate case names')
    cases = [evaluate(c) for c in CASES]
    document = {
        'celery': celery.__version__,
        'generated_by': 'crates/celeriac-beat/tests/data/'
                        'generate_crontab_table.py (see its docstring for '
                        'how each value is computed)',
        'python': platform.python_version(),
        'tzdata': tz_database_version(),
        'cases': cases,
        'parser_cases': [evaluate_parser_case(*p) for p in PARSER_CASES],
    }
    OUTPUT.write_text(dumps(document) + '\n', encoding='utf-8')
    for entry in cases:
        flag = '!' if 'INCONSISTENT' in entry['notes'] else ' '
        print(f"{flag} {entry['name']:<48} due={entry['is_due']!s:<5} "
              f"next={entry['next_run']}")
    print(f'{len(cases)} cases, {len(PARSER_CASES)} parser cases -> {OUTPUT}',
          file=sys.stderr)


if __name__ == '__main__':
    main()
