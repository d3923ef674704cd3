//! History on disk: a restart (clean, or `kill -9`) keeps lines, numbering
//! and epochs; the file is guarded against a second server and against
//! not being a database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat::http::Readiness;
use chat::server::Config;
use chat::store::sqlite::{self, Durability, Sqlite};

use crate::support::{unlimited_rate, Client, TestServer, WAIT};

/// A fresh folder for one test's database, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chat-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("chat.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn store_config(path: &Path) -> sqlite::Config {
    sqlite::Config {
        path: path.to_path_buf(),
        history: 1000,
        max_age: None,
        durability: Durability::Normal,
        max_pages: None,
    }
}

pub fn on_disk(path: &Path) -> Config {
    let mut config = unlimited_rate();
    config.db = Some(store_config(path));
    config
}

async fn json_client(server: &TestServer) -> (Client, serde_json::Value) {
    let mut c = Client::connect_raw(server, Some("chat.v1.json")).await;
    let welcome = c.recv_json_type("welcome").await;
    (c, welcome)
}

#[tokio::test]
async fn a_restart_keeps_history_numbering_and_the_epoch() {
    let scratch = Scratch::new("restart");
    let server = TestServer::start_with(on_disk(&scratch.db())).await;
    let (mut a, welcome) = json_client(&server).await;
    let epoch = welcome["epoch"].as_u64().unwrap();
    for text in ["one", "two", "three"] {
        a.send(text).await;
    }
    for seq in 1..=3 {
        assert_eq!(a.recv_json_type("message").await["seq"], seq);
    }
    // A room everyone leaves keeps its history too.
    a.send("/join #rust").await;
    let entered = a.recv_json_type("entered").await;
    assert_eq!(
        entered["epoch"], epoch,
        "every room of one file shares its epoch"
    );
    a.send("in rust").await;
    assert_eq!(a.recv_json_type("message").await["seq"], 1);
    drop(a);
    server.shutdown().await;

    let server = TestServer::start_with(on_disk(&scratch.db())).await;
    let (mut b, welcome) = json_client(&server).await;
    assert_eq!(welcome["epoch"], epoch, "a clean restart keeps the epoch");
    // Joining replays the room's recent lines, as before the restart.
    let header = b.recv_json_type("history").await;
    assert_eq!(header["count"], 3);
    for text in ["one", "two", "three"] {
        let line = b.recv_json_type("message").await;
        assert_eq!(line["text"], text);
        assert_eq!(line["history"], true);
    }
    b.send("four").await;
    assert_eq!(
        b.recv_json_type("message").await["seq"],
        4,
        "numbering goes on"
    );
    b.send(&format!("/resume {epoch} 2")).await;
    assert_eq!(b.recv_json_type("message").await["seq"], 3);
    assert_eq!(b.recv_json_type("message").await["seq"], 4);
    let resumed = b.recv_json_type("resumed").await;
    assert_eq!(resumed["replayed"], 2);
    assert_eq!(resumed["lost"], 0);
    assert_eq!(resumed["restarted"], false);
    b.send("/join #rust").await;
    let entered = b.recv_json_type("entered").await;
    assert_eq!(entered["last_seq"], 1);
    assert_eq!(b.recv_json_type("message").await["text"], "in rust");
    server.shutdown().await;
}

#[tokio::test]
async fn scrollback_pages_back_through_what_is_kept() {
    let scratch = Scratch::new("scrollback");
    let server = TestServer::start_with(on_disk(&scratch.db())).await;
    let (mut a, _) = json_client(&server).await;
    for i in 1..=30 {
        a.send(&format!("line {i}")).await;
    }
    for _ in 1..=30 {
        a.recv_json_type("message").await;
    }
    a.send("/history 5 before 11").await;
    assert_eq!(a.recv_json_type("history").await["count"], 5);
    for seq in 6..=10 {
        assert_eq!(a.recv_json_type("message").await["seq"], seq);
    }
    a.send("/history 5 before 1").await;
    let info = a.recv_json_type("info").await;
    assert!(info["text"]
        .as_str()
        .unwrap()
        .contains("no messages before 1"));
    a.send("/history 5 after 1").await;
    let error = a.recv_json_type("error").await;
    assert!(
        error["message"].as_str().unwrap().contains("before SEQ"),
        "{error}"
    );
    server.shutdown().await;
}

#[test]
fn a_second_server_on_the_same_file_is_refused() {
    let scratch = Scratch::new("lock");
    let first = Sqlite::open(store_config(&scratch.db()), Readiness::new()).unwrap();
    let second = Sqlite::open(store_config(&scratch.db()), Readiness::new()).unwrap_err();
    let said = second.to_string();
    assert!(said.contains(&scratch.db().display().to_string()), "{said}");
    assert!(
        said.contains(&format!("process {}", std::process::id())),
        "{said}"
    );
    drop(first);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_kept() {
    let scratch = Scratch::new("garbage");
    let junk = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(scratch.db(), &junk).unwrap();
    let refused = Sqlite::open(store_config(&scratch.db()), Readiness::new()).unwrap_err();
    let said = refused.to_string();
    assert!(said.contains("not a usable chat database"), "{said}");
    assert!(said.contains(&scratch.db().display().to_string()), "{said}");
    assert_eq!(
        std::fs::read(scratch.db()).unwrap(),
        junk,
        "never overwritten"
    );
}

/// Starts the server binary on a free port with `db`; returns it and its
/// address, read from its "listening on" line.
async fn spawn_server(db: &Path) -> (tokio::process::Child, String) {
    let args = ["--rate-limit", "0", "--history", "100000", "--db"];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    args.push(db.as_os_str());
    crate::support::spawn_server(&args).await
}

async fn connect_json(url: &str) -> chat_ws::Ws {
    chat_ws::connect(url).await
}

mod chat_ws {
    use futures_util::{SinkExt as _, StreamExt as _};
    use http::header::SEC_WEBSOCKET_PROTOCOL;
    use http::HeaderValue;
    use tokio_websockets::{ClientBuilder, Message};

    use crate::support::WAIT;
    pub type Ws = crate::support::Ws;

    pub async fn connect(url: &str) -> Ws {
        let builder = ClientBuilder::new()
            .uri(url)
            .unwrap()
            .add_header(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("chat.v1.json"),
            )
            .unwrap();
        tokio::time::timeout(WAIT, builder.connect())
            .await
            .expect("connect timed out")
            .expect("connect failed")
            .0
    }

    pub async fn send(ws: &mut Ws, text: &str) {
        ws.send(Message::text(text.to_string())).await.unwrap();
    }

    /// The next JSON event of type `kind` (at most 10,000 events).
    pub async fn next(ws: &mut Ws, kind: &str) -> serde_json::Value {
        for _ in 0..10_000 {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("timed out")
                .expect("ended")
                .expect("failed");
            let Some(text) = msg.as_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
        panic!("no {kind} event");
    }
}

/// Ten rounds take about two seconds, so they run with every `cargo test`.
#[tokio::test]
async fn kill_9_mid_burst_ten_times_loses_nothing_delivered_well_before_and_never_reuses_a_seq() {
    kill_9_rounds("kill9", 10).await;
}

/// How long before a `kill -9` a delivered line must already be on disk
/// (the README's promise for the default `--db-sync normal`).
const CRASH_WINDOW: Duration = Duration::from_millis(100);

/// `rounds` times: start the server binary, check that everything
/// delivered well before the last kill is kept with the same numbers, that
/// no number ever carries two texts and that a resume across the crash
/// says so; then send in a burst and `kill -9` the server mid-burst.
async fn kill_9_rounds(name: &str, rounds: usize) {
    use std::collections::BTreeMap;
    use std::time::Instant;
    let scratch = Scratch::new(name);
    // Every line ever delivered: seq -> (text, when its echo arrived, the
    // round it was sent in); and when each round's server was killed.
    let mut delivered: BTreeMap<u64, (String, Instant, usize)> = BTreeMap::new();
    let mut kills: Vec<Instant> = Vec::new();
    let mut epoch = None;
    for round in 0..rounds {
        let (mut server, url) = spawn_server(&scratch.db()).await;
        let mut ws = connect_json(&url).await;
        let welcome = chat_ws::next(&mut ws, "welcome").await;
        match epoch {
            None => epoch = welcome["epoch"].as_u64(),
            Some(e) => assert_eq!(welcome["epoch"], e, "the epoch survives kill -9"),
        }
        if !kills.is_empty() {
            // The replay on joining, then everything kept.
            let count = chat_ws::next(&mut ws, "history").await["count"]
                .as_u64()
                .unwrap();
            for _ in 0..count {
                chat_ws::next(&mut ws, "message").await;
            }
            chat_ws::send(&mut ws, "/history 100000").await;
            let count = chat_ws::next(&mut ws, "history").await["count"]
                .as_u64()
                .unwrap();
            let mut kept = BTreeMap::new();
            let mut last = 0;
            for _ in 0..count {
                let line = chat_ws::next(&mut ws, "message").await;
                let seq = line["seq"].as_u64().unwrap();
                assert!(seq > last, "round {round}: seq {seq} after {last}");
                last = seq;
                kept.insert(seq, line["text"].as_str().unwrap().to_string());
            }
            for (seq, text) in &kept {
                if let Some((seen, _, _)) = delivered.get(seq) {
                    assert_eq!(text, seen, "round {round}: seq {seq} has two texts");
                }
            }
            for (seq, (text, at, sent_in)) in &delivered {
                if *at + CRASH_WINDOW < kills[*sent_in] {
                    assert_eq!(
                        kept.get(seq),
                        Some(text),
                        "round {round}: seq {seq}, delivered well before the kill, is missing"
                    );
                }
            }
            // A resume from the last line this client saw says the server
            // stopped uncleanly, and counts no skipped number as lost.
            let (last_seen, _) = delivered.last_key_value().unwrap();
            chat_ws::send(&mut ws, &format!("/resume {} {last_seen}", epoch.unwrap())).await;
            let resumed = chat_ws::next(&mut ws, "resumed").await;
            assert_eq!(resumed["restarted"], false, "{resumed}");
            assert_eq!(resumed["interrupted"], true, "{resumed}");
            assert_eq!(resumed["lost"], 0, "{resumed}");
        }
        // A burst, killed in the middle: the sender does not wait for
        // echoes, so lines are in flight and queued for the disk.
        let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
        let burst = 400;
        let sender = tokio::spawn(async move {
            for i in 0..burst {
                let text = format!("round {round} line {i}");
                let msg = tokio_websockets::Message::text(text);
                if futures_util::SinkExt::send(&mut sink, msg).await.is_err() {
                    break;
                }
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            sink
        });
        let kill_after = burst / 2;
        let mut received = 0;
        while received < kill_after {
            let msg = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
                .await
                .expect("timed out")
                .expect("ended")
                .expect("failed");
            let Some(text) = msg.as_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["type"] != "message" {
                continue;
            }
            let seq = v["seq"].as_u64().unwrap();
            assert!(
                delivered
                    .last_key_value()
                    .is_none_or(|(last, _)| seq > *last),
                "seq {seq} reused"
            );
            let text = v["text"].as_str().unwrap().to_string();
            delivered.insert(seq, (text, Instant::now(), round));
            received += 1;
        }
        kills.push(Instant::now());
        server.start_kill().unwrap();
        tokio::time::timeout(WAIT, server.wait())
            .await
            .unwrap()
            .unwrap();
        let _ = sender.await;
    }
    let conn = rusqlite::Connection::open(scratch.db()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// A "disk" that fills (SQLite's page cap) and then has room again: chat
/// goes on, readiness says degraded, and what was queued meanwhile is
/// written once there is room.
#[test]
fn a_full_disk_degrades_and_catches_up_without_losing_what_was_queued() {
    use chat::store::Store as _;
    let scratch = Scratch::new("full");
    let readiness = Readiness::new();
    let mut config = store_config(&scratch.db());
    config.max_pages = Some(16);
    let store = Sqlite::open(config, readiness.clone()).unwrap();
    let opened = store.open("#lobby", 10);
    let now = chat::protocol::now_millis();
    for seq in 1..=500 {
        // Long lines, so 16 pages fill up.
        let mut line = lobby_line(seq, now);
        line.text.push_str(&"x".repeat(400));
        store.keep(opened.epoch, &line, false);
    }
    // Bounded wait for the writer to hit the cap.
    let mut degraded = false;
    for _ in 0..200 {
        if readiness.check().is_err() {
            degraded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(degraded, "a full disk shows in /readyz");
    store.set_max_pages(1_000_000);
    store.flush();
    assert!(readiness.check().is_ok(), "ready again once writes succeed");
    assert_eq!(
        seqs_of(&store.before("#lobby", u64::MAX, 1000)),
        (1..=500).collect::<Vec<_>>(),
        "nothing queued was lost"
    );
    store.close();
}

/// How many lines the file holds (rows of `chunks` carry their count).
const LINES_IN_FILE: &str = "SELECT coalesce(sum(count), 0) FROM chunks";

/// A chat line of `#lobby` for tests that drive the store directly.
fn lobby_line(seq: u64, ts: u64) -> chat::protocol::ChatLine {
    chat::protocol::ChatLine {
        room: "#lobby".to_string(),
        seq,
        ts,
        from: "127.0.0.1:4000".parse().unwrap(),
        nick: Some("ann".to_string()),
        text: format!("line {seq}"),
        history: false,
    }
}

fn seqs_of(events: &[chat::protocol::Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            chat::protocol::Event::Message(l) | chat::protocol::Event::Action(l) => Some(l.seq),
            _ => None,
        })
        .collect()
}

/// With more history on disk than in memory, a resume gets what the ring
/// no longer holds from the file: every missed line, none lost.
#[tokio::test]
async fn a_resume_reaches_past_memory_into_the_file() {
    let scratch = Scratch::new("resume-deep");
    let mut config = on_disk(&scratch.db());
    config.hub.history_depth = 5;
    let server = TestServer::start_with(config).await;
    let (mut a, welcome) = json_client(&server).await;
    let epoch = welcome["epoch"].as_u64().unwrap();
    for i in 1..=40 {
        a.send(&format!("line {i}")).await;
    }
    for _ in 1..=40 {
        a.recv_json_type("message").await;
    }
    a.send(&format!("/resume {epoch} 3")).await;
    for seq in 4..=40 {
        let line = a.recv_json_type("message").await;
        assert_eq!(line["seq"], seq);
        assert_eq!(line["text"], format!("line {seq}"));
    }
    let resumed = a.recv_json_type("resumed").await;
    assert_eq!(resumed["replayed"], 37, "{resumed}");
    assert_eq!(resumed["lost"], 0, "{resumed}");
    assert!(resumed.get("interrupted").is_none(), "{resumed}");
    server.shutdown().await;
}

/// `--history-max-age`: lines older than the limit are never read back,
/// and the sweep at start removes them from the file.
#[test]
fn lines_older_than_the_age_limit_are_not_kept_also_after_a_restart() {
    use chat::store::Store as _;
    let scratch = Scratch::new("age");
    let mut config = store_config(&scratch.db());
    config.max_age = Some(Duration::from_secs(3600));
    let now = chat::protocol::now_millis();
    let store = Sqlite::open(config.clone(), Readiness::new()).unwrap();
    let opened = store.open("#lobby", 10);
    for seq in 1..=5 {
        // Two hours old: past the one-hour limit.
        store.keep(opened.epoch, &lobby_line(seq, now - 7_200_000), false);
    }
    // Their own commit (so their own chunk: age removes whole chunks).
    store.flush();
    for seq in 6..=8 {
        store.keep(opened.epoch, &lobby_line(seq, now), false);
    }
    store.flush();
    assert_eq!(seqs_of(&store.before("#lobby", u64::MAX, 100)), [6, 7, 8]);
    assert_eq!(seqs_of(&store.open("#lobby", 100).lines), [6, 7, 8]);
    // Removed from the file by the writes' own transaction, not only by the
    // sweep (every 10 s) or at start.
    let rows: u64 = rusqlite::Connection::open(scratch.db())
        .unwrap()
        .query_row(LINES_IN_FILE, [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3, "old lines left in the file while running");
    store.close();
    drop(store);

    let store = Sqlite::open(config, Readiness::new()).unwrap();
    let opened = store.open("#lobby", 100);
    assert_eq!(seqs_of(&opened.lines), [6, 7, 8]);
    assert_eq!(opened.last_seq, 8, "numbering is not reset by retention");
    store.close();
    drop(store);
    let conn = rusqlite::Connection::open(scratch.db()).unwrap();
    let rows: u64 = conn.query_row(LINES_IN_FILE, [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 3, "the old lines are gone from the file too");
}

/// `--history N`: the file holds about N lines per room (trimming runs in
/// steps), a restart shows the newest, and numbering goes on.
#[test]
fn retention_by_count_holds_across_a_restart() {
    use chat::store::Store as _;
    let scratch = Scratch::new("count");
    let mut config = store_config(&scratch.db());
    config.history = 100;
    let now = chat::protocol::now_millis();
    let store = Sqlite::open(config.clone(), Readiness::new()).unwrap();
    let opened = store.open("#lobby", 10);
    for seq in 1..=2000 {
        store.keep(opened.epoch, &lobby_line(seq, now), false);
    }
    store.close();
    drop(store);
    let conn = rusqlite::Connection::open(scratch.db()).unwrap();
    let rows: u64 = conn.query_row(LINES_IN_FILE, [], |r| r.get(0)).unwrap();
    drop(conn);
    // Whole chunks (up to 256 lines) go, once the numbering moved on by 256.
    assert!((100..=100 + 512).contains(&rows), "{rows} lines kept");

    let store = Sqlite::open(config, Readiness::new()).unwrap();
    let opened = store.open("#lobby", 100);
    assert_eq!(seqs_of(&opened.lines), (1901..=2000).collect::<Vec<_>>());
    assert_eq!(opened.last_seq, 2000);
    store.close();
}

/// A database whose pages are damaged fails the check at start: the
/// server refuses with a line naming the file and what to do, and leaves
/// the file as it was.
#[test]
fn a_file_that_fails_its_integrity_check_is_refused_and_kept() {
    use chat::store::Store as _;
    let scratch = Scratch::new("corrupt");
    let mut config = store_config(&scratch.db());
    // Nothing trimmed: every page in the middle of the file is in use.
    config.history = 100_000;
    let store = Sqlite::open(config, Readiness::new()).unwrap();
    let opened = store.open("#lobby", 10);
    let now = chat::protocol::now_millis();
    for seq in 1..=3000 {
        store.keep(opened.epoch, &lobby_line(seq, now), false);
    }
    store.close();
    drop(store);
    // Scribble over the middle of the file: pages of the chunks table, not
    // the header.
    let mut bytes = std::fs::read(scratch.db()).unwrap();
    assert!(bytes.len() > 64 * 1024, "{} bytes", bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8192] {
        *b = 0xA5;
    }
    std::fs::write(scratch.db(), &bytes).unwrap();
    let refused = Sqlite::open(store_config(&scratch.db()), Readiness::new()).unwrap_err();
    let said = format!("{refused:#}");
    assert!(said.contains(&scratch.db().display().to_string()), "{said}");
    assert!(
        said.contains("integrity check") || said.contains("not a usable chat database"),
        "{said}"
    );
    assert!(
        said.contains("backup") || said.contains("move it"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(scratch.db()).unwrap(),
        bytes,
        "never overwritten"
    );
}

/// A writer that cannot keep up (here: its disk is full, so nothing is
/// committed) fills the queue; `keep` never waits, what does not fit is
/// counted, and what was queued is written once there is room.
#[test]
fn a_full_queue_never_blocks_and_counts_what_it_drops() {
    use chat::store::Store as _;
    let scratch = Scratch::new("queue");
    let readiness = Readiness::new();
    let mut config = store_config(&scratch.db());
    config.max_pages = Some(16);
    config.history = 1_000_000;
    let store = Sqlite::open(config, readiness).unwrap();
    let opened = store.open("#lobby", 10);
    let now = chat::protocol::now_millis();
    let total = sqlite::QUEUE as u64 * 2 + 10_000;
    let started = std::time::Instant::now();
    for seq in 1..=total {
        store.keep(opened.epoch, &lobby_line(seq, now), false);
    }
    let took = started.elapsed();
    let dropped = store.dropped();
    assert!(dropped > 0, "a full queue drops");
    assert!(
        dropped <= total - sqlite::QUEUE as u64,
        "dropped {dropped} of {total}: the queue's room was used"
    );
    // Not a timing test: a blocked keep would wait forever (the disk stays
    // full), so finishing at all shows it never waited.
    eprintln!("{total} keeps took {took:?}, {dropped} dropped");
    store.set_max_pages(10_000_000);
    store.flush();
    let kept = store.open("#lobby", 1_000_000).lines.len() as u64;
    assert_eq!(kept + dropped, total, "everything not dropped is written");
    store.close();
}

/// A file written by the previous format (a row per line, schema 1) is
/// converted in place at start: same lines, numbering and epoch.
#[test]
fn a_file_of_the_previous_format_is_converted() {
    use chat::store::Store as _;
    let scratch = Scratch::new("migrate");
    {
        let conn = rusqlite::Connection::open(scratch.db()).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE rooms (name TEXT PRIMARY KEY, epoch INTEGER NOT NULL, last_seq INTEGER NOT NULL);
             CREATE TABLE lines (room TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
                 kind INTEGER NOT NULL, nick TEXT, addr TEXT NOT NULL, text TEXT NOT NULL,
                 PRIMARY KEY (room, seq)) WITHOUT ROWID;
             CREATE INDEX lines_by_time ON lines (ts);
             INSERT INTO meta VALUES ('schema', '1'), ('clean', '1'), ('epoch', '777');
             INSERT INTO rooms VALUES ('#lobby', 777, 300), ('#rust', 777, 2);",
        )
        .unwrap();
        let now = chat::protocol::now_millis();
        for seq in 1..=300u64 {
            conn.execute(
                "INSERT INTO lines VALUES ('#lobby', ?1, ?2, ?3, 'ann', '127.0.0.1:4000', ?4)",
                rusqlite::params![seq, now, i64::from(seq == 7), format!("line {seq}")],
            )
            .unwrap();
        }
        for seq in 1..=2u64 {
            conn.execute(
                "INSERT INTO lines VALUES ('#rust', ?1, ?2, 0, NULL, '127.0.0.1:4001', 'r')",
                rusqlite::params![seq, now],
            )
            .unwrap();
        }
    }
    let store = Sqlite::open(store_config(&scratch.db()), Readiness::new()).unwrap();
    let lobby = store.open("#lobby", 1000);
    assert_eq!(lobby.epoch, 777);
    assert_eq!(lobby.last_seq, 300, "a clean stop: nothing skipped");
    assert_eq!(seqs_of(&lobby.lines), (1..=300).collect::<Vec<_>>());
    assert!(
        matches!(&store.before("#lobby", 8, 1)[0], chat::protocol::Event::Action(l) if l.seq == 7 && l.text == "line 7")
    );
    let rust = store.open("#rust", 10);
    assert_eq!(rust.lines.len(), 2);
    store.close();
    drop(store);
    let conn = rusqlite::Connection::open(scratch.db()).unwrap();
    let schema: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(schema, "2");
    let rows: u64 = conn.query_row(LINES_IN_FILE, [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 302);
}
