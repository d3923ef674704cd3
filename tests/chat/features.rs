//! Issue 3: nicknames, presence, rooms, private messages, history.

use std::time::Duration;

use chat::server::Config;
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_websockets::CloseCode;

use crate::support::{unlimited_rate, Client, TestServer, WAIT};

/// Connects a JSON client and reads up to its own join event; returns the
/// client and its welcome.
async fn connect_json(server: &TestServer) -> (Client, Value) {
    let mut c = Client::connect_raw(server, Some("chat.v1.json")).await;
    let welcome = c.recv_json().await;
    assert_eq!(welcome["type"], "welcome");
    let me = c.addr.to_string();
    for _ in 0..10_000 {
        let v = c.recv_json().await;
        if v["type"] == "joined" && v["addr"] == me {
            return (c, welcome);
        }
    }
    panic!("no own join event");
}

#[tokio::test]
async fn nicknames_are_announced_and_tag_messages() {
    let server = TestServer::start().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.recv_text().await; // b joined
    a.send("/nick alice").await;
    let notice = format!("* {} is now known as alice", a.addr);
    assert_eq!(a.recv_text().await, notice);
    assert_eq!(b.recv_text().await, notice);
    a.send("hi").await;
    assert_eq!(b.recv_text().await, format!("alice ({}): hi", a.addr));
    a.send("/nick ally").await;
    assert_eq!(b.recv_text().await, "* alice is now known as ally");
    // Taken (ignoring case) and invalid names: an error to the asker only.
    b.send("/nick ALLY").await;
    assert_eq!(
        b.recv_text().await,
        "! the nickname ALLY is taken; pick another with /nick NAME"
    );
    b.send("/nick émile").await;
    assert!(b.recv_text().await.starts_with("! invalid nickname"));
    b.send("/nick bob").await;
    let bob = format!("* {} is now known as bob", b.addr);
    assert_eq!(b.recv_text().await, bob);
    // a saw nothing of b's failed attempts.
    assert_eq!(a.recv_text().await, format!("alice ({}): hi", a.addr));
    assert_eq!(a.recv_text().await, "* alice is now known as ally");
    assert_eq!(a.recv_text().await, bob);
    server.shutdown().await;
}

#[tokio::test]
async fn a_nickname_race_has_exactly_one_winner() {
    let server = TestServer::start().await;
    const RACERS: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..RACERS {
        clients.push(Client::connect(&server).await);
    }
    // Let every client see every join, so what follows is only the race.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..RACERS {
            assert!(c.recv_text().await.contains(" joined #lobby"));
        }
    }
    // How each client's rename notice starts: its address, later its nick.
    let mut names: Vec<String> = clients.iter().map(|c| c.addr.to_string()).collect();
    for round in 0..5 {
        let prize = format!("prize{round}");
        // Every racer sends before anyone reads.
        for c in clients.iter_mut() {
            c.send(&format!("/nick {prize}")).await;
        }
        let mut winners = 0;
        for (c, name) in clients.iter_mut().zip(&names) {
            let won = format!("* {name} is now known as {prize}");
            let outcome = c
                .recv_until(RACERS + 1, |l| l.starts_with('!') || l == won)
                .await;
            if outcome == won {
                winners += 1;
            } else {
                assert_eq!(
                    outcome,
                    format!("! the nickname {prize} is taken; pick another with /nick NAME")
                );
            }
        }
        assert_eq!(winners, 1, "round {round}");
        // Everyone takes a unique name, freeing the prize; drain the notices.
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&format!("/nick r{round}c{i}")).await;
        }
        for c in clients.iter_mut() {
            // The winner's notice may still be queued ahead of the renames.
            let mut renames = 0;
            for _ in 0..RACERS + 1 {
                let line = c.recv_text().await;
                if line.ends_with(&format!("now known as {prize}")) {
                    continue;
                }
                assert!(line.contains(&format!("now known as r{round}c")), "{line}");
                renames += 1;
                if renames == RACERS {
                    break;
                }
            }
            assert_eq!(renames, RACERS);
        }
        for (i, name) in names.iter_mut().enumerate() {
            *name = format!("r{round}c{i}");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn who_me_and_rooms() {
    let server = TestServer::start().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.recv_text().await; // b joined
    a.send("/nick alice").await;
    a.recv_text().await;
    b.recv_text().await;
    b.send("/who").await;
    assert_eq!(
        b.recv_text().await,
        format!("* 2 in #lobby: alice ({}), {}", a.addr, b.addr)
    );
    a.send("/me waves").await;
    assert_eq!(b.recv_text().await, "* alice waves");
    assert_eq!(a.recv_text().await, "* alice waves");
    b.send("/join #Rust").await;
    // Both see b leave the lobby; b then sees itself arrive in #rust.
    let left = format!("* {} left #lobby (joined #rust)", b.addr);
    assert_eq!(a.recv_text().await, left);
    assert_eq!(b.recv_text().await, left);
    let entered = b.recv_text().await;
    assert!(
        entered.starts_with("* you are in #rust (epoch ") && entered.ends_with(", last message 0)"),
        "{entered}"
    );
    assert_eq!(b.recv_text().await, format!("* {} joined #rust", b.addr));
    b.send("/rooms").await;
    assert_eq!(b.recv_text().await, "* rooms: #lobby (1), #rust (1)");
    b.send("/history").await;
    assert_eq!(b.recv_text().await, "* no messages in #rust yet");
    // Messages stay in their room.
    b.send("only rust").await;
    a.send("only lobby").await;
    assert_eq!(b.recv_text().await, format!("{}: only rust", b.addr));
    assert_eq!(
        a.recv_text().await,
        format!("alice ({}): only lobby", a.addr)
    );
    b.send("/join #lobby").await;
    // b gets the lobby's recent history on the way back in, then its join.
    assert_eq!(
        b.recv_text().await,
        format!("* {} left #rust (joined #lobby)", b.addr)
    );
    assert!(b
        .recv_text()
        .await
        .starts_with("* you are in #lobby (epoch "));
    let header = b.recv_text().await;
    assert!(
        header.starts_with("* history of #lobby: the last"),
        "{header}"
    );
    let own_join = format!("* {} joined #lobby", b.addr);
    b.recv_until(30, |l| l == own_join).await;
    assert_eq!(a.recv_text().await, format!("* {} joined #lobby", b.addr));
    server.shutdown().await;
}

#[tokio::test]
async fn private_messages_are_seen_only_by_the_two() {
    let server = TestServer::start().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let mut c = Client::connect(&server).await;
    b.send("/nick bob").await;
    a.send("/msg BOB psst, secret").await;
    let line = format!("(private) {} -> bob ({}): psst, secret", a.addr, b.addr);
    assert_eq!(a.recv_chat().await, line);
    assert_eq!(b.recv_chat().await, line);
    a.send("/msg nobody hello").await;
    assert_eq!(
        a.recv_chat().await,
        "! nobody called nobody is online; /who lists your room"
    );
    // c's next non-presence line is the public one, not the private one.
    a.send("public").await;
    assert_eq!(c.recv_chat().await, format!("{}: public", a.addr));
    server.shutdown().await;
}

#[tokio::test]
async fn leave_notices_for_quit_and_abrupt_disconnects() {
    // A dropped connection's leave waits for the reconnect grace.
    let mut config = Config::default();
    config.hub.reconnect_grace = Duration::from_millis(200);
    let server = TestServer::start_with(config).await;
    let mut watcher = Client::connect(&server).await;
    let mut quitter = Client::connect(&server).await;
    let dropper = Client::connect(&server).await;
    quitter.send("/nick alice").await;
    quitter.send("/quit bye").await;
    let close = tokio::time::timeout(WAIT, async {
        loop {
            let msg = quitter.recv().await;
            if let Some((code, _)) = msg.as_close() {
                return code;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(close, CloseCode::NORMAL_CLOSURE);
    assert_eq!(
        watcher.recv_until(10, |l| l.contains(" left ")).await,
        "* alice left #lobby (bye)"
    );
    let dropper_addr = dropper.addr;
    drop(dropper.ws.into_inner());
    assert_eq!(
        watcher.recv_until(10, |l| l.contains(" left ")).await,
        format!("* {dropper_addr} left #lobby (connection lost)")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn history_is_replayed_before_live_lines_with_the_same_numbers() {
    // 25 messages at once: more than the rate limit's burst.
    let server = TestServer::start_with(unlimited_rate()).await;
    let (mut a, _) = connect_json(&server).await;
    for i in 1..=25 {
        a.send(&format!("m{i}")).await;
    }
    let mut live_seqs = Vec::new();
    for _ in 0..25 {
        let v = a.recv_json_type("message").await;
        live_seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(live_seqs, (1..=25).collect::<Vec<_>>());

    // A newcomer: welcome, then exactly the last 20 as history, then live.
    let mut b = Client::connect_raw(&server, Some("chat.v1.json")).await;
    assert_eq!(b.recv_json().await["type"], "welcome");
    let header = b.recv_json().await;
    assert_eq!(header["type"], "history");
    assert_eq!(header["count"], 20);
    for seq in 6..=25 {
        let v = b.recv_json().await;
        assert_eq!(v["type"], "message");
        assert_eq!(v["history"], true);
        assert_eq!(v["seq"], seq);
        assert_eq!(v["text"], format!("m{seq}"));
    }
    let joined = b.recv_json().await;
    assert_eq!(joined["type"], "joined");
    a.send("live").await;
    let v = b.recv_json().await;
    assert_eq!(v["seq"], 26);
    assert!(v.get("history").is_none());

    // /history N replays with the same numbers.
    b.send("/history 3").await;
    let header = b.recv_json_type("history").await;
    assert_eq!(header["count"], 3);
    for seq in 24..=26 {
        let v = b.recv_json().await;
        assert_eq!(
            (v["seq"].as_u64(), v["history"].as_bool()),
            (Some(seq), Some(true))
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn resume_replays_exactly_what_was_missed() {
    let server = TestServer::start().await;
    let (mut a, _) = connect_json(&server).await;
    let (mut b, welcome) = connect_json(&server).await;
    let epoch = welcome["epoch"].as_u64().unwrap();
    a.send("seen").await;
    let last = b.recv_json_type("message").await["seq"].as_u64().unwrap();
    drop(b);
    for i in 0..3 {
        a.send(&format!("missed {i}")).await;
    }
    for _ in 0..3 {
        a.recv_json_type("message").await;
    }
    let (mut b, _) = connect_json(&server).await;
    b.send(&format!("/resume {epoch} {last}")).await;
    for i in 0..3 {
        let v = b.recv_json_type("message").await;
        assert_eq!(v["text"], format!("missed {i}"));
        assert_eq!(v["seq"], last + 1 + i);
        assert_eq!(v["history"], true);
    }
    let resumed = b.recv_json().await;
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["replayed"], 3);
    assert_eq!(resumed["lost"], 0);
    assert_eq!(resumed["restarted"], false);
    // Another server run's numbers are recognised as such.
    b.send(&format!("/resume {} {last}", epoch ^ 1)).await;
    let resumed = b.recv_json_type("resumed").await;
    assert_eq!(resumed["restarted"], true);
    assert_eq!(resumed["replayed"], 0);
    server.shutdown().await;
}

#[tokio::test]
async fn json_events_for_features() {
    let server = TestServer::start().await;
    let (mut a, _) = connect_json(&server).await;
    let (mut b, _) = connect_json(&server).await;
    a.send("/nick alice").await;
    let nick = b.recv_json_type("nick").await;
    assert_eq!(nick["addr"], a.addr.to_string());
    assert!(nick["old"].is_null());
    assert_eq!(nick["new"], "alice");
    b.send("/msg alice hi").await;
    let private = a.recv_json_type("private").await;
    assert_eq!(private["from"], b.addr.to_string());
    assert_eq!(private["to_nick"], "alice");
    assert_eq!(private["text"], "hi");
    a.send("/me dances").await;
    let action = b.recv_json_type("action").await;
    assert_eq!(action["nick"], "alice");
    assert_eq!(action["text"], "dances");
    assert_eq!(action["seq"], 1);
    b.send("/who").await;
    let who = b.recv_json_type("who").await;
    assert_eq!(who["room"], "#lobby");
    assert_eq!(who["members"][0]["nick"], "alice");
    assert_eq!(who["members"][1]["addr"], b.addr.to_string());
    b.send("/rooms").await;
    let rooms = b.recv_json_type("rooms").await;
    assert_eq!(rooms["rooms"][0]["name"], "#lobby");
    assert_eq!(rooms["rooms"][0]["members"], 2);
    b.send("/bogus").await;
    let err = b.recv_json_type("error").await;
    assert!(err["message"].as_str().unwrap().contains("/help"));
    b.send("/quit later").await;
    let left = a.recv_json_type("left").await;
    assert_eq!(left["reason"], "later");
    // b's stream ends after the Close.
    let rest =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = b.ws.next().await {} }).await;
    assert!(rest.is_ok());
    server.shutdown().await;
}
