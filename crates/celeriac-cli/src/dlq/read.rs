//! Reading dead letters in queue order without taking them: a [`Reader`]
//! holds what it read unacked, and the broker hands it all back when the
//! reader closes.

use std::time::Duration;

use celeriac::broker::{Broker, BrokerError, ConsumeOptions, Consumer, Delivery};
use celeriac::protocol::RawMessage;

use super::{DeadLetterView, Filter, SCAN_DEPTH, Shelf};

/// How long a read waits for the next message before it asks the broker
/// whether more will come.
const QUIET: Duration = Duration::from_millis(500);

/// How long a read keeps waiting on a broker that holds ready messages but
/// sends none (a busy or paging broker can pause for seconds): past this
/// the read ends with what it has.
const PATIENCE: Duration = Duration::from_secs(30);

/// Reads up to a fixed number of a dead-letter queue's messages, unacked.
pub(super) struct Reader {
    consumer: Option<Consumer>,
    broker: Broker,
    /// The queue read.
    queue: String,
    /// Messages held unacked at most (the consumer's prefetch).
    window: usize,
    /// Messages read and not yet acked.
    held: usize,
    /// Messages the queue held when the read began.
    pub(super) total: usize,
    /// Messages this reader reads at most.
    limit: usize,
    /// Messages read so far.
    pub(super) read: usize,
}

impl Reader {
    /// Opens `shelf` to read at most `depth` of its messages. The broker
    /// sends no more than that at once (the consumer's prefetch), so memory
    /// stays bounded however deep the queue is. A queue that does not exist
    /// reads as empty, and is not created by looking.
    pub(super) async fn open(
        broker: &Broker,
        shelf: &Shelf,
        depth: usize,
    ) -> Result<Reader, BrokerError> {
        Reader::open_with(broker, shelf, depth, depth).await
    }

    /// Opens `shelf` to read every message it holds now, holding at most
    /// [`SCAN_DEPTH`] unacked at once: for a reader that acks what it
    /// takes, each ack makes room for the next message, so it gets through
    /// a queue of any depth unless [`SCAN_DEPTH`] messages it leaves come
    /// first.
    pub(super) async fn open_all(broker: &Broker, shelf: &Shelf) -> Result<Reader, BrokerError> {
        Reader::open_with(broker, shelf, SCAN_DEPTH, usize::MAX).await
    }

    async fn open_with(
        broker: &Broker,
        shelf: &Shelf,
        window: usize,
        depth: usize,
    ) -> Result<Reader, BrokerError> {
        let queue = shelf.queue(broker);
        let total = broker
            .queue_counts(&queue.name)
            .await?
            .map_or(0, |(messages, _)| messages as usize);
        let limit = depth.min(total);
        let prefetch = u16::try_from(window.min(limit)).unwrap_or(u16::MAX);
        let consumer = if limit == 0 {
            None
        } else {
            // Consumed as it exists: a dead-letter queue keeps the type it
            // was first declared with.
            let queue = broker.declare_of_either_type(&queue).await?;
            Some(
                broker
                    .consume(ConsumeOptions {
                        queues: vec![queue],
                        prefetch,
                    })
                    .await?,
            )
        };
        Ok(Reader {
            consumer,
            broker: broker.clone(),
            queue: queue.name,
            window: usize::from(prefetch),
            held: 0,
            total,
            limit,
            read: 0,
        })
    }

    /// The next message, or `None` once `depth` are read, the queue has no
    /// more ready (another reader took them), or the window is full of
    /// messages held unacked. A broker that is only slow to send is waited
    /// for, up to [`PATIENCE`].
    pub(super) async fn next(&mut self) -> Option<Delivery> {
        if self.read >= self.limit {
            return None;
        }
        let waiting_since = tokio::time::Instant::now();
        loop {
            let consumer = self.consumer.as_mut()?;
            if let Ok(delivery) = tokio::time::timeout(QUIET, consumer.next()).await {
                let delivery = delivery?;
                self.read += 1;
                self.held += 1;
                return Some(delivery);
            }
            if waiting_since.elapsed() >= PATIENCE || !self.more_may_come().await {
                return None;
            }
        }
    }

    /// Acknowledges `delivery` (it leaves the queue), making room in the
    /// window for the next message.
    pub(super) async fn ack(&mut self, delivery: &Delivery) -> Result<(), BrokerError> {
        delivery.ack().await?;
        self.held = self.held.saturating_sub(1);
        Ok(())
    }

    /// Whether a quiet consumer may still be sent something: its window
    /// has room and the queue holds ready messages.
    async fn more_may_come(&self) -> bool {
        if self.held >= self.window {
            return false;
        }
        matches!(self.broker.queue_counts(&self.queue).await, Ok(Some((ready, _))) if ready > 0)
    }

    /// Messages the queue held when the read began that this reader never
    /// saw (past its depth, or behind a full window).
    pub(super) fn beyond(&self) -> usize {
        self.total.saturating_sub(self.read)
    }

    /// Hands back every message read and not acked, and waits until the
    /// channel is closed: a classic queue has them back then, so a read
    /// right after sees them (a quorum queue may take a moment more).
    pub(super) async fn close(self) {
        if let Some(consumer) = self.consumer {
            consumer.close().await;
        }
    }
}

/// One page of a dead-letter queue, as the dashboard shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The dead letters on this page, in queue order.
    pub letters: Vec<DeadLetterView>,
    /// How many matching dead letters come before this page.
    pub offset: usize,
    /// Messages in the queue when it was read.
    pub total: usize,
    /// Matching dead letters among those examined, when a filter was given
    /// (without one, every message matches: see `total`).
    pub matched: Option<usize>,
    /// Whether more matching dead letters follow this page.
    pub has_more: bool,
    /// Messages past the read depth ([`SCAN_DEPTH`]) that were not looked at.
    pub beyond: usize,
}

/// The `limit` dead letters of `shelf` matching `filter` after the first
/// `offset` of them, leaving every message in place. Without a filter it
/// reads only as far as the page; with one it reads up to [`SCAN_DEPTH`]
/// messages to count the matches.
pub async fn page(
    broker: &Broker,
    shelf: &Shelf,
    filter: &Filter,
    offset: usize,
    limit: usize,
) -> Result<Page, BrokerError> {
    let depth = if filter.is_all() {
        offset.saturating_add(limit).saturating_add(1)
    } else {
        SCAN_DEPTH
    };
    let mut reader = Reader::open(broker, shelf, depth.min(SCAN_DEPTH)).await?;
    let mut page = Page {
        offset,
        total: reader.total,
        ..Page::default()
    };
    let mut matched = 0;
    while let Some(delivery) = reader.next().await {
        let view = shelf.view(&delivery);
        if !filter.matches(&view) {
            continue;
        }
        if matched >= offset && page.letters.len() < limit {
            page.letters.push(view);
        }
        matched += 1;
    }
    page.has_more = matched > offset + page.letters.len();
    page.matched = (!filter.is_all()).then_some(matched);
    page.beyond = if filter.is_all() { 0 } else { reader.beyond() };
    reader.close().await;
    Ok(page)
}

/// Lists up to `limit` dead letters of `shelf`, leaving them in place.
pub async fn list(
    broker: &Broker,
    shelf: &Shelf,
    limit: usize,
) -> Result<Vec<DeadLetterView>, BrokerError> {
    Ok(page(broker, shelf, &Filter::all(), 0, limit).await?.letters)
}

/// The dead letter with task id `id`, in full: its view and raw message
/// (looked for among the first [`SCAN_DEPTH`]).
pub async fn show(
    broker: &Broker,
    shelf: &Shelf,
    id: &str,
) -> Result<Option<(DeadLetterView, RawMessage)>, BrokerError> {
    let mut reader = Reader::open(broker, shelf, SCAN_DEPTH).await?;
    let mut found = None;
    while let Some(delivery) = reader.next().await {
        let view = shelf.view(&delivery);
        if view.id == id {
            found = Some((view, delivery.message));
            break;
        }
    }
    reader.close().await;
    Ok(found)
}
