//! The room log on Redis: what several servers started with the same
//! `--redis` URL share, so that they serve one conversation.
//!
//! Per room there are three names, all with the room in a `{hash tag}` so
//! that a Redis Cluster keeps them in one slot:
//! - `chat:{ROOM}:meta`, a hash: `seq` (the last sequence number given out)
//!   and `epoch` (created with the room's first line; a room whose hash is
//!   gone starts a new epoch, which is how a Redis that came back empty is
//!   told apart from one that kept its data);
//! - `chat:{ROOM}:log`, a stream of the room's lines, trimmed to about
//!   `max_len` (`XADD MAXLEN ~`), each with the id `SEQ-0`, so a range of
//!   seqs is a range of ids (`XRANGE`);
//! - `chat:{ROOM}:live`, the pub/sub channel every line is published to.
//!
//! [`RedisLog::append`] runs one Lua script per line (as Centrifugo does):
//! epoch if missing, `HINCRBY seq`, `XADD`, `PUBLISH`, atomically. So the
//! seq order is the stream's order is the channel's order, for every node.
//!
//! Pub/sub is at most once: a message published while a subscriber is
//! reconnecting is gone, and nothing tells the subscriber. The stream makes
//! delivery exactly once: the [`Subscriber`] keeps, per room, the next seq it
//! expects, drops anything below it (a duplicate), and fills anything above
//! it from the stream before delivering the newer line (a gap); after every
//! reconnect it catches every room up from the stream before it reads the
//! channel again. Its [`Sink`] therefore sees each room's lines once each,
//! in seq order, with no gap but the lines the stream no longer holds,
//! which it is told about ([`Sink::lost`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{Client, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::protocol::{ChatLine, Event};
use crate::store::redis_presence::node_channel;

/// Default number of lines each room's stream keeps (about: `MAXLEN ~`
/// trims whole stream nodes, so a few more may stay).
pub const DEFAULT_MAX_LEN: usize = 10_000;
/// Longest wait for one Redis answer before it counts as down.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait before reconnecting the subscriber...
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...doubling up to this (jittered), so a Redis that is back is found
/// within about two seconds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an idle subscriber checks that its connection still answers
/// (a half-open connection otherwise looks like a quiet one).
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Lines read per `XRANGE` while catching up.
const PAGE: usize = 512;

/// Assigns the room's next seq, creates the epoch if missing, appends the
/// line to the stream with the seq as its id and publishes it. KEYS: meta,
/// log. ARGV: epoch candidate, max length, line (JSON), channel. Returns
/// `{epoch, seq}`.
pub const APPEND_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'l', ARGV[3])
redis.call('PUBLISH', ARGV[4], epoch .. ' ' .. seq .. ' ' .. ARGV[3])
return {epoch, seq}
";

/// Creates the room's epoch if missing and returns it. KEYS: meta. ARGV:
/// epoch candidate.
const EPOCH_SCRIPT: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
return redis.call('HGET', KEYS[1], 'epoch')
";

/// The key of a room's hash (`seq`, `epoch`).
pub fn meta_key(room: &str) -> String {
    format!("chat:{{{room}}}:meta")
}

/// The key of a room's stream of lines.
pub fn log_key(room: &str) -> String {
    format!("chat:{{{room}}}:log")
}

/// The pub/sub channel of a room.
pub fn channel(room: &str) -> String {
    format!("chat:{{{room}}}:live")
}

/// The room a channel name belongs to.
fn room_of_channel(name: &str) -> Option<&str> {
    name.strip_prefix("chat:{")?.strip_suffix("}:live")
}

/// What kind of line it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A chat message.
    Message,
    /// An action (`/me`).
    Action,
}

/// A line as it is kept, without its seq (Redis assigns that).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Server time in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The sender's address.
    pub from: SocketAddr,
    /// The sender's nickname, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
    /// Message or action.
    pub kind: Kind,
    /// The text.
    pub text: String,
}

/// A kept line with its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The room's sequence number of the line.
    pub seq: u64,
    /// The line.
    pub entry: Entry,
}

impl Stored {
    /// The line as the event clients are sent.
    pub fn event(&self, room: &str) -> Event {
        let line = ChatLine {
            room: room.to_string(),
            seq: self.seq,
            ts: self.entry.ts,
            from: self.entry.from,
            nick: self.entry.nick.clone(),
            text: self.entry.text.clone(),
            history: false,
        };
        match self.entry.kind {
            Kind::Message => Event::Message(line),
            Kind::Action => Event::Action(line),
        }
    }
}

/// Where a room's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The room's epoch; `None` while it has no line (in this Redis).
    pub epoch: Option<u64>,
    /// The last seq given out (0: none).
    pub seq: u64,
}

/// Lines read from a room's log, oldest first, with where the log stood
/// when they were read (in the same transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Where the log stood.
    pub head: Position,
    /// The lines.
    pub lines: Vec<Stored>,
}

/// Redis could not be reached or answered with an error. Its `Display` is
/// what a user is told; [`StoreError::cause`] is for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    cause: String,
}

impl StoreError {
    pub(crate) fn new(cause: impl fmt::Display) -> Self {
        StoreError {
            cause: cause.to_string(),
        }
    }

    /// What went wrong, for the log.
    pub fn cause(&self) -> &str {
        &self.cause
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the chat is unavailable right now (its store is down); try again shortly")
    }
}

impl std::error::Error for StoreError {}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::new(e)
    }
}

/// A handle to the rooms' logs in one Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    client: Client,
    /// Commands (append, reads): a multiplexed connection that reconnects
    /// by itself after an error.
    conn: ConnectionManager,
    append: Script,
    max_len: usize,
    /// `host:port` (never the URL, which may hold a password).
    addr: String,
}

impl fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLog")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl RedisLog {
    /// Connects to the Redis at `url` (`redis://HOST:PORT/DB`), each room
    /// keeping about `max_len` lines. Fails with a sentence naming the
    /// address if Redis does not answer.
    pub async fn connect(url: &str, max_len: usize) -> anyhow::Result<Self> {
        let client = Client::open(url).map_err(|e| {
            anyhow::anyhow!("{url:?} is not a Redis URL ({e}); use redis://HOST:PORT/DB")
        })?;
        let addr = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX)
            // One quick retry, not six with growing pauses (7.5 s): a dead
            // Redis must show at once, so sends are refused and `/readyz`
            // turns 503; the next call after Redis is back reconnects.
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Redis at {addr} did not answer in time; is it running?"))?
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {addr}: {e}; is it running?"))?;
        Ok(RedisLog {
            inner: Arc::new(LogInner {
                client,
                conn,
                append: Script::new(APPEND_SCRIPT),
                max_len: max_len.max(1),
                addr,
            }),
        })
    }

    /// Where Redis is, for logs (`host:port`).
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Appends a line to `room`: the next seq, the stream, the channel, in
    /// one script. Returns the room's epoch and the line's seq.
    pub async fn append(&self, room: &str, entry: &Entry) -> Result<(u64, u64), StoreError> {
        let line = serde_json::to_string(entry).map_err(StoreError::new)?;
        let (epoch, seq): (String, u64) = self
            .inner
            .append
            .key(meta_key(room))
            .key(log_key(room))
            .arg(new_epoch())
            .arg(self.inner.max_len)
            .arg(line)
            .arg(channel(room))
            .invoke_async(&mut self.conn())
            .await?;
        Ok((parse_epoch(&epoch)?, seq))
    }

    /// Appends lines, each to its room, in one round trip (a pipeline of
    /// the same script, run in order). Returns each line's epoch and seq.
    /// On an error some of the lines may have been appended.
    pub async fn append_many(
        &self,
        lines: &[(&str, &Entry)],
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut pipe = redis::pipe();
        for (room, entry) in lines {
            self.append_to(&mut pipe, room, entry);
        }
        let answers: Vec<(String, u64)> = pipe.query_async(&mut self.conn()).await?;
        answers
            .into_iter()
            .map(|(epoch, seq)| Ok((parse_epoch(&epoch)?, seq)))
            .collect()
    }

    /// Adds the append of `entry` to `room` to `pipe` (see
    /// [`Self::append`]), for [`Self::run_appends`].
    pub fn append_to(&self, pipe: &mut redis::Pipeline, room: &str, entry: &Entry) {
        // Our own type: it always serialises.
        let line = serde_json::to_string(entry).unwrap_or_default();
        // EVAL, not EVALSHA: a Redis that restarted has forgotten the
        // script, and retrying part of a pipeline could append twice.
        pipe.cmd("EVAL")
            .arg(APPEND_SCRIPT)
            .arg(2)
            .arg(meta_key(room))
            .arg(log_key(room))
            .arg(new_epoch())
            .arg(self.inner.max_len)
            .arg(line)
            .arg(channel(room));
    }

    /// Runs a pipeline of `lines` appends (and commands whose answers are
    /// ignored) in one round trip.
    pub async fn run_appends(
        &self,
        pipe: &redis::Pipeline,
        lines: usize,
    ) -> Result<(), StoreError> {
        let answers: Vec<(String, u64)> = pipe.query_async(&mut self.conn()).await?;
        if answers.len() != lines {
            return Err(StoreError::new(format!(
                "Redis answered {} of {lines} appends",
                answers.len()
            )));
        }
        Ok(())
    }

    /// `room`'s epoch, created now if it has none.
    pub async fn epoch(&self, room: &str) -> Result<u64, StoreError> {
        let epoch: String = Script::new(EPOCH_SCRIPT)
            .key(meta_key(room))
            .arg(new_epoch())
            .invoke_async(&mut self.conn())
            .await?;
        parse_epoch(&epoch)
    }

    /// Where `room`'s log stands.
    pub async fn head(&self, room: &str) -> Result<Position, StoreError> {
        let (epoch, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(meta_key(room))
            .arg("epoch")
            .arg("seq")
            .query_async(&mut self.conn())
            .await?;
        position(epoch, seq)
    }

    /// Up to `limit` lines of `room` after seq `after`, oldest first.
    pub async fn since(&self, room: &str, after: u64, limit: usize) -> Result<Range, StoreError> {
        let start = format!("{}-0", after.saturating_add(1));
        self.read(room, "XRANGE", &start, "+", limit).await
    }

    /// The last `n` lines of `room`, oldest first.
    pub async fn last(&self, room: &str, n: usize) -> Result<Range, StoreError> {
        self.read(room, "XREVRANGE", "+", "-", n).await
    }

    /// Up to `n` lines of `room` just before seq `before`, oldest first.
    pub async fn before(&self, room: &str, before: u64, n: usize) -> Result<Range, StoreError> {
        if before <= 1 {
            return Ok(Range {
                head: self.head(room).await?,
                lines: Vec::new(),
            });
        }
        let end = format!("{}-0", before - 1);
        self.read(room, "XREVRANGE", &end, "-", n).await
    }

    /// One range command and the room's head, in one transaction.
    async fn read(
        &self,
        room: &str,
        command: &str,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Range, StoreError> {
        if limit == 0 {
            return Ok(Range {
                head: self.head(room).await?,
                lines: Vec::new(),
            });
        }
        type Raw = Vec<(String, Vec<String>)>;
        let ((epoch, seq), raw): ((Option<String>, Option<u64>), Raw) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(meta_key(room))
            .arg("epoch")
            .arg("seq")
            .cmd(command)
            .arg(log_key(room))
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        let mut lines: Vec<Stored> = raw.into_iter().filter_map(decode).collect();
        if command == "XREVRANGE" {
            lines.reverse();
        }
        Ok(Range {
            head: position(epoch, seq)?,
            lines,
        })
    }

    /// Starts a subscriber that hands `sink` the lines of every room it is
    /// subscribed to, each once, in seq order (see the module docs).
    pub fn subscriber(&self, sink: Arc<dyn Sink>) -> Subscriber {
        self.subscriber_with(sink, None)
    }

    /// [`Self::subscriber`] that also hears `node`'s channel (private
    /// messages for its members, see [`redis_presence`]), and hands the
    /// rooms' presence announcements to the sink.
    ///
    /// [`redis_presence`]: crate::store::redis_presence
    pub fn subscriber_with(&self, sink: Arc<dyn Sink>, node: Option<String>) -> Subscriber {
        let (commands, received) = mpsc::unbounded_channel();
        let stats = Arc::new(Counters::default());
        let node = node.map(|n| node_channel(&n));
        let task = tokio::spawn(run_subscriber(
            self.clone(),
            sink,
            received,
            stats.clone(),
            node,
        ));
        Subscriber {
            commands,
            stats,
            task,
        }
    }
}

/// Decodes one stream entry (`SEQ-0`, `l` → JSON); entries that do not
/// decode are skipped with a warning (only this module writes them).
fn decode((id, fields): (String, Vec<String>)) -> Option<Stored> {
    let seq = id.split('-').next()?.parse().ok();
    let json = fields
        .chunks(2)
        .find(|pair| pair[0] == "l")
        .and_then(|pair| pair.get(1));
    match (seq, json.map(|j| serde_json::from_str::<Entry>(j))) {
        (Some(seq), Some(Ok(entry))) => Some(Stored { seq, entry }),
        _ => {
            warn!(id = %id, "skipping a stream entry this server cannot read");
            None
        }
    }
}

fn parse_epoch(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::new(format!("a room's epoch in Redis is not a number: {text:?}")))
}

fn position(epoch: Option<String>, seq: Option<u64>) -> Result<Position, StoreError> {
    Ok(Position {
        epoch: epoch.as_deref().map(parse_epoch).transpose()?,
        seq: seq.unwrap_or(0),
    })
}

/// A new epoch candidate: random, within JSON's exact integer range.
fn new_epoch() -> u64 {
    fastrand::u64(1..1 << 53)
}

/// Where a [`Subscriber`] hands what it receives. Called from the
/// subscriber's task, one call at a time; keep each call short.
pub trait Sink: Send + Sync + 'static {
    /// The next line of `room` (each once, in seq order).
    fn line(&self, room: &str, epoch: u64, line: Stored);
    /// `count` lines of `room` after seq `after` are not in the stream any
    /// more (trimmed before this node read them); the next line follows.
    fn lost(&self, room: &str, epoch: u64, after: u64, count: u64);
    /// `room` started a new epoch (its log was lost from Redis); its lines
    /// start again at seq 1.
    fn new_epoch(&self, room: &str, epoch: u64);
    /// A presence announcement in `room` (a join, leave or nickname
    /// change) published by `node` ([`SWEEPER`] for the sweeper's).
    ///
    /// [`SWEEPER`]: crate::store::redis_presence::SWEEPER
    fn presence(&self, _room: &str, _node: &str, _event: Event) {}
    /// A private message for a member of this node.
    fn private(&self, _event: Event) {}
}

/// What a subscriber has done, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Connections to Redis made (the first included).
    pub connections: u64,
    /// Lines that came over pub/sub at or below the next expected seq.
    pub duplicates: u64,
    /// Gaps in pub/sub filled from the stream before a newer line.
    pub gaps: u64,
    /// Lines delivered from the stream rather than from pub/sub.
    pub from_stream: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    from_stream: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

enum Command {
    Subscribe {
        room: String,
        done: oneshot::Sender<Result<Position, StoreError>>,
    },
    Unsubscribe(String),
}

/// A supervised subscription to rooms' channels: reconnects with capped,
/// jittered backoff, catches every room up from its stream after each
/// reconnect, and hands each line to its [`Sink`] once, in seq order. Ends
/// when dropped.
pub struct Subscriber {
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes to `room`: lines after the returned position are handed
    /// to the sink. If Redis is down the room is still kept (and caught up
    /// once Redis is back), and the error says so.
    pub async fn subscribe(&self, room: &str) -> Result<Position, StoreError> {
        let (done, answer) = oneshot::channel();
        let command = Command::Subscribe {
            room: room.to_string(),
            done,
        };
        if self.commands.send(command).is_err() {
            return Err(StoreError::new("the Redis subscriber has stopped"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::new("the Redis subscriber has stopped")))
    }

    /// Stops handing `room`'s lines to the sink.
    pub fn unsubscribe(&self, room: &str) {
        let _ = self.commands.send(Command::Unsubscribe(room.to_string()));
    }

    /// What it has done so far.
    pub fn stats(&self) -> SubscriberStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SubscriberStats {
            connections: get(&self.stats.connections),
            duplicates: get(&self.stats.duplicates),
            gaps: get(&self.stats.gaps),
            from_stream: get(&self.stats.from_stream),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subscribed room: its epoch and the next seq to hand on.
#[derive(Debug)]
struct Track {
    epoch: Option<u64>,
    /// `None` until the room's head was read (subscribed while Redis was
    /// down): then the lines after the head are handed on.
    next: Option<u64>,
}

/// Capped exponential backoff with jitter (each wait between half and all
/// of the current step), so nodes that lost Redis together do not all come
/// back at the same instant.
struct Backoff {
    step: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { step: BACKOFF_MIN }
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Why the live loop stopped.
enum Stop {
    /// Every [`Subscriber`] handle is gone.
    Dropped,
    /// The connection failed (`served`: after it had caught up and gone
    /// live); reconnect.
    Lost { why: String, served: bool },
}

async fn run_subscriber(
    log: RedisLog,
    sink: Arc<dyn Sink>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    stats: Arc<Counters>,
    node: Option<String>,
) {
    let mut rooms: HashMap<String, Track> = HashMap::new();
    let mut backoff = Backoff::new();
    // Logged once per outage, not once per attempt.
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        let served = connect_and_serve(
            &log,
            &*sink,
            &mut rooms,
            &mut commands,
            &stats,
            node.as_deref(),
        );
        let why = match served.await {
            Stop::Dropped => return,
            Stop::Lost { why, served } => {
                if served {
                    // It worked for a while: a fresh outage.
                    backoff = Backoff::new();
                    down_since = None;
                }
                why
            }
        };
        if down_since.is_none() {
            warn!(redis = %log.addr(), error = %why, "lost the Redis subscription; reconnecting");
            down_since = Some(tokio::time::Instant::now());
        } else {
            debug!(redis = %log.addr(), error = %why, "Redis still unavailable");
        }
        // Wait, still taking commands: rooms subscribed meanwhile are kept
        // and caught up once connected.
        let wait = tokio::time::sleep(backoff.next());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                command = commands.recv() => match command {
                    None => return,
                    Some(command) => keep_while_down(&mut rooms, command, &why),
                },
            }
        }
    }

    /// Connects, subscribes every kept room, catches them up from their
    /// streams, then serves live messages and commands until the
    /// connection fails.
    async fn connect_and_serve(
        log: &RedisLog,
        sink: &dyn Sink,
        rooms: &mut HashMap<String, Track>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        stats: &Counters,
        node: Option<&str>,
    ) -> Stop {
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, log.inner.client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                return Stop::Lost {
                    why: e.to_string(),
                    served: false,
                }
            }
            Err(_) => {
                return Stop::Lost {
                    why: "connecting timed out".into(),
                    served: false,
                }
            }
        };
        let (mut sub, mut stream) = pubsub.split();
        bump(&stats.connections);
        // Subscribe first, then read the streams: whatever is published in
        // between comes over the channel too, and is dropped as a duplicate.
        let mut channels: Vec<String> = rooms.keys().map(|r| channel(r)).collect();
        channels.extend(node.map(String::from));
        if !channels.is_empty() {
            if let Err(e) = bounded(sub.subscribe(&channels)).await {
                return Stop::Lost {
                    why: e.cause,
                    served: false,
                };
            }
        }
        for (room, track) in rooms.iter_mut() {
            if let Err(e) = catch_up(log, sink, room, track, stats).await {
                return Stop::Lost {
                    why: e.cause,
                    served: false,
                };
            }
        }
        if stats.connections.load(Ordering::Relaxed) > 1 {
            info!(redis = %log.addr(), rooms = rooms.len(), "Redis subscription restored; rooms caught up");
        }
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return Stop::Dropped,
                    Some(Command::Subscribe { room, done }) => {
                        let result = subscribe_room(log, &mut sub, rooms, &room).await;
                        let lost = result.as_ref().err().map(|e| e.cause.clone());
                        let _ = done.send(result);
                        if let Some(why) = lost {
                            return Stop::Lost { why, served: true };
                        }
                    }
                    Some(Command::Unsubscribe(room)) => {
                        rooms.remove(&room);
                        if let Err(e) = bounded(sub.unsubscribe(channel(&room))).await {
                            return Stop::Lost { why: e.cause, served: true };
                        }
                    }
                },
                message = stream.next() => match message {
                    None => return Stop::Lost { why: "the connection was closed".into(), served: true },
                    Some(message) if node == Some(message.get_channel_name()) => {
                        match serde_json::from_slice::<Event>(message.get_payload_bytes()) {
                            Ok(event) => sink.private(event),
                            Err(_) => warn!("skipping a private message this server cannot read"),
                        }
                    }
                    Some(message) => {
                        if let Err(e) = on_message(log, sink, rooms, &message, stats).await {
                            return Stop::Lost { why: e.cause, served: true };
                        }
                    }
                },
                _ = ping.tick() => {
                    if let Err(e) = bounded(sub.ping::<redis::Value>()).await {
                        return Stop::Lost { why: e.cause, served: true };
                    }
                }
            }
        }
    }
}

/// A subscribe command while Redis is down: the room is kept (caught up
/// when Redis is back) and the caller told.
fn keep_while_down(rooms: &mut HashMap<String, Track>, command: Command, why: &str) {
    match command {
        Command::Subscribe { room, done } => {
            rooms.entry(room).or_insert(Track {
                epoch: None,
                next: None,
            });
            let _ = done.send(Err(StoreError::new(why)));
        }
        Command::Unsubscribe(room) => {
            rooms.remove(&room);
        }
    }
}

/// A Redis call bounded by [`RESPONSE_TIMEOUT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, call).await {
        Ok(result) => result.map_err(StoreError::from),
        Err(_) => Err(StoreError::new("Redis did not answer in time")),
    }
}

async fn subscribe_room(
    log: &RedisLog,
    sub: &mut PubSubSink,
    rooms: &mut HashMap<String, Track>,
    room: &str,
) -> Result<Position, StoreError> {
    if !rooms.contains_key(room) {
        // Kept even if what follows fails: the reconnect catches it up.
        rooms.insert(
            room.to_string(),
            Track {
                epoch: None,
                next: None,
            },
        );
        bounded(sub.subscribe(channel(room))).await?;
    }
    let head = log.head(room).await?;
    if let Some(track) = rooms.get_mut(room) {
        if track.next.is_none() {
            *track = Track {
                epoch: head.epoch,
                next: Some(head.seq + 1),
            };
        }
        return Ok(Position {
            epoch: track.epoch,
            seq: track.next.map_or(head.seq, |n| n - 1),
        });
    }
    Ok(head)
}

/// Brings `room` up to its stream's head (after a reconnect).
async fn catch_up(
    log: &RedisLog,
    sink: &dyn Sink,
    room: &str,
    track: &mut Track,
    stats: &Counters,
) -> Result<(), StoreError> {
    let head = log.head(room).await?;
    let Some(epoch) = head.epoch else {
        // No line in this Redis (yet, or any more): the first line
        // published tells its epoch.
        track.next.get_or_insert(1);
        return Ok(());
    };
    if track.epoch.is_some_and(|old| old != epoch) {
        sink.new_epoch(room, epoch);
        track.next = Some(1);
    }
    if track.next.is_none() {
        track.next = Some(head.seq + 1);
    }
    track.epoch = Some(epoch);
    fill(log, sink, room, track, head.seq, stats).await
}

/// Hands on `room`'s lines from the next expected seq up to `upto` from its
/// stream, telling the sink about any the stream no longer has.
async fn fill(
    log: &RedisLog,
    sink: &dyn Sink,
    room: &str,
    track: &mut Track,
    upto: u64,
    stats: &Counters,
) -> Result<(), StoreError> {
    let Some(epoch) = track.epoch else {
        return Ok(());
    };
    let mut next = track.next.unwrap_or(1);
    while next <= upto {
        let range = log.since(room, next - 1, PAGE).await?;
        if range.head.epoch != Some(epoch) {
            // Lost from Redis while we read: the next message tells the
            // new epoch, and catching up starts again from 1 then.
            break;
        }
        if range.lines.is_empty() {
            sink.lost(room, epoch, next - 1, upto + 1 - next);
            next = upto + 1;
            break;
        }
        for stored in range.lines {
            if stored.seq < next {
                continue;
            }
            if stored.seq > upto {
                break;
            }
            if stored.seq > next {
                sink.lost(room, epoch, next - 1, stored.seq - next);
            }
            next = stored.seq + 1;
            bump(&stats.from_stream);
            sink.line(room, epoch, stored);
        }
    }
    track.next = Some(next);
    Ok(())
}

/// One message from a room's channel: `EPOCH SEQ JSON`.
async fn on_message(
    log: &RedisLog,
    sink: &dyn Sink,
    rooms: &mut HashMap<String, Track>,
    message: &redis::Msg,
    stats: &Counters,
) -> Result<(), StoreError> {
    let Some(room) = room_of_channel(message.get_channel_name()) else {
        return Ok(());
    };
    let Some(track) = rooms.get_mut(room) else {
        // Unsubscribed meanwhile.
        return Ok(());
    };
    let payload = String::from_utf8_lossy(message.get_payload_bytes());
    if let Some(presence) = payload.strip_prefix("P ") {
        // An announcement: at most once, outside the seq order.
        let parsed = presence
            .split_once(' ')
            .and_then(|(node, json)| Some((node, serde_json::from_str::<Event>(json).ok()?)));
        match parsed {
            Some((node, event)) => sink.presence(room, node, event),
            None => warn!(
                room,
                "skipping a presence announcement this server cannot read"
            ),
        }
        return Ok(());
    }
    let mut parts = payload.splitn(3, ' ');
    let (Some(epoch), Some(seq), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
        warn!(room, "skipping a published line this server cannot read");
        return Ok(());
    };
    let (Ok(epoch), Ok(seq)) = (epoch.parse::<u64>(), seq.parse::<u64>()) else {
        warn!(room, "skipping a published line this server cannot read");
        return Ok(());
    };
    match track.epoch {
        Some(old) if old != epoch => {
            sink.new_epoch(room, epoch);
            track.next = Some(1);
        }
        _ => {}
    }
    track.epoch = Some(epoch);
    let next = *track.next.get_or_insert(1);
    if seq < next {
        bump(&stats.duplicates);
        return Ok(());
    }
    if seq > next {
        bump(&stats.gaps);
        fill(log, sink, room, track, seq - 1, stats).await?;
        if track.epoch != Some(epoch) || track.next != Some(seq) {
            // The stream could not fill it (Redis changed under us):
            // reconnect and catch up properly.
            return Err(StoreError::new("a gap could not be filled from the stream"));
        }
    }
    match serde_json::from_str::<Entry>(json) {
        Ok(entry) => sink.line(room, epoch, Stored { seq, entry }),
        Err(_) => warn!(
            room,
            seq, "skipping a published line this server cannot read"
        ),
    }
    track.next = Some(seq + 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_rooms_hash_tag() {
        assert_eq!(meta_key("#lobby"), "chat:{#lobby}:meta");
        assert_eq!(log_key("#lobby"), "chat:{#lobby}:log");
        assert_eq!(room_of_channel(&channel("#rust")), Some("#rust"));
        assert_eq!(room_of_channel("other"), None);
    }

    #[test]
    fn stream_entries_decode_and_bad_ones_are_skipped() {
        let entry = Entry {
            ts: 5,
            from: "127.0.0.1:9".parse().unwrap(),
            nick: Some("ann".into()),
            kind: Kind::Action,
            text: "waves".into(),
        };
        let json = serde_json::to_string(&entry).unwrap();
        let got = decode(("7-0".into(), vec!["l".into(), json])).unwrap();
        assert_eq!(got, Stored { seq: 7, entry });
        assert_eq!(got.event("#a").to_text(), "* ann waves");
        assert!(decode(("x-0".into(), vec![])).is_none());
        assert!(decode(("3-0".into(), vec!["l".into(), "{".into()])).is_none());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new();
        let waits: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert!(waits[0] >= BACKOFF_MIN / 2 && waits[0] <= BACKOFF_MIN);
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(waits[9] >= BACKOFF_MAX / 2);
    }
}
