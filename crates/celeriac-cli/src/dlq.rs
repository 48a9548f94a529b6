//! Dead letters: list, show, requeue and purge the messages a worker
//! dead-lettered (`<queue>.dead`), as `celeriac dlq ...` does.
//!
//! Reading a dead-letter queue never loses a message: messages are taken
//! unacked and handed back when the channel closes, and a requeue acks a
//! dead letter only after its copy in the original queue is confirmed.

use std::time::Duration;

use celeriac::broker::dead_letter::{
    EXCEPTION_MESSAGE_HEADER, EXCEPTION_TYPE_HEADER, ORIGIN_QUEUE_HEADER, REASON_HEADER,
    TIME_HEADER,
};
use celeriac::broker::{Broker, BrokerError, ConsumeOptions, Delivery, Queue};
use celeriac::protocol::{DecodeOptions, HeaderValue, RawMessage};

/// How long a queue must stay quiet before a read of it is complete.
const QUIET: Duration = Duration::from_millis(500);

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

/// Lists up to `limit` dead letters of task queue `queue`, leaving them in place.
pub async fn list(
    broker: &Broker,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadLetterView>, BrokerError> {
    let (consumer, taken) = take(broker, &dead_letter_queue(broker, queue), limit).await?;
    let views = taken
        .iter()
        .map(|d| DeadLetterView::of(&d.message))
        .collect();
    consumer.stop();
    Ok(views)
}

/// The dead letter with task id `id`, in full: its view and raw message.
pub async fn show(
    broker: &Broker,
    queue: &str,
    id: &str,
) -> Result<Option<(DeadLetterView, RawMessage)>, BrokerError> {
    let (consumer, taken) = take(broker, &dead_letter_queue(broker, queue), 1_000).await?;
    let found = taken
        .iter()
        .map(|d| (DeadLetterView::of(&d.message), d.message.clone()))
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
}

/// Sends matching dead letters back to their original queue with retries
/// reset and the dead-letter headers removed. Each is acked in the
/// dead-letter queue only after its copy is confirmed. Works through the
/// queue 1,000 messages at a time until a round requeues nothing.
pub async fn requeue(
    broker: &Broker,
    queue: &str,
    filter: &Filter,
) -> Result<RequeueReport, BrokerError> {
    let mut total = RequeueReport::default();
    loop {
        let round = requeue_round(broker, queue, filter).await?;
        total.requeued += round.requeued;
        total.kept = round.kept;
        if round.requeued == 0 {
            return Ok(total);
        }
    }
}

async fn requeue_round(
    broker: &Broker,
    queue: &str,
    filter: &Filter,
) -> Result<RequeueReport, BrokerError> {
    let (consumer, taken) = take(broker, &dead_letter_queue(broker, queue), 1_000).await?;
    let mut report = RequeueReport::default();
    for delivery in &taken {
        let view = DeadLetterView::of(&delivery.message);
        if !filter.matches(&view) {
            report.kept += 1;
            continue;
        }
        let origin = if view.origin_queue.is_empty() {
            queue.to_owned()
        } else {
            view.origin_queue.clone()
        };
        let mut copy = delivery.message.clone();
        copy.headers.retain(|key, _| {
            !key.starts_with("x-celeriac-")
                && !key.starts_with("x-death")
                && !key.starts_with("x-first-death")
                && !key.starts_with("x-last-death")
        });
        if copy.headers.contains_key("retries") {
            copy.headers.insert("retries".into(), HeaderValue::Int(0));
        }
        broker.publish("", &origin, &copy).await?;
        delivery.ack().await?;
        report.requeued += 1;
    }
    consumer.stop();
    Ok(report)
}

/// Removes every dead letter of task queue `queue`, returning how many.
pub async fn purge(broker: &Broker, queue: &str) -> Result<u32, BrokerError> {
    broker
        .purge_queue(&dead_letter_queue(broker, queue).name)
        .await
}
