//! Several servers in this process sharing one conversation through a real
//! `redis-server` of the test's own (`--redis`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::redis_server::RedisServer;
use crate::support::{unlimited_rate, Client, TestServer, WAIT};

async fn node(redis: &RedisServer) -> TestServer {
    let mut config = unlimited_rate();
    config.redis = Some(redis.url());
    TestServer::start_with(config).await
}

/// A node whose presence expires 3 s after its last refresh (one a
/// second), for tests that wait on expiry or refresh.
async fn quick_node(redis: &RedisServer) -> TestServer {
    let mut config = unlimited_rate();
    config.redis = Some(redis.url());
    config.presence_ttl = Duration::from_secs(3);
    TestServer::start_with(config).await
}

/// A JSON client, past its welcome (returned) and its own join.
async fn connect_json(server: &TestServer) -> (Client, Value) {
    let mut c = Client::connect_raw(server, Some("chat.v1.json")).await;
    let welcome = c.recv_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let me = c.addr.to_string();
    for _ in 0..10_000 {
        let v = c.recv_json().await;
        if v["type"] == "joined" && v["addr"] == me {
            return (c, welcome);
        }
    }
    panic!("no own join");
}

/// The next `n` chat lines a client gets, as seq → text.
async fn lines(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let v = c.recv_json_type("message").await;
        let seq = v["seq"].as_u64().expect("a seq");
        got.push((seq, v["text"].as_str().unwrap_or_default().to_string()));
    }
    got
}

#[tokio::test]
async fn three_nodes_three_senders_every_client_sees_the_same_seq_to_line_mapping() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let nodes = [node(&redis).await, node(&redis).await, node(&redis).await];
    let mut clients = Vec::new();
    let mut epochs = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let (c, welcome) = connect_json(node).await;
            epochs.push(welcome["epoch"].as_u64().unwrap());
            clients.push(c);
        }
    }
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "one epoch: {epochs:?}"
    );
    const EACH: usize = 100;
    // The first client on each node sends, all three at once.
    let (s0, rest) = clients.split_at_mut(2);
    let (s1, s2) = rest.split_at_mut(2);
    tokio::join!(
        send_all(&mut s0[0], 0, EACH),
        send_all(&mut s1[0], 1, EACH),
        send_all(&mut s2[0], 2, EACH),
    );
    let mut seen: Vec<Vec<(u64, String)>> = Vec::new();
    for c in &mut clients {
        seen.push(
            tokio::time::timeout(WAIT * 3, lines(c, 3 * EACH))
                .await
                .unwrap(),
        );
    }
    let first = &seen[0];
    let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (1..=(3 * EACH) as u64).collect();
    assert_eq!(seqs, expected, "increasing, no gap, no duplicate");
    for (i, other) in seen.iter().enumerate() {
        assert_eq!(other, first, "client {i} saw another seq → line mapping");
    }
    // Each sender's lines in the order it sent them.
    let by_sender: BTreeMap<String, Vec<usize>> =
        first.iter().fold(BTreeMap::new(), |mut m, (_, text)| {
            let (who, i) = text.split_once('-').unwrap();
            m.entry(who.to_string())
                .or_default()
                .push(i.parse().unwrap());
            m
        });
    for (who, order) in by_sender {
        assert_eq!(order, (0..EACH).collect::<Vec<_>>(), "{who}'s order");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

async fn send_all(c: &mut Client, node: usize, n: usize) {
    for i in 0..n {
        c.send(&format!("n{node}-{i}")).await;
    }
}

#[tokio::test]
async fn resume_on_another_node_gets_exactly_the_missed_lines() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a_node, b_node) = (node(&redis).await, node(&redis).await);
    let (mut a, welcome) = connect_json(&a_node).await;
    let epoch = welcome["epoch"].as_u64().unwrap();
    let (mut b, _) = connect_json(&a_node).await;
    // Someone on the other node, so that the test knows when that node has
    // had every line from Redis: a client connecting before then would see
    // the missed lines arrive live, and again in the replay.
    let (mut watcher, _) = connect_json(&b_node).await;
    a.send("seen").await;
    let last = lines(&mut b, 1).await[0].0;
    drop(b);
    for i in 0..3 {
        a.send(&format!("missed {i}")).await;
    }
    lines(&mut a, 4).await;
    lines(&mut watcher, 4).await;
    // Back on the other node, and on a node started after the lines were
    // sent (it reads them from Redis).
    let c_node = node(&redis).await;
    for server in [&b_node, &c_node] {
        let (mut b, welcome) = connect_json(server).await;
        assert_eq!(welcome["epoch"].as_u64(), Some(epoch), "the same epoch");
        b.send(&format!("/resume {epoch} {last}")).await;
        for i in 0..3 {
            let v = b.recv_json_type("message").await;
            assert_eq!(v["text"], format!("missed {i}"));
            assert_eq!(v["seq"], last + 1 + i);
            assert_eq!(v["history"], true);
        }
        let resumed = b.recv_json_type("resumed").await;
        assert_eq!(resumed["replayed"], 3, "{resumed}");
        assert_eq!(resumed["lost"], 0);
        assert_eq!(resumed["restarted"], false);
    }
    for node in [a_node, b_node, c_node] {
        node.shutdown().await;
    }
}

/// An idle node notices by itself that Redis went away: `/readyz` turns
/// 503 without anyone sending, and 200 again once Redis is back.
#[tokio::test]
async fn redis_down_shows_in_readyz_on_an_idle_node() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = node(&redis).await;
    assert_eq!(crate::web::get(server.addr, "/readyz").await.status, 200);
    redis.stop();
    let mut status = 200;
    for _ in 0..100 {
        status = crate::web::get(server.addr, "/readyz").await.status;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503, "an idle node saw Redis go within 10 s");
    redis.restart();
    for _ in 0..100 {
        status = crate::web::get(server.addr, "/readyz").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "ready again within 10 s of Redis coming back");
    server.shutdown().await;
}

#[tokio::test]
async fn redis_down_refuses_sends_clearly_and_chat_comes_back_with_a_new_epoch() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let server = node(&redis).await;
    let (mut a, welcome) = connect_json(&server).await;
    let old_epoch = welcome["epoch"].as_u64().unwrap();
    a.send("before").await;
    assert_eq!(lines(&mut a, 1).await[0], (1, "before".into()));

    redis.stop();
    a.send("while down").await;
    let refused = a.recv_json_type("error").await;
    assert_eq!(
        refused["message"],
        "the chat is unavailable right now (its store is down); try again shortly"
    );
    // Still connected: commands that need no store work.
    a.send("/who").await;
    a.recv_json_type("who").await;
    let ready = crate::web::get(server.addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("Redis"), "{}", ready.body);

    // Redis back, empty: within 5 s lines go through again, numbered anew.
    redis.restart();
    let back = tokio::time::Instant::now();
    let mut tries = 0;
    let line = loop {
        tries += 1;
        a.send(&format!("try {tries}")).await;
        let v = a.recv_json().await;
        match v["type"].as_str() {
            Some("message") => break v,
            Some("error") => {
                assert!(
                    back.elapsed() < Duration::from_secs(5),
                    "still refused 5 s after Redis came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => {}
        }
    };
    assert_eq!(
        line["seq"], 1,
        "an empty Redis starts the room again: {line}"
    );
    assert_eq!(crate::web::get(server.addr, "/readyz").await.status, 200);
    // The new epoch is told to newcomers, and a resume across it says so.
    let (mut b, welcome) = connect_json(&server).await;
    let new_epoch = welcome["epoch"].as_u64().unwrap();
    assert_ne!(new_epoch, old_epoch);
    b.send(&format!("/resume {old_epoch} 1")).await;
    let resumed = b.recv_json_type("resumed").await;
    assert_eq!(resumed["restarted"], true, "{resumed}");
    server.shutdown().await;
}

/// The next event of `kind` about `addr` (its `addr` field).
async fn event_about(c: &mut Client, kind: &str, addr: &str) -> Value {
    for _ in 0..10_000 {
        let v = c.recv_json_type(kind).await;
        if v["addr"] == addr {
            return v;
        }
    }
    panic!("no {kind} about {addr}");
}

/// Sets a nickname and waits for the room to be told (the claim across
/// nodes comes first).
async fn nick(c: &mut Client, nick: &str) {
    c.send(&format!("/nick {nick}")).await;
    let v = event_about(c, "nick", &c.addr.to_string()).await;
    assert_eq!(v["new"], nick, "{v}");
}

/// What `/who` lists, as nick (or address) strings, sorted.
async fn who(c: &mut Client) -> Vec<String> {
    c.send("/who").await;
    let v = c.recv_json_type("who").await;
    let mut names: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            m["nick"].as_str().map_or_else(
                || m["addr"].as_str().unwrap_or("?").to_string(),
                String::from,
            )
        })
        .collect();
    names.sort();
    names
}

/// `/who` asked until it lists `expected` (sorted), `pause` apart, at most
/// 50 times.
async fn who_until(c: &mut Client, expected: &[&str], pause: Duration) {
    let mut names = Vec::new();
    for _ in 0..50 {
        names = who(c).await;
        if names == expected {
            return;
        }
        tokio::time::sleep(pause).await;
    }
    assert_eq!(names, expected, "/who never listed them");
}

/// `/rooms` as (name, members), asked until it says `expected` (what
/// another node wrote reaches Redis a moment after its announcement),
/// at most 50 times.
async fn rooms_until(c: &mut Client, expected: &[(&str, u64)]) {
    let mut last = Value::Null;
    for _ in 0..50 {
        c.send("/rooms").await;
        last = c.recv_json_type("rooms").await;
        let got: Vec<(String, u64)> = last["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["members"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let want: Vec<(String, u64)> = expected.iter().map(|(n, m)| (n.to_string(), *m)).collect();
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/rooms never said {expected:?}; last: {last}");
}

#[tokio::test]
async fn presence_who_and_rooms_span_every_node() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (node(&redis).await, node(&redis).await);
    let (mut alice, _) = connect_json(&one).await;
    nick(&mut alice, "alice").await;
    // A join on the other node is announced here...
    let (mut bob, _) = connect_json(&two).await;
    let bob_addr = bob.addr.to_string();
    let joined = event_about(&mut alice, "joined", &bob_addr).await;
    assert_eq!(joined["room"], "#lobby");
    // ...and so is a nickname change.
    nick(&mut bob, "bob").await;
    let renamed = event_about(&mut alice, "nick", &bob_addr).await;
    assert_eq!(renamed["new"], "bob");
    // `/who` lists both, on both nodes.
    assert_eq!(who(&mut alice).await, ["alice", "bob"]);
    assert_eq!(who(&mut bob).await, ["alice", "bob"]);
    // `/rooms` counts every node's members.
    rooms_until(&mut alice, &[("#lobby", 2)]).await;
    bob.send("/join #rust").await;
    let left = event_about(&mut alice, "left", &bob_addr).await;
    assert_eq!(left["reason"], "joined #rust", "{left}");
    rooms_until(&mut alice, &[("#lobby", 1), ("#rust", 1)]).await;
    assert_eq!(who(&mut alice).await, ["alice"]);
    // A third node, started now, sees the same.
    let three = node(&redis).await;
    let (mut carol, _) = connect_json(&three).await;
    carol.send("/join #rust").await;
    event_about(&mut bob, "joined", &carol.addr.to_string()).await;
    assert_eq!(who(&mut carol).await.len(), 2);
    assert!(who(&mut carol).await.contains(&"bob".to_string()));
    // A leave is announced on the other nodes.
    carol.send("/quit going home").await;
    let left = event_about(&mut bob, "left", &carol.addr.to_string()).await;
    assert_eq!(left["room"], "#rust", "{left}");
    assert_eq!(left["reason"], "going home", "{left}");
    for server in [one, two, three] {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_private_message_reaches_a_member_of_another_node() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (node(&redis).await, node(&redis).await);
    let (mut alice, _) = connect_json(&one).await;
    let (mut bob, _) = connect_json(&two).await;
    nick(&mut alice, "alice").await;
    nick(&mut bob, "Bob").await;
    alice.send("/msg bob psst, only you").await;
    let got = bob.recv_json_type("private").await;
    assert_eq!(got["text"], "psst, only you");
    assert_eq!(got["nick"], "alice");
    assert_eq!(got["from"], alice.addr.to_string());
    assert_eq!(got["to"], bob.addr.to_string());
    // The sender's copy, once.
    let echo = alice.recv_json_type("private").await;
    assert_eq!(echo["text"], "psst, only you");
    assert_eq!(echo["to"], bob.addr.to_string());
    // And back.
    bob.send("/msg alice got it").await;
    assert_eq!(alice.recv_json_type("private").await["text"], "got it");
    // Nobody has that nickname on any node.
    alice.send("/msg nobody hello?").await;
    let error = alice.recv_json_type("error").await;
    assert!(
        error["message"].as_str().unwrap_or("").contains("nobody"),
        "{error}"
    );
    // Bob leaves: his nickname finds nobody any more.
    bob.send("/quit").await;
    event_about(&mut alice, "left", &bob.addr.to_string()).await;
    alice.send("/msg bob still there?").await;
    assert!(alice.recv_json_type("error").await["message"]
        .as_str()
        .unwrap_or("")
        .contains("bob"));
    for server in [one, two] {
        server.shutdown().await;
    }
}

/// Two nodes racing for one nickname, twenty times: exactly one wins each
/// time, and the loser is told it is taken. A nickname asked for in the
/// upgrade is checked across nodes too.
#[tokio::test]
async fn a_nickname_is_unique_across_nodes_and_one_of_two_racing_wins() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (node(&redis).await, node(&redis).await);
    let (mut a, _) = connect_json(&one).await;
    let (mut b, _) = connect_json(&two).await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    for round in 0..20 {
        let wanted = format!("racer{round}");
        let line = format!("/nick {wanted}");
        tokio::join!(a.send(&line), b.send(&line));
        // Each client hears its own outcome: its rename, or the refusal.
        let outcome = |v: &Value, me: &str| -> Option<bool> {
            match v["type"].as_str() {
                Some("nick") if v["addr"] == me && v["new"] == wanted => Some(true),
                Some("error") => Some(false),
                _ => None,
            }
        };
        let mut results = Vec::new();
        for (c, me) in [(&mut a, &a_addr), (&mut b, &b_addr)] {
            let won = loop {
                let v = c.recv_json().await;
                if let Some(won) = outcome(&v, me) {
                    if !won {
                        assert!(v["message"].as_str().unwrap_or("").contains(&wanted), "{v}");
                    }
                    break won;
                }
            };
            results.push(won);
        }
        assert_eq!(
            results.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one wins, got {results:?}"
        );
    }
    // A nickname asked for in the upgrade, held on the other node: the
    // newcomer joins without it and is told why.
    b.send("/nick holder").await;
    event_about(&mut b, "nick", &b_addr).await;
    let mut c = Client::connect_query(&one, "nick=Holder", Some("chat.v1.json")).await;
    let welcome = c.recv_json_type("welcome").await;
    assert!(welcome["nick"].is_null(), "{welcome}");
    let refused = c.recv_json_type("error").await;
    assert!(
        refused["message"].as_str().unwrap_or("").contains("Holder"),
        "{refused}"
    );
    // Once its holder leaves, it is free on every node.
    b.send("/quit").await;
    event_about(&mut a, "left", &b_addr).await;
    let mut d = Client::connect_query(&one, "nick=holder", Some("chat.v1.json")).await;
    let welcome = d.recv_json_type("welcome").await;
    assert_eq!(welcome["nick"], "holder", "{welcome}");
    for server in [one, two] {
        server.shutdown().await;
    }
}

/// A node in a process of its own, to be killed: `--presence-ttl 3`.
async fn node_process(redis: &RedisServer) -> (tokio::process::Child, String) {
    let url = redis.url();
    let args = ["--redis", &url, "--presence-ttl", "3", "--rate-limit", "0"];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    crate::support::spawn_server(&args).await
}

/// `kill -9` a node: within 30 s (here a TTL of 3 s) another node shows
/// its users leaving and their nicknames are free; a client of the dead
/// node that comes back on another with its reclaim token keeps its
/// nickname at once, is not shown leaving or joining, and resumes with
/// exactly what it missed.
#[tokio::test]
async fn a_node_killed_loses_only_its_connections_and_its_users_leave_in_time() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let one = quick_node(&redis).await;
    let (mut two, two_url) = node_process(&redis).await;
    let (mut alice, welcome) = connect_json(&one).await;
    let epoch = welcome["epoch"].as_u64().unwrap();
    nick(&mut alice, "alice").await;
    let mut on_two = Vec::new();
    for name in ["bob", "carol"] {
        let url = format!("{two_url}/?nick={name}");
        let (mut c, _) = Client::connect_to(&url, Some("chat.v1.json")).await;
        let welcome = c.recv_json_type("welcome").await;
        assert_eq!(welcome["nick"], name);
        let token = welcome["reclaim"]
            .as_str()
            .expect("a reclaim token")
            .to_string();
        event_about(&mut alice, "joined", &c.addr.to_string()).await;
        on_two.push((c, token));
    }
    alice.send("before").await;
    let (seen, _) = lines(&mut on_two[0].0, 1).await[0].clone();

    two.kill().await.expect("kill -9 the node");
    let killed = tokio::time::Instant::now();
    for i in 0..3 {
        alice.send(&format!("after {i}")).await;
    }
    // The live node has them (else some would come to bob live, after
    // the resume, rather than in it).
    for _ in 0..4 {
        if lines(&mut alice, 1).await[0].1 == "after 2" {
            break;
        }
    }
    // Bob's client moves to the live node at once with its token.
    let (_, token) = &on_two[0];
    let url = format!("{}/?nick=bob&reclaim={token}", one.url());
    let (mut bob, _) = Client::connect_to(&url, Some("chat.v1.json")).await;
    let welcome = bob.recv_json_type("welcome").await;
    assert_eq!(welcome["nick"], "bob", "kept across nodes: {welcome}");
    assert_eq!(welcome["epoch"].as_u64(), Some(epoch));
    bob.send(&format!("/resume {epoch} {seen}")).await;
    let mut missed = Vec::new();
    loop {
        let v = bob.recv_json().await;
        match v["type"].as_str() {
            // The history shown on joining comes first, then the resume's.
            Some("message") => missed.push(v["text"].as_str().unwrap_or("").to_string()),
            Some("resumed") => {
                assert_eq!(v["lost"], 0, "{v}");
                assert_eq!(v["replayed"], 3, "{v}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        missed[missed.len() - 3..],
        ["after 0", "after 1", "after 2"]
    );
    // Carol does not come back: shown leaving within 30 s, and bob,
    // who did, neither leaves nor joins.
    let carol_addr = on_two[1].0.addr.to_string();
    let left = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let v = alice.recv_json().await;
            if matches!(v["type"].as_str(), Some("joined" | "left")) {
                assert_ne!(v["nick"], "bob", "bob moved, he did not come or go: {v}");
            }
            if v["type"] == "left" && v["addr"] == carol_addr {
                return v;
            }
        }
    })
    .await
    .expect("carol shown leaving within 30 s");
    println!("carol shown leaving {:?} after the kill", killed.elapsed());
    assert_eq!(left["nick"], "carol", "{left}");
    assert_eq!(left["reason"], "their server stopped", "{left}");
    assert_eq!(who(&mut alice).await, ["alice", "bob"]);
    // Her nickname is free.
    let mut again = Client::connect_query(&one, "nick=carol", Some("chat.v1.json")).await;
    assert_eq!(again.recv_json_type("welcome").await["nick"], "carol");
    one.shutdown().await;
}

/// Nodes starting and stopping in the middle of a burst change nothing
/// for the others: two senders on two nodes keep sending while a third
/// node stops (cleanly) and a fourth starts and a client joins there.
/// Every client of the nodes that stay sees seqs 1..=N once each in
/// order, and the latecomer an unbroken run from its history to N.
#[tokio::test]
async fn nodes_starting_and_stopping_mid_burst_leave_no_gap_and_no_duplicate() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two, three) = (node(&redis).await, node(&redis).await, node(&redis).await);
    let (mut s1, _) = connect_json(&one).await;
    let (mut s2, _) = connect_json(&two).await;
    let (mut w1, _) = connect_json(&one).await;
    let (mut w2, _) = connect_json(&two).await;
    let (mut leaving, _) = connect_json(&three).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let churn = async {
        lines(&mut leaving, 50).await;
        three.shutdown().await;
        let four = node(&redis).await;
        let mut late = Client::connect_raw(&four, Some("chat.v1.json")).await;
        // Its history, then 50 live lines: the burst is still going.
        let (mut seqs, mut live) = (Vec::new(), 0);
        while live < 50 {
            let v = late.recv_json_type("message").await;
            seqs.push(v["seq"].as_u64().expect("a seq"));
            if v["history"] != true {
                live += 1;
            }
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        (four, late, seqs)
    };
    let ((four, mut late, mut seqs), (n1, seen1), (n2, seen2)) = tokio::join!(
        churn,
        keep_sending(&mut s1, 1, &done),
        keep_sending(&mut s2, 2, &done)
    );
    let total = (n1 + n2) as u64;
    while seqs.last() != Some(&total) {
        let v = late.recv_json_type("message").await;
        seqs.push(v["seq"].as_u64().expect("a seq"));
    }
    let first = seqs[0];
    println!("{total} lines; the latecomer came in at seq {first}");
    assert!(
        seqs.iter().copied().eq(first..=total),
        "the latecomer's run from {first} is unbroken and single"
    );
    let expected: Vec<u64> = (1..=total).collect();
    for (c, mut seen) in [
        (&mut s1, seen1),
        (&mut s2, seen2),
        (&mut w1, vec![]),
        (&mut w2, vec![]),
    ] {
        let rest = total as usize - seen.len();
        seen.extend(
            tokio::time::timeout(WAIT * 3, lines(c, rest))
                .await
                .unwrap(),
        );
        let got: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(got, expected, "no gap, no duplicate, in order");
    }
    for server in [one, two, four] {
        server.shutdown().await;
    }
}

/// Sends until `done` (at most 20,000 lines), 5 at a time, each time
/// reading until its own 5th has come back (so the burst lasts as long
/// as the churn, paced by delivery). Returns how many it sent and the
/// lines it read meanwhile.
async fn keep_sending(
    c: &mut Client,
    node: usize,
    done: &std::sync::atomic::AtomicBool,
) -> (usize, Vec<(u64, String)>) {
    let (mut n, mut seen) = (0, Vec::new());
    while !done.load(std::sync::atomic::Ordering::Acquire) && n < 20_000 {
        for _ in 0..5 {
            c.send(&format!("n{node}-{n}")).await;
            n += 1;
        }
        let last = format!("n{node}-{}", n - 1);
        while seen.last().is_none_or(|(_, text)| *text != last) {
            seen.extend(lines(c, 1).await);
        }
    }
    (n, seen)
}

/// Redis away for ten seconds while two nodes' clients keep chatting:
/// every send is refused with the clear reply, nobody is disconnected,
/// both nodes answer `/readyz` 503; Redis back (empty): chat resumes
/// within 5 s across the nodes, and presence is rebuilt by the nodes'
/// refreshes.
#[tokio::test]
async fn ten_seconds_without_redis_refuse_sends_and_both_nodes_come_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (quick_node(&redis).await, quick_node(&redis).await);
    let (mut alice, _) = connect_json(&one).await;
    let (mut bob, _) = connect_json(&two).await;
    nick(&mut alice, "alice").await;
    nick(&mut bob, "bob").await;

    redis.stop();
    let down = tokio::time::Instant::now();
    let mut refused = 0;
    while down.elapsed() < Duration::from_secs(10) {
        alice.send("anyone?").await;
        let v = alice.recv_json_type("error").await;
        assert_eq!(
            v["message"],
            "the chat is unavailable right now (its store is down); try again shortly"
        );
        refused += 1;
        // Chatting at a person's pace, not a flood.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(refused >= 10, "{refused}");
    for server in [&one, &two] {
        assert_eq!(crate::web::get(server.addr, "/readyz").await.status, 503);
    }

    redis.restart();
    let back = tokio::time::Instant::now();
    let line = loop {
        alice.send("back?").await;
        let v = alice.recv_json().await;
        match v["type"].as_str() {
            Some("message") => break v,
            Some("error") => {
                assert!(
                    back.elapsed() < Duration::from_secs(5),
                    "still refused 5 s after Redis came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => {}
        }
    };
    println!("chat back {:?} after Redis", back.elapsed());
    // Bob, on the other node, gets it: the same line, numbered anew.
    let got = bob.recv_json_type("message").await;
    assert_eq!(got["seq"], line["seq"]);
    assert_eq!(got["text"], line["text"]);
    // The empty Redis learns who is where again from the refreshes.
    who_until(&mut bob, &["alice", "bob"], Duration::from_millis(100)).await;
    for server in [&one, &two] {
        assert_eq!(crate::web::get(server.addr, "/readyz").await.status, 200);
    }
    one.shutdown().await;
    two.shutdown().await;
}

/// A reclaim on the same node (the client came back before its old
/// connection was noticed gone) changes nothing on the others: no leave,
/// no join, and `/who` lists it once.
#[tokio::test]
async fn a_reclaim_on_its_own_node_is_silent_on_the_others() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (node(&redis).await, node(&redis).await);
    let (mut alice, _) = connect_json(&two).await;
    nick(&mut alice, "alice").await;
    let mut bob = Client::connect_query(&one, "nick=bob", Some("chat.v1.json")).await;
    let welcome = bob.recv_json_type("welcome").await;
    let token = welcome["reclaim"].as_str().expect("a token").to_string();
    event_about(&mut alice, "joined", &bob.addr.to_string()).await;
    let query = format!("nick=bob&reclaim={token}");
    let mut back = Client::connect_query(&one, &query, Some("chat.v1.json")).await;
    assert_eq!(back.recv_json_type("welcome").await["nick"], "bob");
    // Something said after the reclaim, to know alice has had everything
    // published before it.
    back.send("/me is back").await;
    loop {
        let v = alice.recv_json().await;
        if v["type"] == "action" {
            assert_eq!(v["from"], back.addr.to_string());
            break;
        }
        assert!(
            !matches!(v["type"].as_str(), Some("joined" | "left")),
            "a reclaim is silent: {v}"
        );
    }
    // Bob listed once.
    who_until(&mut alice, &["alice", "bob"], Duration::from_millis(20)).await;
    drop(bob);
    for server in [one, two] {
        server.shutdown().await;
    }
}

/// A welcome's `online` counts every node (as of the last refresh).
#[tokio::test]
async fn the_welcome_counts_everyone_online_on_every_node() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (one, two) = (quick_node(&redis).await, quick_node(&redis).await);
    let _on_two: Vec<Client> =
        futures_util::future::join_all((0..3).map(|_| async { connect_json(&two).await.0 })).await;
    // Three on the other node, and the newcomer itself: 4, once node one
    // has counted (it does every second with this TTL).
    let mut online = 0;
    for _ in 0..40 {
        let (_c, welcome) = connect_json(&one).await;
        online = welcome["online"].as_u64().unwrap_or(0);
        if online >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(online, 4, "the three on the other node and the newcomer");
    one.shutdown().await;
    two.shutdown().await;
}
