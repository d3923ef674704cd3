//! One server of several sharing their rooms through Redis (`--redis`):
//! ties the [`Hub`] to the [`RedisLog`].
//!
//! Outgoing, the hub hands each room line to the [`Relay`] here instead of
//! numbering it; a worker task appends what is queued in one pipelined round
//! trip (the script numbers, keeps and publishes each line). Incoming, the
//! [`Subscriber`] hands every line of the rooms this node has, in `seq`
//! order and exactly once, to [`Hub::deliver`], which puts it in the room's
//! history and feed; from there the room's writer takes it to the local
//! members exactly as it does without Redis. So every member on every node
//! sees the same lines in the same order with the same `seq`, and the
//! sender's own node is no exception: it too shows a line only once Redis
//! has numbered it.
//!
//! The same worker opens and closes rooms: a room this node opens is
//! subscribed (and its recent history read from the stream) before any
//! line sent to it from here is appended, so a member's own first line is
//! never numbered before this node listens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::fanout::outbox::Encoded;
use crate::http::Readiness;
use crate::hub::{Hub, Mailbox, Relay, UNAVAILABLE};
use crate::protocol::{Event, DEFAULT_ROOM};
use crate::store::redis::{Entry, Kind, RedisLog, Sink, Stored, Subscriber, DEFAULT_MAX_LEN};

/// Lines (and room changes) queued for the worker before senders are told
/// the store cannot keep up.
const QUEUE: usize = 16 * 1024;
/// Most lines appended in one pipelined round trip.
const BATCH: usize = 256;
/// While Redis is down, how often the worker checks whether it is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// A running node: the worker and the subscriber. Dropping it stops both.
pub struct RedisNode {
    log: RedisLog,
    subscriber: Arc<Subscriber>,
    worker: JoinHandle<()>,
    down: Arc<AtomicBool>,
}

impl RedisNode {
    /// The log, for reads.
    pub fn log(&self) -> &RedisLog {
        &self.log
    }

    /// Whether the last append or probe failed (Redis is down).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// What the subscriber has done.
    pub fn subscriber_stats(&self) -> crate::store::redis::SubscriberStats {
        self.subscriber.stats()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

/// Connects `hub` to the Redis at `url`: subscribes the default room, reads
/// its history, takes the default room's epoch as the hub's, and from then
/// on routes every room line through Redis. `history` is the hub's history
/// depth (the stream keeps at least that, and at least
/// [`DEFAULT_MAX_LEN`]).
pub async fn attach(
    hub: &Hub,
    url: &str,
    history: usize,
    readiness: Readiness,
) -> anyhow::Result<RedisNode> {
    let log = RedisLog::connect(url, history.max(DEFAULT_MAX_LEN)).await?;
    let epoch = log
        .epoch(DEFAULT_ROOM)
        .await
        .map_err(|e| anyhow::anyhow!("Redis at {}: {}", log.addr(), e.cause()))?;
    let subscriber = Arc::new(log.subscriber(Arc::new(HubSink { hub: hub.clone() })));
    open(&log, &subscriber, hub, DEFAULT_ROOM, history)
        .await
        .map_err(|e| anyhow::anyhow!("Redis at {}: {}", log.addr(), e.cause()))?;
    let (jobs, queued) = mpsc::channel(QUEUE);
    let down = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(work(
        log.clone(),
        subscriber.clone(),
        hub.clone(),
        history,
        queued,
        Health {
            down: down.clone(),
            readiness,
        },
    ));
    hub.set_relay(
        Arc::new(RedisRelay {
            jobs,
            down: down.clone(),
        }),
        epoch,
    );
    info!(redis = %log.addr(), "sharing rooms, history and sequence numbers through Redis");
    Ok(RedisNode {
        log,
        subscriber,
        worker,
        down,
    })
}

enum Job {
    Publish { line: Event, sender: Arc<Mailbox> },
    Open(String),
    Close(String),
}

/// The hub's side: queues, never waits.
struct RedisRelay {
    jobs: mpsc::Sender<Job>,
    down: Arc<AtomicBool>,
}

impl Relay for RedisRelay {
    fn publish(&self, line: Event, sender: Arc<Mailbox>) -> bool {
        // Known down: refuse at once rather than queue lines that wait for
        // Redis to come back and then arrive late.
        !self.down.load(Ordering::Acquire)
            && self.jobs.try_send(Job::Publish { line, sender }).is_ok()
    }

    fn opened(&self, room: &str) {
        self.queue(Job::Open(room.to_string()));
    }

    fn closed(&self, room: &str) {
        self.queue(Job::Close(room.to_string()));
    }
}

impl RedisRelay {
    fn queue(&self, job: Job) {
        if let Err(e) = self.jobs.try_send(job) {
            // A room change must not be lost; it is rare, so a task may
            // wait for room in the queue.
            let jobs = self.jobs.clone();
            let job = e.into_inner();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = jobs.send(job).await;
                });
            }
        }
    }
}

/// The subscriber's side: lines into the hub.
struct HubSink {
    hub: Hub,
}

impl Sink for HubSink {
    fn line(&self, room: &str, _epoch: u64, line: Stored) {
        self.hub.deliver(line.event(room));
    }

    fn lost(&self, room: &str, _epoch: u64, after: u64, count: u64) {
        // The next line's seq jumps past them: clients see the gap, and a
        // resume reports them as lost.
        warn!(
            room,
            after, count, "lines were trimmed from Redis before this server read them"
        );
    }

    fn new_epoch(&self, room: &str, epoch: u64) {
        warn!(
            room,
            epoch, "Redis lost this room's history (it came back empty): new epoch"
        );
        self.hub.restart_room(room);
        if room == DEFAULT_ROOM {
            self.hub.set_epoch(epoch);
        }
    }
}

/// Subscribes `room` and keeps what the stream holds of it as its history.
async fn open(
    log: &RedisLog,
    subscriber: &Subscriber,
    hub: &Hub,
    room: &str,
    history: usize,
) -> Result<(), crate::store::redis::StoreError> {
    let head = subscriber.subscribe(room).await?;
    if history == 0 || head.seq == 0 {
        return Ok(());
    }
    let before = log.before(room, head.seq + 1, history).await?;
    let lines = before.lines.iter().map(|s| s.event(room)).collect();
    hub.seed(room, head.seq, lines);
    Ok(())
}

/// What `/readyz` names while this node cannot reach Redis.
pub const REDIS_DOWN: &str = "Redis (the shared store is unreachable; sends are refused)";
/// How often an idle node looks whether Redis still answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Whether Redis answers, as the relay (which refuses sends at once while
/// it does not) and `/readyz` see it.
struct Health {
    down: Arc<AtomicBool>,
    readiness: Readiness,
}

impl Health {
    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.readiness.up(REDIS_DOWN);
        }
    }

    fn down(&self, log: &RedisLog, cause: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::AcqRel) {
            self.readiness.down(REDIS_DOWN);
            warn!(redis = %log.addr(), error = %cause, "Redis is down; refusing lines until it is back");
        }
    }
}

/// The worker: opens and closes rooms, appends lines in pipelined batches,
/// in the order they were queued.
async fn work(
    log: RedisLog,
    subscriber: Arc<Subscriber>,
    hub: Hub,
    history: usize,
    mut jobs: mpsc::Receiver<Job>,
    health: Health,
) {
    let down = &health.down;
    let mut held: Option<Job> = None;
    let mut batch: Vec<(String, Entry, Arc<Mailbox>)> = Vec::with_capacity(BATCH);
    loop {
        let job = match held.take() {
            Some(job) => job,
            None if down.load(Ordering::Acquire) => {
                match tokio::time::timeout(PROBE_INTERVAL, jobs.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) => return,
                    Err(_) => {
                        if log.head(DEFAULT_ROOM).await.is_ok() {
                            info!(redis = %log.addr(), "Redis is back; taking lines again");
                            health.up();
                        }
                        continue;
                    }
                }
            }
            // Idle: a look at Redis now and then, so `/readyz` tells
            // a Redis that went away even when nobody is talking.
            None => match tokio::time::timeout(HEALTH_INTERVAL, jobs.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    if let Err(e) = log.head(DEFAULT_ROOM).await {
                        health.down(&log, &e.cause());
                    }
                    continue;
                }
            },
        };
        match job {
            Job::Open(room) => {
                if let Err(e) = open(&log, &subscriber, &hub, &room, history).await {
                    // Kept by the subscriber, which catches it up when
                    // Redis is back.
                    warn!(room, error = %e.cause(), "could not open the room in Redis yet");
                }
            }
            Job::Close(room) => subscriber.unsubscribe(&room),
            Job::Publish { line, sender } => {
                push_line(&mut batch, line, sender);
                // Whatever else is queued goes in the same round trip.
                while batch.len() < BATCH {
                    match jobs.try_recv() {
                        Ok(Job::Publish { line, sender }) => push_line(&mut batch, line, sender),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let lines: Vec<(&str, &Entry)> = batch
                    .iter()
                    .map(|(room, entry, _)| (room.as_str(), entry))
                    .collect();
                match log.append_many(&lines).await {
                    Ok(_) => health.up(),
                    Err(e) => {
                        health.down(&log, &e.cause());
                        let refusal = Arc::new(Encoded::new(Event::Error {
                            message: UNAVAILABLE.to_string(),
                        }));
                        for (_, _, sender) in &batch {
                            sender.push(refusal.clone());
                        }
                    }
                }
                batch.clear();
            }
        }
    }
}

fn push_line(batch: &mut Vec<(String, Entry, Arc<Mailbox>)>, line: Event, sender: Arc<Mailbox>) {
    let (kind, line) = match line {
        Event::Message(line) => (Kind::Message, line),
        Event::Action(line) => (Kind::Action, line),
        _ => return,
    };
    let entry = Entry {
        ts: line.ts,
        from: line.from,
        nick: line.nick,
        kind,
        text: line.text,
    };
    batch.push((line.room, entry, sender));
}
