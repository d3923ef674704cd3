//! The page in a real browser: Debian's chromium driven through
//! chromedriver by fantoccini, against an in-process server, with the
//! terminal client binary in the same conversation.
//!
//! Without chromium and chromedriver these tests say why and pass, except
//! where `CI` or `CHAT_REQUIRE_BROWSER` is set: there they fail, so CI
//! never skips them silently.

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chat::server::Config;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::support::{Client, TestServer, WAIT};

/// How long a page may take to show what a test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(20);
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    url: String,
    _process: Child,
}

fn find(name: &str, fixed: &str) -> Option<PathBuf> {
    if Path::new(fixed).exists() {
        return Some(fixed.into());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

impl Driver {
    /// Starts chromedriver, or says why it cannot (`None`: skip the test).
    async fn start() -> Option<Driver> {
        let (Some(driver), Some(_)) = (
            find("chromedriver", "/usr/bin/chromedriver"),
            find("chromium", CHROMIUM),
        ) else {
            let why = "chromium and chromedriver are not installed \
                       (Debian: apt-get install chromium chromium-driver)";
            if std::env::var_os("CI").is_some()
                || std::env::var_os("CHAT_REQUIRE_BROWSER").is_some()
            {
                panic!("browser tests cannot run: {why}");
            }
            eprintln!("skipping a browser test: {why}");
            return None;
        };
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let process = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready once it accepts connections (bounded).
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Some(Driver {
                    url: format!("http://{addr}"),
                    _process: process,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("chromedriver did not listen on {addr} within 5 s");
    }

    /// A new headless browser session.
    async fn session(&self, width: u32, height: u32) -> Browser {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        tokio::time::timeout(
            WAIT * 3,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&self.url),
        )
        .await
        .expect("browser session timed out")
        .expect("browser session starts")
    }
}

/// Runs `scenario` with the sessions, then closes every session whether it
/// passed or panicked (a session left open keeps a chromium running).
async fn closing<F>(sessions: Vec<Browser>, scenario: F)
where
    F: Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(scenario).catch_unwind().await;
    for session in sessions {
        let _ = tokio::time::timeout(WAIT, session.close()).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Evaluates `script` (a function body) in the page.
async fn eval(page: &Browser, script: &str) -> Value {
    page.execute(script, vec![]).await.expect("script runs")
}

/// Waits (bounded) until `script` returns true in the page.
async fn until(page: &Browser, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        if eval(page, script).await == Value::Bool(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let log = eval(page, "return document.getElementById('log').innerText").await;
            let state = eval(page, "return document.getElementById('state').innerText").await;
            panic!("the page did not show {what} in time; state: {state}; log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page's log has a line containing `text`.
async fn until_logged(page: &Browser, text: &str) {
    let script = format!(
        "return [...document.querySelectorAll('#log li')].some(li => li.textContent.includes({}))",
        json!(text)
    );
    until(page, &format!("a line with {text:?}"), &script).await;
}

async fn until_state(page: &Browser, state: &str) {
    let script = format!(
        "return document.getElementById('state').dataset.state === {}",
        json!(state)
    );
    until(page, &format!("the state {state:?}"), &script).await;
}

/// Opens the page and waits for it to be connected.
async fn open(page: &Browser, server: SocketAddr) {
    page.goto(&format!("http://{server}/"))
        .await
        .expect("the page loads");
    until_state(page, "connected").await;
}

/// Types `line` into the message box and presses Enter.
async fn say(page: &Browser, line: &str) {
    let input = page
        .find(Locator::Css("input[aria-label='Message']"))
        .await
        .expect("the message box");
    input.send_keys(&format!("{line}\u{E007}")).await.unwrap();
}

async fn set_nick(page: &Browser, nick: &str) {
    let input = page.find(Locator::Id("nick")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(&format!("{nick}\u{E007}")).await.unwrap();
    until_logged(page, &format!("is now known as {nick}")).await;
}

/// The terminal client binary in a pipe.
struct Terminal {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    _process: Child,
}

impl Terminal {
    fn start(server: SocketAddr, nick: &str) -> Self {
        let mut process = Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--url", &format!("ws://{server}"), "--nick", nick])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the client binary starts");
        Terminal {
            stdin: process.stdin.take().unwrap(),
            stdout: BufReader::new(process.stdout.take().unwrap()).lines(),
            _process: process,
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads lines until one contains `text`.
    async fn until(&mut self, text: &str) -> String {
        for _ in 0..1000 {
            let line = tokio::time::timeout(WAIT, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("the terminal client did not print {text:?}"))
                .unwrap()
                .expect("the client's output ended");
            if line.contains(text) {
                return line;
            }
        }
        panic!("{text:?} not among the client's first 1000 lines");
    }
}

#[tokio::test]
async fn two_browsers_and_the_terminal_client_talk_and_markup_stays_text() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start_with(crate::support::unlimited_rate()).await;
    let ann = driver.session(1000, 700).await;
    let ben = driver.session(1000, 700).await;
    closing(vec![ann.clone(), ben.clone()], async {
        open(&ann, server.addr).await;
        set_nick(&ann, "ann").await;
        open(&ben, server.addr).await;
        set_nick(&ben, "ben").await;
        let mut term = Terminal::start(server.addr, "tom");
        term.until("* tom (").await;
        until_logged(&ann, "tom (").await;

        say(&ann, "hello from ann").await;
        until_logged(&ben, "hello from ann").await;
        term.until("hello from ann").await;

        say(&ben, "/me waves back").await;
        until_logged(&ann, "ben waves back").await;
        term.until("ben waves back").await;

        term.send("hi from the terminal").await;
        until_logged(&ann, "hi from the terminal").await;
        until_logged(&ben, "hi from the terminal").await;

        // Private messages and who is here, typed as commands.
        say(&ann, "/msg ben psst").await;
        until_logged(&ben, "psst").await;
        until(
            &ann,
            "tom in the list of people",
            "return document.getElementById('people').textContent.includes('tom')",
        )
        .await;

        // Markup from a peer is shown as the text it is.
        let markup = "<img src=x onerror=alert(1)>";
        term.send(markup).await;
        for page in [&ann, &ben] {
            until_logged(page, markup).await;
            let images = eval(page, "return document.querySelectorAll('#log img').length").await;
            assert_eq!(images, json!(0));
            assert!(
                page.get_alert_text().await.is_err(),
                "an alert is open: the markup ran"
            );
        }

        // The log and the message box are what assistive technology finds.
        let log_role = eval(
            &ann,
            "return document.getElementById('log').getAttribute('role')",
        )
        .await;
        assert_eq!(log_role, json!("log"));
    })
    .await;
    server.shutdown().await;
}

/// A page that knows its nickname (remembered from the last visit) starts
/// with it: the room hears it join once, by name, with no rename after.
#[tokio::test]
async fn a_remembered_nickname_is_announced_once_on_the_next_visit() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start_with(crate::support::unlimited_rate()).await;
    let mut observer = Client::connect(&server).await;
    let page = driver.session(1000, 700).await;
    closing(vec![page.clone()], async {
        open(&page, server.addr).await;
        set_nick(&page, "ann").await;
        observer
            .recv_until(100, |l| l.contains("is now known as ann"))
            .await;
        // The next visit: the page remembers "ann" and asks for it in the URL.
        page.refresh().await.unwrap();
        until_state(&page, "connected").await;
        let joined = observer
            .recv_until(100, |l| l.contains("joined #lobby"))
            .await;
        assert!(joined.contains("ann ("), "announced by name: {joined}");
        // Something after the join, to see nothing came between.
        say(&page, "back again").await;
        let mut between = Vec::new();
        loop {
            let line = observer.recv_text().await;
            if line.contains("back again") {
                assert!(line.starts_with("ann ("), "{line}");
                break;
            }
            between.push(line);
            assert!(between.len() < 100, "no line back: {between:?}");
        }
        assert!(
            !between.iter().any(|l| l.contains("is now known as")),
            "renamed after joining: {between:?}"
        );
        let shown = eval(&page, "return document.getElementById('nick').value").await;
        assert_eq!(shown, json!("ann"));
    })
    .await;
    server.shutdown().await;
}

/// Scrollback in the page: joining shows the room's recent lines, and
/// "Earlier messages" puts the ones before them on top, in order, until
/// the first line; then it is no longer offered.
#[tokio::test]
async fn earlier_messages_page_back_to_the_first_line() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start_with(crate::support::unlimited_rate()).await;
    let mut writer = Client::connect(&server).await;
    for i in 1..=80 {
        writer.send(&format!("old line {i}")).await;
    }
    writer.recv_until(1000, |l| l.contains("old line 80")).await;
    let page = driver.session(1000, 700).await;
    closing(vec![page.clone()], async {
        open(&page, server.addr).await;
        until_logged(&page, "old line 80").await;
        let seqs = "return [...document.querySelectorAll('#log li[data-seq]')].map(li => Number(li.dataset.seq))";
        let shown = eval(&page, seqs).await;
        let first = shown[0].as_u64().unwrap();
        assert!(first > 1, "joining shows only the recent lines: {shown}");
        let button = "return !document.getElementById('older').hidden";
        assert_eq!(eval(&page, button).await, json!(true), "earlier messages are offered");
        // Pages of 50 until the first line.
        for _ in 0..3 {
            if eval(&page, button).await != json!(true) {
                break;
            }
            page.find(Locator::Id("older")).await.unwrap().click().await.unwrap();
            until(
                &page,
                "an earlier page",
                "return document.getElementById('older').disabled === false",
            )
            .await;
        }
        let shown = eval(&page, seqs).await;
        let shown: Vec<u64> = shown
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(shown, (1..=80).collect::<Vec<_>>(), "every line once, in order");
        assert_eq!(
            eval(&page, button).await,
            json!(false),
            "nothing earlier than the first line"
        );
    })
    .await;
    server.shutdown().await;
}

/// History on disk: the page in a room other than the lobby goes back to
/// it after a restart and resumes with that room's epoch (from `entered`),
/// so it shows what was said meanwhile once, and no "restarted" warning.
#[tokio::test]
async fn after_a_restart_on_disk_the_page_resumes_its_room_without_loss() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let scratch = crate::durable::Scratch::new("page-resume");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer::start_on(listener, None, crate::durable::on_disk(&scratch.db()));
    let page = driver.session(1000, 700).await;
    closing(vec![page.clone()], async {
        open(&page, addr).await;
        say(&page, "/join #rust").await;
        until(
            &page,
            "the room #rust",
            "return document.getElementById('room').textContent === '#rust'",
        )
        .await;
        say(&page, "first in rust").await;
        until_logged(&page, "first in rust").await;
        server.shutdown().await;
        until(
            &page,
            "the disconnected state",
            "return document.getElementById('state').dataset.state !== 'connected'",
        )
        .await;
        let listener = TcpListener::bind(addr).await.expect("the same port again");
        let server = TestServer::start_on(listener, None, crate::durable::on_disk(&scratch.db()));
        // Said while the page is still away (it retries with backoff).
        let mut other = Client::connect(&server).await;
        other.send("/join #rust").await;
        other.send("said meanwhile").await;
        other
            .recv_until(100, |l| l.contains("said meanwhile"))
            .await;
        until_state(&page, "connected").await;
        until_logged(&page, "caught up on #rust").await;
        until_logged(&page, "said meanwhile").await;
        let log = eval(&page, "return document.getElementById('log').innerText").await;
        let log = log.as_str().unwrap();
        assert!(!log.contains("restarted"), "{log}");
        assert_eq!(log.matches("said meanwhile").count(), 1, "{log}");
        assert_eq!(log.matches("first in rust").count(), 1, "{log}");
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_page_shows_a_lost_server_and_reconnects_to_its_restart_without_reloading() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer::start_on(listener, None, Config::default());
    let page = driver.session(1000, 700).await;
    closing(vec![page.clone()], async {
        open(&page, addr).await;
        set_nick(&page, "ann").await;
        say(&page, "before the restart").await;
        until_logged(&page, "before the restart").await;
        // Marks this document: a reload would lose it.
        eval(&page, "window.sameDocument = true; return true").await;

        server.shutdown().await;
        until(
            &page,
            "the disconnected state",
            "return document.getElementById('state').dataset.state !== 'connected'",
        )
        .await;
        let disabled = eval(&page, "return document.getElementById('send').disabled").await;
        assert_eq!(
            disabled,
            json!(true),
            "sending stays off while disconnected"
        );

        // The same port again (the page retries with backoff).
        let listener = TcpListener::bind(addr).await.expect("the same port again");
        let server = TestServer::start_on(listener, None, Config::default());
        until_state(&page, "connected").await;
        let kept = eval(&page, "return window.sameDocument === true").await;
        assert_eq!(kept, json!(true), "the page reloaded");
        // The nickname comes back by itself, and new lines arrive.
        until_logged(&page, "reconnected").await;
        let mut other = Client::connect(&server).await;
        other.send("after the restart").await;
        until_logged(&page, "after the restart").await;
        until_logged(&page, "is now known as ann").await;
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_phone_sized_window_has_no_horizontal_scroll_and_a_free_message_box() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start().await;
    let page = driver.session(390, 844).await;
    closing(vec![page.clone()], async {
        page.set_window_size(390, 844).await.unwrap();
        open(&page, server.addr).await;
        let long = "a-very-long-word-without-any-space-".repeat(8);
        say(&page, &long).await;
        until_logged(&page, &long).await;
        let widths = eval(
            &page,
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
        )
        .await;
        assert!(
            widths[0].as_u64() <= widths[1].as_u64(),
            "horizontal scroll at 390 px: {widths}"
        );
        // Nothing covers the message box: the element at its centre is it.
        let free = eval(
            &page,
            "const box = document.getElementById('message'); \
             const r = box.getBoundingClientRect(); \
             return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === box \
                 && r.bottom <= window.innerHeight && r.width > 200",
        )
        .await;
        assert_eq!(free, json!(true));
        // With the keyboard alone: focus is in the message box at start,
        // and Tab reaches the side panel's button.
        let focused = eval(&page, "return document.activeElement.id").await;
        assert_eq!(focused, json!("message"));
        let toggle_shown = eval(
            &page,
            "return getComputedStyle(document.getElementById('side-toggle')).display !== 'none'",
        )
        .await;
        assert_eq!(toggle_shown, json!(true));
    })
    .await;
    server.shutdown().await;
}

/// Retakes `images/page.png` for the README: a real session of two pages
/// and the terminal client, as ann's page shows it.
/// `cargo test --test chat screenshot -- --ignored`
#[tokio::test]
#[ignore = "writes images/page.png; run by hand to retake the README's screenshot"]
async fn screenshot_for_the_readme() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let server = TestServer::start_with(crate::support::unlimited_rate()).await;
    let mut kim = Client::connect(&server).await;
    kim.send("/nick kim").await;
    kim.send("/join #rust").await;
    kim.send("anyone tried the new borrow checker?").await;
    let ann = driver.session(1100, 640).await;
    let ben = driver.session(1000, 700).await;
    closing(vec![ann.clone(), ben.clone()], async {
        open(&ben, server.addr).await;
        set_nick(&ben, "ben").await;
        say(&ben, "morning all").await;
        open(&ann, server.addr).await;
        set_nick(&ann, "ann").await;
        let mut tom = Terminal::start(server.addr, "tom");
        until_logged(&ann, "tom (").await;
        say(&ann, "hi ben, hi tom!").await;
        until_logged(&ben, "hi ben, hi tom!").await;
        say(&ben, "hello ann").await;
        tom.send("typing from the terminal client").await;
        until_logged(&ann, "typing from the terminal client").await;
        say(&ben, "/me waves").await;
        tom.send("ann: lunch at noon?").await;
        until_logged(&ann, "lunch at noon?").await;
        say(&ann, "/msg tom yes, see you there").await;
        until_logged(&ann, "see you there").await;
        tom.send("<b>markup stays text</b>").await;
        until_logged(&ann, "markup stays text").await;
        let png = ann.screenshot().await.unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/images/page.png");
        std::fs::write(path, png).unwrap();
        eprintln!("wrote {path}");
    })
    .await;
    server.shutdown().await;
}
