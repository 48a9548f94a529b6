//! The targets, as ratios between rows of one run.

use crate::measure::median;
use crate::memory::MemoryReport;
use crate::report::{Check, EtaRow, LatencyRow, Throughput};
use crate::scenarios::scenario_name;

/// The most a worker process may use through a countdown burst of any size:
/// its idle footprint (~20 MB), its hold slots, and the burst consumer's
/// window of deliveries with their moves in flight. A figure that grew
/// with the burst would break it.
const WORKER_PEAK_THROUGH_BURST_MB: f64 = 100.0;

/// The targets, as ratios between rows of this run.
pub(crate) fn checks(
    throughput: &[Throughput],
    latency: &[LatencyRow],
    memory: Option<&MemoryReport>,
    eta: &[EtaRow],
    payload_bytes: &[usize],
) -> Vec<Check> {
    // A variant by its exact name, else the first whose name starts so.
    let rate = |scenario: &str, prefix: &str| {
        let rows = || throughput.iter().filter(|t| t.scenario == scenario);
        rows()
            .find(|t| t.variant == prefix)
            .or_else(|| rows().find(|t| t.variant.starts_with(prefix)))
            .map(|t| t.median_per_s)
    };
    let cpu_of = |scenario: &str, variant: &str| {
        throughput
            .iter()
            .find(|t| t.scenario == scenario && t.variant == variant)
            .and_then(Throughput::cpu_us_per_task_median)
    };
    let mut checks = Vec::new();
    let mut ratio = |name: &str, a: Option<f64>, b: Option<f64>, at_least: f64| {
        if let (Some(a), Some(b)) = (a, b) {
            checks.push(Check::at_least(name, a / b, at_least, "×"));
        }
    };
    let worker = rate("drain", "celeriac worker, ack_batch 32");
    ratio(
        "worker drain with task events / without",
        rate("drain", "celeriac worker, ack_batch 32, task events"),
        worker,
        0.9,
    );
    ratio(
        "worker drain with metrics / without",
        rate("drain", "celeriac worker, ack_batch 32, metrics"),
        worker,
        0.97,
    );
    ratio(
        "worker drain with task spans recorded / without",
        rate("drain", "celeriac worker, ack_batch 32, task spans"),
        worker,
        0.95,
    );
    // Performance round two raised this from 0.5× (round one).
    ratio(
        "worker drain / raw multi-ack consume",
        worker,
        rate("drain", "raw lapin, multi-ack"),
        0.9,
    );
    ratio(
        "worker drain (ack_batch 1) / raw consume, ack each",
        rate("drain", "celeriac worker, ack_batch 1"),
        rate("drain", "raw lapin, ack each"),
        1.0,
    );
    ratio(
        "worker drain / Python Celery prefork",
        worker,
        rate("drain", "python"),
        10.0,
    );
    // Like with like: the worker's tasks send their acks without waiting
    // for each other, so the baseline pipelines them too.
    ratio(
        "worker drain (ack_batch 1) / raw consume, ack each, pipelined",
        rate("drain", "celeriac worker, ack_batch 1"),
        rate("drain", "raw lapin, ack each, pipelined"),
        0.9,
    );
    // Like with like: raw lapin's request/reply confirms both publishes
    // and acks each request once its reply is confirmed, as the worker
    // stores a result before it acks.
    let rpc = rate("results", "celeriac, rpc://");
    let raw_rpc = rate("results", "raw lapin request/reply");
    ratio(
        "rpc:// round trip / raw lapin request-reply",
        rpc,
        raw_rpc,
        0.7,
    );
    let apply = rate("publish", "celeriac apply()");
    ratio(
        "apply() / raw publish, 1000 in flight",
        apply,
        rate("publish", "raw lapin, 1000"),
        0.8,
    );
    ratio(
        "apply() / Python send_task",
        apply,
        rate("publish", "python"),
        3.0,
    );
    let bulk = rate("publish", "celeriac send_many()");
    ratio(
        "send_many() / raw publish, 5000 in flight",
        bulk,
        rate("publish", "raw lapin, 5000"),
        0.8,
    );
    ratio(
        "send_many() / Python send_task",
        bulk,
        rate("publish", "python"),
        3.0,
    );
    ratio(
        "worker drain, redis results / Python Celery prefork, redis results",
        rate("redis drain", "celeriac worker, redis results"),
        rate("redis drain", "python"),
        5.0,
    );
    // Both drains wait on the same database's commits (one per result),
    // so what the worker itself controls is its CPU per task.
    let python_cpu = throughput
        .iter()
        .find(|t| t.scenario == "postgres drain" && t.variant.starts_with("python"))
        .and_then(Throughput::cpu_us_per_task_median);
    ratio(
        "Python Celery prefork CPU per task / worker's, postgres results",
        python_cpu,
        cpu_of("postgres drain", "celeriac worker, postgres results"),
        5.0,
    );
    if let Some(trickle) = latency.first() {
        checks.push(Check::at_most(
            "enqueue→start p99 at a trickle",
            trickle.enqueue_to_start_ms.p99,
            5.0,
            "ms",
        ));
    }
    if let Some(cpu) = cpu_of("drain", "celeriac worker, ack_batch 32") {
        checks.push(Check::at_most(
            "process CPU per no-op task in the worker",
            cpu,
            20.0,
            "µs",
        ));
    }
    if let (Some(stored), Some(ignored)) = (
        cpu_of("redis drain", "celeriac worker, redis results"),
        cpu_of("redis drain", "celeriac worker, results ignored"),
    ) {
        checks.push(Check::at_most(
            "worker CPU per task, redis results / results ignored",
            stored / ignored,
            1.5,
            "×",
        ));
    }
    if let Some(memory) = memory {
        let megabytes = memory.backlog_peak_kib as f64 * 1024.0 / 1e6;
        checks.push(Check::at_most(
            "worker peak RSS on the backlog",
            megabytes,
            30.0,
            "MB",
        ));
        checks.push(Check::at_most(
            "worker RSS growth across the tasks (last / first)",
            memory.growth(),
            1.1,
            "×",
        ));
    }
    for row in eta {
        let worst = |samples: &[f64]| samples.iter().copied().fold(0.0, f64::max);
        checks.push(Check::at_most(
            &format!(
                "ordinary tasks behind {} countdown tasks (burst window {}): send → done, worst round",
                row.burst, row.burst_window
            ),
            worst(&row.ordinary_done_s),
            1.0,
            "s",
        ));
        checks.push(Check::at_most(
            &format!(
                "{} countdown tasks due at once (burst window {}): all done after due, worst round",
                row.burst, row.burst_window
            ),
            worst(&row.last_late_s),
            1.0,
            "s",
        ));
        checks.push(Check::at_most(
            &format!(
                "{} countdown tasks due at once (burst window {}): all done after due, beyond the raw consumer's, median",
                row.burst, row.burst_window
            ),
            median(&row.last_late_s) - median(&row.raw_last_late_s),
            1.0,
            "s",
        ));
        for (baseline, rates, floor) in [
            ("raw publish", &row.raw_publish_per_s, 0.5),
            ("raw delayed publish", &row.raw_delayed_publish_per_s, 0.8),
            (
                "raw lapin relaying them to the delay queues",
                &row.raw_relay_per_s,
                0.8,
            ),
        ] {
            checks.push(Check::at_least(
                &format!(
                    "{} countdown tasks cleared (burst window {}) / {baseline}",
                    row.burst, row.burst_window
                ),
                median(&row.cleared_per_s) / median(rates),
                floor,
                "×",
            ));
        }
        if let Some(kib) = row.worker_process_peak_kib {
            checks.push(Check::at_most(
                &format!(
                    "worker process peak RSS through {} countdown tasks (burst window {})",
                    row.burst, row.burst_window
                ),
                kib as f64 * 1024.0 / 1e6,
                WORKER_PEAK_THROUGH_BURST_MB,
                "MB",
            ));
        }
    }
    let cpu_by_prefix = |scenario: &str, prefix: &str| {
        throughput
            .iter()
            .find(|t| t.scenario == scenario && t.variant.starts_with(prefix))
            .and_then(Throughput::cpu_us_per_task_median)
    };
    // Performance round two: CPU per task beside raw lapin doing the same
    // with the same bytes and window.
    for (name, ours, raw, at_most) in [
        (
            "worker CPU per no-op task / raw multi-ack consumer's",
            cpu_of("drain", "celeriac worker, ack_batch 32"),
            cpu_by_prefix("drain", "raw lapin, multi-ack"),
            1.3,
        ),
        (
            "apply() CPU per task / raw publish's, 1000 in flight",
            cpu_by_prefix("publish", "celeriac apply()"),
            cpu_by_prefix("publish", "raw lapin, 1000"),
            1.5,
        ),
        (
            "send_many() CPU per task / raw publish's, 5000 in flight",
            cpu_by_prefix("publish", "celeriac send_many()"),
            cpu_by_prefix("publish", "raw lapin, 5000"),
            1.2,
        ),
    ] {
        if let (Some(ours), Some(raw)) = (ours, raw) {
            checks.push(Check::at_most(name, ours / raw, at_most, "×"));
        }
    }
    if let (Some(celeriac), Some(raw)) = (
        cpu_by_prefix("results", "celeriac, rpc://"),
        cpu_by_prefix("results", "raw lapin request/reply"),
    ) {
        checks.push(Check::at_most(
            "rpc:// CPU per round trip / raw lapin request-reply's",
            celeriac / raw,
            2.0,
            "×",
        ));
    }
    checks.extend(payload_checks(throughput, payload_bytes));
    checks
}

/// The large-payload targets: the worker against raw lapin at 100 KB and
/// 1 MB, its CPU per task against Python's at every size, and its CPU per
/// extra payload byte between the smallest size from 10 KB up and the
/// largest.
fn payload_checks(throughput: &[Throughput], sizes: &[usize]) -> Vec<Check> {
    let row = |bytes: usize, prefix: &str| {
        let scenario = scenario_name(bytes);
        throughput
            .iter()
            .find(move |t| t.scenario == scenario && t.variant.starts_with(prefix))
    };
    let cpu = |t: Option<&Throughput>| t.and_then(Throughput::cpu_us_per_task_median);
    let mut checks = Vec::new();
    // The issue measured a JSON value argument (`demo.echo`); a typed one
    // (`demo.measure`) is what a Rust task would take.
    for (argument, prefix) in [
        ("JSON value", "celeriac worker, JSON value"),
        ("typed", "celeriac worker, typed"),
    ] {
        for &bytes in sizes {
            let name = scenario_name(bytes);
            let worker = row(bytes, prefix);
            let floor = match bytes {
                100_000 => Some(0.5),
                1_000_000 => Some(0.3),
                _ => None,
            };
            if let (Some(floor), Some(worker), Some(raw)) = (floor, worker, row(bytes, "raw lapin"))
            {
                checks.push(Check::at_least(
                    &format!("{name}: worker ({argument}) drain / raw multi-ack consume"),
                    worker.median_per_s / raw.median_per_s,
                    floor,
                    "×",
                ));
            }
            if let (Some(python), Some(worker)) = (cpu(row(bytes, "python")), cpu(worker)) {
                checks.push(Check::at_least(
                    &format!("{name}: Python prefork CPU per task / worker's ({argument})"),
                    python / worker,
                    5.0,
                    "×",
                ));
            }
        }
        let small = sizes.iter().copied().filter(|&b| b >= 10_000).min();
        let large = sizes.iter().copied().max();
        if let (Some(small), Some(large)) = (small, large)
            && large > small
            && let (Some(a), Some(b)) = (cpu(row(small, prefix)), cpu(row(large, prefix)))
        {
            checks.push(Check::at_most(
                &format!(
                    "worker ({argument}) CPU per extra payload byte, {} to {}",
                    scenario_name(small).trim_start_matches("payload "),
                    scenario_name(large).trim_start_matches("payload ")
                ),
                (b - a) * 1e3 / (large - small) as f64,
                1.5,
                "ns",
            ));
        }
    }
    checks
}
