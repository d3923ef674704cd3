//! The hub: who is connected, their nicknames, the rooms with their members
//! and history, and the live feed of every room.
//!
//! All state sits behind one `std::sync::Mutex`. Every method is synchronous
//! and short (no `.await`, no socket, no I/O under the lock), so a std mutex
//! is the right tool: it is cheaper than an async one and can never be held
//! across a suspension point. Sessions talk to the hub only through this
//! small API and never see its state.
//!
//! Publishing assigns the room's next sequence number, appends the line to
//! the room's history, sends one `Arc` through the room's [`Feed`] and tells
//! the room's writer (`writer.rs`) a pass is owed, all under the lock; the
//! writer then takes the line to every member, writing it itself for idle
//! ones and ringing the [`Mailbox`] of busy ones. So sequence order,
//! history order and feed order are the same for every receiver, and a
//! member who subscribes and snapshots the history in one critical section
//! sees every line exactly once. That publish path is the seam where a backplane
//! shared by several servers can later sit: sessions call the hub and take
//! from a [`Cursor`] and a [`Mailbox`], whoever fills them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use subtle::ConstantTimeEq as _;

use crate::fanout::feed::{Cursor, Feed};
use crate::fanout::writer::RoomWriter;
use crate::metrics::Metrics;
use crate::store::redis_presence::{proof, Change, Claim, Snapshot};
use crate::store::{Memory, Opened, Store};

pub use crate::fanout::mailbox::Mailbox;
pub use crate::fanout::outbox::Encoded;
use crate::protocol::{
    normalize_room, now_millis, validate_nick, validate_text, ChatLine, Encoding, Event, Hello,
    MemberInfo, RoomInfo, TextError, DEFAULT_HISTORY_REPLAY, DEFAULT_ROOM,
};

/// Default capacity of each room's feed: how far (in messages)
/// a receiver may fall behind before it starts missing messages.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;
/// Default number of lines each room keeps for replay.
pub const DEFAULT_HISTORY_DEPTH: usize = 1000;
/// Most lines a resume reads from the store beyond those the hub keeps in
/// memory (only with `--history` above the in-memory depth): more than
/// anyone reads after a reconnect, fewer than would swamp the client.
pub const MAX_REPLAY_FROM_STORE: usize = 50_000;
/// How long a read past memory waits for the history writer to commit
/// lines sent a moment ago (see [`Store::settle`]): a commit takes its 10 ms
/// of gathering and a little more; a failing disk costs the reader no more
/// than this, not a flush's seconds.
const READ_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);
/// Default cap on the number of rooms.
pub const DEFAULT_MAX_ROOMS: usize = 1000;
/// Rooms with more members than this do not announce joins and leaves:
/// in a big room they would drown the conversation, and each one costs a
/// delivery per member (a room filling up would cost O(members²)).
pub const DEFAULT_PRESENCE_LIMIT: usize = 100;
/// How long the place of a member whose connection was lost without a
/// Close is held: its nickname stays reserved and its leave is not
/// announced, so a client that comes back within it with its reclaim token
/// (see [`Hello`]) takes the place back with nothing announced at all.
/// Long enough for a reconnect after a network blip or a server-side
/// timeout; short enough that others are not left talking to someone gone.
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// What a room's feed carries: an event encoded once, shared by all.
pub type Shared = Arc<Encoded>;

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Name shown in the welcome line.
    pub name: String,
    /// Events each room's feed keeps for members that lag.
    pub channel_capacity: usize,
    /// Lines of history each room keeps (0: none).
    pub history_depth: usize,
    /// Most rooms that may exist at once.
    pub max_rooms: usize,
    /// Rooms with more members than this skip join and leave notices
    /// (0: always announce).
    pub presence_limit: usize,
    /// How long a lost connection's place is held (see
    /// [`DEFAULT_RECONNECT_GRACE`]); zero: its leave is announced at once.
    pub reconnect_grace: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            name: "chat".into(),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            history_depth: DEFAULT_HISTORY_DEPTH,
            max_rooms: DEFAULT_MAX_ROOMS,
            presence_limit: DEFAULT_PRESENCE_LIMIT,
            reconnect_grace: DEFAULT_RECONNECT_GRACE,
        }
    }
}

/// Identifies one connection for the hub's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(u64);

/// A request the hub refused; the text is for the user who made it.
#[derive(Debug, PartialEq, Eq)]
pub enum HubError {
    /// The text was not acceptable.
    Text(TextError),
    /// The nickname is not valid.
    InvalidNick(String),
    /// Someone else has the nickname.
    NickTaken(String),
    /// No member has that nickname or address.
    NoSuchUser(String),
    /// The recipient's queue is full.
    RecipientBusy(String),
    /// Creating another room would pass the cap.
    TooManyRooms(usize),
    /// Joining the room one is already in.
    AlreadyInRoom(String),
    /// The shared store (Redis, with `--redis`) cannot take the line now.
    Unavailable,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::Text(e) => e.fmt(f),
            HubError::InvalidNick(why) => f.write_str(why),
            HubError::NickTaken(nick) => {
                write!(
                    f,
                    "the nickname {nick} is taken; pick another with /nick NAME"
                )
            }
            HubError::NoSuchUser(who) => {
                write!(f, "nobody called {who} is online; /who lists your room")
            }
            HubError::RecipientBusy(who) => {
                write!(
                    f,
                    "{who} is not keeping up; message not delivered, try again later"
                )
            }
            HubError::TooManyRooms(max) => {
                write!(
                    f,
                    "cannot create a room: the server has its maximum of {max}; /rooms lists them"
                )
            }
            HubError::AlreadyInRoom(room) => write!(f, "you are already in {room}"),
            HubError::Unavailable => f.write_str(UNAVAILABLE),
        }
    }
}

impl std::error::Error for HubError {}

impl From<TextError> for HubError {
    fn from(e: TextError) -> Self {
        HubError::Text(e)
    }
}

/// What a sender is told when the shared store cannot take a line.
pub const UNAVAILABLE: &str =
    "the chat is unavailable right now (its store is down); try again shortly";

/// Where room lines go when several servers share the rooms (`--redis`):
/// instead of numbering a line and putting it in the room's feed, the hub
/// hands it to the relay, and members see it when it comes back through
/// [`Hub::deliver`] (the sender's own node included), numbered by the
/// shared store. Called under the hub's lock: every method must return at
/// once (queue the work, never wait).
pub trait Relay: Send + Sync + 'static {
    /// Takes a line (a [`Event::Message`] or [`Event::Action`], `seq` 0)
    /// to publish; `sender` is told if it fails later. False: it cannot
    /// take it now.
    fn publish(&self, line: Event, sender: Arc<Mailbox>) -> bool;
    /// This node has a room now: deliver its lines here.
    fn opened(&self, room: &str);
    /// This node forgot a room: stop delivering its lines.
    fn closed(&self, room: &str);
    /// Who is where changed (a join, a leave, a nickname), in the order
    /// the hub made the changes.
    fn presence(&self, change: Change);
    /// Claims `nick` for member `id` (at `addr`, with reclaim `secret`)
    /// across every node; once it is had, the relay applies it with
    /// [`Hub::apply_nick`], and if it is not, it tells `mailbox` why.
    fn claim_nick(
        &self,
        id: MemberId,
        addr: SocketAddr,
        nick: String,
        secret: u128,
        mailbox: Arc<Mailbox>,
    );
    /// Claims a nickname asked for in an upgrade, for the connection at
    /// `addr`, before it joins, showing `shown`, the proof of the reclaim
    /// token it came with (see [`proof`]), if any.
    fn claim_hello(
        &self,
        addr: SocketAddr,
        nick: String,
        shown: Option<String>,
    ) -> futures_util::future::BoxFuture<'static, Result<Claim, String>>;
    /// Answers `/who` for `room` to `mailbox`: `local` are this node's
    /// members, in order; the other nodes' are added.
    fn who(&self, room: String, local: Vec<MemberInfo>, mailbox: Arc<Mailbox>);
    /// Answers `/rooms` to `mailbox`: `local` are this node's rooms.
    fn rooms(&self, local: Vec<RoomInfo>, mailbox: Arc<Mailbox>);
    /// Takes a private message to `to` (a nickname no member of this node
    /// has) to whichever node has it, and echoes it to `mailbox`, or tells
    /// `mailbox` there is no such user.
    fn private(&self, event: Event, to: String, mailbox: Arc<Mailbox>);
    /// The server is about to close every connection: give up `have`'s
    /// nicknames across nodes now (and stop refreshing them), so clients
    /// moving to another node get theirs back there at once.
    fn stopping(&self, have: Snapshot) -> futures_util::future::BoxFuture<'static, ()>;
    /// How many are online on every node, as last counted (a welcome's
    /// `online`).
    fn online(&self) -> usize;
}

/// A cheap, cloneable handle to the shared chat state.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    /// Identifies this run of the server (or, with a relay, the default
    /// room's history in the shared store), for `/resume`.
    epoch: AtomicU64,
    /// Set once, with `--redis`: room lines go through it.
    relay: OnceLock<Arc<dyn Relay>>,
    /// Set by [`Hub::shutdown`]; members joining after it are told at once.
    closing: AtomicBool,
    /// This server's counters (one registry per hub, so servers in one
    /// process never share them).
    metrics: Arc<Metrics>,
    /// Where rooms' lines are kept beyond the ring in memory.
    store: Arc<dyn Store>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    members: HashMap<MemberId, Member>,
    /// Lower-cased nickname to its owner.
    nicks: HashMap<String, MemberId>,
    rooms: HashMap<String, Room>,
    /// Members whose connection was lost without a Close, during their
    /// grace period (see [`Hub::hold`]): out of their rooms, their
    /// nicknames still in `nicks`, their leave not yet announced.
    held: HashMap<MemberId, Held>,
}

/// A lost member's place, held for the grace period.
struct Held {
    member: Member,
    /// What its room is told if it does not come back.
    reason: Option<String>,
}

impl State {
    /// The name of the room `id` is in (empty if `id` is gone).
    fn room_of(&self, id: MemberId) -> String {
        self.members
            .get(&id)
            .map(|m| m.room.clone())
            .unwrap_or_default()
    }
}

struct Member {
    addr: SocketAddr,
    nick: Option<String>,
    room: String,
    /// Private messages for this member, and its session's wake-ups.
    mailbox: Arc<Mailbox>,
    /// Whether its session speaks JSON (for counting delivered bytes).
    json: bool,
    /// The secret half of its reclaim token (see [`reclaim_token`]), as
    /// bytes (a `u128` field would align the member to 16 bytes); zero:
    /// it has none (the system's random source failed).
    secret: [u8; 16],
}

/// A reclaim token: the member's id (so no map of tokens is needed) and
/// 128 random bits from the operating system's CSPRNG, in hex. Only the
/// random half is secret; it is compared in constant time.
fn reclaim_token(id: MemberId, secret: u128) -> String {
    format!("{:016x}{secret:032x}", id.0)
}

/// The id and secret of a token as [`reclaim_token`] writes it.
fn parse_token(token: &str) -> Option<(MemberId, u128)> {
    if token.len() != 48 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(&token[..16], 16).ok()?;
    let secret = u128::from_str_radix(&token[16..], 16).ok()?;
    Some((MemberId(id), secret))
}

/// How many bytes of the operating system's random source [`fresh_secret`]
/// takes at a time: one `getrandom` call per 256 connections instead of
/// one per connection.
const RANDOM_POOL_BYTES: usize = 4096;

/// Bytes from the operating system's CSPRNG not yet handed out, per thread.
/// Each secret is taken from it once and its bytes are zeroed as they are
/// taken, so the pool holds no secret already given to a member.
struct RandomPool {
    bytes: [u8; RANDOM_POOL_BYTES],
    /// Bytes before this have been handed out (and zeroed).
    next: usize,
}

thread_local! {
    static RANDOM_POOL: std::cell::RefCell<RandomPool> = const {
        std::cell::RefCell::new(RandomPool { bytes: [0; RANDOM_POOL_BYTES], next: RANDOM_POOL_BYTES })
    };
}

/// 128 bits from the operating system's random source, taken from a
/// per-thread pool refilled with `getrandom` 4 KiB at a time (every byte
/// comes straight from the OS CSPRNG; nothing is stretched or derived);
/// 0 if the refill fails, and the session then has no token.
fn fresh_secret() -> u128 {
    RANDOM_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.next + 16 > RANDOM_POOL_BYTES {
            if getrandom::getrandom(&mut pool.bytes).is_err() {
                pool.bytes = [0; RANDOM_POOL_BYTES];
                pool.next = RANDOM_POOL_BYTES;
                return 0;
            }
            pool.next = 0;
        }
        let at = pool.next;
        pool.next += 16;
        let taken = &mut pool.bytes[at..at + 16];
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(taken);
        taken.fill(0);
        u128::from_le_bytes(bytes)
    })
}

/// Whether `member` holds the secret `secret`, in constant time.
fn holds_secret(member: &Member, secret: u128) -> bool {
    member.secret != [0; 16] && bool::from(member.secret.ct_eq(&secret.to_le_bytes()))
}

/// The chat line a kept event carries (history holds only messages and
/// actions).
fn chat_line(shared: &Shared) -> Option<&ChatLine> {
    match shared.event() {
        Event::Message(line) | Event::Action(line) => Some(line),
        _ => None,
    }
}

/// A kept line as it is replayed: the same event, marked as history.
fn replayed(shared: &Shared) -> Event {
    let mut event = shared.event().clone();
    if let Event::Message(line) | Event::Action(line) = &mut event {
        line.history = true;
    }
    event
}

struct Room {
    /// The live feed; it lets its events go when the last member's
    /// cursor does, so an idle room keeps no events but its history.
    feed: Feed,
    /// Members by id, which is connection order (so `/who` lists a member
    /// who connected earlier first, whenever each joined), with their
    /// mailboxes.
    members: BTreeMap<MemberId, Arc<Mailbox>>,
    /// Takes what the feed gets to the members (the same mailboxes).
    writer: Arc<RoomWriter>,
    /// Sequence number of the last line published here (0: none yet).
    last_seq: u64,
    /// Changes only when the room's history was lost (see `/resume`).
    epoch: u64,
    /// Numbers skipped after unclean stops (see [`Opened::skipped`]).
    skipped: Vec<(u64, u64)>,
    /// The most recent lines, oldest first: the very events that were
    /// published, so history and live delivery cannot disagree.
    history: VecDeque<Shared>,
    /// How many members speak JSON (the rest speak text), so a publish
    /// counts its delivered bytes without visiting the members.
    json_members: usize,
    /// The server's counters, bumped once per publish.
    metrics: Arc<Metrics>,
}

impl Room {
    /// A room as the store has it: its epoch, numbering and recent lines.
    fn new(capacity: usize, metrics: Arc<Metrics>, opened: Opened) -> Self {
        let history = opened
            .lines
            .into_iter()
            .map(|e| Arc::new(Encoded::new(e)))
            .collect();
        Room {
            feed: Feed::new(capacity),
            members: BTreeMap::new(),
            writer: RoomWriter::new(),
            last_seq: opened.last_seq,
            epoch: opened.epoch,
            skipped: opened.skipped,
            history,
            json_members: 0,
            metrics,
        }
    }

    /// Publishes to everyone in the room (nobody listening is fine); the
    /// room's writer takes it to them.
    fn send(&self, event: Event) -> Shared {
        let shared = Arc::new(Encoded::new(event));
        if !self.members.is_empty() {
            self.count_delivery(&shared);
            self.feed.publish(shared.clone());
            self.writer.schedule();
        }
        shared
    }

    /// Counts one publish as delivered to every member: one addition per
    /// counter, not one per recipient. Each encoding in use is framed here
    /// (once; the writer and sessions reuse the same bytes).
    fn count_delivery(&self, shared: &Encoded) {
        let json = self.json_members as u64;
        let text = self.members.len() as u64 - json;
        let mut bytes = 0;
        if text > 0 {
            bytes += text * shared.frame(Encoding::Text).len() as u64;
        }
        if json > 0 {
            bytes += json * shared.frame(Encoding::Json).len() as u64;
        }
        self.metrics.delivered(text + json, bytes);
    }

    fn add(&mut self, id: MemberId, mailbox: Arc<Mailbox>, json: bool) {
        self.writer.add(mailbox.clone());
        if self.members.insert(id, mailbox).is_none() && json {
            self.json_members += 1;
        }
    }

    fn remove(&mut self, id: MemberId, json: bool) {
        if let Some(mailbox) = self.members.remove(&id) {
            self.writer.remove(&mailbox);
            if json {
                self.json_members -= 1;
            }
        }
    }

    /// Keeps a published line in the history (at most `depth`).
    fn keep(&mut self, shared: Shared, depth: usize) {
        if depth > 0 {
            if self.history.len() >= depth {
                self.history.pop_front();
            }
            self.history.push_back(shared);
        }
    }

    /// The last `n` kept lines, oldest first.
    fn recent(&self, n: usize) -> Vec<Shared> {
        let skip = self.history.len().saturating_sub(n);
        self.history.iter().skip(skip).cloned().collect()
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        // Its writer's task ends with it.
        self.writer.close();
    }
}

/// A member's view of the room it is in: what [`Hub::connect`] and
/// [`Hub::join`] return.
pub struct Joined {
    /// The room's name.
    pub room: String,
    /// Live events of the room, from the moment of joining.
    pub cursor: Cursor,
    /// The room's recent history (replay it before anything from `cursor`).
    pub history: History,
    /// What the joiner is told of the room: its epoch and last `seq`.
    pub entered: Event,
}

/// Lines replayed from a room's history, oldest first.
pub struct History {
    room: String,
    lines: Vec<Shared>,
}

impl History {
    /// How many lines there are.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The room they are from.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The announcement that precedes a replay.
    pub fn header(&self) -> Event {
        Event::History {
            room: self.room.clone(),
            count: self.lines.len(),
        }
    }

    /// The lines as events, marked as history.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.lines.iter().map(replayed)
    }
}

/// What a new connection gets from [`Hub::connect`].
pub struct Connected {
    /// The member's identity, for later calls.
    pub id: MemberId,
    /// The welcome event for this member alone.
    pub welcome: Event,
    /// The default room.
    pub joined: Joined,
    /// Events addressed to this member alone, and its session's wake-ups.
    pub mailbox: Arc<Mailbox>,
    /// What the [`Hello`] asked for and could not have (an invalid or
    /// taken nickname, an invalid room), as errors for this member, to
    /// send after the welcome.
    pub notices: Vec<Event>,
}

/// What [`Hub::claim_hello`] found before a connection joins.
#[derive(Debug, Default)]
pub struct Greeting {
    /// The nickname asked for could not be had: the error to show.
    pub refused: Option<Event>,
    /// The nickname was taken back from another node with the client's
    /// reclaim token: the same person, moved here, so nothing is
    /// announced.
    pub reclaimed: bool,
}

/// The answer to [`Hub::resume`].
pub struct Resumed {
    /// The missed lines still in history.
    pub history: History,
    /// The summary to send after them.
    pub summary: Event,
}

impl Hub {
    /// A hub with the room [`DEFAULT_ROOM`] and nobody in it, keeping
    /// history in memory only.
    pub fn new(config: HubConfig) -> Self {
        Self::with_store(config, Arc::new(Memory::default()))
    }

    /// A hub whose rooms' lines are kept in `store`; the default room
    /// starts with what the store has of it.
    pub fn with_store(config: HubConfig, store: Arc<dyn Store>) -> Self {
        let metrics = Arc::new(Metrics::new());
        let mut state = State::default();
        let lobby = store.open(DEFAULT_ROOM, config.history_depth);
        let epoch = lobby.epoch;
        state.rooms.insert(
            DEFAULT_ROOM.to_string(),
            Room::new(config.channel_capacity, metrics.clone(), lobby),
        );
        Hub {
            inner: Arc::new(Inner {
                config,
                epoch: AtomicU64::new(epoch),
                relay: OnceLock::new(),
                closing: AtomicBool::new(false),
                metrics,
                store,
                state: Mutex::new(state),
            }),
        }
    }

    /// Writes what the store has queued and records a clean stop (after
    /// the sessions have ended).
    pub fn close_store(&self) {
        self.inner.store.close();
    }

    /// The epoch a resume in `room` is checked against: the room's own, or
    /// with a relay the shared store's.
    fn room_epoch(&self, room: &Room) -> u64 {
        if self.relay().is_some() {
            self.epoch()
        } else {
            room.epoch
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every method leaves the maps consistent before anything that could
        // panic, so a poisoned lock still guards sound state.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This server's counters.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The default room's epoch (see [`Event::Welcome`]).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Routes room lines through `relay` from now on (see [`Relay`]), with
    /// `epoch` the shared store's. Only the first call counts.
    pub fn set_relay(&self, relay: Arc<dyn Relay>, epoch: u64) {
        self.set_epoch(epoch);
        let _ = self.inner.relay.set(relay);
    }

    /// Changes the epoch (the shared store lost the default room's history).
    pub fn set_epoch(&self, epoch: u64) {
        self.inner.epoch.store(epoch, Ordering::Release);
    }

    /// Whether rooms are shared with other servers (a relay is set).
    pub fn is_shared(&self) -> bool {
        self.relay().is_some()
    }

    fn relay(&self) -> Option<&Arc<dyn Relay>> {
        self.inner.relay.get()
    }

    /// A line that came back from the shared store (see [`Relay`]): into
    /// the room's history and feed, in the store's `seq` order, exactly as
    /// a local publish would. Lines at or below the room's last `seq`, and
    /// lines of rooms this node does not have, are ignored.
    pub fn deliver(&self, event: Event) {
        let depth = self.inner.config.history_depth;
        let Some(line) = (match &event {
            Event::Message(line) | Event::Action(line) => Some(line),
            _ => None,
        }) else {
            return;
        };
        let (seq, room_name) = (line.seq, line.room.clone());
        let mut state = self.state();
        let Some(room) = state.rooms.get_mut(&room_name) else {
            return;
        };
        if seq <= room.last_seq {
            return;
        }
        room.last_seq = seq;
        let shared = room.send(event);
        room.keep(shared, depth);
    }

    /// The lines of `room` the shared store had when this node opened it,
    /// up to `last_seq`, oldest first: kept as its history (before any
    /// line delivered since).
    pub fn seed(&self, room_name: &str, last_seq: u64, lines: Vec<Event>) {
        let depth = self.inner.config.history_depth;
        let mut state = self.state();
        let Some(room) = state.rooms.get_mut(room_name) else {
            return;
        };
        let first = room
            .history
            .front()
            .and_then(chat_line)
            .map_or(u64::MAX, |l| l.seq);
        let older: Vec<Shared> = lines
            .into_iter()
            .map(|e| Arc::new(Encoded::new(e)))
            .filter(|s| chat_line(s).is_some_and(|l| l.seq < first && l.seq <= last_seq))
            .collect();
        for shared in older.into_iter().rev() {
            if room.history.len() >= depth {
                break;
            }
            room.history.push_front(shared);
        }
        room.last_seq = room.last_seq.max(last_seq);
    }

    /// The shared store lost `room`'s history (it came back empty): its
    /// lines start again at `seq` 1.
    pub fn restart_room(&self, room_name: &str) {
        let mut state = self.state();
        if let Some(room) = state.rooms.get_mut(room_name) {
            room.last_seq = 0;
            room.history.clear();
        }
    }

    /// Registers a new connection in the default room and announces it.
    /// The receiver is subscribed and the history snapshotted in the same
    /// critical section, so history and live lines neither overlap nor leave
    /// a gap.
    pub fn connect(&self, addr: SocketAddr) -> Connected {
        self.connect_as(addr, Encoding::Text)
    }

    /// [`Hub::connect`] for a session that speaks `encoding`.
    pub fn connect_as(&self, addr: SocketAddr, encoding: Encoding) -> Connected {
        self.connect_with(addr, encoding, &Hello::default())
    }

    /// [`Hub::connect_as`] with what the client asked for in its upgrade.
    ///
    /// A valid reclaim token takes its session's nickname and room back,
    /// held or still connected (that ghost is closed); nothing is
    /// announced, neither the ghost leaving nor this one joining. Without
    /// one, the nickname and room asked for are checked as `/nick` and
    /// `/join` check them and the member is announced once, under that
    /// nickname, in that room; what cannot be had falls back (no
    /// nickname, [`DEFAULT_ROOM`]) with an error in
    /// [`Connected::notices`]. An unknown or expired token is ignored.
    pub fn connect_with(&self, addr: SocketAddr, encoding: Encoding, hello: &Hello) -> Connected {
        self.connect_greeted(addr, encoding, hello, &Greeting::default())
    }

    /// [`Hub::connect_with`] after [`Hub::claim_hello`].
    pub fn connect_greeted(
        &self,
        addr: SocketAddr,
        encoding: Encoding,
        hello: &Hello,
        greeting: &Greeting,
    ) -> Connected {
        // Now and then a system call (the pool refilled): outside the lock.
        let secret = fresh_secret();
        let mut state = self.state();
        state.next_id += 1;
        let id = MemberId(state.next_id);
        let mailbox = Arc::new(Mailbox::default());
        if self.inner.closing.load(Ordering::Acquire) {
            mailbox.close();
        }
        let reclaimed = hello
            .reclaim
            .as_deref()
            .and_then(parse_token)
            .and_then(|(old, old_secret)| self.take_place(&mut state, old, old_secret));
        let mut notices = Vec::new();
        let (nick, room, announce) = match reclaimed {
            Some((nick, room, old_addr)) => {
                if let (Some(nick), Some(relay)) = (&nick, self.relay()) {
                    relay.presence(Change::Move {
                        nick: nick.clone(),
                        from: old_addr,
                        to: addr,
                        secret,
                    });
                }
                (nick, room, false)
            }
            None => {
                let nick = hello.nick.as_deref().and_then(|nick| {
                    match self.free_nick(&state, id, nick) {
                        Ok(()) => Some(nick.to_string()),
                        Err(e) => {
                            if let Some(relay) = self.relay() {
                                // Claimed for us before (see
                                // `claim_hello`): given back.
                                relay.presence(Change::Release {
                                    nick: nick.to_string(),
                                    addr,
                                });
                            }
                            notices.push(Event::Error {
                                message: e.to_string(),
                            });
                            None
                        }
                    }
                });
                let room = match hello.room.as_deref().map(normalize_room) {
                    None => DEFAULT_ROOM.to_string(),
                    Some(Ok(room)) => {
                        let max = self.inner.config.max_rooms;
                        if state.rooms.contains_key(&room) || state.rooms.len() < max {
                            room
                        } else {
                            notices.push(Event::Error {
                                message: HubError::TooManyRooms(max).to_string(),
                            });
                            DEFAULT_ROOM.to_string()
                        }
                    }
                    Some(Err(e)) => {
                        notices.push(Event::Error { message: e.0 });
                        DEFAULT_ROOM.to_string()
                    }
                };
                if let (Some(nick), Some(relay)) = (&nick, self.relay()) {
                    // Claimed before with no secret: now with ours, so
                    // a move to another node can take it along.
                    relay.presence(Change::Own {
                        nick: nick.clone(),
                        addr,
                        secret,
                    });
                }
                (nick, room, !greeting.reclaimed)
            }
        };
        if let Some(nick) = &nick {
            state.nicks.insert(nick.to_ascii_lowercase(), id);
        }
        state.members.insert(
            id,
            Member {
                addr,
                nick: nick.clone(),
                room: room.clone(),
                mailbox: mailbox.clone(),
                json: encoding == Encoding::Json,
                secret: secret.to_le_bytes(),
            },
        );
        let joined = self.enter(&mut state, id, &room, announce);
        let welcome = Event::Welcome {
            server: self.inner.config.name.clone(),
            addr,
            room,
            // With a relay, everyone on every node (as of the last
            // refresh, so never fewer than are here).
            online: self
                .relay()
                .map_or(0, |r| r.online())
                .max(state.members.len()),
            epoch: self.epoch(),
            rate: None, // the session fills in its own limit
            nick,
            reclaim: (secret != 0).then(|| reclaim_token(id, secret)),
        };
        Connected {
            id,
            welcome,
            joined,
            mailbox,
            notices,
        }
    }

    /// Whether `nick` is valid and free for `id`.
    fn free_nick(&self, state: &State, id: MemberId, nick: &str) -> Result<(), HubError> {
        validate_nick(nick).map_err(|e| HubError::InvalidNick(e.0))?;
        self.nick_free_here(state, id, nick)
    }

    /// The place of member `old` for a reconnect showing its `secret`:
    /// its nickname (freed for the taker) and room. A held place is
    /// simply ended; a live ghost leaves its room without a word and its
    /// session is told to close (its later disconnect finds nothing).
    fn take_place(
        &self,
        state: &mut State,
        old: MemberId,
        secret: u128,
    ) -> Option<(Option<String>, String, SocketAddr)> {
        let member = if state
            .held
            .get(&old)
            .is_some_and(|h| holds_secret(&h.member, secret))
        {
            state.held.remove(&old)?.member
        } else if state
            .members
            .get(&old)
            .is_some_and(|m| holds_secret(m, secret))
        {
            let member = state.members.remove(&old)?;
            // The taker enters this room in the same critical section, so
            // it is not forgotten in between.
            if let Some(room) = state.rooms.get_mut(&member.room) {
                room.remove(old, member.json);
            }
            if let Some(relay) = self.relay() {
                // Its entry goes; the taker's comes with its `enter`.
                relay.presence(Change::Leave {
                    room: member.room.clone(),
                    addr: member.addr,
                    announce: None,
                });
            }
            member.mailbox.close();
            member
        } else {
            return None;
        };
        if let Some(nick) = &member.nick {
            state.nicks.remove(&nick.to_ascii_lowercase());
        }
        Some((member.nick, member.room, member.addr))
    }

    /// Holds the place of member `id`, whose connection was lost without
    /// a Close, for the grace period: it leaves its room without a word
    /// and keeps its nickname. Returns the grace period, after which
    /// [`Hub::expire`] must be called; `None` if there is no grace (then
    /// this was [`Hub::disconnect`]).
    pub fn hold(&self, id: MemberId, reason: Option<&str>) -> Option<Duration> {
        let grace = self.inner.config.reconnect_grace;
        if grace.is_zero() || self.inner.closing.load(Ordering::Acquire) {
            self.disconnect(id, reason);
            return None;
        }
        let mut state = self.state();
        self.leave_room(&mut state, id, None, false);
        let member = state.members.remove(&id)?;
        state.held.insert(
            id,
            Held {
                member,
                reason: reason.map(String::from),
            },
        );
        Some(grace)
    }

    /// Ends the grace period of member `id` (see [`Hub::hold`]): if it has
    /// not been reclaimed, its nickname is freed and its room is told it
    /// left.
    pub fn expire(&self, id: MemberId) {
        let mut state = self.state();
        let Some(Held { member, reason }) = state.held.remove(&id) else {
            return;
        };
        if let Some(nick) = &member.nick {
            let key = nick.to_ascii_lowercase();
            if state.nicks.get(&key) == Some(&id) {
                state.nicks.remove(&key);
                if let Some(relay) = self.relay() {
                    relay.presence(Change::Release {
                        nick: nick.clone(),
                        addr: member.addr,
                    });
                }
            }
        }
        if self.inner.closing.load(Ordering::Acquire) {
            return;
        }
        let limit = self.inner.config.presence_limit;
        if let Some(room) = state.rooms.get(&member.room) {
            // Counted with the leaver still in, like the join was.
            if limit == 0 || room.members.len() < limit {
                let left = Event::Left {
                    room: member.room.clone(),
                    addr: member.addr,
                    nick: member.nick,
                    reason,
                };
                room.send(left.clone());
                if let Some(relay) = self.relay() {
                    relay.presence(Change::Announce {
                        room: member.room,
                        event: left,
                    });
                }
            }
        }
    }

    /// Puts member `id` into `room` (created if needed), subscribes it,
    /// snapshots the history, and announces the arrival if `announce`.
    fn enter(&self, state: &mut State, id: MemberId, room_name: &str, announce: bool) -> Joined {
        let capacity = self.inner.config.channel_capacity;
        let (addr, nick, mailbox, json) = match state.members.get_mut(&id) {
            Some(m) => {
                m.room = room_name.to_string();
                (m.addr, m.nick.clone(), m.mailbox.clone(), m.json)
            }
            None => (
                SocketAddr::from(([0, 0, 0, 0], 0)),
                None,
                Arc::new(Mailbox::default()),
                false,
            ),
        };
        if !state.rooms.contains_key(room_name) {
            if let Some(relay) = self.relay() {
                relay.opened(room_name);
            }
        }
        let depth = self.inner.config.history_depth;
        let room = state.rooms.entry(room_name.to_string()).or_insert_with(|| {
            // A read, under the lock, but only when a room is first entered
            // in this run.
            let opened = self.inner.store.open(room_name, depth);
            Room::new(capacity, self.inner.metrics.clone(), opened)
        });
        room.add(id, mailbox, json);
        let cursor = room.feed.subscribe();
        let history = History {
            room: room_name.to_string(),
            lines: room.recent(DEFAULT_HISTORY_REPLAY),
        };
        let entered = Event::Entered {
            room: room_name.to_string(),
            epoch: self.room_epoch(room),
            last_seq: room.last_seq,
        };
        let announced = (announce && self.announces_presence(room)).then(|| Event::Joined {
            room: room_name.to_string(),
            addr,
            nick: nick.clone(),
        });
        if let Some(joined) = &announced {
            room.send(joined.clone());
        }
        if let Some(relay) = self.relay() {
            relay.presence(Change::Enter {
                room: room_name.to_string(),
                info: MemberInfo { nick, addr },
                announce: announced,
            });
        }
        Joined {
            room: room_name.to_string(),
            cursor,
            history,
            entered,
        }
    }

    /// Whether joins and leaves in `room` are announced (see
    /// [`DEFAULT_PRESENCE_LIMIT`]).
    fn announces_presence(&self, room: &Room) -> bool {
        let limit = self.inner.config.presence_limit;
        limit == 0 || room.members.len() <= limit
    }

    /// Takes member `id` out of its room and announces the departure if
    /// `announce`.
    fn leave_room(&self, state: &mut State, id: MemberId, reason: Option<&str>, announce: bool) {
        let Some(member) = state.members.get(&id) else {
            return;
        };
        let (addr, nick, room_name) = (member.addr, member.nick.clone(), member.room.clone());
        let json = member.json;
        let Some(room) = state.rooms.get_mut(&room_name) else {
            return;
        };
        // Counted with the leaver still in, like the join was.
        let announced = (announce && self.announces_presence(room)).then(|| Event::Left {
            room: room_name.clone(),
            addr,
            nick,
            reason: reason.map(String::from),
        });
        if let Some(left) = &announced {
            room.send(left.clone());
        }
        if let Some(relay) = self.relay() {
            relay.presence(Change::Leave {
                room: room_name.clone(),
                addr,
                announce: announced,
            });
        }
        room.remove(id, json);
        if room.members.is_empty() {
            // Nobody listens (the feed lets its events go with the last
            // reader). A room that never had a line is forgotten; one with
            // lines keeps its history and sequence numbers for those who
            // come back.
            if room.last_seq == 0 && room_name != DEFAULT_ROOM {
                state.rooms.remove(&room_name);
                if let Some(relay) = self.relay() {
                    relay.closed(&room_name);
                }
            }
        }
    }

    /// Removes a connection, telling its room why it left. Safe to call
    /// more than once.
    pub fn disconnect(&self, id: MemberId, reason: Option<&str>) {
        let mut state = self.state();
        self.leave_room(&mut state, id, reason, true);
        if let Some(member) = state.members.remove(&id) {
            if let Some(nick) = member.nick {
                state.nicks.remove(&nick.to_ascii_lowercase());
                if let Some(relay) = self.relay() {
                    relay.presence(Change::Release {
                        nick,
                        addr: member.addr,
                    });
                }
            }
        }
    }

    /// Moves member `id` to another room.
    pub fn join(&self, id: MemberId, room: &str) -> Result<Joined, HubError> {
        let mut state = self.state();
        let current = state.members.get(&id).map(|m| m.room.clone());
        if current.as_deref() == Some(room) {
            return Err(HubError::AlreadyInRoom(room.to_string()));
        }
        let max = self.inner.config.max_rooms;
        if !state.rooms.contains_key(room) && state.rooms.len() >= max {
            return Err(HubError::TooManyRooms(max));
        }
        self.leave_room(&mut state, id, Some(&format!("joined {room}")), true);
        Ok(self.enter(&mut state, id, room, true))
    }

    /// Sets or changes member `id`'s nickname, unique ignoring ASCII case.
    /// With a relay, unique across every node: the relay claims it and
    /// then applies it ([`Hub::apply_nick`]), or tells the member it is
    /// taken.
    pub fn set_nick(&self, id: MemberId, nick: &str) -> Result<(), HubError> {
        validate_nick(nick).map_err(|e| HubError::InvalidNick(e.0))?;
        let mut state = self.state();
        self.nick_free_here(&state, id, nick)?;
        if let Some(relay) = self.relay() {
            let Some(member) = state.members.get(&id) else {
                return Ok(());
            };
            let secret = u128::from_le_bytes(member.secret);
            relay.claim_nick(
                id,
                member.addr,
                nick.to_string(),
                secret,
                member.mailbox.clone(),
            );
            return Ok(());
        }
        self.rename(&mut state, id, nick);
        Ok(())
    }

    /// Gives member `id`, still at `addr`, the nickname `nick` the relay
    /// claimed for it across nodes. An error if it cannot have it any more
    /// (it left, or a member of this node took it meanwhile): the caller
    /// gives the claim back.
    pub fn apply_nick(&self, id: MemberId, addr: SocketAddr, nick: &str) -> Result<(), HubError> {
        let mut state = self.state();
        if state.members.get(&id).is_none_or(|m| m.addr != addr) {
            return Err(HubError::NoSuchUser(addr.to_string()));
        }
        self.nick_free_here(&state, id, nick)?;
        self.rename(&mut state, id, nick);
        Ok(())
    }

    /// Whether `nick` is free on this node for `id`.
    fn nick_free_here(&self, state: &State, id: MemberId, nick: &str) -> Result<(), HubError> {
        match state.nicks.get(&nick.to_ascii_lowercase()) {
            Some(owner) if *owner != id => Err(HubError::NickTaken(nick.to_string())),
            _ => Ok(()),
        }
    }

    /// Renames member `id` and tells its room.
    fn rename(&self, state: &mut State, id: MemberId, nick: &str) {
        let key = nick.to_ascii_lowercase();
        let Some(member) = state.members.get_mut(&id) else {
            return;
        };
        let old = member.nick.replace(nick.to_string());
        let (addr, room) = (member.addr, member.room.clone());
        if let Some(old) = &old {
            state.nicks.remove(&old.to_ascii_lowercase());
        }
        state.nicks.insert(key.clone(), id);
        let event = Event::Nick {
            addr,
            old: old.clone(),
            new: nick.to_string(),
        };
        if let Some(r) = state.rooms.get(&room) {
            r.send(event.clone());
        }
        if let Some(relay) = self.relay() {
            relay.presence(Change::Rename {
                room,
                info: MemberInfo {
                    nick: Some(nick.to_string()),
                    addr,
                },
                event,
            });
            // A change of case only keeps the same claim.
            if let Some(old) = old.filter(|o| o.to_ascii_lowercase() != key) {
                relay.presence(Change::Release { nick: old, addr });
            }
        }
    }

    /// Publishes a chat message from `id` to its room, the sender included.
    pub fn say(&self, id: MemberId, text: &str) -> Result<(), HubError> {
        self.publish(id, text, false)
    }

    /// Publishes an action (`/me`) from `id` to its room.
    pub fn act(&self, id: MemberId, text: &str) -> Result<(), HubError> {
        self.publish(id, text, true)
    }

    fn publish(&self, id: MemberId, text: &str, action: bool) -> Result<(), HubError> {
        validate_text(text)?;
        let depth = self.inner.config.history_depth;
        let mut state = self.state();
        let State { members, rooms, .. } = &mut *state;
        let Some(member) = members.get(&id) else {
            return Ok(());
        };
        let Some(room) = rooms.get_mut(&member.room) else {
            return Ok(());
        };
        if let Some(relay) = self.relay() {
            // Numbered by the shared store; delivered when it comes back.
            let line = ChatLine {
                room: member.room.clone(),
                seq: 0,
                ts: now_millis(),
                from: member.addr,
                nick: member.nick.clone(),
                text: text.to_string(),
                history: false,
            };
            let event = if action {
                Event::Action(line)
            } else {
                Event::Message(line)
            };
            return if relay.publish(event, member.mailbox.clone()) {
                self.inner.metrics.received();
                Ok(())
            } else {
                Err(HubError::Unavailable)
            };
        }
        room.last_seq += 1;
        self.inner.metrics.received();
        let line = ChatLine {
            room: member.room.clone(),
            seq: room.last_seq,
            ts: now_millis(),
            from: member.addr,
            nick: member.nick.clone(),
            text: text.to_string(),
            history: false,
        };
        let shared = room.send(if action {
            Event::Action(line)
        } else {
            Event::Message(line)
        });
        // After delivery has begun: the store only queues it.
        if let Some(line) = chat_line(&shared) {
            self.inner.store.keep(room.epoch, line, action);
        }
        room.keep(shared, depth);
        Ok(())
    }

    /// Sends a private message from `id` to the member with nickname (or
    /// address) `to`. Returns the event, for the sender's own copy.
    ///
    /// With a relay, a nickname no member here has is looked for on the
    /// other nodes: then `Ok(None)`, and the echo (or the error) reaches
    /// the sender's mailbox later.
    pub fn private(&self, id: MemberId, to: &str, text: &str) -> Result<Option<Event>, HubError> {
        validate_text(text)?;
        let state = self.state();
        let Some(sender) = state.members.get(&id) else {
            return Err(HubError::NoSuchUser(to.to_string()));
        };
        let found = state
            .nicks
            .get(&to.to_ascii_lowercase())
            .and_then(|rid| state.members.get(rid))
            .or_else(|| {
                let addr: SocketAddr = to.parse().ok()?;
                state.members.values().find(|m| m.addr == addr)
            });
        let recipient = match (found, self.relay()) {
            (Some(recipient), _) => recipient,
            (None, Some(relay)) if validate_nick(to).is_ok() => {
                let event = Event::Private {
                    ts: now_millis(),
                    from: sender.addr,
                    nick: sender.nick.clone(),
                    // Filled in by the relay, which finds them.
                    to: SocketAddr::from(([0, 0, 0, 0], 0)),
                    to_nick: Some(to.to_string()),
                    text: text.to_string(),
                };
                relay.private(event, to.to_string(), sender.mailbox.clone());
                return Ok(None);
            }
            (None, _) => return Err(HubError::NoSuchUser(to.to_string())),
        };
        let event = Event::Private {
            ts: now_millis(),
            from: sender.addr,
            nick: sender.nick.clone(),
            to: recipient.addr,
            to_nick: recipient.nick.clone(),
            text: text.to_string(),
        };
        // The sender's own copy comes back as the return value; sending to
        // oneself must not deliver twice.
        if recipient.addr != sender.addr
            && !recipient
                .mailbox
                .push(Arc::new(Encoded::new(event.clone())))
        {
            return Err(HubError::RecipientBusy(to.to_string()));
        }
        Ok(Some(event))
    }

    /// A private message from another node (see [`Relay::private`]) for
    /// the member at its `to` address: false if there is none here (it
    /// left), or its mailbox is full.
    pub fn deliver_private(&self, event: Event) -> bool {
        let Event::Private { to, to_nick, .. } = &event else {
            return false;
        };
        let state = self.state();
        // By nickname (a map look-up), checked against the address.
        let by_nick = to_nick
            .as_deref()
            .and_then(|n| state.nicks.get(&n.to_ascii_lowercase()))
            .and_then(|id| state.members.get(id))
            .filter(|m| m.addr == *to);
        let Some(member) = by_nick.or_else(|| state.members.values().find(|m| m.addr == *to))
        else {
            return false;
        };
        member.mailbox.push(Arc::new(Encoded::new(event)))
    }

    /// A presence announcement from another node (a join, leave or
    /// nickname change in `room`): told to this node's members there.
    pub fn deliver_presence(&self, room: &str, event: Event) {
        let state = self.state();
        if let Some(room) = state.rooms.get(room) {
            room.send(event);
        }
    }

    /// This node's members by room, and its nicknames with their owners'
    /// addresses (held places included): what the relay keeps fresh in the
    /// shared store.
    pub fn presence_snapshot(&self) -> Snapshot {
        let state = self.state();
        let mut rooms: HashMap<String, Vec<MemberInfo>> = HashMap::new();
        for (name, room) in &state.rooms {
            let members: Vec<MemberInfo> = room
                .members
                .keys()
                .filter_map(|id| state.members.get(id))
                .map(|m| MemberInfo {
                    nick: m.nick.clone(),
                    addr: m.addr,
                })
                .collect();
            if !members.is_empty() {
                rooms.insert(name.clone(), members);
            }
        }
        let nicks = state
            .nicks
            .iter()
            .filter_map(|(nick, id)| {
                let member = state
                    .members
                    .get(id)
                    .or_else(|| state.held.get(id).map(|h| &h.member))?;
                Some((
                    nick.clone(),
                    member.addr,
                    u128::from_le_bytes(member.secret),
                ))
            })
            .collect();
        Snapshot { rooms, nicks }
    }

    /// Whether `token` would take a place back on this node (see
    /// [`Hub::connect_with`]).
    pub fn reclaims_here(&self, token: &str) -> bool {
        let Some((id, secret)) = parse_token(token) else {
            return false;
        };
        let state = self.state();
        state
            .held
            .get(&id)
            .map(|h| &h.member)
            .or_else(|| state.members.get(&id))
            .is_some_and(|m| holds_secret(m, secret))
    }

    /// Claims the nickname of an upgrade's `hello` across nodes (with a
    /// relay; a no-op without): if someone has it, it is taken out of
    /// `hello` and the greeting holds the error to show. A reclaim that
    /// will take its place back here needs no claim; a reclaim token of
    /// another node's member takes its nickname from there.
    pub async fn claim_hello(&self, addr: SocketAddr, hello: &mut Hello) -> Greeting {
        let (Some(relay), Some(nick)) = (self.relay().cloned(), hello.nick.clone()) else {
            return Greeting::default();
        };
        if validate_nick(&nick).is_err()
            || hello
                .reclaim
                .as_deref()
                .is_some_and(|t| self.reclaims_here(t))
        {
            // An invalid one is refused by `connect_with`, with its reason.
            return Greeting::default();
        }
        let shown = hello
            .reclaim
            .as_deref()
            .and_then(parse_token)
            .map(|(_, secret)| proof(secret));
        let refusal = match relay.claim_hello(addr, nick.clone(), shown).await {
            Ok(Claim::Had) => return Greeting::default(),
            Ok(Claim::Reclaimed) => {
                return Greeting {
                    refused: None,
                    reclaimed: true,
                }
            }
            Ok(Claim::Taken) => HubError::NickTaken(nick).to_string(),
            Err(e) => e,
        };
        hello.nick = None;
        Greeting {
            refused: Some(Event::Error { message: refusal }),
            reclaimed: false,
        }
    }

    /// Another node's member has `nick` now (its client moved there with
    /// its reclaim token): a place held here under it is let go without a
    /// word. Returns whether there was one.
    pub fn let_go(&self, nick: &str) -> bool {
        let mut state = self.state();
        let key = nick.to_ascii_lowercase();
        let Some(id) = state.nicks.get(&key).copied() else {
            return false;
        };
        if state.held.remove(&id).is_none() {
            return false;
        }
        state.nicks.remove(&key);
        true
    }

    /// The members of `id`'s room. With a relay, `None`: the answer, with
    /// the other nodes' members, reaches the member's mailbox.
    pub fn who(&self, id: MemberId) -> Option<Event> {
        let event = self.who_here(id);
        match (self.relay(), event) {
            (Some(relay), Event::Who { room, members }) => {
                let mailbox = self.state().members.get(&id)?.mailbox.clone();
                relay.who(room, members, mailbox);
                None
            }
            (_, event) => Some(event),
        }
    }

    /// The members of `id`'s room on this node.
    fn who_here(&self, id: MemberId) -> Event {
        let state = self.state();
        let room = state.room_of(id);
        let members = state
            .rooms
            .get(&room)
            .map(|r| {
                r.members
                    .keys()
                    .filter_map(|mid| state.members.get(mid))
                    .map(|m| MemberInfo {
                        nick: m.nick.clone(),
                        addr: m.addr,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Event::Who { room, members }
    }

    /// Every room with its member count, by name. With a relay, `None`:
    /// the answer, counting every node, reaches `id`'s mailbox.
    pub fn rooms(&self, id: MemberId) -> Option<Event> {
        let event = self.rooms_here();
        match (self.relay(), event) {
            (Some(relay), Event::Rooms { rooms }) => {
                let mailbox = self.state().members.get(&id)?.mailbox.clone();
                relay.rooms(rooms, mailbox);
                None
            }
            (_, event) => Some(event),
        }
    }

    /// Every room of this node with its member count, by name.
    fn rooms_here(&self) -> Event {
        let state = self.state();
        let mut rooms: Vec<RoomInfo> = state
            .rooms
            .iter()
            .map(|(name, r)| RoomInfo {
                name: name.clone(),
                members: r.members.len(),
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Event::Rooms { rooms }
    }

    /// The last `n` lines of `id`'s room (at most the kept depth).
    pub fn history(&self, id: MemberId, n: usize) -> History {
        let state = self.state();
        let room = state.room_of(id);
        let lines = state
            .rooms
            .get(&room)
            .map(|r| r.recent(n))
            .unwrap_or_default();
        History { room, lines }
    }

    /// Up to `n` lines of `id`'s room before line `before`, oldest first:
    /// from memory while the ring reaches back that far, else from the
    /// store.
    pub fn history_before(&self, id: MemberId, n: usize, before: u64) -> History {
        let state = self.state();
        let room_name = state.room_of(id);
        let Some(room) = state.rooms.get(&room_name) else {
            return History {
                room: room_name,
                lines: Vec::new(),
            };
        };
        let oldest = room.history.front().and_then(chat_line).map(|l| l.seq);
        let in_ring: Vec<Shared> = room
            .history
            .iter()
            .filter(|k| chat_line(k).is_some_and(|l| l.seq < before))
            .cloned()
            .collect();
        let reaches = oldest.is_some_and(|o| o <= 1) || in_ring.len() >= n;
        let lines = if reaches || !self.inner.store.durable() {
            let skip = in_ring.len().saturating_sub(n);
            in_ring.into_iter().skip(skip).collect()
        } else {
            // Past memory: the lines asked for may still be queued for the
            // disk if they were sent a moment ago.
            drop(state);
            self.inner.store.settle(READ_SETTLE);
            self.inner
                .store
                .before(&room_name, before, n)
                .into_iter()
                .map(|e| Arc::new(Encoded::new(e)))
                .collect()
        };
        History {
            room: room_name,
            lines,
        }
    }

    /// What `id` missed in its room after line `seq` of the room's `epoch`:
    /// from memory, and from the store for what the ring no longer holds.
    pub fn resume(&self, id: MemberId, epoch: u64, seq: u64) -> Resumed {
        let state = self.state();
        let room_name = state.room_of(id);
        let room = state.rooms.get(&room_name);
        let restarted = room.is_none_or(|r| epoch != self.room_epoch(r));
        let last_seq = room.map_or(0, |r| r.last_seq);
        let (mut lines, skipped, below) = match room {
            Some(r) if !restarted => {
                let lines: Vec<Shared> = r
                    .history
                    .iter()
                    .filter(|k| chat_line(k).is_some_and(|line| line.seq > seq))
                    .cloned()
                    .collect();
                // Where the ring's coverage begins: missed lines below it
                // may still be on disk.
                let below = lines
                    .first()
                    .and_then(|k| chat_line(k))
                    .map_or(last_seq + 1, |l| l.seq);
                (lines, r.skipped.clone(), below)
            }
            _ => (Vec::new(), Vec::new(), 0),
        };
        drop(state);
        let skipped_missed: u64 = skipped
            .iter()
            .map(|&(first, last)| {
                let (from, to) = (first.max(seq + 1), last.min(last_seq));
                if to >= from {
                    to - from + 1
                } else {
                    0
                }
            })
            .sum();
        // Reading the file happens outside the hub's lock: these lines are
        // all older than the ring's, so nothing published meanwhile can
        // come between them.
        let wanted = below.saturating_sub(seq + 1).saturating_sub(skipped_missed);
        if wanted > 0 && self.inner.store.durable() {
            // The writer may not have committed the newest of them yet (a
            // burst a moment ago): bounded, and only for a resume that
            // reaches past memory.
            self.inner.store.settle(READ_SETTLE);
            let n = (wanted as usize).min(MAX_REPLAY_FROM_STORE);
            let older: Vec<Shared> = self
                .inner
                .store
                .before(&room_name, below, n)
                .into_iter()
                .filter(|e| matches!(e, Event::Message(l) | Event::Action(l) if l.seq > seq))
                .map(|e| Arc::new(Encoded::new(e)))
                .collect();
            lines.splice(0..0, older);
        }
        let missed = last_seq.saturating_sub(seq).saturating_sub(skipped_missed);
        let lost = if restarted {
            0
        } else {
            missed.saturating_sub(lines.len() as u64)
        };
        let summary = Event::Resumed {
            room: room_name.clone(),
            after: seq,
            replayed: lines.len(),
            lost,
            restarted,
            interrupted: !restarted && skipped_missed > 0,
        };
        Resumed {
            history: History {
                room: room_name,
                lines,
            },
            summary,
        }
    }

    /// With a relay, before [`Hub::shutdown`]: frees this node's nicknames
    /// on the other nodes (see [`Relay::stopping`]), within two seconds.
    pub async fn release_shared(&self) {
        if let Some(relay) = self.relay().cloned() {
            let have = self.presence_snapshot();
            let _ = tokio::time::timeout(Duration::from_secs(2), relay.stopping(have)).await;
        }
    }

    /// Tells every session, and every one that joins from now on, that the
    /// server is shutting down.
    pub fn shutdown(&self) {
        let state = self.state();
        // Set under the lock, so no `connect` can slip between the flag
        // and the loop below.
        self.inner.closing.store(true, Ordering::Release);
        for member in state.members.values() {
            member.mailbox.close();
        }
    }

    /// Whether [`Hub::shutdown`] has begun (a session whose mailbox closes
    /// before it was replaced by a reclaim).
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// How many connections are registered (held places not counted).
    pub fn online(&self) -> usize {
        self.state().members.len()
    }

    /// How many rooms exist now (for the `chat_rooms` gauge).
    pub fn room_count(&self) -> usize {
        self.state().rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::feed::Next;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn text(shared: &Shared) -> String {
        String::from_utf8(shared.payload(crate::protocol::Encoding::Text).to_vec()).unwrap()
    }

    #[test]
    fn reclaim_secrets_from_the_pool_are_distinct_across_refills() {
        // Three refills' worth: no secret repeats, none is the failure's 0,
        // and what was handed out is no longer in the pool.
        let count = 3 * RANDOM_POOL_BYTES / 16 + 5;
        let secrets: std::collections::HashSet<u128> = (0..count).map(|_| fresh_secret()).collect();
        assert_eq!(secrets.len(), count);
        assert!(!secrets.contains(&0));
        RANDOM_POOL.with(|pool| {
            let pool = pool.borrow();
            assert!(pool.bytes[..pool.next].iter().all(|&b| b == 0));
        });
    }

    /// Drains a cursor into text lines.
    fn drain(cursor: &mut Cursor) -> Vec<String> {
        let mut lines = vec![];
        cursor.read(usize::MAX, |step| match step {
            Next::Event(s) => lines.push(text(&s)),
            Next::Skipped(n) => panic!("{n} skipped"),
        });
        lines
    }

    #[test]
    fn messages_reach_every_member_in_sequence() {
        let hub = Hub::new(HubConfig::default());
        let mut a = hub.connect(addr(1));
        let mut b = hub.connect(addr(2));
        assert_eq!(hub.online(), 2);
        hub.say(a.id, "one").unwrap();
        hub.say(b.id, "two").unwrap();
        assert_eq!(
            drain(&mut a.joined.cursor),
            [
                "* 127.0.0.1:1 joined #lobby",
                "* 127.0.0.1:2 joined #lobby",
                "127.0.0.1:1: one",
                "127.0.0.1:2: two"
            ]
        );
        assert_eq!(
            drain(&mut b.joined.cursor)[1..],
            ["127.0.0.1:1: one", "127.0.0.1:2: two"]
        );
        hub.disconnect(a.id, None);
        hub.disconnect(a.id, None);
        assert_eq!(hub.online(), 1);
        assert_eq!(drain(&mut b.joined.cursor), ["* 127.0.0.1:1 left #lobby"]);
    }

    #[test]
    fn control_characters_are_not_published() {
        let hub = Hub::new(HubConfig::default());
        let mut a = hub.connect(addr(1));
        drain(&mut a.joined.cursor);
        assert!(hub.say(a.id, "evil\u{1b}[2J").is_err());
        assert!(!a.joined.cursor.has_news());
    }

    #[test]
    fn history_and_live_lines_meet_without_gap_or_overlap() {
        let hub = Hub::new(HubConfig {
            history_depth: 5,
            ..HubConfig::default()
        });
        let a = hub.connect(addr(1));
        for i in 1..=8 {
            hub.say(a.id, &format!("m{i}")).unwrap();
        }
        let mut b = hub.connect(addr(2));
        let replay: Vec<_> = b.joined.history.events().map(|e| e.to_text()).collect();
        assert_eq!(replay.len(), 5);
        assert_eq!(replay[0], "127.0.0.1:1: m4");
        hub.say(a.id, "m9").unwrap();
        assert_eq!(
            drain(&mut b.joined.cursor),
            ["* 127.0.0.1:2 joined #lobby", "127.0.0.1:1: m9"]
        );
        // Resuming after m5 replays m6..m9; asking for older loses some.
        let r = hub.resume(b.id, hub.epoch(), 5);
        assert_eq!(r.history.len(), 4);
        let r = hub.resume(b.id, hub.epoch(), 1);
        assert_eq!(
            r.summary,
            Event::Resumed {
                room: "#lobby".into(),
                after: 1,
                replayed: 5,
                lost: 3,
                restarted: false,
                interrupted: false,
            }
        );
        let r = hub.resume(b.id, hub.epoch() ^ 1, 5);
        assert!(r.history.is_empty());
        assert!(matches!(
            r.summary,
            Event::Resumed {
                restarted: true,
                ..
            }
        ));
    }

    #[test]
    fn nicknames_are_unique_ignoring_case() {
        let hub = Hub::new(HubConfig::default());
        let a = hub.connect(addr(1));
        let b = hub.connect(addr(2));
        hub.set_nick(a.id, "Alice").unwrap();
        assert_eq!(
            hub.set_nick(b.id, "alice"),
            Err(HubError::NickTaken("alice".into()))
        );
        hub.set_nick(a.id, "alice").unwrap();
        hub.set_nick(a.id, "ally").unwrap();
        hub.set_nick(b.id, "Alice").unwrap();
        hub.disconnect(b.id, None);
        hub.set_nick(a.id, "alice").unwrap();
    }

    #[test]
    fn rooms_are_created_on_join_and_empty_silent_ones_forgotten() {
        let hub = Hub::new(HubConfig {
            max_rooms: 2,
            ..HubConfig::default()
        });
        let a = hub.connect(addr(1));
        let mut joined = hub.join(a.id, "#rust").unwrap();
        assert_eq!(drain(&mut joined.cursor), ["* 127.0.0.1:1 joined #rust"]);
        assert!(matches!(
            hub.join(a.id, "#go"),
            Err(HubError::TooManyRooms(2))
        ));
        assert!(matches!(
            hub.join(a.id, "#rust"),
            Err(HubError::AlreadyInRoom(_))
        ));
        hub.join(a.id, "#lobby").unwrap();
        // #rust was empty and silent, so it is gone and #go fits.
        hub.join(a.id, "#go").unwrap();
        hub.say(a.id, "kept").unwrap();
        hub.join(a.id, "#lobby").unwrap();
        let Event::Rooms { rooms } = hub.rooms(a.id).unwrap() else {
            panic!()
        };
        let names: Vec<_> = rooms.iter().map(|r| (r.name.as_str(), r.members)).collect();
        assert_eq!(names, [("#go", 0), ("#lobby", 1)]);
    }

    #[test]
    fn big_rooms_do_not_announce_joins_and_leaves() {
        let hub = Hub::new(HubConfig {
            presence_limit: 2,
            ..HubConfig::default()
        });
        let mut a = hub.connect(addr(1));
        let b = hub.connect(addr(2));
        let c = hub.connect(addr(3));
        hub.disconnect(c.id, None);
        hub.disconnect(b.id, None);
        assert_eq!(
            drain(&mut a.joined.cursor),
            [
                "* 127.0.0.1:1 joined #lobby",
                "* 127.0.0.1:2 joined #lobby",
                "* 127.0.0.1:2 left #lobby"
            ]
        );
    }

    #[test]
    fn private_messages_reach_only_the_recipient() {
        let hub = Hub::new(HubConfig::default());
        let a = hub.connect(addr(1));
        let b = hub.connect(addr(2));
        let c = hub.connect(addr(3));
        hub.set_nick(b.id, "bob").unwrap();
        let echo = hub.private(a.id, "BOB", "psst").unwrap().unwrap();
        assert_eq!(
            echo.to_text(),
            "(private) 127.0.0.1:1 -> bob (127.0.0.1:2): psst"
        );
        assert_eq!(text(&b.mailbox.pop().unwrap()), echo.to_text());
        assert!(c.mailbox.pop().is_none());
        // By address works too; unknown names are refused.
        hub.private(a.id, "127.0.0.1:3", "hi").unwrap();
        assert!(c.mailbox.pop().is_some());
        assert_eq!(
            hub.private(a.id, "nobody", "x").unwrap_err(),
            HubError::NoSuchUser("nobody".into())
        );
    }

    fn hello(nick: Option<&str>, room: Option<&str>, reclaim: Option<&str>) -> Hello {
        Hello {
            nick: nick.map(String::from),
            room: room.map(String::from),
            reclaim: reclaim.map(String::from),
        }
    }

    fn token(c: &Connected) -> String {
        match &c.welcome {
            Event::Welcome {
                reclaim: Some(token),
                ..
            } => token.clone(),
            _ => panic!("no reclaim token"),
        }
    }

    #[test]
    fn a_hello_is_announced_once_under_its_nick_in_its_room() {
        let hub = Hub::new(HubConfig::default());
        let mut lobby = hub.connect(addr(1));
        drain(&mut lobby.joined.cursor);
        let mut a = hub.connect_with(
            addr(2),
            Encoding::Json,
            &hello(Some("alice"), Some("Rust"), None),
        );
        assert!(a.notices.is_empty());
        assert!(
            matches!(&a.welcome, Event::Welcome { nick: Some(n), room, .. }
            if n == "alice" && room == "#rust")
        );
        assert_eq!(token(&a).len(), 48);
        assert_eq!(
            drain(&mut a.joined.cursor),
            ["* alice (127.0.0.1:2) joined #rust"]
        );
        assert!(!lobby.joined.cursor.has_news());
        // Taken and invalid names, invalid rooms: fall back, with errors.
        let b = hub.connect_with(
            addr(3),
            Encoding::Text,
            &hello(Some("ALICE"), Some("#no way"), None),
        );
        assert!(matches!(&b.welcome, Event::Welcome { nick: None, room, .. } if room == "#lobby"));
        let errors: Vec<_> = b.notices.iter().map(Event::to_text).collect();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("! the nickname ALICE is taken"));
        assert!(errors[1].starts_with("! invalid room name"));
        assert_eq!(
            drain(&mut lobby.joined.cursor),
            ["* 127.0.0.1:3 joined #lobby"]
        );
    }

    #[test]
    fn a_held_place_is_taken_back_silently_or_announced_when_it_expires() {
        let hub = Hub::new(HubConfig::default());
        let mut bob = hub.connect(addr(1));
        let a = hub.connect_with(addr(2), Encoding::Json, &hello(Some("alice"), None, None));
        drain(&mut bob.joined.cursor);
        assert!(hub.hold(a.id, Some("connection lost")).is_some());
        assert_eq!(hub.online(), 1);
        // Reserved: nobody else gets the nickname meanwhile.
        assert_eq!(
            hub.set_nick(bob.id, "alice"),
            Err(HubError::NickTaken("alice".into()))
        );
        // A wrong secret is ignored: a new member, announced as usual.
        let mut forged = token(&a);
        forged.replace_range(47.., if forged.ends_with('0') { "1" } else { "0" });
        let x = hub.connect_with(addr(3), Encoding::Json, &hello(None, None, Some(&forged)));
        assert!(matches!(&x.welcome, Event::Welcome { nick: None, .. }));
        assert_eq!(
            drain(&mut bob.joined.cursor),
            ["* 127.0.0.1:3 joined #lobby"]
        );
        hub.disconnect(x.id, None);
        drain(&mut bob.joined.cursor);
        let back = hub.connect_with(
            addr(4),
            Encoding::Json,
            &hello(None, None, Some(&token(&a))),
        );
        assert!(matches!(&back.welcome, Event::Welcome { nick: Some(n), .. } if n == "alice"));
        assert!(!bob.joined.cursor.has_news());
        // The old place's expiry finds nothing to do.
        hub.expire(a.id);
        assert!(!bob.joined.cursor.has_news());
        // Not reclaimed: the leave comes when the grace ends.
        hub.hold(back.id, Some("connection lost"));
        hub.expire(back.id);
        assert_eq!(
            drain(&mut bob.joined.cursor),
            ["* alice left #lobby (connection lost)"]
        );
        hub.set_nick(bob.id, "alice").unwrap();
    }

    #[test]
    fn a_reclaim_closes_a_live_ghost_without_a_word() {
        let hub = Hub::new(HubConfig::default());
        let mut bob = hub.connect(addr(1));
        let ghost = hub.connect_with(
            addr(2),
            Encoding::Json,
            &hello(Some("alice"), Some("#lobby"), None),
        );
        drain(&mut bob.joined.cursor);
        let new = hub.connect_with(
            addr(3),
            Encoding::Json,
            &hello(Some("alice"), None, Some(&token(&ghost))),
        );
        assert!(new.notices.is_empty());
        assert!(matches!(&new.welcome, Event::Welcome { nick: Some(n), .. } if n == "alice"));
        assert!(ghost.mailbox.is_closing());
        assert!(!hub.is_closing());
        // The ghost's session ending later announces nothing either.
        hub.disconnect(ghost.id, Some("connection lost"));
        assert!(!bob.joined.cursor.has_news());
        assert_eq!(hub.online(), 2);
        // A token works once.
        let again = hub.connect_with(
            addr(4),
            Encoding::Json,
            &hello(None, None, Some(&token(&ghost))),
        );
        assert!(matches!(&again.welcome, Event::Welcome { nick: None, .. }));
    }
}
