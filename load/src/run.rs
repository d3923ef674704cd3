//! The phases of a run: connect, barrier, measured sending, drain, tally.
//!
//! Every connected client gets a reader task that checks what it receives
//! against `verify::ClientLog`; senders get a second task that writes. All
//! waiting is bounded: a server that stops relaying ends the run with the
//! loss reported, never with a hang.
//!
//! With several URLs (nodes of one chat sharing its rooms), client `i` is
//! on node `i % N`, senders included, and every client must still receive
//! every sender's messages, whichever node the sender is on. Nothing waits
//! on one node: the barrier is complete when every client on every node has
//! every sender's barrier, and the drain ends on the last delivery anywhere
//! (or a quiet spell everywhere), so a node that is late or loses lines
//! shows in its own figures.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_websockets::Message;

use crate::args::{secs, Args, Target};
use crate::clock;
use crate::connect::{self, new_histogram, Ws};
use crate::marker::{self, Frame, Mark};
use crate::proc_stats;
use crate::report::{self, Report};
use crate::verify::{self, ClientLog, Seen};

type Sink = SplitSink<Ws, Message>;
type Source = SplitStream<Ws>;

/// State every task updates; counters only, so no task waits on another.
struct Shared {
    parser: marker::Parser,
    senders: usize,
    messages: u32,
    /// First deliveries of measured messages, over all clients.
    delivered: AtomicU64,
    /// Measured messages written by all senders.
    sent: AtomicU64,
    last_delivery_ns: AtomicU64,
    /// Per barrier round, per node: distinct (client, sender) barrier
    /// receipts by that node's clients.
    barrier_hits: Vec<Vec<AtomicU64>>,
    disconnected: AtomicUsize,
    senders_done: AtomicUsize,
    /// Per node: latencies seen by that node's clients.
    latency_us: Vec<Mutex<Histogram<u64>>>,
    /// Open loop: how late each message went out, from its due time to
    /// the moment the frame was written (the tool's own delay, which the
    /// latency includes).
    lateness_us: Mutex<Histogram<u64>>,
}

/// What a reader task hands back when it stops.
struct ReaderEnd {
    log: ClientLog,
    /// Why the connection ended before we stopped it, if it did.
    lost_connection: Option<String>,
}

/// What a sender task hands back.
struct SenderEnd {
    sent: u32,
    stopped: Option<String>,
}

pub async fn run(args: &Args) -> Result<Report> {
    let targets = args.targets()?;
    let nodes = targets.len();
    let sources = args.source_addrs(&targets);
    let pids = &args.server_pid;
    for &pid in pids {
        proc_stats::check_pid(pid)?;
    }
    let progress = Progress::new(!args.quiet && std::io::stderr().is_terminal());

    let mut report = Report::new(args, sources.len());
    let mut servers = Servers::new(pids);
    servers.rss_before();

    progress.note(&format!(
        "connecting {} clients to {}",
        args.clients,
        args.url_list()
    ));
    let connected = connect::connect_all(
        &targets,
        args.clients,
        &sources,
        args.connect_concurrency,
        secs(args.connect_timeout),
    )
    .await?;
    report.set_connect(connected.seconds, &connected.latency_us);
    let slow = if args.slow_clients > 0 {
        progress.note(&format!("connecting {} slow clients", args.slow_clients));
        connect::connect_all(
            &targets,
            args.slow_clients,
            &sources,
            args.connect_concurrency,
            secs(args.connect_timeout),
        )
        .await?
        .clients
    } else {
        Vec::new()
    };

    let runid = make_runid();
    let senders = if args.is_idle() { 0 } else { args.senders };
    let shared = Arc::new(Shared {
        parser: marker::Parser::new(runid),
        senders,
        messages: args.messages,
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        barrier_hits: (0..args.barrier_rounds)
            .map(|_| (0..nodes).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        disconnected: AtomicUsize::new(0),
        senders_done: AtomicUsize::new(0),
        latency_us: (0..nodes).map(|_| Mutex::new(new_histogram())).collect(),
        lateness_us: Mutex::new(new_histogram()),
    });
    // In closed loop each sender may have `in_flight` messages whose own echo
    // has not come back; its reader hands a permit back on each echo.
    let windows: Vec<Arc<Semaphore>> = (0..senders)
        .map(|_| Arc::new(Semaphore::new(args.in_flight as usize)))
        .collect();

    let cancel = CancellationToken::new();
    let slow_stats = Arc::new(SlowStats::default());
    let slow_interval =
        (args.slow_read_interval_ms > 0).then(|| Duration::from_millis(args.slow_read_interval_ms));
    let slow_tasks: Vec<JoinHandle<()>> = slow
        .into_iter()
        .map(|ws| {
            tokio::spawn(slow_reader(
                ws,
                slow_interval,
                slow_stats.clone(),
                cancel.clone(),
            ))
        })
        .collect();
    let mut sinks: Vec<Sink> = Vec::with_capacity(args.clients);
    let mut readers: Vec<JoinHandle<ReaderEnd>> = Vec::with_capacity(args.clients);
    for (i, ws) in connected.clients.into_iter().enumerate() {
        let (sink, source) = ws.split();
        sinks.push(sink);
        let window = match args.rate {
            None => windows.get(i).cloned(),
            Some(_) => None,
        };
        readers.push(tokio::spawn(read_loop(
            i,
            args.node_of(i),
            source,
            shared.clone(),
            window,
            cancel.clone(),
        )));
    }

    if senders == 0 {
        // Idle: give the server time to settle its per-connection state.
        progress.note(&format!("holding {} idle connections", args.clients));
        tokio::time::sleep(secs(args.hold)).await;
        servers.rss_connected();
        servers.rss_end();
        report.clients_disconnected = Some(shared.disconnected.load(Relaxed));
        cancel.cancel();
        let mut disconnected = vec![0; nodes];
        for (i, r) in readers.into_iter().enumerate() {
            if let Ok(ReaderEnd {
                lost_connection: Some(_),
                ..
            }) = r.await
            {
                disconnected[args.node_of(i)] += 1;
            }
        }
        report.set_nodes(&targets, pids, &disconnected, None);
        servers.finish(&mut report, None, None);
        return Ok(report);
    }

    progress.note("barrier: waiting until every client receives every sender");
    let (rounds, barrier_secs) = barrier(
        args,
        &targets,
        runid,
        &shared,
        &mut sinks[..senders],
        &progress,
    )
    .await?;
    report.barrier_rounds = Some(rounds);
    report.barrier_seconds = Some(barrier_secs);
    servers.rss_connected();
    servers.start_peak();

    // Measured window starts here.
    let cpu0 = servers.cpu_seconds()?;
    let own_cpu0 = proc_stats::own_cpu_seconds().ok();
    let load_core = proc_stats::own_core();
    let wakeups0 = load_core.and_then(proc_stats::call_interrupts);
    let t0 = Instant::now();
    let t0_ns = clock::ns_of(t0);

    let sender_sinks: Vec<Sink> = sinks.drain(..senders).collect();
    let mut sender_tasks = Vec::with_capacity(senders);
    for (id, sink) in sender_sinks.into_iter().enumerate() {
        let shared = shared.clone();
        let stall = secs(args.stall_timeout);
        let size = args.size;
        let task = match args.rate {
            None => tokio::spawn(send_closed(
                id as u32,
                runid,
                size,
                sink,
                shared,
                windows[id].clone(),
                stall,
            )),
            Some(rate) => {
                tokio::spawn(send_open(id as u32, runid, size, sink, shared, rate, stall))
            }
        };
        sender_tasks.push(task);
    }

    let total_msgs = senders as u64 * u64::from(args.messages);
    let clients = args.clients as u64;
    while shared.senders_done.load(Relaxed) < senders {
        tokio::time::sleep(Duration::from_millis(20)).await;
        progress.tick(&shared, total_msgs, clients, t0);
        servers.sample_peak();
    }
    let mut sent_per_sender = Vec::with_capacity(senders);
    for (id, task) in sender_tasks.into_iter().enumerate() {
        let end = task.await.context("sender task panicked")?;
        sent_per_sender.push(end.sent);
        if let Some(why) = end.stopped {
            report.senders_stopped.push(format!("sender {id}: {why}"));
        }
    }

    // Drain: wait for the last deliveries, until everything sent has reached
    // every client, or nothing new arrived for --drain-timeout.
    let expected = shared.sent.load(Relaxed) * clients;
    let quiet_limit = secs(args.drain_timeout);
    let mut last_count = shared.delivered.load(Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = shared.delivered.load(Relaxed);
        if now >= expected {
            break;
        }
        if now != last_count {
            last_count = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet_limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        progress.tick(&shared, total_msgs, clients, t0);
        servers.sample_peak();
    }
    progress.done();

    let cpu1 = servers.cpu_seconds()?;
    let own_cpu1 = proc_stats::own_cpu_seconds().ok();
    let wakeups1 = load_core.and_then(proc_stats::call_interrupts);
    let wall = t0.elapsed().as_secs_f64();
    servers.rss_end();

    cancel.cancel();
    let mut logs = Vec::with_capacity(readers.len());
    let mut disconnected = vec![0; nodes];
    for (i, r) in readers.into_iter().enumerate() {
        let end = r.await.context("reader task panicked")?;
        if let Some(why) = end.lost_connection {
            report.note_disconnect(why);
            disconnected[args.node_of(i)] += 1;
        }
        logs.push(end.log);
    }
    drop(sinks);
    for t in slow_tasks {
        let _ = t.await;
    }
    if args.slow_clients > 0 {
        report.slow_clients = Some(report::SlowClients {
            count: args.slow_clients,
            read_interval_ms: args.slow_read_interval_ms,
            frames_read: slow_stats.frames.load(Relaxed),
            closed_by_server: slow_stats.closed.load(Relaxed),
        });
    }

    let counts = verify::tally(&logs, &sent_per_sender);
    let per_node: Vec<(verify::Counts, Histogram<u64>)> = (0..nodes)
        .map(|n| {
            let mine = logs
                .iter()
                .enumerate()
                .filter(|&(i, _)| args.node_of(i) == n)
                .map(|(_, log)| log);
            let latency = shared.latency_us[n]
                .lock()
                .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?
                .clone();
            Ok((verify::tally(mine, &sent_per_sender), latency))
        })
        .collect::<Result<_>>()?;
    // Throughput over the span that actually carried deliveries.
    let last_ns = shared.last_delivery_ns.load(Relaxed);
    let active = if last_ns > t0_ns {
        (last_ns - t0_ns) as f64 / 1e9
    } else {
        wall
    };
    let mut latency = new_histogram();
    for (_, h) in &per_node {
        latency
            .add(h)
            .map_err(|e| anyhow::anyhow!("cannot merge latency histograms: {e}"))?;
    }
    let lateness = match args.rate {
        Some(_) => Some(
            shared
                .lateness_us
                .lock()
                .map_err(|_| anyhow::anyhow!("lateness histogram poisoned"))?
                .clone(),
        ),
        None => None,
    };
    report.set_run(report::RunInput {
        seconds: active,
        sent: sent_per_sender.iter().map(|&s| u64::from(s)).sum(),
        planned: total_msgs,
        counts,
        foreign: logs.iter().map(|l| l.foreign).sum(),
        latency_us: &latency,
        lateness_us: lateness.as_ref(),
        load_cpu_seconds: own_cpu0.zip(own_cpu1).map(|(a, b)| b - a),
        load_core_wakeups: wakeups0.zip(wakeups1).map(|(a, b)| b.saturating_sub(a)),
        wall,
    });
    report.clients_disconnected = Some(shared.disconnected.load(Relaxed));
    report.set_nodes(&targets, pids, &disconnected, Some(&per_node));
    let delivered: Vec<u64> = per_node.iter().map(|(c, _)| c.delivered).collect();
    servers.finish(&mut report, Some((cpu0, cpu1)), Some(&delivered));
    Ok(report)
}

/// Readings of the server processes named by `--server-pid`, one slot per
/// PID: CPU over the measured window and resident memory at each phase.
/// With several PIDs (one per URL) the report gets each node's figures and
/// their sum; with one, exactly the figures it always had.
struct Servers {
    pids: Vec<u32>,
    before: Vec<Option<u64>>,
    connected: Vec<Option<u64>>,
    end: Vec<Option<u64>>,
    /// Per PID, the highest RSS sampled; and the highest of their sums.
    peak: Vec<Option<u64>>,
    peak_sum: Option<u64>,
}

impl Servers {
    fn new(pids: &[u32]) -> Self {
        let none = vec![None; pids.len()];
        Servers {
            pids: pids.to_vec(),
            before: none.clone(),
            connected: none.clone(),
            end: none.clone(),
            peak: none,
            peak_sum: None,
        }
    }

    fn rss(&self) -> Vec<Option<u64>> {
        self.pids
            .iter()
            .map(|&p| proc_stats::rss_kib(p).ok())
            .collect()
    }

    fn rss_before(&mut self) {
        self.before = self.rss();
    }

    fn rss_connected(&mut self) {
        self.connected = self.rss();
    }

    /// The measured run's peak starts from the connected readings.
    fn start_peak(&mut self) {
        self.peak = self.connected.clone();
        self.peak_sum = report::sum(&self.connected);
    }

    fn rss_end(&mut self) {
        self.end = self.rss();
    }

    fn sample_peak(&mut self) {
        let now = self.rss();
        for (peak, now) in self.peak.iter_mut().zip(&now) {
            if let Some(now) = *now {
                *peak = Some(peak.map_or(now, |p| p.max(now)));
            }
        }
        if let Some(sum) = report::sum(&now) {
            self.peak_sum = Some(self.peak_sum.map_or(sum, |p| p.max(sum)));
        }
    }

    /// CPU seconds of each PID so far (empty without --server-pid).
    fn cpu_seconds(&self) -> Result<Vec<f64>> {
        self.pids
            .iter()
            .map(|&p| proc_stats::cpu_seconds(p))
            .collect()
    }

    /// Hands the readings to the report: `cpu` is the readings at the start
    /// and end of the measured window, `delivered` the deliveries per node.
    fn finish(
        self,
        report: &mut Report,
        cpu: Option<(Vec<f64>, Vec<f64>)>,
        delivered: Option<&[u64]>,
    ) {
        let cpu: Vec<Option<f64>> = match cpu {
            Some((a, b)) => a.iter().zip(&b).map(|(a, b)| Some(b - a)).collect(),
            None => vec![None; self.pids.len()],
        };
        report.finish_server(report::ServerReadings {
            before: &self.before,
            connected: &self.connected,
            end: &self.end,
            peak: &self.peak,
            peak_sum: self.peak_sum,
            cpu_seconds: &cpu,
            delivered,
        });
    }
}

/// Every sender sends a barrier message; the round succeeds when every client
/// has received every sender's barrier. That proves every client is
/// subscribed and every sender is relayed, whatever the server does first
/// (greeting, login, late subscription). Retries a few rounds, then fails.
async fn barrier(
    args: &Args,
    targets: &[Target],
    runid: u32,
    shared: &Shared,
    sinks: &mut [Sink],
    progress: &Progress,
) -> Result<(u32, f64)> {
    let t0 = Instant::now();
    let want = (args.clients * sinks.len()) as u64;
    let round_hits = |round: &[AtomicU64]| round.iter().map(|h| h.load(Relaxed)).sum::<u64>();
    let timeout = secs(args.barrier_timeout);
    for round in 0..args.barrier_rounds {
        for (id, sink) in sinks.iter_mut().enumerate() {
            let text = marker::encode_barrier(runid, id as u32, round);
            tokio::time::timeout(timeout, sink.send(Message::text(text)))
                .await
                .map_err(|_| anyhow::anyhow!("timed out"))
                .and_then(|r| r.map_err(anyhow::Error::from))
                .with_context(|| {
                    let url = &targets[args.node_of(id)].url;
                    format!("{url}: sender {id} cannot send barrier")
                })?;
        }
        let round_start = Instant::now();
        let hits = &shared.barrier_hits[round as usize];
        while round_start.elapsed() < timeout {
            if round_hits(hits) >= want {
                return Ok((round + 1, t0.elapsed().as_secs_f64()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        progress.note(&format!(
            "barrier round {}: {} of {} receipts; retrying",
            round + 1,
            round_hits(hits),
            want
        ));
    }
    let best = shared
        .barrier_hits
        .iter()
        .max_by_key(|round| round_hits(round));
    let best_hits = best.map_or(0, |round| round_hits(round));
    // With several nodes, say which ones fell short in the best round.
    let per_node = match best {
        Some(round) if targets.len() > 1 => {
            let short: Vec<String> = round
                .iter()
                .enumerate()
                .filter_map(|(n, h)| {
                    let clients = connect::clients_of(n, targets.len(), args.clients);
                    let node_want = (clients * sinks.len()) as u64;
                    let got = h.load(Relaxed);
                    (got < node_want).then(|| format!("{} {got} of {node_want}", targets[n].url))
                })
                .collect();
            format!(" (short: {})", short.join(", "))
        }
        _ => String::new(),
    };
    bail!(
        "{}: barrier failed: after {} rounds of {:.1}s the best round reached {best_hits} of {want} \
         (client, sender) receipts{per_node}; {} clients disconnected. {}",
        args.url_list(),
        args.barrier_rounds,
        args.barrier_timeout,
        shared.disconnected.load(Relaxed),
        if targets.len() > 1 {
            "Do these servers share one conversation (ours: the same --redis)?"
        } else {
            "Is this a broadcast server that relays every text message to every client?"
        }
    )
}

async fn read_loop(
    index: usize,
    node: usize,
    mut source: Source,
    shared: Arc<Shared>,
    window: Option<Arc<Semaphore>>,
    cancel: CancellationToken,
) -> ReaderEnd {
    let mut log = ClientLog::new(shared.senders);
    let mut barriers_seen: HashSet<(u32, u32)> = HashSet::new();
    // Latencies are batched so the shared histogram's lock is taken rarely.
    let mut pending: Vec<u64> = Vec::with_capacity(256);
    let own_id = u32::try_from(index).ok();
    let lost_connection = loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => break None,
            item = source.next() => item,
        };
        let msg = match item {
            None => break Some("connection closed by server".to_string()),
            Some(Err(e)) => break Some(format!("connection error: {e}")),
            Some(Ok(msg)) => msg,
        };
        if !(msg.is_text() || msg.is_binary()) {
            continue; // pings are answered by tokio-websockets itself
        }
        match shared.parser.parse(msg.as_payload()) {
            Frame::Message(mark) => {
                on_message(&shared, node, &mut log, &mut pending, mark, own_id, &window);
            }
            Frame::Barrier { sender, round } => {
                if (round as usize) < shared.barrier_hits.len()
                    && (sender as usize) < shared.senders
                    && barriers_seen.insert((sender, round))
                {
                    shared.barrier_hits[round as usize][node].fetch_add(1, Relaxed);
                }
            }
            Frame::Other => {}
        }
    };
    if lost_connection.is_some() {
        shared.disconnected.fetch_add(1, Relaxed);
    }
    flush_latencies(&shared, node, &mut pending);
    ReaderEnd {
        log,
        lost_connection,
    }
}

fn on_message(
    shared: &Shared,
    node: usize,
    log: &mut ClientLog,
    pending: &mut Vec<u64>,
    mark: Mark,
    own_id: Option<u32>,
    window: &Option<Arc<Semaphore>>,
) {
    let now = clock::now_ns();
    let Some(seen) = log.record(mark.sender, mark.seq, shared.messages) else {
        return;
    };
    if seen == Seen::Duplicate {
        return;
    }
    debug_assert!(seen.is_first());
    shared.delivered.fetch_add(1, Relaxed);
    shared.last_delivery_ns.fetch_max(now, Relaxed);
    pending.push(now.saturating_sub(mark.send_ns) / 1_000);
    if pending.len() == pending.capacity() {
        flush_latencies(shared, node, pending);
    }
    if own_id == Some(mark.sender) {
        if let Some(w) = window {
            // Our own echo is back: one more message may be outstanding.
            w.add_permits(1);
        }
    }
}

fn flush_latencies(shared: &Shared, node: usize, pending: &mut Vec<u64>) {
    if pending.is_empty() {
        return;
    }
    if let Ok(mut h) = shared.latency_us[node].lock() {
        for &us in pending.iter() {
            h.saturating_record(us.max(1));
        }
    }
    pending.clear();
}

/// What the slow clients did, summed.
#[derive(Default)]
struct SlowStats {
    frames: AtomicU64,
    closed: AtomicUsize,
}

/// A client that reads one frame per `interval`, or never (`None`), until
/// the run ends. It holds its connection open either way.
async fn slow_reader(
    mut ws: Ws,
    interval: Option<Duration>,
    stats: Arc<SlowStats>,
    cancel: CancellationToken,
) {
    let Some(interval) = interval else {
        cancel.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let item = tokio::select! {
            () = cancel.cancelled() => return,
            item = ws.next() => item,
        };
        match item {
            Some(Ok(msg)) if !msg.is_close() => {
                stats.frames.fetch_add(1, Relaxed);
            }
            _ => {
                stats.closed.fetch_add(1, Relaxed);
                // Keep the socket until the end, as the others do.
                cancel.cancelled().await;
                return;
            }
        }
    }
}

/// Closed loop: send as soon as the window has room; stop when no echo comes
/// back for `stall` (the server dropped our messages or our connection).
async fn send_closed(
    id: u32,
    runid: u32,
    size: usize,
    mut sink: Sink,
    shared: Arc<Shared>,
    window: Arc<Semaphore>,
    stall: Duration,
) -> SenderEnd {
    let mut sent = 0u32;
    let mut stopped = None;
    for seq in 0..shared.messages {
        match tokio::time::timeout(stall, window.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => unreachable!("window semaphore is never closed"),
            Err(_) => {
                stopped = Some(format!(
                    "no echo of its own messages for {stall:?} after sending {sent}"
                ));
                break;
            }
        }
        let mark = Mark {
            sender: id,
            seq,
            send_ns: clock::now_ns(),
        };
        if let Err(why) = send_one(&mut sink, runid, mark, size, stall).await {
            stopped = Some(format!("{why} after sending {sent}"));
            break;
        }
        sent += 1;
        shared.sent.fetch_add(1, Relaxed);
    }
    shared.senders_done.fetch_add(1, Relaxed);
    SenderEnd { sent, stopped }
}

/// Open loop: message `k` is due at start + k/rate whether or not earlier ones
/// came back. Its timestamp is the time it was due, not when it went out, so
/// a sender that falls behind shows up as latency (no coordinated omission).
async fn send_open(
    id: u32,
    runid: u32,
    size: usize,
    mut sink: Sink,
    shared: Arc<Shared>,
    rate: f64,
    stall: Duration,
) -> SenderEnd {
    // Stagger senders across one period so they do not fire in lockstep.
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + period.mul_f64(f64::from(id) / shared.senders.max(1) as f64);
    let mut sent = 0u32;
    let mut stopped = None;
    for seq in 0..shared.messages {
        let due = start + period.mul_f64(f64::from(seq));
        wait_until(due).await;
        let mark = Mark {
            sender: id,
            seq,
            send_ns: clock::ns_of(due),
        };
        if let Err(why) = send_one(&mut sink, runid, mark, size, stall).await {
            stopped = Some(format!("{why} after sending {sent}"));
            break;
        }
        let late_us = clock::now_ns().saturating_sub(mark.send_ns) / 1_000;
        if let Ok(mut h) = shared.lateness_us.lock() {
            h.saturating_record(late_us.max(1));
        }
        sent += 1;
        shared.sent.fetch_add(1, Relaxed);
    }
    shared.senders_done.fetch_add(1, Relaxed);
    SenderEnd { sent, stopped }
}

/// How early the coarse timer is asked to wake a sender; see [`wait_until`].
const COARSE_MARGIN: Duration = Duration::from_millis(3);

/// Waits until `due` to within tens of microseconds. tokio's timers fire on
/// a one-millisecond grid, up to two milliseconds after their deadline, and
/// since an open-loop message is stamped with its due time, that delay
/// would be counted as the server's latency. So the timer only wakes the
/// sender shortly before; the rest is slept on a blocking thread, whose
/// `nanosleep` is precise, without keeping the load core busy.
async fn wait_until(due: Instant) {
    if let Some(early) = due.checked_sub(COARSE_MARGIN) {
        tokio::time::sleep_until(early.into()).await;
    }
    if due > Instant::now() {
        let slept = tokio::task::spawn_blocking(move || {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        })
        .await;
        if slept.is_err() {
            // No blocking thread to be had: fall back to the coarse timer.
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

async fn send_one(
    sink: &mut Sink,
    runid: u32,
    mark: Mark,
    size: usize,
    limit: Duration,
) -> std::result::Result<(), String> {
    let text = marker::encode_message(runid, mark, size);
    match tokio::time::timeout(limit, sink.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send failed ({e})")),
        Err(_) => Err(format!("send blocked for {limit:?}")),
    }
}

/// A run id that differs between runs, so stray frames of an earlier run
/// (e.g. history replay) are never counted.
fn make_runid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// The progress line on stderr, shown only on a terminal.
struct Progress {
    enabled: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            last: Mutex::new(None),
        }
    }

    fn note(&self, text: &str) {
        if self.enabled {
            eprintln!("chat-load: {text}");
        }
    }

    fn tick(&self, shared: &Shared, total_msgs: u64, clients: u64, t0: Instant) {
        if !self.enabled {
            return;
        }
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        let sent = shared.sent.load(Relaxed);
        let delivered = shared.delivered.load(Relaxed);
        let elapsed = t0.elapsed().as_secs_f64();
        eprint!(
            "\r{elapsed:6.1}s  sent {sent}/{total_msgs}  delivered {delivered}/{}  {:.0}/s  disconnected {}   ",
            sent * clients,
            delivered as f64 / elapsed.max(1e-9),
            shared.disconnected.load(Relaxed)
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        let printed = self.last.lock().map(|l| l.is_some()).unwrap_or(false);
        if self.enabled && printed {
            eprintln!();
        }
    }
}
