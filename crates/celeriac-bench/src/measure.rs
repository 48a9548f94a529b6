//! Process CPU time and memory from `/proc`, and sample statistics.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (`CLK_TCK`; 100 on
/// every Linux platform we run on).
const TICKS_PER_SECOND: u64 = 100;

/// The `/proc/<pid>/stat` fields after the command name: `(ppid, utime + stime)`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields start after its ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// User + system CPU time used so far by this process (all threads).
pub(crate) fn own_cpu() -> Duration {
    stat(std::process::id()).map_or(Duration::ZERO, |(_, t)| ticks_to_duration(t))
}

/// User + system CPU time of `pid` and its live children (a prefork pool).
pub(crate) fn tree_cpu(pid: u32) -> Duration {
    let mut ticks = stat(pid).map_or(0, |(_, t)| t);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let child = entry.file_name().to_str().and_then(|n| n.parse().ok());
            if let Some((ppid, t)) = child.and_then(stat)
                && ppid == pid
            {
                ticks += t;
            }
        }
    }
    ticks_to_duration(ticks)
}

/// A `/proc/self/status` value in KiB, e.g. `VmRSS` or `VmHWM` (peak).
pub(crate) fn own_memory_kib(field: &str) -> Option<u64> {
    memory_kib(std::process::id(), field)
}

/// A `/proc/<pid>/status` value in KiB, e.g. `VmRSS` or `VmHWM` (peak).
pub(crate) fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The median of `samples` (the mean of the middle two for an even count).
pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile (nearest rank) of `samples`.
pub(crate) fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn this_process_has_a_stat_entry() {
        assert!(stat(std::process::id()).is_some());
        assert!(own_memory_kib("VmRSS").is_some_and(|kib| kib > 0));
    }
}
