//! Scenario 9: large task bodies. For each body size, the same backlog of
//! one-document tasks is drained by raw lapin (multi-ack, the broker's
//! floor), by the worker running `demo.echo` (the document as a JSON value)
//! and `demo.measure` (the document as a typed struct), and by Python
//! Celery's prefork pool running `interop.echo`; then a worker process drains the
//! largest backlog at its default settings, for its peak memory.

use crate::document::document;
use crate::library::WorkerShape;
use crate::measure;
use crate::memory::WorkerProcess;
use crate::raw::{self, RawAck};
use celeriac_protocol::{RawMessage, TaskMessage};

use super::Bench;

/// The scenario name of one body size's rows: `payload 100 KB`.
pub(crate) fn scenario_name(bytes: usize) -> String {
    match bytes {
        b if b >= 1_000_000 && b % 1_000_000 == 0 => format!("payload {} MB", b / 1_000_000),
        b if b >= 1_000 && b % 1_000 == 0 => format!("payload {} KB", b / 1_000),
        b => format!("payload {b} B"),
    }
}

/// A `task(document)` message whose body is about `bytes` long (see
/// [`document`]).
pub(crate) fn document_message(task: &str, bytes: usize) -> anyhow::Result<RawMessage> {
    let id = uuid::Uuid::new_v4().to_string();
    Ok(TaskMessage::new(task, id)
        .with_args(vec![document(bytes)])
        .encode()?)
}

impl Bench {
    /// Runs the payload scenario: each size's three drains interleaved per
    /// round, then a worker process through the largest backlog.
    pub(super) async fn payload(&mut self) -> anyhow::Result<()> {
        let queue = self.queue("payload").await?;
        let prefetch = self.prefetch();
        let multi_ack_every = self.multi_ack_every();
        let sizes = self.sizes.payload_bytes.clone();
        for round in 1..=self.sizes.rounds {
            for &bytes in &sizes {
                let scenario = scenario_name(bytes);
                eprintln!("{scenario}: round {round}/{}", self.sizes.rounds);
                let n = self.sizes.payload_messages(bytes);
                let rust = document_message("demo.echo", bytes)?;
                let typed = document_message("demo.measure", bytes)?;

                self.fill_with(&queue, &rust, n).await?;
                let cpu = measure::own_cpu();
                let took = raw::drain(
                    &self.raw,
                    &queue,
                    n,
                    prefetch,
                    RawAck::Every(multi_ack_every),
                )
                .await?;
                let cpu = measure::own_cpu().saturating_sub(cpu);
                let variant = format!("raw lapin, multi-ack every {multi_ack_every}");
                self.record(&scenario, &variant, n, took.as_secs_f64(), Some(cpu));

                for (variant, message) in [
                    ("celeriac worker, JSON value argument", &rust),
                    ("celeriac worker, typed argument", &typed),
                ] {
                    let shape = WorkerShape::plain(self.concurrency);
                    let (took, cpu) = self.worker_drain_of(&queue, shape, message, n).await?;
                    self.record(&scenario, variant, n, took.as_secs_f64(), Some(cpu));
                }

                let python = document_message("interop.echo", bytes)?;
                self.python_drain_of(&queue, &scenario, None, &python, n)
                    .await?;
            }
        }
        if let Some(&largest) = sizes.iter().max() {
            self.payload_memory(&queue, largest).await?;
        }
        self.broker.purge_queue(&queue).await?;
        Ok(())
    }

    /// A worker process at its default concurrency and prefetch drains a
    /// backlog of `bytes`-long tasks; records its peak RSS.
    async fn payload_memory(&mut self, queue: &str, bytes: usize) -> anyhow::Result<()> {
        let n = self.sizes.payload_messages(bytes);
        let message = document_message("demo.echo", bytes)?;
        self.fill_with(queue, &message, n).await?;
        let concurrency = std::thread::available_parallelism().map_or(2, usize::from);
        eprintln!(
            "{}: worker process, -c {concurrency}, peak memory",
            scenario_name(bytes)
        );
        let mut worker = WorkerProcess::start(&self.broker, &self.url, queue, concurrency).await?;
        worker.wait_drained(&self.broker, queue).await?;
        let peak_kib = worker.memory_kib("VmHWM")?;
        worker.stop().await;
        self.payload_peak = Some(PayloadPeak {
            body_bytes: bytes,
            concurrency,
            prefetch: usize::from(
                celeriac_worker::WorkerConfig {
                    concurrency,
                    ..Default::default()
                }
                .prefetch(),
            ),
            peak_kib,
        });
        Ok(())
    }
}

/// A worker process's peak memory through a backlog of large tasks.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PayloadPeak {
    /// Each task's body size.
    pub(crate) body_bytes: usize,
    /// The worker's concurrency (the default: one per core).
    pub(crate) concurrency: usize,
    /// Its prefetch window, the worker's default for that concurrency.
    pub(crate) prefetch: usize,
    /// Its peak resident memory.
    pub(crate) peak_kib: u64,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The document inside a message made by [`document_message`].
    fn document_of(message: &RawMessage) -> Value {
        let body: Value = serde_json::from_slice(&message.body).expect("a JSON body");
        body[0][0].clone()
    }

    #[test]
    fn a_document_message_is_about_the_size_asked_for() {
        for bytes in [1_000, 10_000, 100_000, 1_000_000] {
            let message = document_message("demo.echo", bytes).unwrap();
            let len = message.body.len();
            assert!(
                len >= bytes && len < bytes + bytes / 10 + 200,
                "{bytes}: {len}"
            );
            let document = document_of(&message);
            assert!(document["text"].as_str().unwrap().len() == bytes / 2);
            assert!(!document["ids"].as_array().unwrap().is_empty());
        }
    }

    #[test]
    fn scenario_names_use_decimal_units() {
        assert_eq!(scenario_name(1_000), "payload 1 KB");
        assert_eq!(scenario_name(100_000), "payload 100 KB");
        assert_eq!(scenario_name(1_000_000), "payload 1 MB");
        assert_eq!(scenario_name(1_500), "payload 1500 B");
    }
}
