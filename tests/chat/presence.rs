//! Issue 14, points 12 and 13: the nickname and room asked for with the
//! upgrade (announced once), the reclaim token, and the grace period that
//! keeps a dropped connection's place.

use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use serde_json::Value;
use tokio_websockets::{CloseCode, Message};

use crate::support::{Client, TestServer, WAIT};

const JSON: Option<&str> = Some("chat.v1.json");

/// A server without the rate limit (the tests poll `/who`) and with the
/// reconnect grace given.
async fn server_with_grace(grace: Duration) -> TestServer {
    let mut config = crate::support::unlimited_rate();
    config.hub.reconnect_grace = grace;
    TestServer::start_with(config).await
}

/// A JSON client on `/?QUERY`, with its welcome.
async fn json_client(server: &TestServer, query: &str) -> (Client, Value) {
    let mut c = Client::connect_query(server, query, JSON).await;
    let welcome = c.recv_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (c, welcome)
}

/// A text client on `/?QUERY`, with its welcome line.
async fn text_client(server: &TestServer, query: &str) -> (Client, String) {
    let mut c = Client::connect_query(server, query, None).await;
    let welcome = c.recv_text().await;
    assert!(welcome.starts_with("* welcome"), "{welcome}");
    (c, welcome)
}

/// Reads `c`'s lines until its own message `text` comes back, and returns
/// what came before it: a marker that everything published before it has
/// been seen.
async fn lines_before_own(c: &mut Client, text: &str) -> Vec<String> {
    c.send(text).await;
    let own = format!("{}: {text}", c.addr);
    let mut before = Vec::new();
    for _ in 0..1000 {
        let line = c.recv_text().await;
        if line == own {
            return before;
        }
        before.push(line);
    }
    panic!("own line {own:?} not within 1000 lines: {before:#?}");
}

/// Asks `/who` (text client) until `pred` holds of the answer.
async fn who_until(c: &mut Client, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        c.send("/who").await;
        let who = c
            .recv_until(100, |l| l.starts_with("* ") && l.contains(" in #"))
            .await;
        if pred(&who) {
            return who;
        }
        assert!(Instant::now() < deadline, "/who never satisfied: {who}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drops a client's TCP connection without a Close frame.
fn drop_without_close(c: Client) {
    drop(c.ws.into_inner());
}

#[tokio::test]
async fn nick_and_room_in_the_url_are_announced_once_in_that_room() {
    let server = TestServer::start().await;
    let (mut rust, _) = text_client(&server, "room=rust").await;
    let mut lobby = Client::connect(&server).await;
    rust.recv_until(10, |l| l.ends_with(" joined #rust")).await;
    let (mut alice, welcome) = text_client(&server, "nick=alice&room=%23Rust").await;
    let me = format!("alice ({})", alice.addr);
    assert_eq!(
        welcome,
        format!("* welcome to chat! you are {me} in #rust; 3 online; /help lists commands")
    );
    // One notice, in #rust, under the nickname: no address joining the
    // lobby, no rename, no leaving for #rust.
    assert_eq!(alice.recv_text().await, format!("* {me} joined #rust"));
    assert_eq!(rust.recv_text().await, format!("* {me} joined #rust"));
    alice.send("hi").await;
    assert_eq!(rust.recv_text().await, format!("{me}: hi"));
    assert_eq!(
        lines_before_own(&mut lobby, "anyone?").await,
        Vec::<String>::new()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_taken_or_invalid_nick_and_an_invalid_room_fall_back_with_errors() {
    let server = TestServer::start().await;
    let (_alice, _) = text_client(&server, "nick=alice").await;
    let (mut b, welcome) = text_client(&server, "nick=ALICE&room=%23rust").await;
    assert!(
        welcome.contains(&format!("you are {} in #rust", b.addr)),
        "{welcome}"
    );
    assert_eq!(
        b.recv_text().await,
        "! the nickname ALICE is taken; pick another with /nick NAME"
    );
    let (mut c, welcome) = text_client(&server, "nick=%C3%A9mile&room=no%20way").await;
    assert!(
        welcome.contains(&format!("you are {} in #lobby", c.addr)),
        "{welcome}"
    );
    assert!(c
        .recv_text()
        .await
        .starts_with("! invalid nickname \"émile\""));
    assert!(c
        .recv_text()
        .await
        .starts_with("! invalid room name \"no way\""));
    assert_eq!(c.recv_text().await, format!("* {} joined #lobby", c.addr));
    // The JSON welcome carries the nickname (none here) and the room.
    let (_d, welcome) = json_client(&server, "nick=dora&room=go").await;
    assert_eq!(
        (welcome["nick"].as_str(), welcome["room"].as_str()),
        (Some("dora"), Some("#go"))
    );
    let (_e, welcome) = json_client(&server, "").await;
    assert!(welcome.get("nick").is_none(), "{welcome}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_reconnect_within_the_grace_is_not_announced_and_no_reconnect_is_after_it() {
    let grace = Duration::from_millis(200);
    let server = server_with_grace(grace).await;
    let mut bob = Client::connect(&server).await;
    let (alice, welcome) = json_client(&server, "nick=alice").await;
    let token = welcome["reclaim"]
        .as_str()
        .expect("a reclaim token")
        .to_string();
    assert_eq!(token.len(), 48);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let (carol, _) = json_client(&server, "nick=carol").await;
    bob.recv_until(10, |l| l.starts_with("* carol (")).await;

    // alice's connection is lost: her place is held (she is not in /who,
    // nobody is told she left) ...
    drop_without_close(alice);
    who_until(&mut bob, |who| !who.contains("alice")).await;
    // ... and comes back, with her token, as alice, unannounced.
    let (mut alice, welcome) = json_client(&server, &format!("nick=alice&reclaim={token}")).await;
    assert_eq!(welcome["nick"], "alice");
    assert_eq!(welcome["room"], "#lobby");
    assert_ne!(
        welcome["reclaim"],
        token.as_str(),
        "a new token for the new session"
    );
    alice.send("back").await;
    bob.recv_until(10, |l| l.ends_with(": back")).await;

    // carol's is lost too, and she does not come back: her leave is
    // announced when the grace ends (after alice's grace would have).
    let dropped = Instant::now();
    drop_without_close(carol);
    let mut seen = Vec::new();
    for _ in 0..100 {
        let line = bob.recv_text().await;
        let done = line.starts_with("* carol left #lobby");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        dropped.elapsed() >= grace / 2,
        "left too soon: {:?}",
        dropped.elapsed()
    );
    assert_eq!(
        seen.iter()
            .filter(|l| l.starts_with("* "))
            .cloned()
            .collect::<Vec<_>>(),
        ["* carol left #lobby (connection lost)".to_string()],
        "alice's drop and return were not announced"
    );
    // Her nickname is free again.
    bob.send("/nick carol").await;
    assert!(bob.recv_text().await.ends_with("is now known as carol"));
    server.shutdown().await;
}

#[tokio::test]
async fn during_the_grace_the_nick_is_reserved_and_a_close_frame_leaves_at_once() {
    // Longer than any wait here: what is announced comes from a Close.
    let server = server_with_grace(Duration::from_secs(60)).await;
    let mut bob = Client::connect(&server).await;
    let (alice, _) = json_client(&server, "nick=alice").await;
    drop_without_close(alice);
    who_until(&mut bob, |who| !who.contains("alice")).await;
    // Without the token the nickname is not to be had.
    let (mut other, _) = text_client(&server, "nick=alice").await;
    assert_eq!(
        other.recv_text().await,
        "! the nickname alice is taken; pick another with /nick NAME"
    );
    // A client that closes with a Close frame is announced at once.
    let (mut dave, _) = text_client(&server, "nick=dave").await;
    dave.recv_until(10, |l| l.starts_with("* dave (")).await;
    let close = Message::close(Some(CloseCode::NORMAL_CLOSURE), "");
    let closing = tokio::time::timeout(WAIT, dave.ws.send(close)).await;
    assert!(matches!(closing, Ok(Ok(()))), "the Close was not sent");
    let left = bob
        .recv_until(10, |l| l.starts_with("* dave") && l.contains(" left "))
        .await;
    assert_eq!(left, "* dave left #lobby");
    // And one that says /quit.
    let (mut erin, _) = text_client(&server, "nick=erin").await;
    erin.send("/quit bye").await;
    let left = bob
        .recv_until(10, |l| l.starts_with("* erin") && l.contains(" left "))
        .await;
    assert_eq!(left, "* erin left #lobby (bye)");
    // Nothing was said about alice all along.
    let before = lines_before_own(&mut bob, "done").await;
    assert!(before.iter().all(|l| !l.contains("alice")), "{before:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_reclaim_closes_the_ghost_and_takes_nick_and_room_silently() {
    let server = TestServer::start().await;
    let (mut bob, _) = text_client(&server, "room=rust").await;
    let (mut ghost, welcome) = json_client(&server, "nick=alice&room=rust").await;
    let token = welcome["reclaim"].as_str().unwrap().to_string();
    bob.recv_until(10, |l| l.starts_with("* alice (")).await;
    // The ghost is still connected (its network went away unnoticed);
    // the reconnect asks for the lobby, but the token's place wins.
    let (mut alice, welcome) = json_client(&server, &format!("reclaim={token}&room=lobby")).await;
    assert_eq!(welcome["nick"], "alice");
    assert_eq!(welcome["room"], "#rust");
    // The ghost is closed, with a code that says why.
    let close = tokio::time::timeout(WAIT, async {
        loop {
            let msg = ghost.recv().await;
            if let Some((code, reason)) = msg.as_close() {
                return (u16::from(code), reason.to_string());
            }
        }
    })
    .await
    .expect("the ghost was not closed");
    assert_eq!(close, (4001, "replaced by a new connection".to_string()));
    // Nothing announced in the room: neither the ghost leaving nor the new
    // one joining; the new one speaks as alice.
    alice.send("still here").await;
    let line = bob.recv_text().await;
    assert_eq!(line, format!("alice ({}): still here", alice.addr));
    assert_eq!(lines_before_own(&mut bob, "ok").await, Vec::<String>::new());
    bob.send("/who").await;
    let who = bob.recv_text().await;
    assert_eq!(who.matches("alice").count(), 1, "{who}");
    // A token works once: shown again, it is ignored.
    let (_late, welcome) = json_client(&server, &format!("reclaim={token}")).await;
    assert!(welcome.get("nick").is_none(), "{welcome}");
    server.shutdown().await;
}
