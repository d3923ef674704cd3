//! History on disk: a restart (clean, or `kill -9`) keeps lines, numbering
//! and epochs; the file is guarded against a second server and against
//! not being a database.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chat::http::Readiness;
use chat::server::Config;
use chat::store::sqlite::{self, Durability, Sqlite};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::support::{unlimited_rate, Client, TestServer, WAIT};

/// A fresh folder for one test's database, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chat-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn db(&self) -> PathBuf {
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

fn on_disk(path: &Path) -> Config {
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
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--addr", "127.0.0.1:0", "--rate-limit", "0", "--db"])
        .arg(db)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("ws://") {
                return line[at..].trim().to_string();
            }
        }
        panic!("the server ended without listening");
    })
    .await
    .expect("the server did not start in time");
    // Keep reading its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
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

#[tokio::test]
async fn kill_9_loses_nothing_delivered_well_before_and_never_reuses_a_seq() {
    let scratch = Scratch::new("kill9");
    let mut sent: Vec<(u64, String)> = Vec::new();
    let mut epoch = None;
    for round in 0..3 {
        let (mut server, url) = spawn_server(&scratch.db()).await;
        let mut ws = connect_json(&url).await;
        let welcome = chat_ws::next(&mut ws, "welcome").await;
        match epoch {
            None => epoch = welcome["epoch"].as_u64(),
            Some(e) => assert_eq!(welcome["epoch"], e, "the epoch survives kill -9"),
        }
        // Everything from earlier rounds is there, with the same numbers.
        if !sent.is_empty() {
            // The replay on joining (the last 20), then all of it.
            let count = chat_ws::next(&mut ws, "history").await["count"]
                .as_u64()
                .unwrap();
            for _ in 0..count {
                chat_ws::next(&mut ws, "message").await;
            }
            chat_ws::send(&mut ws, "/history 1000").await;
            let count = chat_ws::next(&mut ws, "history").await["count"]
                .as_u64()
                .unwrap();
            let mut kept = Vec::new();
            for _ in 0..count {
                let line = chat_ws::next(&mut ws, "message").await;
                kept.push((
                    line["seq"].as_u64().unwrap(),
                    line["text"].as_str().unwrap().to_string(),
                ));
            }
            assert_eq!(kept, sent, "round {round}: history after kill -9");
        }
        for i in 0..50 {
            let text = format!("round {round} line {i}");
            chat_ws::send(&mut ws, &text).await;
            let line = chat_ws::next(&mut ws, "message").await;
            let seq = line["seq"].as_u64().unwrap();
            assert!(
                sent.last().is_none_or(|(last, _)| seq > *last),
                "seq {seq} reused"
            );
            sent.push((seq, text));
        }
        // Delivered more than 100 ms before the kill: must be on disk.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.start_kill().unwrap();
        tokio::time::timeout(WAIT, server.wait())
            .await
            .unwrap()
            .unwrap();
    }
}

/// A "disk" that fills (SQLite's page cap) and then has room again: chat
/// goes on, readiness says degraded, and what was queued meanwhile is
/// written once there is room.
#[test]
fn a_full_disk_degrades_and_catches_up_without_losing_what_was_queued() {
    use chat::protocol::{ChatLine, Event};
    use chat::store::Store as _;
    let scratch = Scratch::new("full");
    let readiness = Readiness::new();
    let mut config = store_config(&scratch.db());
    config.max_pages = Some(16);
    let store = Sqlite::open(config, readiness.clone()).unwrap();
    let opened = store.open("#lobby", 10);
    let line = |seq: u64| ChatLine {
        room: "#lobby".to_string(),
        seq,
        ts: chat::protocol::now_millis(),
        from: "127.0.0.1:4000".parse().unwrap(),
        nick: Some("ann".to_string()),
        text: format!("line {seq} {}", "x".repeat(400)),
        history: false,
    };
    for seq in 1..=500 {
        store.keep(opened.epoch, &line(seq), false);
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
    let kept = store.before("#lobby", u64::MAX, 1000);
    let seqs: Vec<u64> = kept
        .iter()
        .filter_map(|e| match e {
            Event::Message(l) => Some(l.seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=500).collect::<Vec<_>>(),
        "nothing queued was lost"
    );
    store.close();
}
