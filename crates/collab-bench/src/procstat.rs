//! CPU time and resident memory of a process, read from Linux's `/proc`.
//!
//! The load and connection benchmarks report the server's cost and the
//! generator's own (to show when the generator, not the server, is the limit).

use std::fs;
use std::time::Instant;

/// A reading of one process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    /// User + system CPU time, in clock ticks.
    cpu_ticks: u64,
    pub rss_bytes: u64,
}

/// Linux reports CPU times in `USER_HZ` ticks, 100 per second everywhere
/// that matters (it is fixed in the kernel ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/{pid}` (`"self"` for this process); `None` where there is no
/// such process or no procfs.
pub fn sample(pid: &str) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Sample {
        at: Instant::now(),
        cpu_ticks: utime + stime,
        rss_bytes: rss_kib * 1024,
    })
}

/// CPU used between two samples, as a share of one core (1.0 = one core busy).
pub fn cpu_share(before: &Sample, after: &Sample) -> f64 {
    let secs = after.at.duration_since(before.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (after.cpu_ticks.saturating_sub(before.cpu_ticks)) as f64 / TICKS_PER_SECOND / secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample("self").expect("procfs");
        assert!(s.rss_bytes > 0);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let t = sample("self").unwrap();
        assert!(cpu_share(&s, &t) >= 0.0);
        assert!(sample("999999999").is_none());
    }
}
