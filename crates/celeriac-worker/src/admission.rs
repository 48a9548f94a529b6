//! The checks a delivery passes before its task may run, in Celery's order
//! (§3.2): decode, redelivery count, registry, expiry, ETA. Given the
//! message, what the worker knows and the clock, [`admit`] says what to do
//! (taking a hold slot for an ETA task it keeps); the handler does it. The
//! concurrency permit is taken afterwards, so a delivery waiting for its
//! ETA holds none.

use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::DeadLetterReason;
use celeriac::protocol::{DecodeOptions, RawMessage, TaskMessage};
use celeriac::{Registry, Task};
use chrono::{DateTime, FixedOffset};

use crate::eta_holds::{DELAY_RESOLUTION, EtaHold, EtaHolds};

/// What to do with a delivery before anything runs.
pub(crate) enum Admission<'a> {
    /// It is not a task message we can read: dead-letter it.
    Undecodable {
        /// Why, as a dead-letter reason.
        reason: DeadLetterReason,
        /// The decoder's message.
        detail: String,
    },
    /// The broker delivered it before (a worker may have crashed on it):
    /// count the redelivery before running it again.
    Redelivered(Arc<TaskMessage>),
    /// No task of that name is registered here.
    Unregistered(Arc<TaskMessage>),
    /// It expired before it could start.
    Expired(Arc<TaskMessage>),
    /// It is due further out than the ETA horizon, or every hold slot is
    /// taken: move it to the delay topology for this long rather than hold
    /// it unacked.
    Postpone(Duration),
    /// Run it once `wait` has passed (zero: at once).
    Run {
        /// The decoded message (shared: a task's future holds it by
        /// pointer, and its run shares it with the task's arguments).
        message: Arc<TaskMessage>,
        /// The task to run.
        task: Arc<dyn Task>,
        /// How long until its ETA.
        wait: Duration,
        /// The hold slot it waits in (none if due within a second).
        hold: Option<EtaHold<'a>>,
    },
}

/// What the worker knows when it admits a delivery.
pub(crate) struct Gate<'a> {
    /// The registered tasks.
    pub(crate) registry: &'a Registry,
    /// How the message is decoded (and its signature checked).
    pub(crate) decode: &'a DecodeOptions,
    /// ETAs further out than this are postponed.
    pub(crate) eta_horizon: Duration,
    /// The slots for ETA tasks held within the horizon.
    pub(crate) holds: &'a EtaHolds,
    /// The current time.
    pub(crate) now: DateTime<FixedOffset>,
}

/// Decides what happens to a delivery of `raw` before its task runs.
pub(crate) fn admit<'a>(raw: &RawMessage, redelivered: bool, gate: &Gate<'a>) -> Admission<'a> {
    let message = match TaskMessage::decode(raw, gate.decode) {
        Ok(message) => Arc::new(message),
        Err(err) => {
            return Admission::Undecodable {
                reason: DeadLetterReason::from_decode_reason(err.reason()),
                detail: err.to_string(),
            };
        }
    };
    if redelivered {
        return Admission::Redelivered(message);
    }
    let Some(task) = gate.registry.get(&message.headers.task).cloned() else {
        return Admission::Unregistered(message);
    };
    if is_expired(&message, gate.now) {
        return Admission::Expired(message);
    }
    let wait = message
        .headers
        .eta
        .and_then(|eta| (eta - gate.now).to_std().ok())
        .unwrap_or(Duration::ZERO);
    if wait > gate.eta_horizon {
        return Admission::Postpone(wait);
    }
    let hold = if wait < DELAY_RESOLUTION {
        None
    } else {
        match gate.holds.try_hold() {
            Some(hold) => Some(hold),
            None => return Admission::Postpone(wait),
        }
    };
    Admission::Run {
        message,
        task,
        wait,
        hold,
    }
}

/// Whether `message` is past its `expires` at `now`.
pub(crate) fn is_expired(message: &TaskMessage, now: DateTime<FixedOffset>) -> bool {
    message
        .headers
        .expires
        .is_some_and(|expires| expires <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac::protocol::Bytes;
    use celeriac::protocol::time::now;
    use celeriac::{Arguments, Request, TaskFuture};

    struct Noop;

    impl Task for Noop {
        fn name(&self) -> &str {
            "tests.noop"
        }
        fn call(&self, _request: Request, _args: Arguments) -> TaskFuture {
            Box::pin(async { Ok(serde_json::Value::Null) })
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::default();
        registry.register(Arc::new(Noop));
        registry
    }

    fn message(name: &str) -> TaskMessage {
        TaskMessage::new(name, "11111111-1111-4111-8111-111111111111")
    }

    /// Admits `message` with room to hold 10 ETA tasks.
    fn decide(message: TaskMessage, redelivered: bool) -> Admission<'static> {
        static HOLDS: std::sync::LazyLock<EtaHolds> =
            std::sync::LazyLock::new(|| EtaHolds::new(10));
        decide_with(message, redelivered, &HOLDS)
    }

    fn decide_with(message: TaskMessage, redelivered: bool, holds: &EtaHolds) -> Admission<'_> {
        // The admission may borrow the gate's registry as long as the hold.
        let registry: &'static Registry = Box::leak(Box::new(registry()));
        let decode: &'static DecodeOptions = Box::leak(Box::default());
        let gate = Gate {
            registry,
            decode,
            eta_horizon: Duration::from_secs(600),
            holds,
            now: now(),
        };
        admit(&message.encode().unwrap(), redelivered, &gate)
    }

    #[test]
    fn a_plain_task_runs_at_once() {
        match decide(message("tests.noop"), false) {
            Admission::Run { wait, task, .. } => {
                assert_eq!(wait, Duration::ZERO);
                assert_eq!(task.name(), "tests.noop");
            }
            _ => panic!("expected Run"),
        }
    }

    #[test]
    fn bytes_that_are_no_task_are_undecodable() {
        let raw = RawMessage {
            body: Bytes::from_static(b"not json"),
            ..message("tests.noop").encode().unwrap()
        };
        let registry = registry();
        let holds = EtaHolds::new(1);
        let gate = Gate {
            registry: &registry,
            decode: &DecodeOptions::default(),
            eta_horizon: Duration::from_secs(600),
            holds: &holds,
            now: now(),
        };
        match admit(&raw, false, &gate) {
            Admission::Undecodable { reason, detail } => {
                assert_eq!(reason, DeadLetterReason::DecodeError);
                assert!(!detail.is_empty());
            }
            _ => panic!("expected Undecodable"),
        }
    }

    #[test]
    fn a_redelivery_is_counted_before_the_registry_is_asked() {
        assert!(matches!(
            decide(message("tests.unknown"), true),
            Admission::Redelivered(_)
        ));
    }

    #[test]
    fn unknown_names_are_unregistered() {
        assert!(matches!(
            decide(message("tests.unknown"), false),
            Admission::Unregistered(m) if m.headers.task == "tests.unknown"
        ));
    }

    #[test]
    fn expiry_is_checked_before_the_eta() {
        let past = now() - chrono::Duration::seconds(1);
        let far = now() + chrono::Duration::days(1);
        let expired = message("tests.noop")
            .with_expires(past, now())
            .with_eta(far);
        assert!(matches!(decide(expired, false), Admission::Expired(_)));
    }

    #[test]
    fn etas_are_held_within_the_horizon_and_postponed_beyond_it() {
        let soon = message("tests.noop").with_eta(now() + chrono::Duration::seconds(30));
        match decide(soon, false) {
            Admission::Run { wait, .. } => {
                assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
            }
            _ => panic!("expected Run after a wait"),
        }
        let far = message("tests.noop").with_eta(now() + chrono::Duration::hours(2));
        assert!(matches!(
            decide(far, false),
            Admission::Postpone(wait) if wait > Duration::from_secs(7000)
        ));
        let past = message("tests.noop").with_eta(now() - chrono::Duration::hours(2));
        assert!(matches!(
            decide(past, false),
            Admission::Run { wait, .. } if wait.is_zero()
        ));
    }

    #[test]
    fn etas_beyond_the_hold_slots_are_postponed_unless_due_within_a_second() {
        let holds = EtaHolds::new(1);
        let in_30s = || message("tests.noop").with_eta(now() + chrono::Duration::seconds(30));
        let held = decide_with(in_30s(), false, &holds);
        assert!(matches!(held, Admission::Run { hold: Some(_), .. }));
        assert!(matches!(
            decide_with(in_30s(), false, &holds),
            Admission::Postpone(wait) if wait > Duration::from_secs(25)
        ));
        let imminent = message("tests.noop").with_eta(now() + chrono::Duration::milliseconds(400));
        assert!(
            matches!(
                decide_with(imminent, false, &holds),
                Admission::Run { hold: None, .. }
            ),
            "an ETA due within the delay queues' resolution is held without a slot"
        );
        drop(held);
        assert!(matches!(
            decide_with(in_30s(), false, &holds),
            Admission::Run { hold: Some(_), .. }
        ));
    }
}
