//! Dead letters: list, show, requeue and purge the messages a worker
//! dead-lettered (`<queue>.dead`), as `celeriac dlq ...` and the dashboard
//! do; and the delayed messages whose queue was deleted while they waited
//! (`celeriac.delayed.orphans`, `--orphans`).
//!
//! Reading a dead-letter queue never loses a message: messages are taken
//! unacked and handed back when the channel closes, and a requeue acks a
//! dead letter only after its copy in the original queue is confirmed.
//! A read holds at most [`SCAN_DEPTH`] messages at once, so memory stays
//! bounded however many dead letters a queue holds.

mod act;
mod read;

use std::collections::BTreeSet;

use celeriac::broker::dead_letter::{
    EXCEPTION_MESSAGE_HEADER, EXCEPTION_TYPE_HEADER, FIRST_TIME_HEADER, HOSTNAME_HEADER,
    ORIGIN_QUEUE_HEADER, REASON_HEADER, TIME_HEADER, TRACEBACK_HEADER,
};
use celeriac::broker::delay::{orphans_queue, strip_prefix};
use celeriac::broker::{Broker, Delivery, Queue};
use celeriac::protocol::{DecodeOptions, HeaderValue, RawMessage};

pub use act::{PurgeReport, RequeueReport, purge, purge_selected, requeue};
pub use read::{Page, list, page, show};

/// The reason shown for an orphaned delayed message.
pub const QUEUE_DELETED: &str = "queue_deleted";
/// How many messages of a dead-letter queue a read holds at most: they are
/// held unacked while they are read, so this bounds what the broker sends
/// at once. A page reads no deeper; requeue and purge go deeper as the
/// dead letters they take leave the queue and make room.
pub const SCAN_DEPTH: usize = 10_000;

/// Where the dead letters are read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shelf {
    /// Those a worker dead-lettered from this task queue (`<queue>.dead`).
    Queue(String),
    /// Delayed messages (ETA, countdown, retry backoff) whose queue was
    /// deleted while they waited in the delay topology, for every queue.
    Orphans,
}

impl Shelf {
    /// The queue holding these dead letters.
    pub fn queue(&self, broker: &Broker) -> Queue {
        match self {
            Shelf::Queue(queue) => dead_letter_queue(broker, queue),
            Shelf::Orphans => orphans_queue(broker.config().delay_queue_type),
        }
    }

    /// How `delivery` reads as a dead letter of this shelf.
    fn view(&self, delivery: &Delivery) -> DeadLetterView {
        let mut view = DeadLetterView::of(&delivery.message);
        match self {
            Shelf::Queue(queue) if view.origin_queue.is_empty() => {
                view.origin_queue = queue.clone();
            }
            Shelf::Queue(_) => {}
            Shelf::Orphans => {
                view.reason = QUEUE_DELETED.to_owned();
                view.origin_queue = strip_prefix(&delivery.routing_key).to_owned();
            }
        }
        view
    }
}

/// One dead letter, as `dlq list` and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterView {
    /// Task name (or `?` if the message did not decode).
    pub task: String,
    /// Task id (or `?`).
    pub id: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The exception type, if any.
    pub exception_type: String,
    /// The error text.
    pub error: String,
    /// The traceback, if the task raised.
    pub traceback: String,
    /// The queue it came from.
    pub origin_queue: String,
    /// When it was dead-lettered.
    pub time: String,
    /// When it was first dead-lettered (it may have been requeued and
    /// failed again since); the same as `time` the first time.
    pub first_time: String,
    /// The worker host that dead-lettered it.
    pub hostname: String,
    /// How often it had been retried when it was dead-lettered.
    pub retries: i64,
    /// A display of its arguments.
    pub args: String,
}

impl DeadLetterView {
    fn of(message: &RawMessage) -> DeadLetterView {
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .and_then(HeaderValue::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (task, id, args) =
            match celeriac::protocol::TaskMessage::decode(message, &DecodeOptions::default()) {
                Ok(task) => (
                    task.headers.task,
                    task.headers.id,
                    format!(
                        "{} {}",
                        celeriac::protocol::repr::args_repr(&task.body.args),
                        celeriac::protocol::repr::kwargs_repr(&task.body.kwargs)
                    ),
                ),
                Err(_) => (
                    header("task").if_empty("?"),
                    header("id").if_empty("?"),
                    format!("({} undecodable bytes)", message.body.len()),
                ),
            };
        let time = header(TIME_HEADER);
        DeadLetterView {
            task,
            id,
            reason: header(REASON_HEADER).if_empty("(broker-native)"),
            exception_type: header(EXCEPTION_TYPE_HEADER),
            error: header(EXCEPTION_MESSAGE_HEADER),
            traceback: header(TRACEBACK_HEADER),
            origin_queue: header(ORIGIN_QUEUE_HEADER),
            first_time: header(FIRST_TIME_HEADER).if_empty(&time),
            time,
            hostname: header(HOSTNAME_HEADER),
            retries: match message.headers.get("retries") {
                Some(HeaderValue::Int(retries)) => *retries,
                _ => 0,
            },
            args,
        }
    }
}

#[cfg(test)]
impl DeadLetterView {
    /// A dead letter of `task` with only its id and reason set, for tests.
    pub(crate) fn example(id: &str, task: &str, reason: &str) -> DeadLetterView {
        DeadLetterView {
            task: task.into(),
            id: id.into(),
            reason: reason.into(),
            exception_type: String::new(),
            error: String::new(),
            traceback: String::new(),
            origin_queue: "q".into(),
            time: String::new(),
            first_time: String::new(),
            hostname: String::new(),
            retries: 0,
            args: String::new(),
        }
    }
}

trait IfEmpty {
    fn if_empty(self, fallback: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, fallback: &str) -> String {
        if self.is_empty() {
            fallback.to_owned()
        } else {
            self
        }
    }
}

/// Which dead letters a read or an action takes: those matching every
/// condition given (no condition: all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only those with one of these task ids.
    pub ids: Option<BTreeSet<String>>,
    /// Only those of this task name.
    pub task: Option<String>,
    /// Only those dead-lettered for this reason.
    pub reason: Option<String>,
}

impl Filter {
    /// All dead letters.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// The one with task id `id`.
    pub fn id(id: impl Into<String>) -> Filter {
        Filter::ids([id.into()])
    }

    /// Those with one of these task ids.
    pub fn ids(ids: impl IntoIterator<Item = String>) -> Filter {
        Filter {
            ids: Some(ids.into_iter().collect()),
            ..Filter::default()
        }
    }

    /// Those of task name `task`.
    pub fn task(task: impl Into<String>) -> Filter {
        Filter::all().and_task(Some(task.into()))
    }

    /// Those dead-lettered for `reason`.
    pub fn reason(reason: impl Into<String>) -> Filter {
        Filter::all().and_reason(Some(reason.into()))
    }

    /// This filter, narrowed to task name `task` if given.
    pub fn and_task(mut self, task: Option<String>) -> Filter {
        self.task = task.filter(|t| !t.is_empty());
        self
    }

    /// This filter, narrowed to reason `reason` if given.
    pub fn and_reason(mut self, reason: Option<String>) -> Filter {
        self.reason = reason.filter(|r| !r.is_empty());
        self
    }

    /// Whether it takes every dead letter.
    pub fn is_all(&self) -> bool {
        self.ids.is_none() && self.task.is_none() && self.reason.is_none()
    }

    /// Whether `view` is one it takes.
    pub fn matches(&self, view: &DeadLetterView) -> bool {
        self.ids.as_ref().is_none_or(|ids| ids.contains(&view.id))
            && self.task.as_ref().is_none_or(|task| &view.task == task)
            && self.reason.as_ref().is_none_or(|r| &view.reason == r)
    }

    /// Whether nothing after `found` matching dead letters can match (every
    /// id asked for is found).
    fn exhausted_by(&self, found: usize) -> bool {
        self.ids.as_ref().is_some_and(|ids| found >= ids.len())
    }
}

/// The dead-letter queue of task queue `queue`.
pub fn dead_letter_queue(broker: &Broker, queue: &str) -> Queue {
    broker.config().dead_letter.queue_for(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_takes_what_matches_every_condition_given() {
        let boom = DeadLetterView::example("1", "proj.boom", "failed");
        let other = DeadLetterView::example("2", "proj.other", "failed");
        assert!(Filter::all().matches(&boom));
        assert!(Filter::task("proj.boom").matches(&boom));
        assert!(!Filter::task("proj.boom").matches(&other));
        let both = Filter::reason("failed").and_task(Some("proj.other".into()));
        assert!(both.matches(&other) && !both.matches(&boom));
        assert!(Filter::ids(["1".to_owned(), "3".to_owned()]).matches(&boom));
        assert!(!Filter::id("3").matches(&boom));
    }

    #[test]
    fn empty_conditions_from_a_form_take_everything() {
        let filter = Filter::all().and_task(Some(String::new())).and_reason(None);
        assert!(filter.is_all());
    }

    #[test]
    fn an_id_filter_is_exhausted_once_every_id_is_found() {
        let two = Filter::ids(["a".to_owned(), "b".to_owned()]);
        assert!(!two.exhausted_by(1) && two.exhausted_by(2));
        assert!(!Filter::task("t").exhausted_by(1_000));
    }
}
