//! Acting on dead letters: requeue them to their queue, or delete them.
//! Both read the queue once, holding at most [`SCAN_DEPTH`](super::SCAN_DEPTH) messages
//! unacked: each dead letter taken makes room for the next, so they get
//! through a queue of any depth, unless [`SCAN_DEPTH`](super::SCAN_DEPTH) dead letters that do
//! not match come first (those further back are reported, not read).

use celeriac::broker::dead_letter::FIRST_TIME_HEADER;
use celeriac::broker::{Broker, BrokerError, Delivery};
use celeriac::protocol::{HeaderValue, RawMessage};

use super::read::Reader;
use super::{DeadLetterView, Filter, Shelf};

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
    /// Dead letters that were not looked at: [`SCAN_DEPTH`](super::SCAN_DEPTH) non-matching
    /// ones (or ones left for a missing queue) came before them.
    pub beyond: usize,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Dead letters deleted.
    pub purged: usize,
    /// Dead letters left in place (not matching the filter).
    pub kept: usize,
    /// Dead letters that were not looked at ([`SCAN_DEPTH`](super::SCAN_DEPTH) non-matching
    /// ones came before them).
    pub beyond: usize,
}

/// Sends matching dead letters of `shelf` back to their original queue
/// with retries reset and the dead-letter headers removed. Each is acked
/// only after its copy is confirmed; one whose queue does not exist stays.
pub async fn requeue(
    broker: &Broker,
    shelf: &Shelf,
    filter: &Filter,
) -> Result<RequeueReport, BrokerError> {
    let tally = take_matching(broker, shelf, filter, Take::Requeue).await?;
    Ok(RequeueReport {
        requeued: tally.taken,
        kept: tally.kept,
        no_queue: tally.no_queue,
        beyond: tally.beyond,
    })
}

/// Deletes the dead letters of `shelf` matching `filter`.
pub async fn purge_selected(
    broker: &Broker,
    shelf: &Shelf,
    filter: &Filter,
) -> Result<PurgeReport, BrokerError> {
    if filter.is_all() {
        return Ok(PurgeReport {
            purged: purge(broker, shelf).await? as usize,
            ..PurgeReport::default()
        });
    }
    let tally = take_matching(broker, shelf, filter, Take::Delete).await?;
    Ok(PurgeReport {
        purged: tally.taken,
        kept: tally.kept,
        beyond: tally.beyond,
    })
}

/// Removes every dead letter of `shelf`, returning how many.
pub async fn purge(broker: &Broker, shelf: &Shelf) -> Result<u32, BrokerError> {
    let queue = shelf.queue(broker).name;
    if broker.queue_counts(&queue).await?.is_none() {
        return Ok(0);
    }
    broker.purge_queue(&queue).await
}

/// What happens to a matching dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    Requeue,
    Delete,
}

/// What taking the matching dead letters did.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    taken: usize,
    kept: usize,
    no_queue: usize,
    beyond: usize,
}

/// Takes the matching dead letters of `shelf` in one read of what it holds
/// now (dead letters arriving meanwhile wait for the next action).
async fn take_matching(
    broker: &Broker,
    shelf: &Shelf,
    filter: &Filter,
    take: Take,
) -> Result<Tally, BrokerError> {
    let mut tally = Tally::default();
    let mut found = 0;
    let mut reader = Reader::open_all(broker, shelf).await?;
    while let Some(delivery) = reader.next().await {
        let view = shelf.view(&delivery);
        if !filter.matches(&view) {
            tally.kept += 1;
            continue;
        }
        found += 1;
        let taken = match take {
            Take::Requeue => send_back(broker, shelf, &delivery, &view).await?,
            Take::Delete => true,
        };
        if taken {
            reader.ack(&delivery).await?;
            tally.taken += 1;
        } else {
            tally.no_queue += 1;
        }
        if filter.exhausted_by(found) {
            reader.close().await;
            return Ok(tally);
        }
    }
    tally.beyond = reader.beyond();
    reader.close().await;
    Ok(tally)
}

/// Publishes a clean copy of `delivery` to its original queue and waits for
/// the confirm; `false` if that queue does not exist.
async fn send_back(
    broker: &Broker,
    shelf: &Shelf,
    delivery: &Delivery,
    view: &DeadLetterView,
) -> Result<bool, BrokerError> {
    let copy = requeued_copy(&delivery.message, matches!(shelf, Shelf::Queue(_)));
    match broker.publish("", &view.origin_queue, &copy).await {
        Ok(()) => Ok(true),
        Err(BrokerError::Unroutable { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The message to send back: without the broker's dead-letter record, and,
/// for a worker's dead letter, without the reason headers (but with when it
/// first failed) and with its retries reset. An orphan did not fail: it
/// keeps its retries and its own headers (a unique task's key among them).
fn requeued_copy(message: &RawMessage, dead_lettered: bool) -> RawMessage {
    let mut copy = message.clone();
    let broker_record = |key: &str| {
        ["x-death", "x-first-death", "x-last-death"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
    };
    copy.headers.retain(|key, _| {
        let why_dead = dead_lettered && key.starts_with("x-celeriac-") && key != FIRST_TIME_HEADER;
        !(broker_record(key) || why_dead)
    });
    if dead_lettered && copy.headers.contains_key("retries") {
        copy.headers.insert("retries".into(), HeaderValue::Int(0));
    }
    copy
}

#[cfg(test)]
mod tests {
    use celeriac::broker::dead_letter::{REASON_HEADER, TIME_HEADER};

    use super::*;

    fn dead_letter() -> RawMessage {
        let mut message = RawMessage::default();
        for (key, value) in [
            (REASON_HEADER, "failed"),
            (TIME_HEADER, "2026-01-02T00:00:00+00:00"),
            (FIRST_TIME_HEADER, "2026-01-01T00:00:00+00:00"),
            ("x-first-death-queue", "q"),
            ("task", "proj.boom"),
        ] {
            message
                .headers
                .insert(key.into(), HeaderValue::Str(value.into()));
        }
        message
            .headers
            .insert("retries".into(), HeaderValue::Int(3));
        message
    }

    #[test]
    fn a_requeued_dead_letter_loses_why_it_died_but_keeps_when_it_first_did() {
        let copy = requeued_copy(&dead_letter(), true);
        let keys: Vec<&str> = copy.headers.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(copy.headers.contains_key(FIRST_TIME_HEADER));
        assert!(copy.headers.contains_key("task"));
        assert_eq!(copy.headers.get("retries"), Some(&HeaderValue::Int(0)));
    }

    #[test]
    fn a_requeued_orphan_keeps_its_headers_and_retries() {
        let copy = requeued_copy(&dead_letter(), false);
        assert!(copy.headers.contains_key(REASON_HEADER));
        assert!(!copy.headers.contains_key("x-first-death-queue"));
        assert_eq!(copy.headers.get("retries"), Some(&HeaderValue::Int(3)));
    }
}
