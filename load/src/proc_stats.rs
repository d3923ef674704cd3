//! CPU time and resident memory of a process, and the wake-ups of a core,
//! read from Linux's /proc.
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

/// The one core this process may run on (as `taskset -c N` leaves it), or
/// `None` if it may run on several.
pub fn own_core() -> Option<usize> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_single_cpu(&status)
}

/// Function-call interrupts core `cpu` has received since boot: how Linux
/// wakes a sleeping core to run a task that became ready, among other
/// things. `None` where /proc/interrupts has no such line.
pub fn call_interrupts(cpu: usize) -> Option<u64> {
    let text = fs::read_to_string("/proc/interrupts").ok()?;
    parse_call_interrupts(&text, cpu)
}

fn parse_single_cpu(status: &str) -> Option<usize> {
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))?;
    line.split_once(':')?.1.trim().parse().ok()
}

fn parse_call_interrupts(interrupts: &str, cpu: usize) -> Option<u64> {
    let mut lines = interrupts.lines();
    // The header names the columns: "CPU0 CPU1 ..." (offline CPUs are left out).
    let column = lines
        .next()?
        .split_ascii_whitespace()
        .position(|name| name == format!("CPU{cpu}"))?;
    let line = lines.find(|l| l.trim_start().starts_with("CAL:"))?;
    line.split_ascii_whitespace().nth(1 + column)?.parse().ok()
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
    fn finds_the_single_allowed_cpu() {
        assert_eq!(
            parse_single_cpu("Name:\tx\nCpus_allowed_list:\t1\n"),
            Some(1)
        );
        assert_eq!(parse_single_cpu("Cpus_allowed_list:\t0-1\n"), None);
        assert_eq!(parse_single_cpu("Cpus_allowed_list:\t0,2\n"), None);
    }

    #[test]
    fn reads_the_call_interrupts_of_one_cpu() {
        let text = "           CPU0       CPU1\n  0:         37          0   IO-APIC   2-edge      timer\nLOC:    1519693    1759973   Local timer interrupts\nCAL:    1565799   13702413   Function call interrupts\n";
        assert_eq!(parse_call_interrupts(text, 0), Some(1565799));
        assert_eq!(parse_call_interrupts(text, 1), Some(13702413));
        assert_eq!(parse_call_interrupts(text, 2), None);
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
