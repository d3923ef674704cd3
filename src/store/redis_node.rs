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
//!
//! Presence goes the same way: the hub announces a join, leave or
//! nickname change to its own members at once and hands the change to the
//! relay; the worker writes it to Redis ([`Presence`]) in the same
//! pipelined round trip as the lines around it, in order, and publishes
//! the announcement on the room's channel, where the other nodes' members
//! hear it. Nicknames are claimed across nodes before they are applied
//! (`/nick`, and a nickname asked for in the upgrade). A keeper task
//! refreshes this node's entries and, when it holds the sweeper's lock,
//! removes the entries of nodes that stopped refreshing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::fanout::outbox::Encoded;
use crate::http::Readiness;
use crate::hub::{Hub, HubError, Mailbox, MemberId, Relay, UNAVAILABLE};
use crate::protocol::{Event, MemberInfo, RoomInfo, DEFAULT_ROOM};
use crate::store::redis::{Entry, Kind, RedisLog, Sink, Stored, Subscriber, DEFAULT_MAX_LEN};
use crate::store::redis_presence::{parse_member_key, Change, Claim, Presence, Snapshot};

/// Lines (and room changes) queued for the worker before senders are told
/// the store cannot keep up.
const QUEUE: usize = 16 * 1024;
/// Most lines appended in one pipelined round trip.
const BATCH: usize = 256;
/// While Redis is down, how often the worker checks whether it is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How a clean stop tells the other nodes why this node's members left.
const STOPPED: &str = "the server stopped";

/// A running node: the worker, the subscriber and the keeper. Dropping it
/// stops them (see [`RedisNode::close`] for a clean stop).
pub struct RedisNode {
    log: RedisLog,
    presence: Presence,
    hub: Hub,
    subscriber: Arc<Subscriber>,
    worker: JoinHandle<()>,
    keeper: JoinHandle<()>,
    jobs: mpsc::Sender<Job>,
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

    /// This node's name in Redis.
    pub fn node(&self) -> &str {
        self.presence.node()
    }

    /// A clean stop, once every session has ended: waits (bounded) for
    /// what is queued to reach Redis, then removes what this node still
    /// has there (held places' nicknames, entries a failed write left), so
    /// its users' nicknames are free at once rather than after the TTL.
    pub async fn close(&self) {
        self.keeper.abort();
        let (done, flushed) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), flushed).await;
        }
        let have = self.hub.presence_snapshot();
        let forgot =
            tokio::time::timeout(Duration::from_secs(2), self.presence.forget(&have, STOPPED))
                .await;
        if !matches!(forgot, Ok(Ok(()))) {
            warn!(redis = %self.log.addr(), "could not remove this server's members from Redis; they expire by themselves");
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.worker.abort();
        self.keeper.abort();
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
    presence_ttl: Duration,
    readiness: Readiness,
) -> anyhow::Result<RedisNode> {
    let log = RedisLog::connect(url, history.max(DEFAULT_MAX_LEN)).await?;
    let epoch = log
        .epoch(DEFAULT_ROOM)
        .await
        .map_err(|e| anyhow::anyhow!("Redis at {}: {}", log.addr(), e.cause()))?;
    let node = format!("{:012x}", fastrand::u64(..) >> 16);
    let presence = Presence::new(log.clone(), node.clone(), presence_ttl);
    let sink = HubSink {
        hub: hub.clone(),
        node: node.clone(),
    };
    let subscriber = Arc::new(log.subscriber_with(Arc::new(sink), Some(node.clone())));
    open(&log, &subscriber, hub, DEFAULT_ROOM, history)
        .await
        .map_err(|e| anyhow::anyhow!("Redis at {}: {}", log.addr(), e.cause()))?;
    let (jobs, queued) = mpsc::channel(QUEUE);
    let down = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(work(
        Worker {
            log: log.clone(),
            presence: presence.clone(),
            subscriber: subscriber.clone(),
            hub: hub.clone(),
            history,
        },
        queued,
        Health {
            down: down.clone(),
            readiness,
        },
    ));
    let stopping = Arc::new(AtomicBool::new(false));
    let online = Arc::new(AtomicUsize::new(0));
    let keeper = tokio::spawn(keep(
        presence.clone(),
        hub.clone(),
        stopping.clone(),
        online.clone(),
    ));
    hub.set_relay(
        Arc::new(RedisRelay {
            jobs: jobs.clone(),
            down: down.clone(),
            presence: presence.clone(),
            stopping,
            online,
        }),
        epoch,
    );
    info!(redis = %log.addr(), node, "sharing rooms, history, presence and nicknames through Redis");
    Ok(RedisNode {
        log,
        presence,
        hub: hub.clone(),
        subscriber,
        worker,
        keeper,
        jobs,
        down,
    })
}

enum Job {
    Publish {
        line: Event,
        sender: Arc<Mailbox>,
    },
    Presence(Change),
    Open(String),
    Close(String),
    ClaimNick {
        id: MemberId,
        addr: SocketAddr,
        nick: String,
        secret: u128,
        mailbox: Arc<Mailbox>,
    },
    ClaimHello {
        addr: SocketAddr,
        nick: String,
        shown: Option<String>,
        done: oneshot::Sender<Result<Claim, String>>,
    },
    /// Answered once everything queued before it is done.
    Flush(oneshot::Sender<()>),
}

/// The hub's side: queues, never waits. Reads (`/who`, `/rooms`, finding
/// a private message's recipient) run in tasks of their own.
struct RedisRelay {
    jobs: mpsc::Sender<Job>,
    down: Arc<AtomicBool>,
    presence: Presence,
    /// Set when the server begins to stop: the keeper stops refreshing.
    stopping: Arc<AtomicBool>,
    /// Members on every node, as the keeper last counted them.
    online: Arc<AtomicUsize>,
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

    fn presence(&self, change: Change) {
        self.queue(Job::Presence(change));
    }

    fn claim_nick(
        &self,
        id: MemberId,
        addr: SocketAddr,
        nick: String,
        secret: u128,
        mailbox: Arc<Mailbox>,
    ) {
        if self.down.load(Ordering::Acquire) {
            tell(&mailbox, UNAVAILABLE.to_string());
            return;
        }
        self.queue(Job::ClaimNick {
            id,
            addr,
            nick,
            secret,
            mailbox,
        });
    }

    fn claim_hello(
        &self,
        addr: SocketAddr,
        nick: String,
        shown: Option<String>,
    ) -> BoxFuture<'static, Result<Claim, String>> {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            let (done, answer) = oneshot::channel();
            jobs.send(Job::ClaimHello {
                addr,
                nick,
                shown,
                done,
            })
            .await
            .map_err(|_| UNAVAILABLE.to_string())?;
            answer
                .await
                .unwrap_or_else(|_| Err(UNAVAILABLE.to_string()))
        })
    }

    fn who(&self, room: String, local: Vec<MemberInfo>, mailbox: Arc<Mailbox>) {
        let presence = self.presence.clone();
        tokio::spawn(async move {
            let event = match presence.who(&room).await {
                Ok(everyone) => {
                    let mut members = local;
                    // This node's own are listed first, from the hub,
                    // which is never behind.
                    members.extend(
                        everyone
                            .into_iter()
                            .filter(|(key, _)| {
                                parse_member_key(key).is_some_and(|(n, _)| n != presence.node())
                            })
                            .map(|(_, info)| info),
                    );
                    Event::Who { room, members }
                }
                // This node's members are better than nothing.
                Err(e) => {
                    debug!(error = %e.cause(), "/who lists this server's members only: Redis is unavailable");
                    Event::Who {
                        room,
                        members: local,
                    }
                }
            };
            mailbox.push(Arc::new(Encoded::new(event)));
        });
    }

    fn rooms(&self, local: Vec<RoomInfo>, mailbox: Arc<Mailbox>) {
        let presence = self.presence.clone();
        tokio::spawn(async move {
            let mut rooms: BTreeMap<String, usize> =
                local.iter().map(|r| (r.name.clone(), r.members)).collect();
            let event = match presence.rooms().await {
                Ok(everywhere) => {
                    for room in everywhere {
                        let count = rooms.entry(room.name).or_default();
                        // Redis counts this node's too, unless it is a
                        // moment behind.
                        *count = (*count).max(room.members);
                    }
                    Event::Rooms {
                        rooms: rooms
                            .into_iter()
                            .map(|(name, members)| RoomInfo { name, members })
                            .collect(),
                    }
                }
                // This node's rooms are better than nothing.
                Err(e) => {
                    debug!(error = %e.cause(), "/rooms counts this server's members only: Redis is unavailable");
                    Event::Rooms { rooms: local }
                }
            };
            mailbox.push(Arc::new(Encoded::new(event)));
        });
    }

    fn stopping(&self, have: Snapshot) -> BoxFuture<'static, ()> {
        self.stopping.store(true, Ordering::Release);
        let presence = self.presence.clone();
        Box::pin(async move {
            let nicks = Snapshot {
                nicks: have.nicks,
                ..Snapshot::default()
            };
            if let Err(e) = presence.forget(&nicks, STOPPED).await {
                warn!(error = %e.cause(), "could not free this server's nicknames in Redis; they expire by themselves");
            }
        })
    }

    fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }

    fn private(&self, mut event: Event, to: String, mailbox: Arc<Mailbox>) {
        let presence = self.presence.clone();
        tokio::spawn(async move {
            let no_such = || Event::Error {
                message: HubError::NoSuchUser(to.clone()).to_string(),
            };
            let reply = match presence.owner(&to).await {
                Ok(Some((node, addr))) if node != presence.node() => {
                    if let Event::Private { to, .. } = &mut event {
                        *to = addr;
                    }
                    match presence.send_private(&node, &event).await {
                        Ok(true) => event,
                        Ok(false) => no_such(),
                        Err(e) => unavailable(&e),
                    }
                }
                Ok(_) => no_such(),
                Err(e) => unavailable(&e),
            };
            mailbox.push(Arc::new(Encoded::new(reply)));
        });
    }
}

fn tell(mailbox: &Mailbox, message: String) {
    mailbox.push(Arc::new(Encoded::new(Event::Error { message })));
}

fn unavailable(e: &crate::store::redis::StoreError) -> Event {
    debug!(error = %e.cause(), "a read from Redis failed");
    Event::Error {
        message: UNAVAILABLE.to_string(),
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

/// The subscriber's side: lines, announcements and private messages into
/// the hub.
struct HubSink {
    hub: Hub,
    /// This node: its own announcements were told here already.
    node: String,
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

    fn presence(&self, room: &str, node: &str, event: Event) {
        if node != self.node {
            self.hub.deliver_presence(room, event);
        }
    }

    fn private(&self, event: Event) {
        if !self.hub.deliver_private(event) {
            debug!("a private message from another server found nobody here");
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

/// What the worker works with.
struct Worker {
    log: RedisLog,
    presence: Presence,
    subscriber: Arc<Subscriber>,
    hub: Hub,
    history: usize,
}

/// One step of a pipelined batch: a line (answered with its seq) or a
/// presence change (answer ignored).
enum Step {
    Line(String, Entry, Arc<Mailbox>),
    Change(Change),
}

/// The worker: opens and closes rooms, claims nicknames, and appends lines
/// and presence changes in pipelined batches, in the order they were
/// queued.
async fn work(worker: Worker, mut jobs: mpsc::Receiver<Job>, health: Health) {
    let Worker {
        log,
        presence,
        subscriber,
        hub,
        history,
    } = worker;
    let down = &health.down;
    let mut held: Option<Job> = None;
    let mut batch: Vec<Step> = Vec::with_capacity(BATCH);
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
                continue;
            }
            Job::Close(room) => {
                subscriber.unsubscribe(&room);
                continue;
            }
            Job::ClaimNick {
                id,
                addr,
                nick,
                secret,
                mailbox,
            } => {
                match presence.claim(&nick, addr, secret, None).await {
                    Ok(Claim::Had | Claim::Reclaimed) => {
                        if let Err(e) = hub.apply_nick(id, addr, &nick) {
                            let _ = presence.release(&nick, addr).await;
                            if !matches!(e, HubError::NoSuchUser(_)) {
                                tell(&mailbox, e.to_string());
                            }
                        }
                    }
                    Ok(Claim::Taken) => tell(&mailbox, HubError::NickTaken(nick).to_string()),
                    Err(e) => {
                        health.down(&log, &e.cause());
                        tell(&mailbox, UNAVAILABLE.to_string());
                    }
                }
                continue;
            }
            Job::ClaimHello {
                addr,
                nick,
                shown,
                done,
            } => {
                let claimed = presence.claim(&nick, addr, 0, shown.as_deref()).await;
                let answer = claimed.map_err(|e| {
                    health.down(&log, &e.cause());
                    UNAVAILABLE.to_string()
                });
                let _ = done.send(answer);
                continue;
            }
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Job::Publish { line, sender } => push_line(&mut batch, line, sender),
            Job::Presence(change) => batch.push(Step::Change(change)),
        }
        // Whatever else is queued goes in the same round trip.
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(Job::Publish { line, sender }) => push_line(&mut batch, line, sender),
                Ok(Job::Presence(change)) => batch.push(Step::Change(change)),
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        append(&log, &presence, &health, &mut batch).await;
    }
}

/// Sends one batch in one round trip, and tells the senders of its lines
/// if Redis could not take them.
async fn append(log: &RedisLog, presence: &Presence, health: &Health, batch: &mut Vec<Step>) {
    let mut pipe = redis::pipe();
    let mut changes = Vec::new();
    let mut lines = Vec::new();
    for step in batch.iter() {
        match step {
            Step::Line(room, entry, _) => {
                // Keep the order: changes before this line go first.
                presence.write(&mut pipe, &changes);
                changes.clear();
                lines.push((room.as_str(), entry));
                log.append_to(&mut pipe, room, entry);
            }
            Step::Change(change) => changes.push(change.clone()),
        }
    }
    presence.write(&mut pipe, &changes);
    match log.run_appends(&pipe, lines.len()).await {
        Ok(()) => health.up(),
        Err(e) => {
            health.down(log, &e.cause());
            let refusal = Arc::new(Encoded::new(Event::Error {
                message: UNAVAILABLE.to_string(),
            }));
            for step in batch.iter() {
                if let Step::Line(_, _, sender) = step {
                    sender.push(refusal.clone());
                }
            }
        }
    }
    batch.clear();
}

/// The keeper: every third of the TTL, refreshes this node's entries and
/// nicknames in Redis and takes a turn at sweeping (if no other node holds
/// the lock).
async fn keep(presence: Presence, hub: Hub, stopping: Arc<AtomicBool>, online: Arc<AtomicUsize>) {
    let mut tick = tokio::time::interval(presence.ttl() / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stopping.load(Ordering::Acquire) {
            return;
        }
        match presence.refresh(&hub.presence_snapshot()).await {
            Ok(lost) => {
                for nick in lost {
                    if hub.let_go(&nick) {
                        debug!(nick, "a held place's client came back on another server");
                    } else {
                        warn!(nick, "another server's member took this nickname while Redis was away; both have it now");
                    }
                }
            }
            Err(e) => debug!(error = %e.cause(), "could not refresh presence in Redis"),
        }
        if let Ok(rooms) = presence.rooms().await {
            online.store(rooms.iter().map(|r| r.members).sum(), Ordering::Relaxed);
        }
        match presence.sweep().await {
            Ok(Some(n)) if n > 0 => {
                info!(
                    members = n,
                    "members of servers that stopped were shown leaving"
                );
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e.cause(), "could not sweep presence in Redis"),
        }
    }
}

fn push_line(batch: &mut Vec<Step>, line: Event, sender: Arc<Mailbox>) {
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
    batch.push(Step::Line(line.room, entry, sender));
}
