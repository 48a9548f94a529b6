//! The results: a plain-text table and the JSON summary.

use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::median;
use crate::measure::percentile;
use crate::memory::MemoryReport;
use crate::plan::Sizes;
use crate::scenarios::PayloadPeak;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub(crate) cores: usize,
    pub(crate) worker_concurrency: usize,
    pub(crate) prefetch: u16,
    pub(crate) sizes: Sizes,
    pub(crate) python: bool,
    /// Peak RSS of the benchmark process (producer, in-process worker and
    /// raw clients together).
    pub(crate) peak_rss_kib: Option<u64>,
    pub(crate) throughput: Vec<Throughput>,
    pub(crate) latency: Vec<LatencyRow>,
    pub(crate) memory: Option<MemoryReport>,
    pub(crate) beat: Vec<BeatRow>,
    pub(crate) eta: Vec<EtaRow>,
    pub(crate) payload_peak: Option<PayloadPeak>,
    pub(crate) checks: Vec<Check>,
}

/// One variant of a throughput scenario, over all rounds.
#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    pub(crate) scenario: String,
    pub(crate) variant: String,
    pub(crate) messages: u64,
    pub(crate) samples_per_s: Vec<f64>,
    pub(crate) median_per_s: f64,
    pub(crate) cpu_us_per_task: Vec<f64>,
}

impl Throughput {
    pub(crate) fn new(scenario: &str, variant: &str, messages: u64) -> Throughput {
        Throughput {
            scenario: scenario.to_owned(),
            variant: variant.to_owned(),
            messages,
            samples_per_s: Vec::new(),
            median_per_s: f64::NAN,
            cpu_us_per_task: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, rate: f64, cpu_us: Option<f64>) {
        self.samples_per_s.push(rate);
        self.median_per_s = median(&self.samples_per_s);
        self.cpu_us_per_task.extend(cpu_us);
    }

    pub(crate) fn cpu_us_per_task_median(&self) -> Option<f64> {
        (!self.cpu_us_per_task.is_empty()).then(|| median(&self.cpu_us_per_task))
    }
}

/// Latencies at one offered load.
#[derive(Debug, Serialize)]
pub(crate) struct LatencyRow {
    pub(crate) load: String,
    pub(crate) rate_per_s: f64,
    pub(crate) tasks: u64,
    pub(crate) enqueue_to_start_ms: Percentiles,
    pub(crate) enqueue_to_result_ms: Percentiles,
}

/// How late periodic sends arrived, over all rounds.
#[derive(Debug, Serialize)]
pub(crate) struct BeatRow {
    pub(crate) variant: String,
    /// Sends measured.
    pub(crate) sends: u64,
    /// From each send's due time to its delivery to a consumer.
    pub(crate) due_to_delivered_ms: Percentiles,
}

/// One burst size of the ETA scenario, over all rounds.
#[derive(Debug, Serialize)]
pub(crate) struct EtaRow {
    /// Countdown tasks in the burst.
    pub(crate) burst: u64,
    /// The worker's burst consumer window, and raw lapin's relay's.
    pub(crate) burst_window: u16,
    /// Their countdown.
    pub(crate) due_in_s: f64,
    /// From sending the ordinary tasks behind the burst to all of them done.
    pub(crate) ordinary_done_s: Vec<f64>,
    /// The burst's size over the time from its first send until the
    /// ordinary tasks behind it were done (sent, moved out, run).
    pub(crate) cleared_per_s: Vec<f64>,
    /// Raw lapin publishing as many messages with confirms, 1000 in flight.
    pub(crate) raw_publish_per_s: Vec<f64>,
    /// Raw lapin publishing as many messages through the delay queues
    /// (to the level of each delay's highest bit), with confirms, 1000 in
    /// flight.
    pub(crate) raw_delayed_publish_per_s: Vec<f64>,
    /// Raw lapin doing the worker's move: a producer publishing the burst
    /// to the queue (confirms, 1000 in flight) while a consumer with the
    /// worker's burst window republishes each delivery to the delay
    /// queues with confirms and acks it once its copy is confirmed; the
    /// burst over the time from the first publish to the last ack.
    pub(crate) raw_relay_per_s: Vec<f64>,
    /// From the burst's due time (one instant for all) until all had run.
    pub(crate) last_late_s: Vec<f64>,
    /// From the due time of raw lapin's delayed messages until a raw
    /// consumer (prefetch 400, multi-ack) had taken the last of them (0 if
    /// all came before it: a delay is whole seconds, rounded down as
    /// Celery rounds it): the broker's own floor for `last_late_s`.
    pub(crate) raw_last_late_s: Vec<f64>,
    /// Peak RSS of a worker process (`celeriac-demo worker`, same
    /// concurrency) through one burst: moving it out, waiting, running it.
    pub(crate) worker_process_peak_kib: Option<u64>,
    /// The benchmark process's RSS (producer and worker) while the burst
    /// waited in the delay queues, highest of the rounds.
    pub(crate) rss_waiting_kib: u64,
}

impl EtaRow {
    /// An empty row for a burst of `burst` tasks due in `due_in`, moved
    /// with a window of `burst_window`.
    pub(crate) fn new(burst: u64, due_in: std::time::Duration, burst_window: u16) -> EtaRow {
        EtaRow {
            burst,
            burst_window,
            due_in_s: due_in.as_secs_f64(),
            ordinary_done_s: Vec::new(),
            cleared_per_s: Vec::new(),
            raw_publish_per_s: Vec::new(),
            raw_delayed_publish_per_s: Vec::new(),
            raw_relay_per_s: Vec::new(),
            last_late_s: Vec::new(),
            raw_last_late_s: Vec::new(),
            worker_process_peak_kib: None,
            rss_waiting_kib: 0,
        }
    }
}

/// p50, p99 and max of a sample.
#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

/// One target from the issue, checked against this run.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) target: String,
    pub(crate) met: bool,
}

impl Check {
    pub(crate) fn at_least(name: &str, value: f64, bound: f64, unit: &str) -> Check {
        Check {
            name: name.to_owned(),
            value,
            target: format!("≥ {bound} {unit}"),
            met: value >= bound,
        }
    }

    pub(crate) fn at_most(name: &str, value: f64, bound: f64, unit: &str) -> Check {
        Check {
            name: name.to_owned(),
            value,
            target: format!("≤ {bound} {unit}"),
            met: value <= bound,
        }
    }
}

/// The human-readable report.
pub(crate) fn table(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} cores; worker concurrency {}, prefetch {}; {} rounds; Python baselines: {}",
        results.cores,
        results.worker_concurrency,
        results.prefetch,
        results.sizes.rounds,
        if results.python { "yes" } else { "skipped" }
    );
    let _ = writeln!(
        out,
        "\n| scenario | variant | messages | median tasks/s | rounds | CPU µs/task |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---|---:|");
    for row in &results.throughput {
        let cpu = row
            .cpu_us_per_task_median()
            .map_or("-".to_owned(), |c| format!("{c:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} |",
            row.scenario,
            row.variant,
            row.messages,
            row.median_per_s,
            each_round(&row.samples_per_s, 0),
            cpu
        );
    }
    let _ = writeln!(
        out,
        "\n| latency (ms) | tasks | enqueue→start p50 / p99 / max | enqueue→result p50 / p99 / max |"
    );
    let _ = writeln!(out, "|---|---:|---|---|");
    for row in &results.latency {
        let (s, r) = (&row.enqueue_to_start_ms, &row.enqueue_to_result_ms);
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
            row.load, row.tasks, s.p50, s.p99, s.max, r.p50, r.p99, r.max
        );
    }
    if let Some(memory) = &results.memory {
        let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
        let samples: Vec<String> = memory
            .rss_after_chunks_kib
            .iter()
            .map(|&kib| format!("{:.1}", mb(kib)))
            .collect();
        let _ = writeln!(
            out,
            "\nworker process memory (MB), concurrency {}: idle {:.1}; peak on a {}-task backlog {:.1}; RSS every {} tasks up to {}: {}",
            memory.concurrency,
            mb(memory.idle_rss_kib),
            memory.backlog,
            mb(memory.backlog_peak_kib),
            memory.backlog,
            memory.total_tasks,
            samples.join(" ")
        );
    }
    if !results.beat.is_empty() {
        let _ = writeln!(
            out,
            "\n| periodic sends (ms) | sends | due time → delivered p50 / p99 / max |"
        );
        let _ = writeln!(out, "|---|---:|---|");
        for row in &results.beat {
            let p = &row.due_to_delivered_ms;
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} / {:.2} / {:.2} |",
                row.variant, row.sends, p.p50, p.p99, p.max
            );
        }
    }
    if !results.eta.is_empty() {
        let _ = writeln!(
            out,
            "\n| countdown burst | burst window | due in (s) | ordinary behind it: send → done (s) | burst cleared / s | raw publish / s | raw delayed publish / s | raw relay to the delay queues / s | all done after due (s) | raw: all consumed after due (s) | worker process peak RSS (MiB) | benchmark RSS waiting (MiB) |"
        );
        let _ = writeln!(
            out,
            "|---:|---:|---:|---|---:|---:|---:|---:|---|---|---:|---:|"
        );
        for row in &results.eta {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.1} |",
                row.burst,
                row.burst_window,
                row.due_in_s,
                each_round(&row.ordinary_done_s, 2),
                median(&row.cleared_per_s),
                median(&row.raw_publish_per_s),
                median(&row.raw_delayed_publish_per_s),
                median(&row.raw_relay_per_s),
                each_round(&row.last_late_s, 2),
                each_round(&row.raw_last_late_s, 2),
                row.worker_process_peak_kib
                    .map_or("-".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0)),
                row.rss_waiting_kib as f64 / 1024.0
            );
        }
    }
    if let Some(peak) = &results.payload_peak {
        let _ = writeln!(
            out,
            "\nworker process through {}-byte tasks, -c {} (prefetch {}): peak RSS {:.1} MiB",
            peak.body_bytes,
            peak.concurrency,
            peak.prefetch,
            peak.peak_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(out, "\n| target | this run | target | met |");
    let _ = writeln!(out, "|---|---:|---|---|");
    for check in &results.checks {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {} | {} |",
            check.name,
            check.value,
            check.target,
            if check.met { "yes" } else { "**no**" }
        );
    }
    if let Some(kib) = results.peak_rss_kib {
        let _ = writeln!(
            out,
            "\npeak RSS of the benchmark process (producer + in-process worker): {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    out
}

/// One figure per round, with `decimals` decimals, space-separated.
fn each_round(samples: &[f64], decimals: usize) -> String {
    samples
        .iter()
        .map(|s| format!("{s:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Percentiles {
    pub(crate) fn of(samples: &[f64]) -> Percentiles {
        Percentiles {
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            max: percentile(samples, 100.0),
        }
    }
}
