//! Dead letters: list, show, requeue and purge the messages a worker
//! dead-lettered (`<queue>.dead`), as `celeriac dlq ...` does; and the
//! delayed messages whose queue was deleted while they waited
//! (`celeriac.delayed.orphans`, `--orphans`).
//!
//! Reading a dead-letter queue never loses a message: messages are taken
//! unacked and handed back when the channel closes, and a requeue acks a
//! dead letter only after its copy in the original queue is confirmed.

use std::time::Duration;

use celeriac::broker::dead_letter::{
    EXCEPTION_MESSAGE_HEADER, EXCEPTION_TYPE_HEADER, ORIGIN_QUEUE_HEADER, REASON_HEADER,
    TIME_HEADER,
};
use celeriac::broker::delay::{orphans_queue, strip_prefix};
use celeriac::broker::{Broker, BrokerError, ConsumeOptions, Delivery, Queue};
use celeriac::protocol::{DecodeOptions, HeaderValue, RawMessage};

/// How long a queue must stay quiet before a read of it is complete.
const QUIET: Duration = Duration::from_millis(500);
/// The reason shown for an orphaned delayed message.
pub const QUEUE_DELETED: &str = "queue_deleted";

/// Where the dead letters are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One dead letter, as `dlq list` shows it.
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
    /// The queue it came from.
    pub origin_queue: String,
    /// When it was dead-lettered.
    pub time: String,
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
        DeadLetterView {
            task,
            id,
            reason: header(REASON_HEADER).if_empty("(broker-native)"),
            exception_type: header(EXCEPTION_TYPE_HEADER),
            error: header(EXCEPTION_MESSAGE_HEADER),
            origin_queue: header(ORIGIN_QUEUE_HEADER),
            time: header(TIME_HEADER),
            args,
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

/// Which dead letters a requeue takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// All of them.
    All,
    /// The one with this task id.
    Id(String),
    /// Those of this task name.
    Task(String),
    /// Those dead-lettered for this reason.
    Reason(String),
}

impl Filter {
    fn matches(&self, view: &DeadLetterView) -> bool {
        match self {
            Filter::All => true,
            Filter::Id(id) => &view.id == id,
            Filter::Task(task) => &view.task == task,
            Filter::Reason(reason) => &view.reason == reason,
        }
    }
}

/// The dead-letter queue of task queue `queue`.
pub fn dead_letter_queue(broker: &Broker, queue: &str) -> Queue {
    broker.config().dead_letter.queue_for(queue)
}

impl Shelf {
    /// Whether there is nothing to read: the orphans queue is declared by
    /// the workers' delay topology, and is not created by looking.
    async fn is_absent(&self, broker: &Broker) -> Result<bool, BrokerError> {
        match self {
            Shelf::Queue(_) => Ok(false),
            Shelf::Orphans => Ok(broker
                .queue_counts(&self.queue(broker).name)
                .await?
                .is_none()),
        }
    }
}

/// Takes up to `limit` messages of `queue` unacked (they go back when the
/// returned deliveries' channel closes, or when acked/rejected).
async fn take(
    broker: &Broker,
    queue: &Queue,
    limit: usize,
) -> Result<(celeriac::broker::Consumer, Vec<Delivery>), BrokerError> {
    let prefetch = u16::try_from(limit.clamp(1, 1_000)).unwrap_or(1_000);
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch,
        })
        .await?;
    let mut taken = Vec::new();
    while taken.len() < limit {
        match tokio::time::timeout(QUIET, consumer.next()).await {
            Ok(Some(delivery)) => taken.push(delivery),
            _ => break,
        }
    }
    Ok((consumer, taken))
}

/// Lists up to `limit` dead letters of `shelf`, leaving them in place.
pub async fn list(
    broker: &Broker,
    shelf: &Shelf,
    limit: usize,
) -> Result<Vec<DeadLetterView>, BrokerError> {
    if shelf.is_absent(broker).await? {
        return Ok(Vec::new());
    }
    let (consumer, taken) = take(broker, &shelf.queue(broker), limit).await?;
    let views = taken.iter().map(|d| shelf.view(d)).collect();
    consumer.stop();
    Ok(views)
}

/// The dead letter with task id `id`, in full: its view and raw message.
pub async fn show(
    broker: &Broker,
    shelf: &Shelf,
    id: &str,
) -> Result<Option<(DeadLetterView, RawMessage)>, BrokerError> {
    if shelf.is_absent(broker).await? {
        return Ok(None);
    }
    let (consumer, taken) = take(broker, &shelf.queue(broker), 1_000).await?;
    let found = taken
        .iter()
        .map(|d| (shelf.view(d), d.message.clone()))
        .find(|(view, _)| view.id == id);
    consumer.stop();
    Ok(found)
}

/// What a requeue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequeueReport {
    /// Dead letters sent back to their queue.
    pub requeued: usize,
    /// Dead letters left in place (not matching the filter).
    pub kept: usize,
    /// Matching dead letters left in place because their queue does not
    /// exist (declare it, then requeue again).
    pub no_queue: usize,
}

/// Sends matching dead letters of `shelf` back to their original queue
/// with retries reset and the dead-letter headers removed. Each is acked
/// only after its copy is confirmed; one whose queue does not exist stays.
/// Works through the shelf 1,000 messages at a time until a round requeues
/// nothing.
pub async fn requeue(
    broker: &Broker,
    shelf: &Shelf,
    filter: &Filter,
) -> Result<RequeueReport, BrokerError> {
    let mut total = RequeueReport::default();
    if shelf.is_absent(broker).await? {
        return Ok(total);
    }
    loop {
        let round = requeue_round(broker, shelf, filter).await?;
        total.requeued += round.requeued;
        total.kept = round.kept;
        total.no_queue = round.no_queue;
        if round.requeued == 0 {
            return Ok(total);
        }
    }
}

async fn requeue_round(
    broker: &Broker,
    shelf: &Shelf,
    filter: &Filter,
) -> Result<RequeueReport, BrokerError> {
    let (consumer, taken) = take(broker, &shelf.queue(broker), 1_000).await?;
    let mut report = RequeueReport::default();
    for delivery in &taken {
        let view = shelf.view(delivery);
        if !filter.matches(&view) {
            report.kept += 1;
            continue;
        }
        let mut copy = delivery.message.clone();
        // An orphan did not fail: it keeps its retries and its own headers
        // (a unique task's key among them), and loses only the broker's
        // dead-letter record.
        let dead_lettered = matches!(shelf, Shelf::Queue(_));
        let broker_record = |key: &str| {
            ["x-death", "x-first-death", "x-last-death"]
                .iter()
                .any(|prefix| key.starts_with(prefix))
        };
        copy.headers.retain(|key, _| {
            let why_dead = dead_lettered && key.starts_with("x-celeriac-");
            !(broker_record(key) || why_dead)
        });
        if dead_lettered && copy.headers.contains_key("retries") {
            copy.headers.insert("retries".into(), HeaderValue::Int(0));
        }
        match broker.publish("", &view.origin_queue, &copy).await {
            Ok(()) => {
                delivery.ack().await?;
                report.requeued += 1;
            }
            Err(BrokerError::Unroutable { .. }) => report.no_queue += 1,
            Err(e) => return Err(e),
        }
    }
    consumer.stop();
    Ok(report)
}

/// Removes every dead letter of `shelf`, returning how many.
pub async fn purge(broker: &Broker, shelf: &Shelf) -> Result<u32, BrokerError> {
    if shelf.is_absent(broker).await? {
        return Ok(0);
    }
    broker.purge_queue(&shelf.queue(broker).name).await
}
