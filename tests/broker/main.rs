//! celeriac-broker against the real RabbitMQ: topology and its compatibility
//! with Python's declarations, routing, confirmed publishing, consuming,
//! dead-letter paths. Every test uses its own queues, so they run in parallel.
//! (Tests that disturb the broker itself are in the `faults` binary.)

use std::time::Duration;

use anyhow::{Context as _, Result};
use celeriac_broker::{Consumer, Delivery};
use celeriac_protocol::TaskMessage;
use celeriac_tests::connect;

mod delay;
mod messaging;
mod tls;
mod topology;

/// Deletes the named queues when dropped, on a fresh connection and thread
/// (drop may run inside the test's runtime, or after a failed assertion).
pub(crate) struct Cleanup(pub(crate) Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(broker) = connect().await {
                    for name in &names {
                        let _ = broker.delete_queue(name).await;
                        let _ = broker.delete_exchange(name).await;
                    }
                    broker.close().await;
                }
            });
        })
        .join();
    }
}

pub(crate) fn task(name: &str) -> TaskMessage {
    TaskMessage::new(name, format!("{:032x}", fastrand::u128(..)))
        .with_args(vec![2.into(), 2.into()])
}

pub(crate) async fn next(consumer: &mut Consumer) -> Result<Delivery> {
    tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .context("no delivery within 15 s")?
        .context("consumer ended")
}
