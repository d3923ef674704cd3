//! The results of a run: a human table, or one JSON object for scripts.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::{Args, Target};
use crate::connect::clients_of;
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
    /// The URL, or with several the URLs joined by commas.
    pub url: String,
    /// With several URLs: each one's share of the clients and its figures
    /// (absent with one URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<Node>>,
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

    /// The one --server-pid; with several, null, and they are in
    /// `server_pids` and in `nodes`.
    pub server_pid: Option<u32>,
    /// With several --server-pid: all of them, one per URL (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pids: Option<Vec<u32>>,
    /// Server CPU and memory: with several PIDs, the sums over them.
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

/// One of several URLs (a node of the chat), and what its clients saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Node {
    pub url: String,
    /// Clients connected here (client i is on node i % N), and how many of
    /// them send.
    pub clients: usize,
    pub senders: usize,
    /// What this node's clients received of every sender's messages, on
    /// whichever node the sender was (null in idle mode).
    pub deliveries: Option<Counts>,
    /// Send to receive, over this node's clients' first deliveries.
    pub latency_ms: Option<Latency>,
    pub clients_disconnected: usize,
    /// With one --server-pid per URL: this node's process and its figures.
    pub pid: Option<u32>,
    pub cpu_seconds: Option<f64>,
    /// CPU over the deliveries to this node's clients.
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_kib_before: Option<u64>,
    pub rss_kib_connected: Option<u64>,
    pub rss_kib_end: Option<u64>,
    pub rss_kib_peak: Option<u64>,
    /// (RSS connected - RSS before) / this node's clients, in bytes.
    pub rss_bytes_per_connection: Option<f64>,
}

/// The server processes' readings, one slot per --server-pid.
pub struct ServerReadings<'a> {
    pub before: &'a [Option<u64>],
    pub connected: &'a [Option<u64>],
    pub end: &'a [Option<u64>],
    pub peak: &'a [Option<u64>],
    /// The highest sum of their RSS sampled together.
    pub peak_sum: Option<u64>,
    /// CPU seconds over the measured window.
    pub cpu_seconds: &'a [Option<f64>],
    /// Deliveries per node (None in idle mode).
    pub delivered: Option<&'a [u64]>,
}

/// The sum of readings, if there is at least one and none is missing.
pub fn sum<T: Copy + std::iter::Sum>(readings: &[Option<T>]) -> Option<T> {
    if readings.is_empty() {
        return None;
    }
    readings.iter().copied().sum()
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
            url: args.url_list(),
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
            server_pid: match args.server_pid[..] {
                [pid] => Some(pid),
                _ => None,
            },
            server_pids: (args.server_pid.len() > 1).then(|| args.server_pid.clone()),
            ..Report::default()
        }
    }

    /// With several targets, one `Node` each: its share of the clients and
    /// senders, its PID if there is one per target, what its clients saw
    /// (`per_node`: counts and latencies, None in idle mode) and how many of
    /// them were disconnected. Nothing with one target.
    pub fn set_nodes(
        &mut self,
        targets: &[Target],
        pids: &[u32],
        disconnected: &[usize],
        per_node: Option<&[(Counts, Histogram<u64>)]>,
    ) {
        let n = targets.len();
        if n < 2 {
            return;
        }
        let nodes = targets
            .iter()
            .enumerate()
            .map(|(i, t)| Node {
                url: t.url.clone(),
                clients: clients_of(i, n, self.clients),
                senders: clients_of(i, n, self.senders),
                deliveries: per_node.map(|p| p[i].0),
                latency_ms: per_node.map(|p| Latency::from_us(&p[i].1)),
                clients_disconnected: disconnected.get(i).copied().unwrap_or(0),
                pid: (pids.len() == n).then(|| pids[i]),
                ..Node::default()
            })
            .collect();
        self.nodes = Some(nodes);
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

    /// Fills the server figures once all raw readings are in: the sums over
    /// the PIDs, and with one PID per node each node's own.
    pub fn finish_server(&mut self, r: ServerReadings<'_>) {
        self.server_rss_kib_before = sum(r.before);
        self.server_rss_kib_connected = sum(r.connected);
        self.server_rss_kib_end = sum(r.end);
        self.server_rss_kib_peak = r.peak_sum;
        let cpu_seconds = sum(r.cpu_seconds);
        let total_delivered = r.delivered.map(|d| d.iter().sum::<u64>());
        self.server_cpu_seconds = cpu_seconds;
        self.server_cpu_us_per_delivery = per_delivery(cpu_seconds, total_delivered);
        self.server_rss_bytes_per_connection = per_connection(
            self.server_rss_kib_before,
            self.server_rss_kib_connected,
            self.clients,
        );
        let Some(nodes) = self.nodes.as_mut() else {
            return;
        };
        if r.cpu_seconds.len() != nodes.len() {
            return; // one PID for all URLs (or none): only the sums
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            node.cpu_seconds = r.cpu_seconds[i];
            node.cpu_us_per_delivery = per_delivery(
                node.cpu_seconds,
                r.delivered.and_then(|d| d.get(i).copied()),
            );
            node.rss_kib_before = r.before[i];
            node.rss_kib_connected = r.connected[i];
            node.rss_kib_end = r.end[i];
            node.rss_kib_peak = r.peak[i];
            node.rss_bytes_per_connection =
                per_connection(node.rss_kib_before, node.rss_kib_connected, node.clients);
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut t = Table::default();
        match &self.nodes {
            Some(nodes) => {
                let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
                t.row("servers", &format!("{}: {}", nodes.len(), urls.join(", ")));
            }
            None => t.row("server", &self.url),
        }
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
        for (i, node) in self.nodes.iter().flatten().enumerate() {
            node.to_rows(&mut t, i + 1);
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
        let several = self.server_pids.as_ref().map_or(0, Vec::len);
        if self.server_pid.is_some() || several > 0 {
            match (self.server_pid, &self.server_pids) {
                (Some(pid), _) => t.row("server pid", &pid.to_string()),
                (None, Some(pids)) => {
                    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                    t.row("server pids", &pids.join(", "));
                }
                (None, None) => {}
            }
            let summed = if several > 0 {
                format!(" (sum of {several})")
            } else {
                String::new()
            };
            if let (Some(c), Some(per)) = (self.server_cpu_seconds, self.server_cpu_us_per_delivery)
            {
                t.row(
                    "server CPU",
                    &format!("{c:.2} s{summed}, {per:.3} µs per delivery"),
                );
            }
            t.row(
                "server RSS",
                &format!(
                    "before {}, connected {}, end {}, peak {}{summed}",
                    mib(self.server_rss_kib_before),
                    mib(self.server_rss_kib_connected),
                    mib(self.server_rss_kib_end),
                    mib(self.server_rss_kib_peak)
                ),
            );
            if let Some(b) = self.server_rss_bytes_per_connection {
                t.row("memory per conn", &format!("{:.2} KB", b / 1000.0));
            }
        }
        t.out
    }
}

impl Node {
    /// The node's rows in the table: its share, what its clients saw, its
    /// process.
    fn to_rows(&self, t: &mut Table, number: usize) {
        let plural = |n: usize, one: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {one}s")
            }
        };
        t.row(
            &format!("node {number}"),
            &format!(
                "{}: {}, {}",
                self.url,
                plural(self.clients, "client"),
                plural(self.senders, "sender")
            ),
        );
        if let (Some(c), Some(l)) = (&self.deliveries, &self.latency_ms) {
            t.row(
                "",
                &format!(
                    "{} of {} delivered, lost {}, duplicated {}, reordered {}; latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                    c.delivered, c.expected, c.lost, c.duplicated, c.reordered, l.p50, l.p99, l.max
                ),
            );
        }
        if let Some(pid) = self.pid {
            let cpu = match (self.cpu_seconds, self.cpu_us_per_delivery) {
                (Some(c), Some(per)) => format!("CPU {c:.2} s, {per:.3} µs per delivery; "),
                (Some(c), None) => format!("CPU {c:.2} s; "),
                _ => String::new(),
            };
            let per_conn = self.rss_bytes_per_connection.map_or(String::new(), |b| {
                format!(", {:.2} KB per conn", b / 1000.0)
            });
            t.row(
                "",
                &format!(
                    "pid {pid}: {cpu}RSS connected {}, end {}, peak {}{per_conn}",
                    mib(self.rss_kib_connected),
                    mib(self.rss_kib_end),
                    mib(self.rss_kib_peak)
                ),
            );
        }
        if self.clients_disconnected > 0 {
            t.row(
                "",
                &format!(
                    "{} disconnected",
                    plural(self.clients_disconnected, "client")
                ),
            );
        }
    }
}

fn per_delivery(cpu_seconds: Option<f64>, delivered: Option<u64>) -> Option<f64> {
    match (cpu_seconds, delivered) {
        (Some(c), Some(d)) if d > 0 => Some(c * 1e6 / d as f64),
        _ => None,
    }
}

fn per_connection(before: Option<u64>, after: Option<u64>, clients: usize) -> Option<f64> {
    let (before, after) = before.zip(after)?;
    let delta = after as f64 - before as f64;
    Some(delta * 1024.0 / clients.max(1) as f64)
}

fn mib(v: Option<u64>) -> String {
    v.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::connect::new_histogram;

    fn args(flags: &[&str]) -> Args {
        let argv = std::iter::once("chat-load").chain(flags.iter().copied());
        Args::try_parse_from(argv).expect("flags parse")
    }

    fn counts(expected: u64, delivered: u64) -> Counts {
        Counts {
            expected,
            delivered,
            lost: expected - delivered,
            ..Counts::default()
        }
    }

    fn keys(json: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
        v.as_object().expect("object").keys().cloned().collect()
    }

    #[test]
    fn one_url_keeps_its_table_and_json() {
        let a = args(&["--server-pid", "42", "--clients", "10", "--senders", "1"]);
        let targets = a.targets().expect("resolve");
        let mut r = Report::new(&a, 1);
        r.set_nodes(&targets, &a.server_pid, &[0], None);
        r.finish_server(ServerReadings {
            before: &[Some(1024)],
            connected: &[Some(2048)],
            end: &[Some(3072)],
            peak: &[Some(4096)],
            peak_sum: Some(4096),
            cpu_seconds: &[Some(0.5)],
            delivered: Some(&[1000]),
        });
        assert_eq!(r.url, "ws://127.0.0.1:2000");
        assert!(r.nodes.is_none());
        assert_eq!(r.server_pid, Some(42));
        assert_eq!(r.server_cpu_us_per_delivery, Some(500.0));
        assert_eq!(
            r.server_rss_bytes_per_connection,
            Some(1024.0 * 1024.0 / 10.0)
        );
        let json = r.to_json();
        let k = keys(&json);
        assert!(k.contains(&"url".to_string()) && k.contains(&"server_pid".to_string()));
        assert!(!k.contains(&"nodes".to_string()) && !k.contains(&"server_pids".to_string()));
        let table = r.to_table();
        assert!(
            table.starts_with("          server  ws://127.0.0.1:2000\n"),
            "{table}"
        );
        assert!(table.contains("      server pid  42\n"), "{table}");
        assert!(
            table.contains("      server CPU  0.50 s, 500.000 µs per delivery\n"),
            "{table}"
        );
        assert!(
            table.contains(
                "      server RSS  before 1.0 MiB, connected 2.0 MiB, end 3.0 MiB, peak 4.0 MiB\n"
            ),
            "{table}"
        );
        assert!(!table.contains("node"), "{table}");
    }

    #[test]
    fn several_urls_get_a_node_each_and_summed_server_figures() {
        let a = args(&[
            "--url",
            "ws://127.0.0.1:2001,ws://127.0.0.1:2002,ws://127.0.0.1:2003",
            "--server-pid",
            "11,12,13",
            "--clients",
            "10",
            "--senders",
            "2",
        ]);
        let targets = a.targets().expect("resolve");
        let mut r = Report::new(&a, 1);
        let per_node = [
            (counts(8, 8), new_histogram()),
            (counts(6, 6), new_histogram()),
            (counts(6, 5), new_histogram()),
        ];
        r.set_nodes(&targets, &a.server_pid, &[0, 0, 1], Some(&per_node));
        r.finish_server(ServerReadings {
            before: &[Some(1000), Some(1000), Some(1000)],
            connected: &[Some(2000), Some(2000), Some(2000)],
            end: &[Some(2000), Some(2000), Some(2000)],
            peak: &[Some(2500), Some(2000), Some(2000)],
            peak_sum: Some(6400),
            cpu_seconds: &[Some(0.8), Some(0.6), Some(0.5)],
            delivered: Some(&[8, 6, 5]),
        });
        assert_eq!(
            r.url,
            "ws://127.0.0.1:2001,ws://127.0.0.1:2002,ws://127.0.0.1:2003"
        );
        assert_eq!(r.server_pid, None);
        assert_eq!(r.server_pids.as_deref(), Some(&[11, 12, 13][..]));
        assert_eq!(r.server_rss_kib_connected, Some(6000));
        assert_eq!(r.server_rss_kib_peak, Some(6400));
        let cpu = r.server_cpu_seconds.expect("summed CPU");
        assert!((cpu - 1.9).abs() < 1e-9);
        let nodes = r.nodes.as_ref().expect("nodes");
        let shares: Vec<(usize, usize)> = nodes.iter().map(|n| (n.clients, n.senders)).collect();
        assert_eq!(shares, [(4, 1), (3, 1), (3, 0)]);
        assert_eq!(nodes[2].pid, Some(13));
        assert_eq!(nodes[2].clients_disconnected, 1);
        assert_eq!(nodes[0].cpu_us_per_delivery, Some(100_000.0));
        assert_eq!(nodes[0].rss_kib_peak, Some(2500));
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["nodes"][1]["url"], "ws://127.0.0.1:2002");
        assert_eq!(v["nodes"][2]["deliveries"]["lost"], 1);
        let table = r.to_table();
        assert!(table.contains("         servers  3: ws://127.0.0.1:2001, ws://127.0.0.1:2002, ws://127.0.0.1:2003\n"), "{table}");
        assert!(
            table.contains("          node 3  ws://127.0.0.1:2003: 3 clients, 0 senders\n"),
            "{table}"
        );
        assert!(
            table.contains("5 of 6 delivered, lost 1, duplicated 0, reordered 0"),
            "{table}"
        );
        assert!(table.contains("1 client disconnected"), "{table}");
        assert!(table.contains("     server pids  11, 12, 13\n"), "{table}");
        assert!(
            table.contains("server CPU  1.90 s (sum of 3), 100000.000 µs per delivery"),
            "{table}"
        );
    }

    #[test]
    fn one_pid_for_several_urls_gives_only_the_sums() {
        let a = args(&[
            "--url",
            "ws://127.0.0.1:1,ws://127.0.0.1:2",
            "--server-pid",
            "7",
        ]);
        let targets = a.targets().expect("resolve");
        let mut r = Report::new(&a, 1);
        r.set_nodes(&targets, &a.server_pid, &[0, 0], None);
        r.finish_server(ServerReadings {
            before: &[Some(1)],
            connected: &[Some(2)],
            end: &[Some(3)],
            peak: &[Some(4)],
            peak_sum: Some(4),
            cpu_seconds: &[None],
            delivered: None,
        });
        assert_eq!(r.server_pid, Some(7));
        let nodes = r.nodes.as_ref().expect("nodes");
        assert!(nodes
            .iter()
            .all(|n| n.pid.is_none() && n.rss_kib_end.is_none()));
        assert_eq!(r.server_rss_kib_end, Some(3));
    }

    #[test]
    fn sums_need_every_reading() {
        assert_eq!(sum::<u64>(&[]), None);
        assert_eq!(sum(&[Some(1u64), None]), None);
        assert_eq!(sum(&[Some(1u64), Some(2)]), Some(3));
    }
}
