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
const SCHEMA_VERSION: &str = "2";
/// Most lines in one row of `chunks`: a read that wants a few lines before
/// a `seq` decodes at most this many more.
const CHUNK: usize = 256;

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
                 -- A room's lines in runs of consecutive ones, as a JSON
                 -- array each (see `Chunk`): one row per room per commit,
                 -- not per line, is what keeps the writer's cost per line
                 -- small beside the fan-out.
                 CREATE TABLE IF NOT EXISTS chunks (
                     room TEXT NOT NULL,
                     first_seq INTEGER NOT NULL,
                     last_seq INTEGER NOT NULL,
                     last_ts INTEGER NOT NULL,
                     count INTEGER NOT NULL,
                     lines TEXT NOT NULL,
                     PRIMARY KEY (room, first_seq)
                 ) WITHOUT ROWID;
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
        if version.as_deref() == Some("1") {
            migrate_lines(&writer).map_err(|e| {
                anyhow::anyhow!(
                    "cannot convert the history file {} to this server's format ({e}); restore it from a backup or move it away",
                    path.display()
                )
            })?;
            info!(file = %path.display(), "history converted to this server's format (one row per run of lines)");
        } else if let Some(v) = &version {
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
            sweep(&writer, config.history, max_age)?;
        }
        let reader = open_connection(&path)?;
        let (queue, ops) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let max_pages = Arc::new(AtomicU64::new(0));
        let mut task = Writer {
            conn: writer,
            max_pages: max_pages.clone(),
            trimmed: std::collections::HashMap::new(),
            counts: std::collections::HashMap::new(),
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
            "SELECT lines FROM chunks WHERE room = ?1 AND first_seq < ?2 AND last_ts >= ?3
             ORDER BY first_seq DESC",
        )?;
        let cutoff = self.cutoff();
        let mut rows = stmt.query(params![room, before.min(i64::MAX as u64), cutoff])?;
        // Newest first, then turned around.
        let mut lines = Vec::new();
        while lines.len() < n {
            let Some(row) = rows.next()? else { break };
            let json: String = row.get(0)?;
            let Ok(chunk) = serde_json::from_str::<Vec<Stored>>(&json) else {
                error!(file = %self.path.display(), room, "a stored run of lines does not parse; skipped");
                continue;
            };
            for stored in chunk.into_iter().rev() {
                if stored.seq >= before || stored.ts < cutoff {
                    continue;
                }
                let Ok(from) = stored.addr.parse() else {
                    continue;
                };
                let line = ChatLine {
                    room: room.to_string(),
                    seq: stored.seq,
                    ts: stored.ts,
                    from,
                    nick: stored.nick,
                    text: stored.text,
                    history: false,
                };
                lines.push(if stored.action {
                    Event::Action(line)
                } else {
                    Event::Message(line)
                });
                if lines.len() == n {
                    break;
                }
            }
        }
        lines.reverse();
        Ok(lines)
    }
}

/// One line as it is kept in a chunk's JSON array.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    seq: u64,
    ts: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    action: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nick: Option<String>,
    addr: String,
    text: String,
}

/// The same, borrowed from a queued row (no copies on the way to JSON).
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    seq: u64,
    ts: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    action: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nick: Option<&'a str>,
    addr: &'a str,
    text: &'a str,
}

/// Writes `rows` (one room's, in seq order) as chunks of at most [`CHUNK`].
fn insert_chunks(
    stmt: &mut rusqlite::CachedStatement<'_>,
    room: &str,
    rows: &[&Row],
) -> rusqlite::Result<()> {
    for run in rows.chunks(CHUNK) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        let stored: Vec<StoredRef<'_>> = run
            .iter()
            .map(|r| StoredRef {
                seq: r.seq,
                ts: r.ts,
                action: r.action,
                nick: r.nick.as_deref(),
                addr: &r.addr,
                text: &r.text,
            })
            .collect();
        let json = serde_json::to_string(&stored)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let last_ts = run.iter().map(|r| r.ts).max().unwrap_or(last.ts);
        stmt.execute(params![
            room,
            first.seq,
            last.seq,
            last_ts,
            run.len() as i64,
            json
        ])?;
    }
    Ok(())
}

/// Converts a file of schema 1 (a row per line in `lines`) to chunks, in
/// the caller's connection, in one transaction.
fn migrate_lines(conn: &Connection) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    let exists: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'lines'",
        [],
        |r| r.get(0),
    )?;
    if exists {
        let rows: Vec<Row> = {
            let mut stmt = tx.prepare(
                "SELECT room, seq, ts, kind, nick, addr, text FROM lines ORDER BY room, seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Row {
                    room: r.get(0)?,
                    epoch: 0,
                    seq: r.get(1)?,
                    ts: r.get(2)?,
                    action: r.get::<_, i64>(3)? == 1,
                    nick: r.get(4)?,
                    addr: r.get(5)?,
                    text: r.get(6)?,
                })
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut insert = tx.prepare_cached(INSERT_CHUNK)?;
        let mut start = 0;
        while start < rows.len() {
            let room = &rows[start].room;
            let end = rows[start..]
                .iter()
                .position(|r| &r.room != room)
                .map_or(rows.len(), |p| start + p);
            let run: Vec<&Row> = rows[start..end].iter().collect();
            insert_chunks(&mut insert, room, &run)?;
            start = end;
        }
        drop(insert);
        tx.execute_batch("DROP TABLE lines; DROP INDEX IF EXISTS lines_by_time;")?;
    }
    tx.commit()
}

const INSERT_CHUNK: &str =
    "INSERT OR REPLACE INTO chunks (room, first_seq, last_seq, last_ts, count, lines)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

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

    fn settle(&self, within: Duration) {
        let (done, wait) = mpsc::channel();
        if self.queue.try_send(Op::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(within);
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
/// How many lines the file holds for `room`.
fn lines_of(conn: &Connection, room: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT coalesce(sum(count), 0) FROM chunks WHERE room = ?1")?
        .query_row([room], |r| r.get(0))
}

/// Removes `room`'s oldest chunks while the rest still hold `history`
/// lines, and those whose newest line is older than `cutoff` (ms since the
/// epoch): a walk from the oldest over what it removes, and one more.
/// `kept` is the room's line count, kept up to date. Whole chunks go; reads
/// skip the old lines of a chunk that stays.
fn trim_room(
    conn: &Connection,
    room: &str,
    kept: &mut u64,
    history: u64,
    cutoff: Option<u64>,
) -> rusqlite::Result<()> {
    let mut oldest = conn.prepare_cached(
        "SELECT first_seq, last_ts, count FROM chunks WHERE room = ?1 ORDER BY first_seq",
    )?;
    let mut rows = oldest.query([room])?;
    let mut below = None;
    while let Some(row) = rows.next()? {
        let (first, last_ts, count): (u64, u64, u64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let too_many = *kept > history && *kept - count >= history;
        let too_old = cutoff.is_some_and(|c| last_ts < c);
        if !(too_many || too_old || history == 0) {
            below = Some(first);
            break;
        }
        *kept -= count.min(*kept);
        below = None;
    }
    drop(rows);
    conn.prepare_cached("DELETE FROM chunks WHERE room = ?1 AND first_seq < ?2")?
        .execute(params![
            room,
            below.unwrap_or(i64::MAX as u64).min(i64::MAX as u64)
        ])?;
    Ok(())
}

/// Applies `--history` and `--history-max-age` to every room (at start, and
/// every [`SWEEP_INTERVAL`] for rooms nobody writes to).
fn sweep(conn: &Connection, history: usize, max_age: Duration) -> rusqlite::Result<()> {
    let cutoff = crate::protocol::now_millis().saturating_sub(max_age.as_millis() as u64);
    let rooms: Vec<String> = {
        let mut stmt = conn.prepare_cached("SELECT name FROM rooms")?;
        let names = stmt.query_map([], |r| r.get(0))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    for room in rooms {
        let mut kept = lines_of(conn, &room)?;
        trim_room(conn, &room, &mut kept, history as u64, Some(cutoff))?;
    }
    Ok(())
}

struct Writer {
    conn: Connection,
    /// See [`Sqlite::set_max_pages`].
    max_pages: Arc<AtomicU64>,
    /// Per room, the `seq` it was last trimmed at (see [`TRIM_EVERY`]).
    trimmed: std::collections::HashMap<String, u64>,
    /// Per room, how many lines the file holds (read once per run, then
    /// kept up to date), so trimming never walks what it keeps.
    counts: std::collections::HashMap<String, u64>,
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
            // What arrives within GATHER of the batch's first line joins it:
            // one commit for a burst rather than one per line. The writer
            // sleeps the window out rather than waiting on the queue: a
            // receiver blocked on it is woken by every line sent (a system
            // call and a switch of threads per line, on the chat's core).
            if !pending.is_empty() && waiting.is_empty() && closing.is_none() {
                let left = GATHER.saturating_sub(gathering.elapsed());
                if !left.is_zero() {
                    std::thread::sleep(left);
                }
            }
            // Everything queued by now joins this batch (group commit),
            // within the queue's bound while commits fail.
            let cap = BATCH.max(if self.failing_since.is_some() {
                QUEUE
            } else {
                0
            });
            while closing.is_none() && pending.len() < cap {
                match ops.try_recv() {
                    Ok(op) => self.take(op, &mut pending, &mut waiting, &mut closing),
                    Err(_) => break,
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
                    // Counts change under the writer's feet: read afresh.
                    self.counts.clear();
                    if let Err(e) = sweep(&self.conn, self.history, max_age) {
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
        let mut counts: Vec<(String, u64)> = Vec::new();
        // Each room's rows in order: the queue is in seq order per room.
        let mut rooms: Vec<(&str, u64, Vec<&Row>)> = Vec::new();
        for row in pending {
            match rooms.iter_mut().find(|(r, _, _)| *r == row.room) {
                Some((_, _, rows)) => rows.push(row),
                None => rooms.push((&row.room, row.epoch, vec![row])),
            }
        }
        let tx = self.conn.transaction()?;
        {
            let mut chunk_stmt = tx.prepare_cached(INSERT_CHUNK)?;
            // A room's row comes with its first lines (its epoch is the
            // one the hub numbered them under).
            let mut seq_stmt = tx.prepare_cached(
                "INSERT INTO rooms (name, epoch, last_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?;
            let cutoff = self
                .max_age
                .map(|age| crate::protocol::now_millis().saturating_sub(age.as_millis() as u64));
            for (room, epoch, rows) in &rooms {
                insert_chunks(&mut chunk_stmt, room, rows)?;
                let seq = rows.iter().map(|r| r.seq).max().unwrap_or(0);
                seq_stmt.execute(params![room, epoch, seq])?;
                let mut kept = match self.counts.get(*room) {
                    Some(&n) => n + rows.len() as u64,
                    None => lines_of(&tx, room)?,
                };
                let trimmed = self.trimmed.get(*room).copied();
                if trimmed.is_none_or(|at| seq >= at + TRIM_EVERY) {
                    // By count, not by seq arithmetic: numbering has gaps
                    // after an unclean stop. Age too, in the same
                    // transaction (the sweep covers idle rooms).
                    trim_room(&tx, room, &mut kept, self.history as u64, cutoff)?;
                    trims.push((room.to_string(), seq));
                }
                counts.push((room.to_string(), kept));
            }
        }
        tx.commit()?;
        // Only once committed: a failed batch is retried and trims then.
        self.trimmed.extend(trims);
        self.counts.extend(counts);
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
