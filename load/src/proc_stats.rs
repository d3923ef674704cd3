//! CPU time and resident memory of a process, read from Linux's /proc.
//!
//! CPU comes from utime+stime in /proc/PID/stat, which covers all of the
//! process's threads (exited ones too), in clock ticks. /proc/PID/schedstat
//! would give nanoseconds, but only for the main thread and only on kernels
//! with schedstats enabled, so ticks are the portable choice; over a run of a
//! few seconds their 10 ms resolution is well under 1%.

use std::fs;

use anyhow::{bail, Context, Result};

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks =
        parse_stat_cpu_ticks(&text).with_context(|| format!("unexpected format of {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// The process's own CPU seconds, to tell whether the load tool itself was the bottleneck.
pub fn own_cpu_seconds() -> Result<f64> {
    cpu_seconds(std::process::id())
}

/// VmRSS of the process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_status_rss_kib(&text).with_context(|| format!("no VmRSS line in {path}"))
}

/// Checks that the PID names a live process before the run relies on it.
pub fn check_pid(pid: u32) -> Result<()> {
    if fs::metadata(format!("/proc/{pid}")).is_err() {
        bail!("--server-pid {pid}: no such process");
    }
    Ok(())
}

fn clock_ticks_per_second() -> u64 {
    // sysconf(_SC_CLK_TCK); rustix wraps it without unsafe code on our side.
    rustix::param::clock_ticks_per_second().max(1)
}

/// utime + stime (fields 14 and 15) from the text of /proc/PID/stat.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // Field 2 is the command name in parentheses and may itself contain spaces
    // or parentheses, so count fields from the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // After the ')' come field 3 (state) onwards: utime is field 14, i.e. index 11 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let stat = "1234 (my (odd) srv) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 4 0 999 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(267));
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tbun\nVmPeak:\t  9000 kB\nVmRSS:\t   51234 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss_kib(status), Some(51234));
    }

    #[test]
    fn reads_own_process() {
        assert!(own_cpu_seconds().is_ok());
        assert!(rss_kib(std::process::id()).unwrap_or(0) > 0);
    }
}
