//! The default room log: an SQLite file (WAL mode), written by one thread
//! of its own.
//!
//! The hub numbers each line, delivers it, and hands it to [`Sqlite::keep`],
//! which only puts it in a bounded queue. The writer thread takes whatever
//! is queued and commits it in one transaction (group commit), trimming each
//! room it touched to `--history` lines in the same transaction; a sweep
//! every [`SWEEP_INTERVAL`] removes lines older than `--history-max-age`.
//! Reads (opening a room, paging back) use a connection of their own, which
//! WAL lets run beside the writer.
//!
//! Invariants:
//! - **Delivery never waits for the disk.** `keep` is a `try_send`; when
//!   the queue is full the line is counted as dropped and logged (once per
//!   burst), never waited for.
//! - **Nothing queued is dropped while the writer fails.** A batch that
//!   fails to commit (disk full, I/O error) stays with the writer, which
//!   retries with backoff; `/readyz` says the store is degraded meanwhile.
//! - **A `seq` is never handed out twice for different text.** A clean stop
//!   records that everything was written; a start after anything else
//!   moves every room's `seq` past [`CRASH_SKIP`] lines (more than the
//!   queue and the pending batch can hold), before any line is served, so
//!   numbers clients may have seen but the disk never got are not reused.
//! - **One server per file**: a lock file beside the database, held with
//!   an OS lock for the process's life, names the process holding it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};
use tracing::{error, info, warn};

use super::{new_epoch, Opened, Store};
use crate::http::Readiness;
use crate::protocol::{ChatLine, Event};

/// Lines waiting for the writer at most; more are dropped (and counted).
pub const QUEUE: usize = 64 * 1024;
/// After a start that did not follow a clean stop, every room's next `seq`
/// is this far past the last one on disk: more than the queue and the
/// writer's pending batch together can hold.
pub const CRASH_SKIP: u64 = 2 * QUEUE as u64 + 1;
/// Most lines committed in one transaction.
const BATCH: usize = 4096;
/// How long a batch waits for more lines after its first: well inside the
/// 100 ms a `kill -9` may cost, and it turns a busy room's commits from one
/// per line into one per burst.
const GATHER: Duration = Duration::from_millis(10);
/// A room is trimmed to `--history` lines when its numbering has moved on
/// by this many since its last trim, not on every commit: trimming walks
/// `history` index entries, and so a room may hold up to this many lines
/// more for a while (reads ask for the newest, so nobody sees them).
const TRIM_EVERY: u64 = 256;
/// How often lines older than `--history-max-age` are removed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Retry delays after a failed commit: doubling up to this.
const MAX_RETRY: Duration = Duration::from_secs(5);
const MIN_RETRY: Duration = Duration::from_millis(50);
/// A burst of errors is logged once, then at most once in this long.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long shutdown waits for the queue to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// What `/readyz` names while commits fail.
pub const DEGRADED: &str = "history store (writes failing; chat goes on)";
/// Schema version in `meta`.
const SCHEMA_VERSION: &str = "1";

/// How hard each commit is made to last (SQLite's `synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=NORMAL` (the default): a commit survives the process
    /// being killed; a power loss may take the last commits.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on the disk (fsync) before the
    /// next batch; survives power loss.
    Full,
    /// `synchronous=OFF`: the operating system decides when; survives the
    /// process being killed, not a crash of the machine.
    Off,
}

/// Settings of the SQLite store.
#[derive(Debug, Clone)]
pub struct Config {
    /// The database file.
    pub path: PathBuf,
    /// Lines kept per room (0: keep none on disk).
    pub history: usize,
    /// Lines older than this are removed; `None`: kept until `history`
    /// pushes them out.
    pub max_age: Option<Duration>,
    /// See [`Durability`].
    pub durability: Durability,
    /// Caps the file at this many pages (tests use it to fill the "disk").
    pub max_pages: Option<u64>,
}

/// A line on its way to the disk.
struct Row {
    room: String,
    epoch: u64,
    seq: u64,
    ts: u64,
    action: bool,
    nick: Option<String>,
    addr: String,
    text: String,
}

enum Op {
    Keep(Row),
    /// Answer once everything before it is committed.
    Flush(mpsc::Sender<()>),
    /// Commit everything before it, record a clean stop, answer, end.
    Close(mpsc::Sender<()>),
}

/// See the module documentation.
pub struct Sqlite {
    queue: SyncSender<Op>,
    /// A new page cap for the writer to apply before its next commit (0:
    /// none). Beside the queue, not in it: a full queue must not hold back
    /// the "disk" getting room again in tests.
    max_pages: Arc<AtomicU64>,
    reader: Mutex<Connection>,
    /// Added to every room's last `seq` when opened (after an unclean stop
    /// this run has already written it to the file; see [`CRASH_SKIP`]).
    dropped: Arc<AtomicU64>,
    last_drop_log: Mutex<Option<Instant>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    max_age: Option<Duration>,
    /// The epoch of rooms this file has never seen: the file's own, made
    /// when it was created.
    epoch: u64,
    _lock: File,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").field("path", &self.path).finish()
    }
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock file beside `db`, or says who holds it.
fn take_lock(db: &Path) -> anyhow::Result<File> {
    let path = lock_path(db);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    if file.try_lock().is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() {
            "another process".to_string()
        } else {
            format!("process {holder}")
        };
        bail!(
            "the history file {} is in use by another server ({who}, holding {}); stop it, or give this one another file with --db",
            db.display(),
            path.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(file)
}

fn open_connection(path: &Path) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open the history file {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// What to say about a file SQLite cannot use.
fn not_a_database(path: &Path, e: &rusqlite::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "the history file {} is not a usable chat database ({e}); move it away (the server never overwrites it) or start with --db PATH for another file",
        path.display()
    )
}

impl Sqlite {
    /// Opens (or creates) the database, checks it, takes the lock, and
    /// starts the writer. `readiness` hears when writes fail and recover.
    pub fn open(config: Config, readiness: Readiness) -> anyhow::Result<Arc<Sqlite>> {
        let path = config.path.clone();
        let lock = take_lock(&path)?;
        let existed = path.metadata().map(|m| m.len() > 0).unwrap_or(false);
        let writer = open_connection(&path)?;
        // A file that is not SQLite fails here, on the first read.
        let mode: String = writer
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| not_a_database(&path, &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "the history file {} cannot use write-ahead logging (journal mode {mode}); put it on a local file system",
                path.display()
            );
        }
        if existed {
            let check: String = writer
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| not_a_database(&path, &e))?;
            if check != "ok" {
                bail!(
                    "the history file {} failed its integrity check ({check}); restore it from a backup or move it away (the server never overwrites it)",
                    path.display()
                );
            }
        }
        let sync = match config.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
            Durability::Off => "OFF",
        };
        writer
            .execute_batch(&format!(
                "PRAGMA synchronous={sync};
                 PRAGMA cache_size=-16384;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS rooms (
                     name TEXT PRIMARY KEY,
                     epoch INTEGER NOT NULL,
                     last_seq INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS lines (
                     room TEXT NOT NULL,
                     seq INTEGER NOT NULL,
                     ts INTEGER NOT NULL,
                     kind INTEGER NOT NULL,
                     nick TEXT,
                     addr TEXT NOT NULL,
                     text TEXT NOT NULL,
                     PRIMARY KEY (room, seq)
                 ) WITHOUT ROWID;
                 -- Age retention walks each room from its oldest line
                 -- instead (time follows seq): an index on ts made every
                 -- insert update a second tree.
                 DROP INDEX IF EXISTS lines_by_time;
                 CREATE TABLE IF NOT EXISTS skips (
                     room TEXT NOT NULL,
                     first INTEGER NOT NULL,
                     last INTEGER NOT NULL
                 );"
            ))
            .map_err(|e| not_a_database(&path, &e))?;
        if let Some(pages) = config.max_pages {
            writer.query_row(&format!("PRAGMA max_page_count={pages}"), [], |_| Ok(()))?;
        }
        let version: Option<String> = writer
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(v) = &version {
            if v != SCHEMA_VERSION {
                bail!(
                    "the history file {} has schema version {v}, this server knows {SCHEMA_VERSION}; use a matching server or another --db file",
                    path.display()
                );
            }
        }
        let clean: Option<String> = writer
            .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let unclean = version.is_some() && clean.as_deref() != Some("1");
        let epoch: Option<u64> = writer
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|v| v.parse().ok());
        // The file's epoch goes to rooms it has never seen. After an
        // unclean stop a room may have been numbered in the run that died
        // without any of its lines reaching the disk: a new epoch then
        // keeps its old numbers from being matched to new lines.
        let epoch = match epoch {
            Some(epoch) if !unclean => epoch,
            _ => new_epoch(),
        };
        {
            let tx = writer.unchecked_transaction()?;
            if unclean {
                // Numbers handed out but never written may have been seen:
                // skip past them for good before serving anything.
                // Remembered, so a resume across the stop neither counts
                // the skipped numbers as lost lines nor hides that some
                // lines just before it may be.
                tx.execute(
                    "INSERT INTO skips (room, first, last)
                     SELECT name, last_seq + 1, last_seq + ?1 FROM rooms",
                    [CRASH_SKIP],
                )?;
                let rooms =
                    tx.execute("UPDATE rooms SET last_seq = last_seq + ?1", [CRASH_SKIP])?;
                warn!(
                    file = %path.display(),
                    rooms,
                    "the last run did not stop cleanly: each room's numbering moves on past lines that may not have been written"
                );
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1), ('clean', '0'), ('epoch', ?2)",
                params![SCHEMA_VERSION, epoch.to_string()],
            )?;
            tx.commit()?;
        }
        if let Some(max_age) = config.max_age {
            sweep(&writer, max_age)?;
        }
        let reader = open_connection(&path)?;
        let (queue, ops) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let max_pages = Arc::new(AtomicU64::new(0));
        let mut task = Writer {
            conn: writer,
            max_pages: max_pages.clone(),
            trimmed: std::collections::HashMap::new(),
            history: config.history,
            max_age: config.max_age,
            readiness,
            failing_since: None,
            last_error_log: None,
        };
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || task.run(&ops))
            .context("cannot start the history writer thread")?;
        info!(
            file = %path.display(),
            lines_per_room = config.history,
            "history is kept in {}",
            path.display()
        );
        Ok(Arc::new(Sqlite {
            queue,
            max_pages,
            reader: Mutex::new(reader),
            dropped,
            last_drop_log: Mutex::new(None),
            writer: Mutex::new(Some(thread)),
            path,
            max_age: config.max_age,
            epoch,
            _lock: lock,
        }))
    }

    /// Lines dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Raises the page cap (see [`Config::max_pages`]).
    pub fn set_max_pages(&self, pages: u64) {
        self.max_pages.store(pages, Ordering::Relaxed);
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cutoff(&self) -> u64 {
        self.max_age.map_or(0, |age| {
            crate::protocol::now_millis().saturating_sub(age.as_millis() as u64)
        })
    }

    fn read_skips(&self, room: &str) -> rusqlite::Result<Vec<(u64, u64)>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT first, last FROM skips WHERE room = ?1 ORDER BY first")?;
        let rows = stmt.query_map([room], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    fn read_lines(&self, room: &str, before: u64, n: usize) -> rusqlite::Result<Vec<Event>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, ts, kind, nick, addr, text FROM lines
             WHERE room = ?1 AND seq < ?2 AND ts >= ?3
             ORDER BY seq DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![room, before.min(i64::MAX as u64), self.cutoff(), n as i64],
            |r| {
                let seq: u64 = r.get(0)?;
                let ts: u64 = r.get(1)?;
                let kind: i64 = r.get(2)?;
                let nick: Option<String> = r.get(3)?;
                let addr: String = r.get(4)?;
                let text: String = r.get(5)?;
                Ok((seq, ts, kind, nick, addr, text))
            },
        )?;
        let mut lines = Vec::new();
        for row in rows {
            let (seq, ts, kind, nick, addr, text) = row?;
            let Ok(from) = addr.parse() else {
                continue;
            };
            let line = ChatLine {
                room: room.to_string(),
                seq,
                ts,
                from,
                nick,
                text,
                history: false,
            };
            lines.push(if kind == 1 {
                Event::Action(line)
            } else {
                Event::Message(line)
            });
        }
        lines.reverse();
        Ok(lines)
    }
}

impl Store for Sqlite {
    fn open(&self, room: &str, recent: usize) -> Opened {
        let known: rusqlite::Result<Option<(u64, u64)>> = self
            .reader()
            .query_row(
                "SELECT epoch, last_seq FROM rooms WHERE name = ?1",
                [room],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional();
        match known {
            Ok(Some((epoch, last_seq))) => {
                let lines = self
                    .read_lines(room, u64::MAX, recent)
                    .unwrap_or_else(|e| {
                        error!(file = %self.path.display(), error = %e, room, "cannot read a room's history");
                        Vec::new()
                    });
                let skipped = self.read_skips(room).unwrap_or_else(|e| {
                    error!(file = %self.path.display(), error = %e, room, "cannot read a room's history");
                    Vec::new()
                });
                Opened {
                    epoch,
                    last_seq,
                    lines,
                    skipped,
                }
            }
            Ok(None) => Opened {
                epoch: self.epoch,
                ..Opened::default()
            },
            Err(e) => {
                // The room's old lines cannot be matched: a new epoch says so
                // to a resume.
                error!(file = %self.path.display(), error = %e, room, "cannot read a room's history; it starts afresh");
                Opened {
                    epoch: new_epoch(),
                    ..Opened::default()
                }
            }
        }
    }

    fn keep(&self, epoch: u64, line: &ChatLine, action: bool) {
        let row = Row {
            room: line.room.clone(),
            epoch,
            seq: line.seq,
            ts: line.ts,
            action,
            nick: line.nick.clone(),
            addr: line.from.to_string(),
            text: line.text.clone(),
        };
        match self.queue.try_send(Op::Keep(row)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self
                    .last_drop_log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) {
                    *last = Some(Instant::now());
                    warn!(
                        file = %self.path.display(),
                        dropped_total = total,
                        "the history writer is behind (its queue of {QUEUE} lines is full): lines are delivered but not kept"
                    );
                }
            }
        }
    }

    fn before(&self, room: &str, before: u64, n: usize) -> Vec<Event> {
        self.read_lines(room, before, n).unwrap_or_else(|e| {
            error!(file = %self.path.display(), error = %e, room, "cannot read a room's history");
            Vec::new()
        })
    }

    fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.queue.send(Op::Flush(done)).is_ok() && wait.recv_timeout(FLUSH_TIMEOUT).is_err() {
            warn!(file = %self.path.display(), "the history writer did not finish in time; some lines may not be kept");
        }
    }

    fn close(&self) {
        let (done, wait) = mpsc::channel();
        if self.queue.send(Op::Close(done)).is_ok() && wait.recv_timeout(FLUSH_TIMEOUT).is_err() {
            warn!(file = %self.path.display(), "the history writer did not finish in time; some lines may not be kept");
            return;
        }
        let thread = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        info!(file = %self.path.display(), "history written; the file is closed");
    }

    fn durable(&self) -> bool {
        true
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        // Closed already, or the writer commits what it has when the queue
        // closes (see `Writer::run`).
        let thread = self
            .writer
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if thread.is_some() {
            self.flush();
        }
    }
}

/// Removes lines older than `max_age`.
/// Removes one room's lines older than the cutoff (milliseconds since the
/// epoch): those below its first recent one (all when none is recent).
const AGE_TRIM: &str = "DELETE FROM lines WHERE room = ?1 AND seq < coalesce(
     (SELECT seq FROM lines WHERE room = ?1 AND ts >= ?2 ORDER BY seq LIMIT 1),
     9223372036854775807)";

/// Removes lines older than `max_age`, room by room: a room's lines are in
/// `seq` order, and time follows `seq`, so its old lines are the ones below
/// its first recent one (all of them when none is recent). Each room costs
/// a walk over the lines being removed, not over the table.
fn sweep(conn: &Connection, max_age: Duration) -> rusqlite::Result<usize> {
    let cutoff = crate::protocol::now_millis().saturating_sub(max_age.as_millis() as u64);
    let rooms: Vec<String> = {
        let mut stmt = conn.prepare_cached("SELECT name FROM rooms")?;
        let names = stmt.query_map([], |r| r.get(0))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    let mut removed = 0;
    let mut stmt = conn.prepare_cached(AGE_TRIM)?;
    for room in rooms {
        removed += stmt.execute(params![room, cutoff])?;
    }
    Ok(removed)
}

struct Writer {
    conn: Connection,
    /// See [`Sqlite::set_max_pages`].
    max_pages: Arc<AtomicU64>,
    /// Per room, the `seq` it was last trimmed at (see [`TRIM_EVERY`]).
    trimmed: std::collections::HashMap<String, u64>,
    history: usize,
    max_age: Option<Duration>,
    readiness: Readiness,
    failing_since: Option<Instant>,
    last_error_log: Option<Instant>,
}

impl Writer {
    fn run(&mut self, ops: &Receiver<Op>) {
        let mut pending: Vec<Row> = Vec::new();
        let mut waiting: Vec<mpsc::Sender<()>> = Vec::new();
        let mut closing: Option<mpsc::Sender<()>> = None;
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        let mut retry = MIN_RETRY;
        loop {
            // Wait for work (or the next sweep, or the next retry).
            let wait = if pending.is_empty() {
                next_sweep.saturating_duration_since(Instant::now())
            } else if self.failing_since.is_some() {
                retry
            } else {
                Duration::ZERO
            };
            let gathering = Instant::now();
            match ops.recv_timeout(wait) {
                Ok(op) => self.take(op, &mut pending, &mut waiting, &mut closing),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Dropped without `close`: everything sent is here.
                    if self.commit(&mut pending).is_ok() {
                        self.mark_clean();
                    }
                    return;
                }
            }
            // Everything already queued joins this batch (group commit),
            // within the queue's bound while commits fail.
            while closing.is_none()
                && pending.len()
                    < BATCH.max(if self.failing_since.is_some() {
                        QUEUE
                    } else {
                        0
                    })
            {
                // What arrives within GATHER of the batch's first line joins
                // it: one commit for a burst rather than one per line.
                let left = GATHER.saturating_sub(gathering.elapsed());
                let next = if pending.is_empty() || left.is_zero() || !waiting.is_empty() {
                    ops.try_recv().map_err(|_| ())
                } else {
                    ops.recv_timeout(left).map_err(|_| ())
                };
                match next {
                    Ok(op) => self.take(op, &mut pending, &mut waiting, &mut closing),
                    Err(()) => break,
                }
            }
            if !pending.is_empty() {
                match self.commit(&mut pending) {
                    Ok(()) => retry = MIN_RETRY,
                    // Closing gives up after one more try: shutdown is bounded.
                    Err(()) if closing.is_none() => {
                        retry = (retry * 2).min(MAX_RETRY);
                        continue;
                    }
                    Err(()) => {}
                }
            }
            if let Some(done) = closing.take() {
                if pending.is_empty() {
                    self.mark_clean();
                } else {
                    error!(lines = pending.len(), "shutting down with history that could not be written; those lines are lost");
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
                let _ = done.send(());
                return;
            }
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + SWEEP_INTERVAL;
                if let Some(max_age) = self.max_age {
                    if let Err(e) = sweep(&self.conn, max_age) {
                        self.failed(&e);
                    }
                }
            }
        }
    }

    fn take(
        &mut self,
        op: Op,
        pending: &mut Vec<Row>,
        waiting: &mut Vec<mpsc::Sender<()>>,
        closing: &mut Option<mpsc::Sender<()>>,
    ) {
        match op {
            Op::Keep(row) => pending.push(row),
            Op::Flush(done) => waiting.push(done),
            Op::Close(done) => *closing = Some(done),
        }
    }

    /// Commits `pending` in one transaction, trimming each room touched to
    /// `history` lines. On failure the lines are kept for the retry.
    fn commit(&mut self, pending: &mut Vec<Row>) -> Result<(), ()> {
        let pages = self.max_pages.swap(0, Ordering::Relaxed);
        if pages > 0 {
            let _ = self
                .conn
                .query_row(&format!("PRAGMA max_page_count={pages}"), [], |_| Ok(()));
        }
        match self.write(pending) {
            Ok(()) => {
                pending.clear();
                if let Some(since) = self.failing_since.take() {
                    info!(
                        after = ?since.elapsed(),
                        "the history store writes again; what was queued meanwhile is kept"
                    );
                    self.readiness.up(DEGRADED);
                }
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                Err(())
            }
        }
    }

    fn failed(&mut self, e: &rusqlite::Error) {
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            self.readiness.down(DEGRADED);
        }
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL)
        {
            self.last_error_log = Some(Instant::now());
            error!(
                error = %e,
                "cannot write history (disk full or failing?); chat goes on, lines wait in memory and are retried"
            );
        }
    }

    fn write(&mut self, pending: &[Row]) -> rusqlite::Result<()> {
        let mut trims: Vec<(String, u64)> = Vec::new();
        let tx = self.conn.transaction()?;
        {
            let mut line_stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO lines (room, seq, ts, kind, nick, addr, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            // The highest seq per room in this batch.
            let mut touched: Vec<(&str, u64, u64)> = Vec::new();
            for row in pending {
                line_stmt.execute(params![
                    row.room,
                    row.seq,
                    row.ts,
                    i64::from(row.action),
                    row.nick,
                    row.addr,
                    row.text
                ])?;
                match touched.iter_mut().find(|(r, _, _)| *r == row.room) {
                    Some((_, _, seq)) => *seq = (*seq).max(row.seq),
                    None => touched.push((&row.room, row.epoch, row.seq)),
                }
            }
            // A room's row comes with its first lines (its epoch is the
            // one the hub numbered them under).
            let mut seq_stmt = tx.prepare_cached(
                "INSERT INTO rooms (name, epoch, last_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?;
            // By count, not by seq arithmetic: numbering has gaps after an
            // unclean stop. The subquery walks the primary key's last
            // `history` entries of the room, not the table.
            let mut trim_stmt = tx.prepare_cached(
                "DELETE FROM lines WHERE room = ?1 AND seq <= (
                     SELECT seq FROM lines WHERE room = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?;
            // Age, in the same transaction as the lines and the count: a
            // walk over the lines it removes (the sweep covers idle rooms).
            let mut age_stmt = tx.prepare_cached(AGE_TRIM)?;
            let cutoff = self
                .max_age
                .map(|age| crate::protocol::now_millis().saturating_sub(age.as_millis() as u64));
            for (room, epoch, seq) in touched {
                seq_stmt.execute(params![room, epoch, seq])?;
                let trimmed = self.trimmed.get(room).copied();
                if trimmed.is_none_or(|at| seq >= at + TRIM_EVERY) {
                    trim_stmt.execute(params![room, self.history])?;
                    if let Some(cutoff) = cutoff {
                        age_stmt.execute(params![room, cutoff])?;
                    }
                    trims.push((room.to_string(), seq));
                }
            }
        }
        tx.commit()?;
        // Only once committed: a failed batch is retried and trims then.
        self.trimmed.extend(trims);
        Ok(())
    }

    fn mark_clean(&mut self) {
        if let Err(e) = self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '1')",
            [],
        ) {
            self.failed(&e);
        }
    }
}
