//! The client library and binary: reconnecting and resuming against a real
//! server, a terminal-safe rendering of hostile text, `wss://`, and an
//! interactive session in tmux.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat::client::{self, sanitize, Config};
use chat::hub::HubConfig;
use chat::protocol::{ChatLine, Event};
use chat::server;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::SEC_WEBSOCKET_PROTOCOL;
use http::HeaderValue;
use proptest::prelude::*;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, DuplexStream, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_websockets::{Message, ServerBuilder, WebSocketStream};

use crate::redis_server::RedisServer;
use crate::support::{is_presence, Client, TestServer, WAIT};

// ---------------------------------------------------------------------------
// Helpers

/// The client library running in this process on in-memory input and
/// output, as the binary runs it on stdin and stdout.
struct Driven {
    input: Option<DuplexStream>,
    output: Lines<BufReader<DuplexStream>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Driven {
    fn start(config: Config) -> Self {
        let (input, client_in) = tokio::io::duplex(1 << 20);
        let (client_out, output) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(async move {
            client::run(&config, BufReader::new(client_in), client_out).await
        });
        Driven {
            input: Some(input),
            output: BufReader::new(output).lines(),
            task,
        }
    }

    /// A client that reconnects quickly (tests need not wait 0.5 s).
    fn reconnecting(url: &str, nick: &str) -> Self {
        Self::start(Config {
            nick: Some(nick.into()),
            reconnect: true,
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..Config::new(url)
        })
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.output.next_line())
            .await
            .expect("timed out waiting for a client line")
            .expect("cannot read client output")
            .expect("client output ended")
    }

    /// Lines up to and including the first that satisfies `pred`.
    async fn until(&mut self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        for _ in 0..1000 {
            let line = self.line().await;
            let done = pred(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
        panic!("no matching line in 1000: {lines:#?}");
    }

    async fn type_line(&mut self, line: &str) {
        let input = self.input.as_mut().expect("input already closed");
        input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Ends the input and waits for the client to finish.
    async fn finish(mut self) -> anyhow::Result<()> {
        self.input = None;
        self.end().await
    }

    /// Waits for the client to finish on its own, input still open.
    async fn end(self) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client did not finish")
            .expect("client task panicked")
    }
}

/// A TCP relay between the client and a server that can cut every relayed
/// connection (a network failure), hold new ones (the server unreachable)
/// and switch servers (a restart), while its own address stays the same.
struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    open: watch::Sender<bool>,
    cut: Arc<Mutex<CancellationToken>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let (open, _) = watch::channel(true);
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let (up, gate, cuts) = (upstream.clone(), open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let (up, mut gate, cuts) = (up.clone(), gate.subscribe(), cuts.clone());
                tokio::spawn(async move {
                    // Held here while the gate is closed.
                    if gate.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let token = cuts.lock().unwrap().clone();
                    let target = *up.lock().unwrap();
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut upstream) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            upstream,
            open,
            cut,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Holds new connections until [`Proxy::release`].
    fn hold(&self) {
        self.open.send_replace(false);
    }

    fn release(&self) {
        self.open.send_replace(true);
    }

    /// Drops every relayed connection, and holds new ones.
    fn cut(&self) {
        self.hold();
        let old = std::mem::replace(&mut *self.cut.lock().unwrap(), CancellationToken::new());
        old.cancel();
    }

    fn point_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }
}

fn is_notice(line: &str) -> bool {
    line.starts_with("~ ")
}

/// Chat lines and `resumed` answers, without presence and client notices.
fn news(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !is_presence(l) && !is_notice(l))
        .cloned()
        .collect()
}

async fn server_with_history(depth: usize) -> TestServer {
    TestServer::start_with(server::Config {
        hub: HubConfig {
            history_depth: depth,
            ..HubConfig::default()
        },
        ..server::Config::default()
    })
    .await
}

/// Sends lines from `peer` and waits until the server has echoed them all,
/// so they are surely numbered and kept before the test goes on.
async fn say_all(peer: &mut Client, lines: &[&str]) {
    for line in lines {
        peer.send(line).await;
    }
    let last = format!("{}: {}", peer.addr, lines[lines.len() - 1]);
    peer.recv_until(1000, |l| l == last).await;
}

// ---------------------------------------------------------------------------
// Reconnect and resume

#[tokio::test]
async fn after_a_network_failure_the_client_shows_each_missed_message_once() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut carol = Driven::reconnecting(&proxy.url(), "carol");
    let welcome = carol.line().await;
    assert!(welcome.starts_with("* welcome"), "{welcome}");
    carol
        .until(|l| l.starts_with("* carol (") && l.ends_with(") joined #lobby"))
        .await;
    let mut bob = Client::connect(&server).await;
    say_all(&mut bob, &["one", "two"]).await;
    carol.until(|l| l.ends_with(": two")).await;

    proxy.cut();
    let lost = carol.until(|l| l.contains("reconnecting")).await;
    assert!(is_notice(lost.last().unwrap()), "{lost:?}");
    // Typed while disconnected: kept and sent after reconnecting.
    carol.type_line("typed offline").await;
    say_all(&mut bob, &["three", "four", "five"]).await;
    proxy.release();

    let own = |l: &str| l.starts_with("carol (") && l.ends_with(": typed offline");
    let after = carol.until(own).await;
    assert!(
        after.iter().any(|l| l.starts_with("~ reconnected to")),
        "{after:#?}"
    );
    let b = bob.addr;
    assert_eq!(
        news(&after),
        [
            format!("{b}: three"),
            format!("{b}: four"),
            format!("{b}: five"),
            "* caught up on #lobby: 3 missed messages".to_string(),
            after.last().unwrap().clone(),
        ],
        "{after:#?}"
    );
    // The nickname came back with the connection.
    bob.recv_until(1000, |l| own(l)).await;
    // Live lines flow again, and nothing old is repeated before them.
    say_all(&mut bob, &["six"]).await;
    let next = carol.until(|l| l.ends_with(": six")).await;
    assert_eq!(news(&next), [format!("{b}: six")], "{next:#?}");
    carol.finish().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_restart_is_reported_and_the_new_run_is_shown() {
    let first = TestServer::start().await;
    let proxy = Proxy::start(first.addr).await;
    let mut carol = Driven::reconnecting(&proxy.url(), "carol");
    carol
        .until(|l| l.starts_with("* carol (") && l.ends_with(") joined #lobby"))
        .await;
    let mut bob = Client::connect(&first).await;
    say_all(&mut bob, &["before"]).await;
    carol.until(|l| l.ends_with(": before")).await;

    // The server shuts down (Close 1001) and comes back as a new run.
    proxy.hold();
    first.shutdown().await;
    let gone = carol.until(|l| l.contains("reconnecting")).await;
    assert!(
        gone.last()
            .unwrap()
            .contains("went away: server shutting down"),
        "{gone:?}"
    );
    let second = TestServer::start().await;
    proxy.point_to(second.addr);
    let mut dave = Client::connect(&second).await;
    say_all(&mut dave, &["after"]).await;
    proxy.release();

    let after = carol.until(|l| l.ends_with(": after")).await;
    assert!(
        after
            .iter()
            .any(|l| l.contains("reconnected to") && l.contains("restarted")),
        "{after:#?}"
    );
    assert_eq!(
        news(&after),
        [
            "* the server restarted since you were last here: messages sent to #lobby in between are lost".to_string(),
            format!("{}: after", dave.addr),
        ],
        "{after:#?}"
    );
    carol.finish().await.unwrap();
    second.shutdown().await;
}

/// History on disk: the client's automatic reconnect after a restart
/// resumes where it was, gets what was said meanwhile once, and is not
/// told the server restarted.
#[tokio::test]
async fn after_a_restart_on_disk_the_client_catches_up_without_a_restart_warning() {
    let scratch = crate::durable::Scratch::new("client-restart");
    let first = TestServer::start_with(crate::durable::on_disk(&scratch.db())).await;
    let proxy = Proxy::start(first.addr).await;
    let mut carol = Driven::reconnecting(&proxy.url(), "carol");
    carol
        .until(|l| l.starts_with("* carol (") && l.ends_with(") joined #lobby"))
        .await;
    let mut bob = Client::connect(&first).await;
    say_all(&mut bob, &["before"]).await;
    carol.until(|l| l.ends_with(": before")).await;

    proxy.hold();
    first.shutdown().await;
    carol.until(|l| l.contains("reconnecting")).await;
    let second = TestServer::start_with(crate::durable::on_disk(&scratch.db())).await;
    proxy.point_to(second.addr);
    let mut dave = Client::connect(&second).await;
    say_all(&mut dave, &["meanwhile"]).await;
    proxy.release();

    let after = carol.until(|l| l.starts_with("* caught up")).await;
    assert!(!after.iter().any(|l| l.contains("restarted")), "{after:#?}");
    assert_eq!(
        news(&after),
        [
            format!("{}: meanwhile", dave.addr),
            "* caught up on #lobby: 1 missed message".to_string(),
        ],
        "{after:#?}"
    );
    carol.finish().await.unwrap();
    second.shutdown().await;
}

#[tokio::test]
async fn messages_beyond_the_servers_history_are_reported_lost() {
    let server = server_with_history(2).await;
    let proxy = Proxy::start(server.addr).await;
    let mut carol = Driven::reconnecting(&proxy.url(), "carol");
    carol
        .until(|l| l.starts_with("* carol (") && l.ends_with(") joined #lobby"))
        .await;
    let mut bob = Client::connect(&server).await;
    say_all(&mut bob, &["seen"]).await;
    carol.until(|l| l.ends_with(": seen")).await;

    proxy.cut();
    carol.until(|l| l.contains("reconnecting")).await;
    say_all(&mut bob, &["m1", "m2", "m3", "m4", "m5"]).await;
    proxy.release();

    let after = carol.until(|l| l.starts_with("* caught up")).await;
    let b = bob.addr;
    assert_eq!(
        news(&after),
        [
            format!("{b}: m4"),
            format!("{b}: m5"),
            "* caught up on #lobby: 2 missed messages; 3 older ones could not be recovered (history too short)"
                .to_string(),
        ],
        "{after:#?}"
    );
    carol.finish().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn the_room_and_nickname_are_restored_after_reconnecting() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut carol = Driven::start(Config {
        room: Some("#rust".into()),
        ..Driven::config_for(&proxy.url(), "carol")
    });
    carol
        .until(|l| l.contains("carol") && l.contains("joined #rust"))
        .await;
    proxy.cut();
    carol.until(|l| l.contains("reconnecting")).await;
    proxy.release();
    carol.until(|l| l.starts_with("* caught up on #rust")).await;
    carol.type_line("/who").await;
    let who = carol.until(|l| l.starts_with("* 1 in #rust")).await;
    assert!(who.last().unwrap().contains("carol ("), "{who:?}");
    carol.finish().await.unwrap();
    server.shutdown().await;
}

/// Reads `peer`'s lines until its own message `text` comes back and
/// returns those before it: everything published before it.
async fn lines_before_own(peer: &mut Client, text: &str) -> Vec<String> {
    peer.send(text).await;
    let own = format!("{}: {text}", peer.addr);
    let mut before = Vec::new();
    for _ in 0..1000 {
        let line = peer.recv_text().await;
        if line == own {
            return before;
        }
        before.push(line);
    }
    panic!("own line {own:?} not within 1000 lines: {before:#?}");
}

#[tokio::test]
async fn a_client_with_nick_and_room_is_announced_once_in_that_room() {
    let server = TestServer::start().await;
    let mut lobby = Client::connect(&server).await;
    let mut rust = Client::connect(&server).await;
    rust.send("/join #rust").await;
    rust.recv_until(10, |l| l.ends_with(" joined #rust")).await;
    lobby.recv_until(10, |l| l.contains(" left #lobby")).await;
    let mut alice = Driven::start(Config {
        nick: Some("alice".into()),
        room: Some("#rust".into()),
        ..Config::new(server.url())
    });
    let shown = alice.until(|l| l.contains(" joined #rust")).await;
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(
        shown[0].starts_with("* welcome to chat! you are alice (")
            && shown[0].contains(") in #rust;"),
        "{shown:#?}"
    );
    // The room hears of alice once, by name; the lobby not at all.
    let joined = rust.recv_text().await;
    assert!(
        joined.starts_with("* alice (") && joined.ends_with(") joined #rust"),
        "{joined}"
    );
    alice.type_line("hi").await;
    let hi = rust.recv_text().await;
    assert!(hi.starts_with("alice (") && hi.ends_with("): hi"), "{hi}");
    assert_eq!(
        lines_before_own(&mut lobby, "quiet here").await,
        Vec::<String>::new()
    );
    alice.finish().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_reconnect_takes_the_place_back_without_a_word_to_the_room() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut bob = Client::connect(&server).await;
    let mut carol = Driven::reconnecting(&proxy.url(), "carol");
    carol
        .until(|l| l.starts_with("* carol (") && l.ends_with(") joined #lobby"))
        .await;
    bob.recv_until(10, |l| l.starts_with("* carol (")).await;
    proxy.cut();
    carol.until(|l| l.contains("reconnecting")).await;
    proxy.release();
    carol
        .until(|l| l.starts_with("* caught up on #lobby"))
        .await;
    carol.type_line("back").await;
    // Between carol's join and her next line, the room heard nothing of
    // her: no leave, no join, no rename.
    let own = |l: &str| l.starts_with("carol (") && l.ends_with("): back");
    let mut heard = Vec::new();
    for _ in 0..100 {
        let line = bob.recv_text().await;
        if own(&line) {
            break;
        }
        heard.push(line);
    }
    assert_eq!(heard, Vec::<String>::new());
    carol.finish().await.unwrap();
    // Her /quit-less end (input ended: a Close frame) is announced at once.
    bob.recv_until(10, |l| l == "* carol left #lobby").await;
    server.shutdown().await;
}

/// A fake chat server's first steps: accepts one client on `listener`,
/// upgrades it with the JSON subprotocol and welcomes it as `server`
/// (no rate, no nickname, no reclaim token: what an older server sends).
async fn welcome_one(listener: TcpListener, server: &str) -> WebSocketStream<TcpStream> {
    let (tcp, peer) = listener.accept().await.unwrap();
    let builder = ServerBuilder::new()
        .add_header(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat.v1.json"),
        )
        .unwrap();
    let (_req, mut ws) = builder.accept(tcp).await.unwrap();
    let welcome = Event::Welcome {
        server: server.into(),
        addr: peer,
        room: "#lobby".into(),
        online: 1,
        epoch: 1,
        rate: None,
        nick: None,
        reclaim: None,
    };
    let _ = ws.send(Message::text(welcome.to_json())).await;
    ws
}

/// A server from before the Hello (it ignores the URL's query and sends no
/// reclaim token): records every line it is sent.
async fn older_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut ws = welcome_one(listener, "old").await;
        while let Some(Ok(msg)) = ws.next().await {
            if let Some(text) = msg.as_text() {
                let _ = tx.send(text.to_string());
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_older_server_is_sent_nick_and_join_after_the_welcome() {
    let (addr, mut sent) = older_server().await;
    let mut alice = Driven::start(Config {
        nick: Some("alice".into()),
        room: Some("#rust".into()),
        ..Config::new(format!("ws://{addr}"))
    });
    assert!(alice.line().await.starts_with("* welcome to old!"));
    let mut lines = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(WAIT, sent.recv())
            .await
            .expect("the client sent nothing")
            .expect("the server ended");
        lines.push(line);
    }
    assert_eq!(lines, ["/nick alice", "/join #rust"]);
    alice.finish().await.unwrap();
}

impl Driven {
    fn config_for(url: &str, nick: &str) -> Config {
        Config {
            nick: Some(nick.into()),
            reconnect: true,
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..Config::new(url)
        }
    }
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_is_an_error() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut carol = Driven::start(Config::new(proxy.url()));
    carol.line().await;
    proxy.cut();
    let err = carol.end().await.unwrap_err();
    assert!(format!("{err:#}").contains("lost"), "{err:#}");
    server.shutdown().await;
}

#[tokio::test]
async fn with_retry_the_client_waits_for_the_server() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    // Nothing answers yet: the relay holds every connection.
    proxy.hold();
    let mut carol = Driven::start(Config {
        wait_for_server: true,
        ..Driven::config_for(&proxy.url(), "carol")
    });
    proxy.release();
    let welcome = carol.line().await;
    assert!(welcome.starts_with("* welcome"), "{welcome}");
    carol.finish().await.unwrap();
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Several servers: --url A,B

/// A loopback URL that nothing listens on (connecting is refused).
async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("ws://{addr}")
}

fn refused(url: &str) -> String {
    format!("cannot connect to {url}: connection refused (is the server running?)")
}

/// A server of the test's own sharing `redis` with the others.
async fn redis_node(redis: &RedisServer) -> TestServer {
    let mut config = crate::support::unlimited_rate();
    config.redis = Some(redis.url());
    TestServer::start_with(config).await
}

#[tokio::test]
async fn a_dead_server_first_in_the_list_is_passed_over_for_the_live_one() {
    let server = TestServer::start().await;
    let dead = dead_url().await;
    let live = server.url();
    // Without --retry: each server once, in order; the skip is told.
    let mut carol = Driven::start(Config::for_servers([dead.clone(), live.clone()]));
    assert_eq!(
        carol.line().await,
        format!("~ {}; trying {live}", refused(&dead))
    );
    let welcome = carol.line().await;
    assert!(welcome.starts_with("* welcome"), "{welcome}");
    carol.finish().await.unwrap();
    // With --retry: the same, within the first round (no pause).
    let mut carol = Driven::start(Config {
        wait_for_server: true,
        urls: vec![dead.clone(), live.clone()],
        ..Driven::config_for(&dead, "carol")
    });
    assert_eq!(
        carol.line().await,
        format!("~ {}; will keep trying", refused(&dead))
    );
    let welcome = carol.line().await;
    assert!(
        welcome.starts_with("* welcome to chat! you are carol ("),
        "{welcome}"
    );
    carol.finish().await.unwrap();
    // None answers: the error names each.
    let other = dead_url().await;
    let err = Driven::start(Config::for_servers([dead.clone(), other.clone()]))
        .finish()
        .await
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        format!(
            "none of the 2 servers could be reached: {}; {}",
            refused(&dead),
            refused(&other)
        )
    );
    server.shutdown().await;
}

/// Two servers sharing one Redis: when the client's server stops, it moves
/// to the other, keeps its nickname and room, and gets exactly the lines
/// said while it was away, with no restart warning (one epoch for both).
#[tokio::test]
async fn when_its_server_stops_the_client_moves_to_the_next_and_misses_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = redis_node(&redis).await;
    let b = redis_node(&redis).await;
    // B through a relay, so that the test can keep the client off it while
    // lines are said.
    let to_b = Proxy::start(b.addr).await;
    let mut carol = Driven::start(Config {
        room: Some("#rust".into()),
        urls: vec![a.url(), to_b.url()],
        ..Driven::config_for(&a.url(), "carol")
    });
    carol
        .until(|l| l.starts_with("* carol (") && l.ends_with(") joined #rust"))
        .await;
    let mut bob = Client::connect(&b).await;
    bob.send("/join #rust").await;
    let own_join = format!("* {} joined #rust", bob.addr);
    bob.recv_until(100, |l| l == own_join).await;
    say_all(&mut bob, &["before"]).await;
    carol.until(|l| l.ends_with(": before")).await;

    to_b.hold();
    let a_url = a.url();
    a.shutdown().await;
    let gone = carol.until(|l| l.contains("reconnecting")).await;
    let gone = gone.last().unwrap();
    assert!(
        gone.starts_with(&format!("~ the server at {a_url} went away")),
        "{gone}"
    );
    say_all(&mut bob, &["missed 1", "missed 2"]).await;
    to_b.release();

    let after = carol.until(|l| l.starts_with("* caught up")).await;
    assert!(
        after.contains(&format!("~ reconnected to {}", to_b.url())),
        "{after:#?}"
    );
    assert!(!after.iter().any(|l| l.contains("restarted")), "{after:#?}");
    let from = bob.addr;
    assert_eq!(
        news(&after),
        [
            format!("{from}: missed 1"),
            format!("{from}: missed 2"),
            "* caught up on #rust: 2 missed messages".to_string(),
        ],
        "{after:#?}"
    );
    // On B, under the nickname, in the room.
    let joined = bob.recv_until(100, |l| l.contains(" joined #rust")).await;
    assert!(joined.starts_with("* carol ("), "{joined}");
    carol.type_line("back").await;
    bob.recv_until(100, |l| l.starts_with("carol (") && l.ends_with("): back"))
        .await;
    carol.finish().await.unwrap();
    b.shutdown().await;
}

/// Without a shared Redis: the client still moves on to the next server
/// with its nickname and room (the other server's history is another, so
/// the resume says what is lost).
#[tokio::test]
async fn when_its_server_stops_the_client_moves_on_with_its_nickname_and_room() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    let mut carol = Driven::start(Config {
        room: Some("#rust".into()),
        urls: vec![a.url(), b.url()],
        ..Driven::config_for(&a.url(), "carol")
    });
    carol
        .until(|l| l.starts_with("* carol (") && l.ends_with(") joined #rust"))
        .await;
    a.shutdown().await;
    let after = carol
        .until(|l| l.starts_with("* the server restarted"))
        .await;
    assert!(
        after
            .iter()
            .any(|l| l.starts_with(&format!("~ reconnected to {} (", b.url()))),
        "{after:#?}"
    );
    carol.type_line("/who").await;
    let who = carol.until(|l| l.starts_with("* 1 in #rust")).await;
    assert!(who.last().unwrap().contains("carol ("), "{who:#?}");
    carol.finish().await.unwrap();
    b.shutdown().await;
}

/// Every URL is checked before any is tried: a bad one stops the client
/// with one line naming it.
#[tokio::test]
async fn a_malformed_url_in_the_list_is_refused_by_name() {
    let server = TestServer::start().await;
    for args in [
        vec!["--url".to_string(), format!("{},http//nope", server.url())],
        vec![
            "--url".to_string(),
            server.url(),
            "--url".to_string(),
            "http//nope".to_string(),
        ],
    ] {
        let done = tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let done = tokio::time::timeout(WAIT, done).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: invalid server URL \"http//nope\""),
            "{args:?}: {stderr}"
        );
        assert!(done.stdout.is_empty(), "nothing was tried: {args:?}");
    }
    // An empty entry (a stray comma) is named as such.
    let err = Driven::start(Config::for_servers([server.url(), String::new()]))
        .finish()
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("an empty one"), "{err:#}");
    server.shutdown().await;
}

/// `CHAT_URL` takes the comma list too, and spaces after the commas do
/// no harm.
#[tokio::test]
async fn chat_url_takes_a_comma_separated_list() {
    let server = TestServer::start().await;
    let dead = dead_url().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .env("CHAT_URL", format!("{dead}, {}", server.url()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"via the second\n").await.unwrap();
    drop(stdin);
    let done = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the piped client did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("~ {}; trying {}", refused(&dead), server.url()).as_str()),
        "{stdout}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("* welcome")),
        "{stdout}"
    );
    assert!(
        history(&server, 1)
            .await
            .iter()
            .any(|l| l.ends_with(": via the second")),
        "{stdout}"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Hostile servers and peers

/// A fake chat server that sends `events` (raw JSON) after a welcome.
async fn hostile_server(events: Vec<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut ws = welcome_one(listener, "evil\u{1b}]0;owned\u{7}").await;
        for event in events {
            if ws.send(Message::text(event)).await.is_err() {
                return;
            }
        }
        // Then wait for the client's Close and answer it.
        while let Some(Ok(_)) = ws.next().await {}
    });
    addr
}

const HOSTILE: &[&str] = &[
    "\u{1b}[2J\u{1b}[H",              // clear the screen, cursor home
    "\u{1b}]0;you are hacked\u{7}",   // set the window title (OSC)
    "\u{1b}]8;;http://evil\u{1b}\\x", // a hyperlink (OSC 8)
    "innocent\rforged line",          // CR overwrite
    "\u{9b}31mred via C1 CSI",        // C1 CSI 0x9b
    "abc\u{202e}gnp.exe",             // right-to-left override
    "\u{2066}isolated\u{2069}",       // bidi isolates
    "bell\u{7}del\u{7f}nul\u{0}",
    "two\nlines",
];

fn hostile_events() -> Vec<String> {
    let from: SocketAddr = "127.0.0.1:4242".parse().unwrap();
    let mut events = Vec::new();
    for (i, text) in HOSTILE.iter().enumerate() {
        events.push(
            Event::Message(ChatLine {
                room: "#lobby".into(),
                seq: i as u64 + 1,
                ts: 0,
                from,
                nick: Some((*text).into()),
                text: (*text).into(),
                history: false,
            })
            .to_json(),
        );
        events.push(
            Event::Left {
                room: (*text).into(),
                addr: from,
                nick: Some((*text).into()),
                reason: Some((*text).into()),
            }
            .to_json(),
        );
        events.push(
            Event::Error {
                message: (*text).into(),
            }
            .to_json(),
        );
    }
    // Not an event this client knows: still shown safely.
    events.push(format!(
        "{{\"type\":\"future\",\"text\":{}}}",
        serde_json::to_string(HOSTILE[0]).unwrap()
    ));
    events
}

fn assert_terminal_safe(out: &str) {
    for line in out.lines() {
        let bad: Vec<char> = line
            .chars()
            .filter(|&c| sanitize::is_dangerous(c))
            .collect();
        assert!(bad.is_empty(), "dangerous {bad:?} in {line:?}");
    }
}

#[tokio::test]
async fn hostile_text_never_reaches_the_output_as_control_characters() {
    for json in [false, true] {
        let addr = hostile_server(hostile_events()).await;
        let mut carol = Driven::start(Config {
            json,
            ..Config::new(format!("ws://{addr}"))
        });
        // Welcome, then three lines per hostile string, then the unknown.
        let count = 1 + HOSTILE.len() * 3 + 1;
        let mut out = String::new();
        for _ in 0..count {
            out.push_str(&carol.line().await);
            out.push('\n');
        }
        assert_terminal_safe(&out);
        // Visible, so the reader sees that someone tried.
        let expected = if json {
            [
                "\\u001b[2J",
                "innocent\\rforged line",
                "\\u009b31m",
                "abc\\u202egnp",
            ]
        } else {
            [
                "^[[2J",
                "innocent^Mforged line",
                "<U+009B>31m",
                "abc<U+202E>gnp",
            ]
        };
        for shown in expected {
            assert!(out.contains(shown), "{shown} missing in:\n{out}");
        }
        if json {
            for line in out.lines() {
                let _: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
        carol.finish().await.unwrap();
    }
}

#[tokio::test]
async fn an_oversized_message_from_the_server_is_refused() {
    let huge = format!(
        "{{\"type\":\"info\",\"text\":\"{}\"}}",
        "x".repeat(client::MAX_INCOMING_BYTES + 1)
    );
    let addr = hostile_server(vec![huge]).await;
    let mut carol = Driven::start(Config::new(format!("ws://{addr}")));
    carol.line().await;
    let err = carol.end().await.unwrap_err();
    assert!(format!("{err:#}").contains("failed"), "{err:#}");
}

proptest! {
    #[test]
    fn sanitised_text_holds_no_control_characters(s in any::<String>()) {
        let safe = sanitize::sanitize(&s);
        prop_assert!(!safe.chars().any(sanitize::is_dangerous));
        if !s.chars().any(sanitize::is_dangerous) {
            prop_assert_eq!(safe.as_ref(), s.as_str());
        }
    }

    #[test]
    fn control_heavy_text_is_made_visible(s in "[\\x00-\\x1f\\x7f-\\u{9f}\\u{202a}-\\u{202e}\\u{2066}-\\u{2069}a-z]{0,64}") {
        let safe = sanitize::sanitize(&s);
        prop_assert!(!safe.chars().any(sanitize::is_dangerous));
        // Letters survive in order: nothing visible is lost.
        let letters = |t: &str| t.chars().filter(char::is_ascii_lowercase).count();
        prop_assert!(letters(&safe) >= letters(&s));
    }

    #[test]
    fn json_stays_equivalent_after_sanitising(s in any::<String>()) {
        let raw = serde_json::to_string(&s).unwrap();
        let safe = sanitize::sanitize_json(&raw);
        prop_assert!(!safe.chars().any(sanitize::is_dangerous));
        let back: String = serde_json::from_str(&safe).unwrap();
        prop_assert_eq!(back, s);
    }
}

// ---------------------------------------------------------------------------
// wss://

/// A self-signed certificate for 127.0.0.1, written as PEM for `--ca`.
struct SelfSigned {
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    ca_file: PathBuf,
}

fn self_signed() -> SelfSigned {
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "chat-test-ca-{}-{}.pem",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
        .unwrap();
    SelfSigned {
        config: Arc::new(config),
        ca_file,
    }
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Terminates TLS and relays to the (plain) chat server, as a TLS front
/// end such as a reverse proxy would.
async fn tls_front(
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    upstream: SocketAddr,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_works_with_a_self_signed_certificate_given_by_ca() {
    let server = TestServer::start().await;
    let cert = self_signed();
    let front = tls_front(cert.config.clone(), server.addr).await;
    let url = format!("wss://{front}");

    let mut watcher = Client::connect(&server).await;
    let mut carol = Driven::start(Config {
        ca: Some(cert.ca_file.clone()),
        ..Config::new(url.clone())
    });
    assert!(carol.line().await.starts_with("* welcome"));
    carol.type_line("over tls").await;
    let line = watcher.recv_chat().await;
    assert!(line.ends_with(": over tls"), "{line}");
    carol.finish().await.unwrap();

    // Without the CA the certificate is not trusted, and the error says why.
    let carol = Driven::start(Config::new(url.clone()));
    let err = format!("{:#}", carol.finish().await.unwrap_err());
    assert!(
        err.starts_with(&format!("cannot connect to {url}: TLS failed")),
        "{err}"
    );
    assert!(err.contains("--ca"), "{err}");
    let _ = std::fs::remove_file(&cert.ca_file);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// The binary, interactively, in tmux

struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        std::process::Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("cannot run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pane(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "chat"])
    }

    /// Polls the pane (tmux has no change notification) until `pred`
    /// holds, for at most [`WAIT`].
    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let pane = self.pane();
            if pred(&pane) {
                return pane;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; pane:\n{pane}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn interactive_input_survives_incoming_messages() {
    if !Tmux::available() {
        eprintln!("SKIPPED interactive_input_survives_incoming_messages: tmux is not installed");
        return;
    }
    let server = TestServer::start().await;
    let tmux = Tmux {
        socket: format!("chat-test-{}-{}", std::process::id(), fastrand_suffix()),
    };
    let command = format!(
        "NO_COLOR=1 {} --url {} --nick erin",
        env!("CARGO_BIN_EXE_client"),
        server.url()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "100",
        "-y",
        "20",
        &command,
    ]);
    // Announced once, under the nickname it asked for with the upgrade.
    let pane = tmux
        .wait_for("the prompt", |p| {
            p.contains("* erin (") && p.contains(") joined #lobby")
        })
        .await;
    assert!(!pane.contains("is now known as"), "{pane}");
    let mut bob = Client::connect(&server).await;
    // Half a line, not sent.
    tmux.run(&["send-keys", "-t", "chat", "-l", "half typed"]);
    tmux.wait_for("the typed text", |p| p.contains("half typed"))
        .await;
    bob.send("hello while you type").await;
    let pane = tmux
        .wait_for("bob's message", |p| p.contains("hello while you type"))
        .await;
    let lines: Vec<&str> = pane.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines.last().unwrap();
    assert!(
        last.ends_with("> half typed"),
        "prompt line: {last:?}\n{pane}"
    );
    let msg = lines
        .iter()
        .position(|l| l.contains("hello while you type"))
        .unwrap();
    assert!(msg < lines.len() - 1, "{pane}");
    // Finish the line: it is sent whole.
    tmux.run(&["send-keys", "-t", "chat", " and done", "Enter"]);
    let got = bob.recv_until(100, |l| l.contains("half typed")).await;
    assert!(got.starts_with("erin ("), "{got}");
    assert!(got.ends_with(": half typed and done"), "{got}");
    // Arrow up brings the line back from the input history.
    tmux.run(&["send-keys", "-t", "chat", "Up"]);
    tmux.wait_for("the recalled line", |p| {
        p.lines()
            .rfind(|l| !l.trim().is_empty())
            .is_some_and(|l| l.ends_with("> half typed and done"))
    })
    .await;
    // Ctrl+U clears it, Ctrl+D leaves: bob sees erin go.
    tmux.run(&["send-keys", "-t", "chat", "C-u", "C-d"]);
    bob.recv_until(100, |l| l.starts_with("* erin left #lobby"))
        .await;
    server.shutdown().await;
}

impl Tmux {
    /// A tmux server of this test's own, with `command` in its one pane.
    fn start(command: &str) -> Self {
        let tmux = Tmux {
            socket: format!("chat-test-{}-{}", std::process::id(), fastrand_suffix()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "chat",
            "-x",
            "100",
            "-y",
            "20",
            command,
        ]);
        tmux
    }

    /// A shell with job control in the pane (for Ctrl+Z and `fg`).
    async fn shell() -> Self {
        let tmux = Self::start("env PS1='$ ' bash --norc --noprofile -i");
        tmux.wait_for("the shell", |p| Tmux::last_line(p) == "$")
            .await;
        tmux
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "chat"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Pastes `text` as a terminal does: bracketed (`-p`), line feeds sent
    /// as carriage returns, all of it at once.
    fn paste(&self, text: &str) {
        self.run(&["set-buffer", "-b", "paste", text]);
        self.run(&["paste-buffer", "-p", "-d", "-b", "paste", "-t", "chat"]);
    }

    /// The pane's last non-empty line.
    fn last_line(pane: &str) -> &str {
        pane.lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim_end()
    }
}

fn client_command(server: &TestServer, args: &str) -> String {
    format!(
        "NO_COLOR=1 {} --url {} {args}",
        env!("CARGO_BIN_EXE_client"),
        server.url()
    )
}

/// The last `n` lines of the room as the server's `/history` tells them.
async fn history(server: &TestServer, n: usize) -> Vec<String> {
    let mut c = Client::connect(server).await;
    c.send(&format!("/history {n}")).await;
    let header = c.recv_until(100, |l| l.starts_with("* history of")).await;
    let count: usize = header
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0);
    let mut lines = Vec::new();
    for _ in 0..count {
        lines.push(c.recv_text().await);
    }
    lines
}

#[tokio::test]
async fn every_pasted_line_is_sent_in_order() {
    if !Tmux::available() {
        eprintln!("SKIPPED every_pasted_line_is_sent_in_order: tmux is not installed");
        return;
    }
    let server = TestServer::start().await;
    let tmux = Tmux::start(&client_command(&server, "--nick erin"));
    tmux.wait_for("the prompt", |p| {
        Tmux::last_line(p).starts_with("[#lobby erin] >")
    })
    .await;
    // Half a line typed first: the paste continues it.
    tmux.keys(&["-l", "said: "]);
    tmux.paste("one\ntwo\nthree\nand half");
    let pane = tmux
        .wait_for("the pasted lines", |p| p.contains("erin: three"))
        .await;
    assert!(
        Tmux::last_line(&pane).ends_with("] > and half"),
        "the unfinished pasted line stays in the editor:\n{pane}"
    );
    let said: Vec<String> = history(&server, 10)
        .await
        .into_iter()
        .filter(|l| l.starts_with("erin ("))
        .map(|l| l.split_once("): ").map(|(_, t)| t.to_string()).unwrap_or(l))
        .collect();
    assert_eq!(said, ["said: one", "two", "three"], "{pane}");
    // Keys for several lines arriving at once (no bracketed paste) too.
    tmux.keys(&["C-u"]);
    tmux.keys(&["-l", "four\rfive\rsix\r"]);
    tmux.wait_for("the typed lines", |p| p.contains("erin: six"))
        .await;
    let said: Vec<String> = history(&server, 3).await;
    assert!(
        said[0].ends_with(": four") && said[1].ends_with(": five") && said[2].ends_with(": six"),
        "{said:#?}"
    );
    tmux.keys(&["C-c"]);
    server.shutdown().await;
}

#[tokio::test]
async fn ctrl_z_then_fg_restores_the_prompt_and_the_half_typed_line() {
    if !Tmux::available() {
        eprintln!("SKIPPED ctrl_z_then_fg_restores_the_prompt_and_the_half_typed_line: no tmux");
        return;
    }
    let server = TestServer::start().await;
    let tmux = Tmux::shell().await;
    tmux.keys(&["-l", &client_command(&server, "--nick erin")]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the prompt", |p| {
        Tmux::last_line(p).starts_with("[#lobby erin] >")
    })
    .await;
    let mut bob = Client::connect(&server).await;
    tmux.keys(&["-l", "half"]);
    tmux.wait_for("the typed text", |p| Tmux::last_line(p).ends_with("> half"))
        .await;
    tmux.keys(&["C-z"]);
    tmux.wait_for("the shell after Ctrl+Z", |p| {
        p.contains("Stopped") && Tmux::last_line(p) == "$"
    })
    .await;
    tmux.keys(&["-l", "fg"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the prompt after fg", |p| {
        Tmux::last_line(p) == "[#lobby erin] > half"
    })
    .await;
    // Raw mode is back: keys edit the line rather than being echoed.
    tmux.keys(&["-l", " done"]);
    tmux.keys(&["Enter"]);
    let got = bob.recv_until(100, |l| l.contains("half")).await;
    assert!(got.ends_with(": half done"), "{got}");
    let pane = tmux
        .wait_for("the echo", |p| p.contains("erin: half done"))
        .await;
    assert_eq!(
        pane.matches("half done").count(),
        1,
        "the line is shown once:\n{pane}"
    );
    tmux.keys(&["C-d"]);
    server.shutdown().await;
}

#[tokio::test]
async fn leaving_and_failing_leave_no_stray_prompt() {
    if !Tmux::available() {
        eprintln!("SKIPPED leaving_and_failing_leave_no_stray_prompt: tmux is not installed");
        return;
    }
    let server = TestServer::start().await;
    let tmux = Tmux::shell().await;
    tmux.keys(&["-l", &client_command(&server, "--nick erin")]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the prompt", |p| {
        Tmux::last_line(p).starts_with("[#lobby erin] >")
    })
    .await;
    tmux.keys(&["-l", "/quit"]);
    tmux.keys(&["Enter"]);
    // A port nothing listens on: bound, then freed.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    tmux.wait_for("the shell", |p| Tmux::last_line(p) == "$")
        .await;
    tmux.keys(&[
        "-l",
        &format!(
            "NO_COLOR=1 {} --url ws://127.0.0.1:{port}; echo status=$?",
            env!("CARGO_BIN_EXE_client")
        ),
    ]);
    tmux.keys(&["Enter"]);
    let pane = tmux.wait_for("the error", |p| p.contains("status=1")).await;
    let lines: Vec<&str> = pane.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.iter().any(|l| l.trim_end().ends_with('>')),
        "no empty prompt is left behind:\n{pane}"
    );
    let error = lines
        .iter()
        .position(|l| l.starts_with("error: cannot connect"))
        .unwrap_or_else(|| panic!("{pane}"));
    assert!(lines[error - 1].contains("--url ws://127.0.0.1"), "{pane}");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// --ca: chains and pinned self-signed certificates

/// A TLS front end presenting `chain` (leaf first) with `key`, and the
/// file holding `trusted` (PEM) for `--ca`.
struct Presented {
    front: SocketAddr,
    ca_file: PathBuf,
}

fn temp_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "chat-test-{what}-{}-{}.pem",
        std::process::id(),
        fastrand_suffix()
    ))
}

async fn present(
    upstream: SocketAddr,
    chain: Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>,
    key: tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>,
    trusted: &str,
) -> Presented {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let ca_file = temp_path("ca");
    std::fs::write(&ca_file, trusted).unwrap();
    Presented {
        front: tls_front(Arc::new(config), upstream).await,
        ca_file,
    }
}

/// A client with `--ca` connects over `wss://` and a line gets through.
async fn connects_with_ca(server: &TestServer, presented: &Presented) {
    let mut watcher = Client::connect(server).await;
    let mut carol = Driven::start(Config {
        ca: Some(presented.ca_file.clone()),
        ..Config::new(format!("wss://{}", presented.front))
    });
    let welcome = carol.line().await;
    assert!(welcome.starts_with("* welcome"), "{welcome}");
    carol.type_line("over tls").await;
    let line = watcher.recv_chat().await;
    assert!(line.ends_with(": over tls"), "{line}");
    carol.finish().await.unwrap();
}

/// A refusal reads as a sentence: no Rust `Debug` output in it.
fn assert_sentence(err: &str) {
    for debug in [
        "Other(",
        "OtherError",
        "CaUsedAsEndEntity",
        "UnknownIssuer",
        "{",
        "Error",
    ] {
        assert!(!err.contains(debug), "Debug output {debug:?} in: {err}");
    }
}

#[tokio::test]
async fn ca_trusts_a_ca_signed_chain_and_pins_a_self_signed_ca_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let server = TestServer::start().await;
    let pkcs8 = |key: &KeyPair| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

    // An rcgen CA and a leaf it signed: --ca names the CA, the server shows
    // the leaf (normal chain validation).
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let chained = present(
        server.addr,
        vec![leaf.der().clone(), ca.der().clone()],
        pkcs8(&leaf_key),
        &ca.pem(),
    )
    .await;
    connects_with_ca(&server, &chained).await;

    // A self-signed certificate that calls itself a CA, as `openssl req
    // -x509` makes them: WebPKI refuses it as a server's own, the pin takes it.
    let mut own = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    own.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let own_key = KeyPair::generate().unwrap();
    let own_cert = own.self_signed(&own_key).unwrap();
    let pinned = present(
        server.addr,
        vec![own_cert.der().clone()],
        pkcs8(&own_key),
        &own_cert.pem(),
    )
    .await;
    connects_with_ca(&server, &pinned).await;

    // Another certificate in --ca does not vouch for it: refused, in words.
    let url = format!("wss://{}", pinned.front);
    let carol = Driven::start(Config {
        ca: Some(chained.ca_file.clone()),
        ..Config::new(url.clone())
    });
    let err = format!("{:#}", carol.finish().await.unwrap_err());
    assert!(
        err.starts_with(&format!(
            "cannot connect to {url}: TLS failed: the server's certificate"
        )),
        "{err}"
    );
    assert!(err.contains("--ca FILE"), "{err}");
    assert_sentence(&err);
    for file in [&chained.ca_file, &pinned.ca_file] {
        let _ = std::fs::remove_file(file);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn ca_pins_a_certificate_made_by_openssl_req_x509() {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (temp_path("cert"), temp_path("key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED ca_pins_a_certificate_made_by_openssl_req_x509: no openssl");
        return;
    }
    let server = TestServer::start().await;
    let pem = std::fs::read_to_string(&cert).unwrap();
    let presented = present(
        server.addr,
        vec![CertificateDer::from_pem_file(&cert).unwrap()],
        PrivateKeyDer::from_pem_file(&key).unwrap(),
        &pem,
    )
    .await;
    connects_with_ca(&server, &presented).await;
    for file in [&cert, &key, &presented.ca_file] {
        let _ = std::fs::remove_file(file);
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// --token

#[tokio::test]
async fn a_token_is_sent_as_bearer_and_its_absence_is_explained() {
    use chat::client::Secret;
    use chat::http::policy::{Policy, Token};
    let server = TestServer::start_with(server::Config {
        policy: Policy {
            token: Some(Token::new("s3cret")),
            ..Policy::default()
        },
        ..server::Config::default()
    })
    .await;
    let with = |token: Option<&str>| Config {
        token: token.map(Secret::new),
        ..Config::new(server.url())
    };
    let mut carol = Driven::start(with(Some("s3cret")));
    let welcome = carol.line().await;
    assert!(welcome.starts_with("* welcome"), "{welcome}");
    carol.finish().await.unwrap();

    let err = format!(
        "{:#}",
        Driven::start(with(None)).finish().await.unwrap_err()
    );
    assert_eq!(
        err,
        format!(
            "cannot connect to {}: the server needs a token: pass --token TOKEN or set CHAT_TOKEN",
            server.url()
        )
    );
    let err = format!(
        "{:#}",
        Driven::start(with(Some("guess")))
            .finish()
            .await
            .unwrap_err()
    );
    assert!(
        err.ends_with("the server refused the token (check --token or CHAT_TOKEN)"),
        "{err}"
    );
    assert!(!err.contains("guess"), "the token is never printed: {err}");
    assert!(!format!("{:?}", with(Some("s3cret"))).contains("s3cret"));
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// The binary in a pipe

#[tokio::test]
async fn a_closed_stdout_ends_the_piped_client_quietly() {
    let server = TestServer::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--url", &server.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Input stays open: only the closed output can end it.
    let _stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, out.next_line()).await.unwrap();
    assert!(first.unwrap().unwrap().starts_with("* welcome"));
    // `head -n 1` is done: the reading end goes away.
    drop(out);
    let mut bob = Client::connect(&server).await;
    bob.send("anyone there?").await;
    let done = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the client did not end when its output closed")
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "a closed stdout is no error");
    server.shutdown().await;
}

#[test]
fn help_shows_the_room_default_and_never_the_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .arg("--help")
        .env("CHAT_TOKEN", "s3cret-in-env")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(help.contains("[default: #lobby]"), "{help}");
    assert!(help.contains("--token"), "{help}");
    assert!(!help.contains("s3cret-in-env"), "{help}");
}

#[tokio::test]
async fn the_prompt_shows_the_room_the_nick_and_a_lost_connection() {
    if !Tmux::available() {
        eprintln!("SKIPPED the_prompt_shows_the_room_the_nick_and_a_lost_connection: no tmux");
        return;
    }
    let server = TestServer::start().await;
    let tmux = Tmux::start(&client_command(&server, "--nick erin --room '#rust'"));
    tmux.wait_for("the prompt", |p| Tmux::last_line(p) == "[#rust erin] >")
        .await;
    tmux.keys(&["-l", "/nick ern"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the new nick", |p| Tmux::last_line(p) == "[#rust ern] >")
        .await;
    tmux.keys(&["-l", "draft"]);
    server.shutdown().await;
    tmux.wait_for("the reconnecting marker", |p| {
        Tmux::last_line(p) == "[#rust ern (reconnecting)] > draft"
    })
    .await;
    tmux.keys(&["C-c"]);
}

#[tokio::test]
async fn tab_completes_nicknames_commands_and_rooms() {
    if !Tmux::available() {
        eprintln!("SKIPPED tab_completes_nicknames_commands_and_rooms: no tmux");
        return;
    }
    let server = TestServer::start().await;
    let tmux = Tmux::start(&client_command(&server, "--nick erin"));
    tmux.wait_for("the prompt", |p| Tmux::last_line(p) == "[#lobby erin] >")
        .await;
    let mut bob = Client::connect(&server).await;
    bob.send("/nick bobby").await;
    tmux.wait_for("bob's nick", |p| p.contains("is now known as bobby"))
        .await;
    tmux.keys(&["-l", "bo"]);
    tmux.keys(&["Tab"]);
    tmux.wait_for("the completed nick", |p| {
        Tmux::last_line(p) == "[#lobby erin] > bobby:"
    })
    .await;
    tmux.keys(&["-l", "hi"]);
    tmux.keys(&["Enter"]);
    let got = bob.recv_until(100, |l| l.starts_with("erin (")).await;
    assert!(got.ends_with("): bobby: hi"), "{got}");
    tmux.keys(&["-l", "/jo"]);
    tmux.keys(&["Tab"]);
    tmux.keys(&["-l", "#lo"]);
    tmux.keys(&["Tab"]);
    tmux.wait_for("the completed command and room", |p| {
        Tmux::last_line(p) == "[#lobby erin] > /join #lobby"
    })
    .await;
    tmux.keys(&["C-c"]);
    server.shutdown().await;
}

#[tokio::test]
async fn page_up_shows_the_lines_before_the_oldest_one_shown() {
    if !Tmux::available() {
        eprintln!("SKIPPED page_up_shows_the_lines_before_the_oldest_one_shown: no tmux");
        return;
    }
    let server = TestServer::start_with(crate::support::unlimited_rate()).await;
    let mut bob = Client::connect(&server).await;
    let lines: Vec<String> = (1..=80).map(|i| format!("old line {i}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    say_all(&mut bob, &lines).await;
    let tmux = Tmux::start(&client_command(&server, "--nick erin"));
    // Joining shows the last 20.
    tmux.wait_for("the recent lines", |p| p.contains("old line 80"))
        .await;
    tmux.wait_for("the prompt", |p| Tmux::last_line(p) == "[#lobby erin] >")
        .await;
    tmux.keys(&["PPage"]);
    // The 50 before line 61: 11 to 60, the last of them just above the prompt.
    tmux.wait_for("the page before", |p| p.contains("old line 60"))
        .await;
    tmux.keys(&["PPage"]);
    tmux.wait_for("the page before that", |p| p.contains("old line 10"))
        .await;
    tmux.keys(&["PPage"]);
    tmux.wait_for("the start", |p| {
        p.contains("nothing earlier to show in this room")
    })
    .await;
    tmux.keys(&["C-c"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_line_naming_you_rings_the_bell_and_history_comes_under_a_header() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED a_line_naming_you_rings_the_bell_and_history_comes_under_a_header: no tmux"
        );
        return;
    }
    let server = TestServer::start().await;
    let mut bob = Client::connect(&server).await;
    say_all(&mut bob, &["said before erin came"]).await;
    let tmux = Tmux::start(&client_command(&server, "--nick erin"));
    let bell = temp_path("bell");
    tmux.run(&[
        "set-hook",
        "-g",
        "alert-bell",
        &format!("run-shell 'touch {}'", bell.display()),
    ]);
    let pane = tmux
        .wait_for("the prompt", |p| Tmux::last_line(p) == "[#lobby erin] >")
        .await;
    let header = pane
        .lines()
        .position(|l| l.contains("── history of #lobby: the last 1 message ──"))
        .unwrap_or_else(|| panic!("no history header:\n{pane}"));
    assert!(
        pane.lines()
            .nth(header + 1)
            .is_some_and(|l| l.ends_with(": said before erin came")),
        "{pane}"
    );
    bob.send("lunch, Erin?").await;
    tmux.wait_for("the mention", |p| p.contains(": lunch, Erin?"))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bell.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bell did not ring"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&bell);
    tmux.keys(&["C-c"]);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// The rate limit: told in the welcome, kept by the client

fn rated(per_second: u32, burst: u32) -> server::Config {
    let mut config = server::Config::default();
    config.session.rate = Some(chat::session::Rate { per_second, burst });
    config
}

/// Runs the client binary in a pipe with `input` on its stdin; returns its
/// exit code and stderr.
async fn piped_client(url: &str, input: &str) -> (Option<i32>, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--url", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let done = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the piped client did not finish")
        .unwrap();
    (
        done.status.code(),
        String::from_utf8_lossy(&done.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_welcome_tells_the_rate_limit() {
    let server = TestServer::start_with(rated(20, 5)).await;
    let mut c = Client::connect_raw(&server, Some(chat::protocol::JSON_SUBPROTOCOL)).await;
    let welcome = c.recv_json_type("welcome").await;
    assert_eq!(
        welcome["rate"],
        serde_json::json!({"per_second": 20, "burst": 5}),
        "{welcome}"
    );
    server.shutdown().await;
    let unlimited = TestServer::start_with(crate::support::unlimited_rate()).await;
    let mut c = Client::connect_raw(&unlimited, Some(chat::protocol::JSON_SUBPROTOCOL)).await;
    let welcome = c.recv_json_type("welcome").await;
    assert!(welcome.get("rate").is_none(), "{welcome}");
    unlimited.shutdown().await;
}

#[tokio::test]
async fn a_piped_file_longer_than_the_burst_is_delivered_whole() {
    // seq 1 30 | client, against 20 a second in bursts of 5.
    let server = TestServer::start_with(rated(20, 5)).await;
    let input: String = (1..=30).map(|i| format!("{i}\n")).collect();
    let (code, stderr) = piped_client(&server.url(), &input).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "");
    let said: Vec<String> = history(&server, 30)
        .await
        .iter()
        .filter_map(|l| l.rsplit_once(": ").map(|(_, t)| t.to_string()))
        .collect();
    let expected: Vec<String> = (1..=30).map(|i| i.to_string()).collect();
    assert_eq!(said, expected);
    server.shutdown().await;
}

/// A server that welcomes without a rate and refuses every line as over
/// the limit (as a server whose limit changed, or an older one, might).
async fn refusing_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut ws = welcome_one(listener, "strict").await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                let refusal = Event::Error {
                    message: format!(
                        "{} at most 1 messages a second (bursts of 1); this one was refused",
                        chat::protocol::RATE_REFUSED
                    ),
                };
                if ws.send(Message::text(refusal.to_json())).await.is_err() {
                    return;
                }
            }
        }
    });
    addr
}

#[tokio::test]
async fn refused_lines_make_the_piped_client_fail_and_are_told_on_stderr() {
    let addr = refusing_server().await;
    let (code, stderr) = piped_client(&format!("ws://{addr}"), "one\ntwo\n").await;
    assert_eq!(code, Some(1), "{stderr}");
    let refusals = stderr
        .lines()
        .filter(|l| l.starts_with("! slow down:"))
        .count();
    assert_eq!(refusals, 2, "{stderr}");
    assert!(
        stderr.ends_with("error: the server refused 2 lines for going over its rate limit\n"),
        "{stderr}"
    );
}

#[tokio::test]
async fn ctrl_c_stops_a_paste_that_is_still_being_paced() {
    if !Tmux::available() {
        eprintln!("SKIPPED ctrl_c_stops_a_paste_that_is_still_being_paced: no tmux");
        return;
    }
    // 2 a second: 30 pasted lines would take 15 s to send.
    let server = TestServer::start_with(rated(2, 2)).await;
    let tmux = Tmux::shell().await;
    tmux.keys(&["-l", &client_command(&server, "--nick erin")]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the prompt", |p| Tmux::last_line(p) == "[#lobby erin] >")
        .await;
    let paste: String = (1..=30).map(|i| format!("line {i}\n")).collect();
    tmux.paste(&paste);
    tmux.wait_for("the first line", |p| p.contains("erin: line 1"))
        .await;
    tmux.keys(&["C-c"]);
    let pane = tmux
        .wait_for("the shell, well before 15 s", |p| Tmux::last_line(p) == "$")
        .await;
    assert!(pane.contains("lines not sent: you left first"), "{pane}");
    let sent = history(&server, 30).await;
    assert!(sent.len() < 30, "{sent:#?}");
    server.shutdown().await;
}
