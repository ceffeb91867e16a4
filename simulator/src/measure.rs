//! Measurements: the shared clock stamped into payloads, latency histograms, and a process's
//! resident memory and CPU time read from `/proc`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

/// A monotonic clock in microseconds that reads like unix time.
///
/// Publishers stamp it into each message and the subscriber reads it on arrival, in the same
/// process, so the difference is the publish-to-receive latency. Its values are unix
/// microseconds at the start plus monotonic time since, which keeps them below 2^53 and
/// strictly usable as a per-taxi `seq`.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_unix_us: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let start_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            start_unix_us,
        }
    }

    /// Microseconds on this clock now.
    pub fn now_us(&self) -> u64 {
        self.at_us(Instant::now())
    }

    /// Microseconds on this clock at `instant` (not before the clock's start).
    pub fn at_us(&self, instant: Instant) -> u64 {
        self.start_unix_us + instant.saturating_duration_since(self.start).as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub struct Latency {
    histogram: Histogram<u64>,
}

/// The summary printed for a latency histogram.
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn new() -> Result<Latency> {
        let histogram = Histogram::new_with_bounds(1, 600_000_000, 3)
            .context("creating a latency histogram")?;
        Ok(Latency { histogram })
    }

    pub fn record_us(&mut self, micros: u64) {
        self.histogram.saturating_record(micros.max(1));
    }

    pub fn record(&mut self, elapsed: Duration) {
        self.record_us(elapsed.as_micros() as u64);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) -> Result<()> {
        self.histogram
            .add(&other.histogram)
            .context("merging latency histograms")
    }

    pub fn summary(&self) -> LatencySummary {
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50_us: self.histogram.value_at_quantile(0.50),
            p99_us: self.histogram.value_at_quantile(0.99),
            max_us: self.histogram.max(),
        }
    }
}

/// Resident set size of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_field_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_field_kib(pid, "VmHWM:")
}

fn status_field_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let Some(line) = status.lines().find(|line| line.starts_with(field)) else {
        bail!("{path} has no {field} line");
    };
    line[field.len()..]
        .split_whitespace()
        .next()
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("unreadable {field} in {path}: {line:?}"))
}

/// Waits until the resident size of `pid` stops changing (two readings 500 ms apart within
/// 0.5 %), at most `max_wait`, and returns the last reading in KiB.
pub async fn settled_rss_kib(pid: u32, max_wait: Duration) -> Result<u64> {
    let deadline = Instant::now() + max_wait;
    let mut last = rss_kib(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid)?;
        let change = now.abs_diff(last) as f64 / last.max(1) as f64;
        last = now;
        if change < 0.005 || Instant::now() >= deadline {
            return Ok(now);
        }
    }
}

/// User plus system CPU time a process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat)
        .map(|stat| stat.cpu)
        .with_context(|| format!("unreadable {path}"))
}

/// What a `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`) line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The command (for a thread: its name), at most 15 bytes.
    pub name: String,
    pub parent: u32,
    /// User plus system CPU time.
    pub cpu: Duration,
}

/// Parses a `stat` line.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let (before, after) = stat.rsplit_once(')')?;
    let (_, name) = before.split_once('(')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the full line, the parent field 4, utime field 14
    // and stime field 15.
    let field = |index: usize| -> Option<u64> { fields.get(index - 3)?.parse().ok() };
    let total = field(14)? + field(15)?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as u64
    } else {
        100
    };
    Some(Stat {
        name: name.to_owned(),
        parent: u32::try_from(field(4)?).ok()?,
        cpu: Duration::from_micros(total * 1_000_000 / per_second),
    })
}

/// CPU time used so far by the threads of process `pid` whose name starts with `prefix`
/// (threads that have ended are not counted).
pub fn threads_cpu_time(pid: u32, prefix: &str) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("stat");
        // A thread may end between listing and reading.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text).filter(|stat| stat.name.starts_with(prefix)) {
            total += stat.cpu;
        }
    }
    Ok(total)
}

/// CPU time used so far by each thread of process `pid`: thread id, name, CPU time.
pub fn thread_cpu_times(pid: u32) -> Result<Vec<(u32, String, Duration)>> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread may end between listing and reading.
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text) {
            threads.push((tid, stat.name, stat.cpu));
        }
    }
    Ok(threads)
}

/// The busiest threads of a process over a stretch of wall time.
pub struct ThreadCpuMeter {
    pid: u32,
    start: std::collections::HashMap<u32, Duration>,
    wall_start: Instant,
}

impl ThreadCpuMeter {
    pub fn start(pid: u32) -> Result<ThreadCpuMeter> {
        Ok(ThreadCpuMeter {
            pid,
            start: thread_cpu_times(pid)?
                .into_iter()
                .map(|(tid, _, cpu)| (tid, cpu))
                .collect(),
            wall_start: Instant::now(),
        })
    }

    /// The `count` threads that used the most CPU since the start, busiest first.
    pub fn stop(&self, count: usize) -> Result<Vec<(String, CpuUse)>> {
        let wall = self.wall_start.elapsed();
        let mut threads: Vec<(String, CpuUse)> = thread_cpu_times(self.pid)?
            .into_iter()
            .map(|(tid, name, cpu)| {
                let before = self.start.get(&tid).copied().unwrap_or_default();
                let cpu = cpu.saturating_sub(before);
                (name, CpuUse { cpu, wall })
            })
            .collect();
        threads.sort_by_key(|(_, use_)| std::cmp::Reverse(use_.cpu));
        threads.truncate(count);
        Ok(threads)
    }
}

/// CPU time the whole machine has spent busy (not idle, not waiting for I/O) so far, over
/// all CPUs, from `/proc/stat`.
pub fn machine_busy_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_busy(&stat).context("unreadable /proc/stat")
}

fn parse_machine_busy(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let busy: u64 = fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as u64
    } else {
        100
    };
    Some(Duration::from_micros(busy * 1_000_000 / per_second))
}

/// CPU time used so far by process `root` and each of its direct children, by process id.
pub fn family_cpu_times(root: u32) -> Result<std::collections::HashMap<u32, Duration>> {
    let mut times = std::collections::HashMap::new();
    times.insert(root, cpu_time(root)?);
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&text).filter(|stat| stat.parent == root) {
            times.insert(pid, stat.cpu);
        }
    }
    Ok(times)
}

/// CPU time used by a process over a stretch of wall time.
pub struct CpuMeter {
    pid: u32,
    cpu_start: Duration,
    wall_start: Instant,
}

/// CPU used over a measured stretch.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub cpu: Duration,
    pub wall: Duration,
}

impl CpuUse {
    /// Average use in percent of one core.
    pub fn percent(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<CpuMeter> {
        Ok(CpuMeter {
            pid,
            cpu_start: cpu_time(pid)?,
            wall_start: Instant::now(),
        })
    }

    pub fn stop(&self) -> Result<CpuUse> {
        Ok(CpuUse {
            cpu: cpu_time(self.pid)?.saturating_sub(self.cpu_start),
            wall: self.wall_start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() -> Result<()> {
        let pid = std::process::id();
        assert!(rss_kib(pid)? > 0);
        assert!(peak_rss_kib(pid)? >= rss_kib(pid)? / 2);
        cpu_time(pid)?;
        Ok(())
    }

    #[test]
    fn stat_lines_are_parsed() {
        let line = "4242 (tokio rt) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 3 0";
        let stat = parse_stat(line).expect("parsed");
        assert_eq!(stat.name, "tokio rt");
        assert_eq!(stat.parent, 17);
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        assert_eq!(stat.cpu, Duration::from_micros(300 * 1_000_000 / ticks));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_io_wait() {
        let stat = "cpu  100 0 50 1000 30 5 5 0 0 0\ncpu0 50 0 25 500 15 2 3 0 0 0\n";
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        assert_eq!(
            parse_machine_busy(stat),
            Some(Duration::from_micros(160 * 1_000_000 / ticks))
        );
        assert!(machine_busy_time().is_ok());
    }

    #[test]
    fn own_threads_and_family_are_readable() -> Result<()> {
        let pid = std::process::id();
        threads_cpu_time(pid, "")?;
        assert!(family_cpu_times(pid)?.contains_key(&pid));
        Ok(())
    }

    #[test]
    fn latency_percentiles() -> Result<()> {
        let mut latency = Latency::new()?;
        for micros in 1..=1000 {
            latency.record_us(micros);
        }
        let summary = latency.summary();
        assert!((495..=505).contains(&summary.p50_us), "{summary:?}");
        assert!((985..=995).contains(&summary.p99_us), "{summary:?}");
        assert_eq!(summary.max_us, 1000);
        Ok(())
    }

    #[test]
    fn clock_is_monotonic_and_unix_like() {
        let clock = Clock::new();
        let a = clock.now_us();
        let b = clock.now_us();
        assert!(b >= a);
        let unix_us = unix_ms() as u64 * 1000;
        assert!(a.abs_diff(unix_us) < 5_000_000);
        assert!(a < 1 << 53);
    }
}
