//! Moving a burst of ETA tasks out at the broker's pace.
//!
//! A task moved to the delay topology keeps its delivery unacked until the
//! copy is confirmed, so the worker moves at most as many at once as its
//! prefetch window has free deliveries: at `-c 8` that is 16, and a quorum
//! confirm takes milliseconds, so a burst of thousands of countdown tasks
//! would leave the queue slowly and the tasks queued behind it would wait.
//!
//! When deliveries keep being moved (a run of [`MIN_STREAK`] in a row, or a
//! quarter of the window if that is more, with no other task between), the
//! worker opens a second, temporary consumer on that queue with a window of
//! `eta_burst_window` deliveries (default [`BURST_WINDOW`]) and handles its
//! deliveries exactly as the main consumer's. It ends at the first delivery
//! that is not a task due a second or more from now (the burst is over;
//! that one and any received after it are handled here, as they arrive),
//! or when the queue has been quiet for [`BURST_IDLE`]. So the burst leaves
//! at up to that window of moves in flight, and the cost is bounded: at
//! the end of a burst this worker may have taken up to a window of the
//! tasks behind it. A window of 0 opens no burst consumer. A queue where
//! an ETA task comes now and then between ordinary ones never makes a run.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac::broker::{ConsumeOptions, Delivery};
use celeriac::protocol::HeaderValue;
use celeriac::protocol::time::{now, parse_time};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::context::Context;
use crate::eta_holds::DELAY_RESOLUTION;
use crate::handle::handle;

/// Deliveries the burst consumer may hold at once by default
/// (`eta_burst_window`; docs/performance.md compares windows of 500 to
/// 4,000).
pub const BURST_WINDOW: u16 = 4000;
/// Moved deliveries in a row that make a burst however small the window.
pub(crate) const MIN_STREAK: usize = 8;
/// A burst consumer that receives nothing for this long ends.
pub(crate) const BURST_IDLE: Duration = Duration::from_millis(200);

/// Counts the deliveries moved in a row and asks for a burst consumer when
/// the run is long enough.
#[derive(Debug)]
pub(crate) struct Bursts {
    streak: AtomicUsize,
    /// Burst consumers running (taking deliveries or settling them).
    live: AtomicUsize,
    /// The run that makes a burst.
    threshold: usize,
    requests: mpsc::Sender<String>,
}

impl Bursts {
    /// Burst detection for a window of `prefetch`; requests go to the
    /// returned receiver (for [`serve`]).
    pub(crate) fn new(prefetch: u16) -> (Bursts, mpsc::Receiver<String>) {
        let (requests, received) = mpsc::channel(16);
        let bursts = Bursts {
            streak: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            threshold: (usize::from(prefetch) / 4).max(MIN_STREAK),
            requests,
        };
        (bursts, received)
    }

    /// A delivery from `queue` is being moved; asks for a burst consumer on
    /// `queue` once the run is long enough.
    pub(crate) fn moved(&self, queue: &str) {
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= self.threshold {
            // Full means a request is already waiting: nothing lost.
            let _ = self.requests.try_send(queue.to_owned());
        }
    }

    /// Burst consumers running now, each holding deliveries of its own
    /// (a message about to run alone waits until there are none).
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// A delivery was not moved: any run is over.
    pub(crate) fn not_moved(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }
}

/// Runs burst consumers as they are asked for, at most one taking
/// deliveries from a queue at a time (one that stopped taking may still be
/// settling what it took, e.g. ETA tasks it holds), until the worker shuts
/// down and every burst has settled its deliveries.
pub(crate) async fn serve(ctx: Arc<Context>, mut requests: mpsc::Receiver<String>) {
    let taking = Arc::new(Mutex::new(HashSet::new()));
    let mut bursts = JoinSet::new();
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            request = requests.recv() => match request {
                // A window of 0 turns burst consumers off.
                Some(_) if ctx.config.eta_burst_window == 0 => {}
                // No burst while a message runs alone: it must be the only
                // delivery the worker holds.
                Some(queue) if ctx.isolation.running_alone() => {
                    debug!(queue = %queue, "no burst consumer while a message runs alone");
                }
                Some(queue) => {
                    if lock(&taking).insert(queue.clone()) {
                        bursts.spawn(drain_burst(ctx.clone(), queue, taking.clone()));
                    }
                }
                None => break,
            },
            Some(_) = bursts.join_next(), if !bursts.is_empty() => {}
        }
    }
    while bursts.join_next().await.is_some() {}
}

/// The queues with a burst consumer taking deliveries.
type Taking = Arc<Mutex<HashSet<String>>>;

fn lock(taking: &Taking) -> MutexGuard<'_, HashSet<String>> {
    taking
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Marks a queue as having a burst consumer taking deliveries, until dropped.
struct TakingFrom {
    taking: Taking,
    queue: String,
}

impl Drop for TakingFrom {
    fn drop(&mut self) {
        lock(&self.taking).remove(&self.queue);
    }
}

/// Counts a burst consumer as live until dropped.
struct LiveBurst<'a>(&'a AtomicUsize);

impl Drop for LiveBurst<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Consumes `queue` with a wide window while the burst lasts (leaving
/// `taking` when it stops taking), and returns once every delivery it took
/// is settled.
async fn drain_burst(ctx: Arc<Context>, queue: String, taking: Taking) {
    ctx.bursts.live.fetch_add(1, Ordering::AcqRel);
    let _live = LiveBurst(&ctx.bursts.live);
    let taking_from = TakingFrom {
        taking,
        queue: queue.clone(),
    };
    let Some(spec) = ctx.consumer.queues().into_iter().find(|q| q.name == queue) else {
        return;
    };
    let window = ctx.config.eta_burst_window;
    let options = ConsumeOptions {
        queues: vec![spec],
        prefetch: window,
    };
    let mut consumer = match ctx
        .app
        .broker()
        .consume_with(options, ctx.config.ack_policy_for(window))
        .await
    {
        Ok(consumer) => consumer,
        Err(e) => {
            debug!(queue = %queue, error = %e, "could not open a burst consumer");
            return;
        }
    };
    info!(queue = %queue, window, "moving a burst of ETA tasks to the delay queues");
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            next = tokio::time::timeout(BURST_IDLE, consumer.next()) => match next {
                Ok(Some(delivery)) => {
                    let burst_goes_on = is_due_later(&delivery);
                    running.spawn(handle(ctx.clone(), delivery));
                    if !burst_goes_on || ctx.isolation.running_alone() {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    consumer.cancel().await;
    drop(taking_from);
    // Deliveries already on their way still arrive after the cancel: each
    // is handled as it comes, until nothing taken is unsettled and none came
    // for BURST_IDLE. On shutdown, as in the main loop, tasks get the
    // shutdown timeout and the rest go back to the queue with the channel.
    let deadline = async {
        ctx.shutdown.cancelled().await;
        tokio::time::sleep(ctx.config.shutdown_timeout).await;
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            Some(delivery) = consumer.next() => {
                running.spawn(handle(ctx.clone(), delivery));
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = tokio::time::sleep(BURST_IDLE), if running.is_empty() => break,
            () = &mut deadline => {
                running.abort_all();
                break;
            }
        }
    }
    consumer.flush_acks().await;
    consumer.stop();
    debug!(queue = %queue, "burst consumer ended");
}

/// Whether `delivery` is a task due a second or more from now (by its
/// protocol 2 `eta` header).
fn is_due_later(delivery: &Delivery) -> bool {
    let Some(HeaderValue::Str(eta)) = delivery.message.headers.get("eta") else {
        return false;
    };
    parse_time(eta).is_some_and(|eta| {
        (eta - now())
            .to_std()
            .is_ok_and(|wait| wait >= DELAY_RESOLUTION)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_consumer_is_asked_for_after_a_quarter_window_of_moves_in_a_row() {
        let (bursts, mut requests) = Bursts::new(64);
        (0..15).for_each(|_| bursts.moved("q"));
        assert!(requests.try_recv().is_err(), "15 in a row of a 64 window");
        bursts.moved("q");
        assert_eq!(requests.try_recv().ok().as_deref(), Some("q"));
    }

    #[test]
    fn an_ordinary_task_between_moves_ends_the_run() {
        let (bursts, mut requests) = Bursts::new(8);
        for _ in 0..10 {
            (0..MIN_STREAK - 1).for_each(|_| bursts.moved("q"));
            bursts.not_moved();
        }
        assert!(requests.try_recv().is_err(), "no run reached {MIN_STREAK}");
        (0..MIN_STREAK).for_each(|_| bursts.moved("q"));
        assert!(requests.try_recv().is_ok());
    }
}
