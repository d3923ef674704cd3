//! Where rooms' lines are kept beyond the hub's memory.
//!
//! - [`Store`]: what the hub asks of a room log: open a room (its epoch,
//!   its last `seq`, its recent lines), keep a numbered line, read lines
//!   before a `seq`, flush. The hub numbers lines itself and hands them to
//!   the store after delivery has begun, so a store never sits on the
//!   fan-out path.
//! - [`Memory`]: keeps nothing beyond the hub's own ring (`--db :memory:`).
//! - [`sqlite`]: the default, an SQLite file written by a thread of its own
//!   in group commits.
//! - [`redis`], [`redis_presence`] and [`redis_node`]: several servers
//!   sharing rooms, presence and nicknames (`--redis`).
//!   There Redis numbers the lines (the hub's `Relay`), so the hub runs
//!   with [`Memory`] and reads history from the stream Redis keeps.

pub mod redis;
pub mod redis_node;
pub mod redis_presence;
pub mod sqlite;

use crate::protocol::{ChatLine, Event};

/// What a store has of a room when the hub opens it.
#[derive(Debug, Default)]
pub struct Opened {
    /// The room's epoch: changes only when its history was lost.
    pub epoch: u64,
    /// The last `seq` handed out in the room (0: none); the next line gets
    /// the next one.
    pub last_seq: u64,
    /// The most recent lines kept, oldest first (messages and actions).
    pub lines: Vec<Event>,
    /// Stretches of numbers skipped after unclean stops, first and last
    /// inclusive (see [`sqlite::CRASH_SKIP`]): no kept line has them, and
    /// only the first few may have been seen by clients before the stop.
    pub skipped: Vec<(u64, u64)>,
}

/// A room log the hub can keep lines in. Every method is called under the
/// hub's lock: `keep` must return at once (queue the work); `open` and
/// `before` read, and run only when a room is opened or a client pages
/// back.
pub trait Store: Send + Sync + 'static {
    /// What is kept of `room`, with at most `recent` lines. A room never
    /// seen before gets an epoch that changes only when its history is lost.
    fn open(&self, room: &str, recent: usize) -> Opened;
    /// Keeps a line the hub has numbered and published in a room of epoch
    /// `epoch` (`action`: a `/me`). Never waits; a line the store cannot
    /// take is counted and logged by the store.
    fn keep(&self, epoch: u64, line: &ChatLine, action: bool);
    /// Up to `n` lines of `room` with a `seq` below `before`, oldest first.
    fn before(&self, room: &str, before: u64, n: usize) -> Vec<Event>;
    /// Waits (bounded) until everything handed to `keep` is kept.
    fn flush(&self);
    /// Waits at most `within` for what is queued to be written, and never
    /// while the queue is full: for a read that wants lines sent a moment
    /// ago, on a thread the chat runs on. Whatever is not written by then
    /// is simply not read.
    fn settle(&self, _within: std::time::Duration) {}
    /// Writes what is queued and records a clean stop; for shutdown.
    /// Lines kept after this are not written.
    fn close(&self);
    /// Whether lines live beyond the hub's memory.
    fn durable(&self) -> bool;
}

/// The store that keeps nothing: history lives in the hub's ring only, and
/// every start is a new epoch (one for all rooms of this run).
#[derive(Debug)]
pub struct Memory {
    epoch: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory { epoch: new_epoch() }
    }
}

impl Store for Memory {
    fn open(&self, _room: &str, _recent: usize) -> Opened {
        Opened {
            epoch: self.epoch,
            ..Opened::default()
        }
    }
    fn keep(&self, _epoch: u64, _line: &ChatLine, _action: bool) {}
    fn before(&self, _room: &str, _before: u64, _n: usize) -> Vec<Event> {
        Vec::new()
    }
    fn flush(&self) {}
    fn close(&self) {}
    fn durable(&self) -> bool {
        false
    }
}

/// A fresh epoch, random per call (two rooms or two servers started in the
/// same instant differ), within JSON's exact integer range for JavaScript
/// clients.
pub fn new_epoch() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    // RandomState is seeded randomly per process; mixing in the time and a
    // counter keeps two calls in one process apart too.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    (hasher.finish() >> 11).max(1)
}
