//! The results of a run: a human table, or one JSON object for scripts.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::Args;
use crate::verify::Counts;

/// Times in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub samples: u64,
}

impl Latency {
    fn from_us(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            samples: h.len(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RunStats {
    /// From the first send to the last delivery.
    pub seconds: f64,
    /// Messages the senders were asked to send, and actually sent.
    pub planned: u64,
    pub sent: u64,
    #[serde(flatten)]
    pub counts: Counts,
    /// lost / expected, in percent.
    pub lost_percent: f64,
    /// Deliveries of all planned messages (planned x clients) that never
    /// happened, in percent: counts messages a stopped sender never sent too.
    pub missing_percent_of_planned: f64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    /// Send to receive, over all first deliveries.
    pub latency_ms: Latency,
    /// Open loop: how late messages went out, from their due time (which
    /// the latency counts from) to the moment the frame was written. The
    /// tool's own delay, part of every latency; should stay far below it.
    pub send_lateness_ms: Option<Latency>,
    /// Frames that carried this run's marker with a sender or seq outside the run.
    pub foreign_frames: u64,
    /// CPU the load tool itself used over the window, in percent of one core:
    /// near 100 means the tool, not the server, may have been the bottleneck.
    pub load_cpu_percent: Option<f64>,
    /// Function-call interrupts the load tool's core received over the
    /// window, when the tool is pinned to one core (`taskset -c N`): mostly
    /// wake-ups. Many mean the tool kept falling asleep between deliveries,
    /// that is, the server delivered more slowly than the tool reads.
    pub load_core_wakeups: Option<u64>,
}

/// Everything measured. Optional parts are null when not measured.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub url: String,
    /// "closed", "open" or "idle".
    pub mode: &'static str,
    pub clients: usize,
    pub senders: usize,
    pub messages_per_sender: u32,
    pub in_flight: Option<u32>,
    pub rate_per_sender: Option<f64>,
    pub size: usize,
    pub source_addresses: usize,

    pub connect_seconds: f64,
    pub connect_ms: Latency,
    pub barrier_rounds: Option<u32>,
    pub barrier_seconds: Option<f64>,

    pub run: Option<RunStats>,
    pub clients_disconnected: Option<usize>,
    /// A few of the reasons clients were disconnected during the run.
    pub disconnect_reasons: Vec<String>,
    pub senders_stopped: Vec<String>,

    pub server_pid: Option<u32>,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_connected: Option<u64>,
    pub server_rss_kib_end: Option<u64>,
    /// Highest server RSS seen during the measured run (sampled).
    pub server_rss_kib_peak: Option<u64>,
    /// Extra clients that read slowly or not at all, and what became of them.
    pub slow_clients: Option<SlowClients>,
    /// (RSS connected - RSS before) / clients, in bytes.
    pub server_rss_bytes_per_connection: Option<f64>,
}

/// What the run phase hands over to be turned into `RunStats`.
pub struct RunInput<'a> {
    pub seconds: f64,
    pub planned: u64,
    pub sent: u64,
    pub counts: Counts,
    pub foreign: u64,
    pub latency_us: &'a Histogram<u64>,
    pub lateness_us: Option<&'a Histogram<u64>>,
    pub load_cpu_seconds: Option<f64>,
    pub load_core_wakeups: Option<u64>,
    pub wall: f64,
}

/// What the slow clients did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SlowClients {
    pub count: usize,
    /// Milliseconds between two reads; 0: never read.
    pub read_interval_ms: u64,
    /// Frames they read in all.
    pub frames_read: u64,
    /// How many the server closed (seen only by those that read).
    pub closed_by_server: usize,
}

const MAX_REASONS: usize = 5;

impl Report {
    pub fn new(args: &Args, sources: usize) -> Self {
        let idle = args.is_idle();
        Report {
            url: args.url.clone(),
            mode: match (idle, args.rate) {
                (true, _) => "idle",
                (false, None) => "closed",
                (false, Some(_)) => "open",
            },
            clients: args.clients,
            senders: if idle { 0 } else { args.senders },
            messages_per_sender: if idle { 0 } else { args.messages },
            in_flight: (!idle && args.rate.is_none()).then_some(args.in_flight),
            rate_per_sender: if idle { None } else { args.rate },
            size: args.size,
            source_addresses: sources,
            server_pid: args.server_pid,
            ..Report::default()
        }
    }

    pub fn set_connect(&mut self, seconds: f64, per_conn_us: &Histogram<u64>) {
        self.connect_seconds = seconds;
        self.connect_ms = Latency::from_us(per_conn_us);
    }

    pub fn note_disconnect(&mut self, why: String) {
        if self.disconnect_reasons.len() < MAX_REASONS && !self.disconnect_reasons.contains(&why) {
            self.disconnect_reasons.push(why);
        }
    }

    pub fn set_run(&mut self, r: RunInput<'_>) {
        let per_sec = |n: u64| {
            if r.seconds > 0.0 {
                n as f64 / r.seconds
            } else {
                0.0
            }
        };
        self.run = Some(RunStats {
            seconds: r.seconds,
            planned: r.planned,
            sent: r.sent,
            counts: r.counts,
            lost_percent: if r.counts.expected > 0 {
                100.0 * r.counts.lost as f64 / r.counts.expected as f64
            } else {
                0.0
            },
            missing_percent_of_planned: {
                let planned = r.planned * self.clients as u64;
                if planned > 0 {
                    100.0 * planned.saturating_sub(r.counts.delivered) as f64 / planned as f64
                } else {
                    0.0
                }
            },
            deliveries_per_sec: per_sec(r.counts.delivered),
            messages_per_sec: per_sec(r.sent),
            latency_ms: Latency::from_us(r.latency_us),
            send_lateness_ms: r.lateness_us.map(Latency::from_us),
            foreign_frames: r.foreign,
            load_cpu_percent: r
                .load_cpu_seconds
                .filter(|_| r.wall > 0.0)
                .map(|c| 100.0 * c / r.wall),
            load_core_wakeups: r.load_core_wakeups,
        });
    }

    /// Fills the derived server figures once all raw readings are in.
    pub fn finish_server(&mut self, cpu_seconds: Option<f64>, delivered: Option<u64>) {
        self.server_cpu_seconds = cpu_seconds;
        self.server_cpu_us_per_delivery = match (cpu_seconds, delivered) {
            (Some(c), Some(d)) if d > 0 => Some(c * 1e6 / d as f64),
            _ => None,
        };
        if let (Some(before), Some(after)) =
            (self.server_rss_kib_before, self.server_rss_kib_connected)
        {
            let delta = after as f64 - before as f64;
            self.server_rss_bytes_per_connection = Some(delta * 1024.0 / self.clients as f64);
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut t = Table::default();
        t.row("server", &self.url);
        let workload = match self.mode {
            "idle" => format!("{} idle clients", self.clients),
            "open" => format!(
                "{} clients, {} senders x {} msgs at {}/s each (open loop), {} B",
                self.clients,
                self.senders,
                self.messages_per_sender,
                self.rate_per_sender.unwrap_or(0.0),
                self.size
            ),
            _ => format!(
                "{} clients, {} senders x {} msgs, {} in flight each (closed loop), {} B",
                self.clients,
                self.senders,
                self.messages_per_sender,
                self.in_flight.unwrap_or(0),
                self.size
            ),
        };
        t.row("workload", &workload);
        t.row(
            "connect",
            &format!(
                "{:.2} s total over {} source address(es); per connection p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                self.connect_seconds,
                self.source_addresses.max(1),
                self.connect_ms.p50,
                self.connect_ms.p99,
                self.connect_ms.max
            ),
        );
        if let (Some(rounds), Some(s)) = (self.barrier_rounds, self.barrier_seconds) {
            t.row("barrier", &format!("{rounds} round(s), {:.2} s", s));
        }
        if let Some(r) = &self.run {
            let c = &r.counts;
            t.row(
                "sent",
                &format!("{} of {} messages in {:.2} s", r.sent, r.planned, r.seconds),
            );
            t.row(
                "deliveries",
                &format!(
                    "{} of {} expected  ({:.0}/s; {:.0} msgs/s in)",
                    c.delivered, c.expected, r.deliveries_per_sec, r.messages_per_sec
                ),
            );
            let verdict = if c.lost == 0 && c.duplicated == 0 && c.reordered == 0 {
                "  OK"
            } else {
                "  FAILED"
            };
            t.row(
                "checks",
                &format!(
                    "lost {} ({:.2}% of sent), duplicated {}, reordered {}{verdict}",
                    c.lost, r.lost_percent, c.duplicated, c.reordered
                ),
            );
            if r.sent < r.planned {
                t.row(
                    "unsent",
                    &format!(
                        "{} messages; {:.2}% of planned deliveries missing",
                        r.planned - r.sent,
                        r.missing_percent_of_planned
                    ),
                );
            }
            let l = &r.latency_ms;
            t.row(
                "latency",
                &format!(
                    "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
                    l.p50, l.p99, l.p999, l.max
                ),
            );
            if let Some(l) = &r.send_lateness_ms {
                t.row(
                    "send lateness",
                    &format!(
                        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (the tool's own delay, counted in the latency)",
                        l.p50, l.p99, l.max
                    ),
                );
            }
            if let Some(p) = r.load_cpu_percent {
                let hint = if p > 90.0 {
                    "  (load tool saturated: figures may be tool-bound)"
                } else {
                    ""
                };
                t.row("load tool CPU", &format!("{p:.0}% of one core{hint}"));
            }
            if let Some(w) = r.load_core_wakeups {
                let per_k = if r.counts.delivered > 0 {
                    1000.0 * w as f64 / r.counts.delivered as f64
                } else {
                    0.0
                };
                t.row(
                    "load wake-ups",
                    &format!("{w} function-call interrupts ({per_k:.1} per 1000 deliveries)"),
                );
            }
            if r.foreign_frames > 0 {
                t.row("foreign frames", &r.foreign_frames.to_string());
            }
        }
        if let Some(d) = self.clients_disconnected.filter(|&d| d > 0) {
            t.row("disconnected", &format!("{d} clients"));
            for why in &self.disconnect_reasons {
                t.row("", why);
            }
        }
        for s in &self.senders_stopped {
            t.row("sender stopped", s);
        }
        if let Some(s) = &self.slow_clients {
            let how = if s.read_interval_ms == 0 {
                "never reading".to_string()
            } else {
                format!("reading one frame every {} ms", s.read_interval_ms)
            };
            t.row(
                "slow clients",
                &format!(
                    "{} ({how}): {} frames read, {} closed by the server",
                    s.count, s.frames_read, s.closed_by_server
                ),
            );
        }
        if let Some(pid) = self.server_pid {
            t.row("server pid", &pid.to_string());
            if let (Some(c), Some(per)) = (self.server_cpu_seconds, self.server_cpu_us_per_delivery)
            {
                t.row("server CPU", &format!("{c:.2} s, {per:.3} µs per delivery"));
            }
            let kib =
                |v: Option<u64>| v.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            t.row(
                "server RSS",
                &format!(
                    "before {}, connected {}, end {}, peak {}",
                    kib(self.server_rss_kib_before),
                    kib(self.server_rss_kib_connected),
                    kib(self.server_rss_kib_end),
                    kib(self.server_rss_kib_peak)
                ),
            );
            if let Some(b) = self.server_rss_bytes_per_connection {
                t.row("memory per conn", &format!("{:.2} KB", b / 1000.0));
            }
        }
        t.out
    }
}

#[derive(Default)]
struct Table {
    out: String,
}

impl Table {
    fn row(&mut self, key: &str, value: &str) {
        let _ = writeln!(self.out, "{key:>16}  {value}");
    }
}
