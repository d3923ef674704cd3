//! The terminal client: connects to a server, sends each input line as a
//! text frame, and shows each incoming event; when an established
//! connection drops it reconnects, restores its nickname and room, and shows
//! exactly what it missed.
//!
//! The client speaks the JSON encoding to the server so it knows sequence
//! numbers, senders and kinds of events; it renders lines itself. Modules:
//! - [`connect`]: one connection (URL, TLS, subprotocol, errors as sentences);
//! - [`rotation`]: which of the servers to try next, and the backoff;
//! - [`state`]: who and where we are, and which events are news;
//! - [`sanitize`]: makes peer-controlled text safe for a terminal;
//! - [`render`]: plain and styled lines;
//! - [`editor`]: the line being typed and what each key does to it;
//! - [`complete`]: Tab completion of nicknames, commands and rooms;
//! - [`pace`]: keeps what we send under the server's rate limit;
//! - [`terminal`]: the interactive front end (raw mode, keys, the prompt
//!   row, lines printed above it, Ctrl+Z);
//! - this module: the engine that ties them together, driven by any line
//!   source and any screen, so tests run the same code as the binary.

pub mod complete;
pub mod connect;
pub mod editor;
pub mod pace;
pub mod render;
pub mod rotation;
pub mod sanitize;
pub mod state;
pub mod terminal;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_websockets::{CloseCode, Message};

use crate::protocol::{parse_input, Event, Hello, Input};
use connect::{Connector, Socket, CONNECT_TIMEOUT};
use pace::Pacer;
use render::Level;
use rotation::{Attempt, Rotation};
use state::{Greeting, Incoming, Tracker, Welcomed};
use tokio::time::Instant;

/// The server address used when none is given.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:2000";
/// How long to wait for the server's answer to our Close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from the server, so that a hostile server
/// cannot make the client allocate without bound.
pub const MAX_INCOMING_BYTES: usize = 64 * 1024;
/// First pause before reconnecting; doubles up to [`MAX_BACKOFF`] (once
/// per round over the servers, see [`rotation`]).
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between rounds of reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Lines typed while disconnected that are kept to send later.
pub const MAX_QUEUED_LINES: usize = 100;

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct Config {
    /// The servers' URLs, each `ws://HOST:PORT` or `wss://HOST:PORT`:
    /// the first is tried first; when a connection fails or is lost the
    /// next attempt goes to the next one, round robin. At least one.
    pub urls: Vec<String>,
    /// Print events as the server's JSON lines instead of text lines.
    pub json: bool,
    /// Nickname to ask for on connecting.
    pub nick: Option<String>,
    /// Room to join on connecting.
    pub room: Option<String>,
    /// Reconnect when an established connection drops.
    pub reconnect: bool,
    /// Keep trying when the first connection fails, instead of giving up.
    pub wait_for_server: bool,
    /// Extra trusted CA certificates (PEM) for `wss://`; each is also
    /// accepted as the server's own certificate when it is exactly that.
    pub ca: Option<PathBuf>,
    /// Sent as `Authorization: Bearer TOKEN`. Never printed (not even by
    /// this struct's `Debug`).
    pub token: Option<Secret>,
    /// Ring the terminal bell when a line names us (interactive only).
    pub bell: bool,
    /// Largest incoming message, in bytes.
    pub max_incoming: usize,
    /// First pause before reconnecting; it doubles with every round of
    /// attempts over the servers, up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest pause between rounds of reconnection attempts.
    pub max_backoff: Duration,
}

/// A secret string whose `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Config {
    /// Defaults for a server at `url`: no reconnecting (as suits a pipe).
    pub fn new(url: impl Into<String>) -> Self {
        Self::for_servers([url])
    }

    /// Defaults for the servers at `urls`, tried in turn (see
    /// [`Config::urls`]).
    pub fn for_servers<U: Into<String>>(urls: impl IntoIterator<Item = U>) -> Self {
        Config {
            urls: urls.into_iter().map(Into::into).collect(),
            json: false,
            nick: None,
            room: None,
            reconnect: false,
            wait_for_server: false,
            ca: None,
            token: None,
            bell: true,
            max_incoming: MAX_INCOMING_BYTES,
            min_backoff: MIN_BACKOFF,
            max_backoff: MAX_BACKOFF,
        }
    }
}

/// Where typed lines come from. `next_line` must be cancel-safe: the engine
/// races it against the socket.
pub(crate) trait Source {
    /// The next line, or `None` at the end of input.
    async fn next_line(&mut self) -> io::Result<Option<String>>;
    /// Whether the input ended by the user breaking off (Ctrl+C) rather
    /// than by running out: then lines still waiting are not sent (a paste
    /// by mistake can be stopped), and the user is told how many.
    fn broke_off(&self) -> bool {
        false
    }
}

impl<R: AsyncBufRead + Unpin> Source for tokio::io::Lines<R> {
    async fn next_line(&mut self) -> io::Result<Option<String>> {
        tokio::io::Lines::next_line(self).await
    }
}

/// Where events and notices go.
pub(crate) trait Screen {
    /// Shows an event; `me` is our own address, to set our lines apart.
    async fn event(&mut self, incoming: &Incoming, me: Option<SocketAddr>) -> io::Result<()>;
    /// Shows something the server sent that this client does not know.
    async fn unknown(&mut self, raw: &str) -> io::Result<()>;
    /// Shows a notice of the client's own (connection lost, reconnected).
    async fn notice(&mut self, level: Level, text: &str) -> io::Result<()>;
    /// Where we are now: called after every change the engine sees, so a
    /// prompt can show it. Plain lines have no prompt.
    fn status(&mut self, _status: &Status<'_>) -> io::Result<()> {
        Ok(())
    }
}

/// Where the client is, for a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status<'a> {
    /// The room we are in (or were in, while reconnecting).
    pub room: &'a str,
    /// Our confirmed nickname.
    pub nick: Option<&'a str>,
    /// Whether a connection is up.
    pub connected: bool,
}

impl<'a> Status<'a> {
    fn of(tracker: &'a Tracker, connected: bool) -> Self {
        Status {
            room: tracker.room(),
            nick: tracker.nick(),
            connected,
        }
    }
}

/// Plain lines on an `AsyncWrite`: the piped client, and tests.
struct Plain<W> {
    out: W,
    /// Where rate-limit refusals go: they mean the pipe's job failed.
    err: tokio::io::Stderr,
    json: bool,
    /// The reader of our output went away (`client | head`): the end the
    /// user asked for, not a failure.
    closed: bool,
}

impl<W: AsyncWrite + Unpin> Plain<W> {
    async fn line(&mut self, line: &str) -> io::Result<()> {
        let result = async {
            self.out.write_all(line.as_bytes()).await?;
            self.out.write_all(b"\n").await?;
            self.out.flush().await
        }
        .await;
        if let Err(e) = &result {
            self.closed |= e.kind() == io::ErrorKind::BrokenPipe;
        }
        result
    }
}

impl<W: AsyncWrite + Unpin> Screen for Plain<W> {
    async fn event(&mut self, incoming: &Incoming, _me: Option<SocketAddr>) -> io::Result<()> {
        if let Event::Error { message } = &incoming.event {
            if message.starts_with(crate::protocol::RATE_REFUSED) {
                let line = render::plain_event(&incoming.event) + "\n";
                self.err.write_all(line.as_bytes()).await?;
                return self.err.flush().await;
            }
        }
        let line = if self.json {
            render::json_event(&incoming.raw)
        } else {
            render::plain_event(&incoming.event)
        };
        self.line(&line).await
    }

    async fn unknown(&mut self, raw: &str) -> io::Result<()> {
        let line = if self.json {
            render::json_event(raw)
        } else {
            render::plain_notice(&format!("unrecognised event: {raw}"))
        };
        self.line(&line).await
    }

    async fn notice(&mut self, _level: Level, text: &str) -> io::Result<()> {
        self.line(&render::plain_notice(text)).await
    }
}

/// Runs the client on plain lines: sends each `input` line, prints each
/// event as a line on `output` (client notices too, starting with `~ `).
/// Ends cleanly (`Ok`) when the input ends, the user quits or the output is
/// closed (`client | head`), and with an
/// error that is a sentence for people when the connection cannot go on.
pub async fn run<R, W>(config: &Config, input: R, output: W) -> anyhow::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut screen = Plain {
        out: output,
        err: tokio::io::stderr(),
        json: config.json,
        closed: false,
    };
    let result = drive(config, &mut input.lines(), &mut screen).await;
    if screen.closed {
        // Ending here closes the connection; nobody is left to tell.
        return Ok(());
    }
    // A script must learn that not everything it sent was delivered.
    match result?.refused {
        0 => Ok(()),
        1 => bail!("the server refused 1 line for going over its rate limit"),
        n => bail!("the server refused {n} lines for going over its rate limit"),
    }
}

/// How a connection ended.
enum Ended {
    /// The user is done (end of input, `/quit`, server's normal close).
    Clean,
    /// The connection dropped; reconnecting may help.
    Lost(anyhow::Error),
    /// The server ended it for a reason reconnecting would not help with
    /// (another connection took our place with our reclaim token).
    Over(anyhow::Error),
}

/// How a run of the client ended, when it ended cleanly.
pub(crate) struct Outcome {
    /// Lines the server refused for going over its rate limit.
    pub refused: usize,
}

/// Lines the user typed that have not reached the server yet.
#[derive(Default)]
struct Outbox {
    lines: VecDeque<String>,
}

/// The engine: connect, run the connection, reconnect if asked to.
pub(crate) async fn drive<S: Source, O: Screen>(
    config: &Config,
    input: &mut S,
    screen: &mut O,
) -> anyhow::Result<Outcome> {
    let servers = connectors(config)?;
    let mut tracker = Tracker::new();
    let mut outbox = Outbox::default();
    let mut rotation = Rotation::new(servers.len(), config.min_backoff, config.max_backoff);
    let mut first = true;
    loop {
        // The nickname and room go with the upgrade, so the server
        // announces us once, where we mean to be; on reconnecting, with the
        // token that takes our place back.
        let hello = tracker.hello(config.nick.as_deref(), config.room.as_deref());
        let (ws, at) = if first && !config.wait_for_server {
            connect_once(&servers, &hello, screen).await?
        } else {
            match retry(&servers, &hello, &mut rotation, input, screen, &mut outbox).await? {
                Some(connected) => connected,
                None => {
                    return Ok(Outcome {
                        refused: tracker.refused(),
                    })
                }
            }
        };
        first = false;
        match session(
            &servers[at],
            &hello,
            ws,
            input,
            screen,
            &mut tracker,
            &mut outbox,
        )
        .await?
        {
            Ended::Clean => {
                return Ok(Outcome {
                    refused: tracker.refused(),
                })
            }
            Ended::Lost(e) if config.reconnect && tracker.established() => {
                // The next attempt goes to the next server, after the
                // shortest pause.
                rotation.lost(at);
                screen.status(&Status::of(&tracker, false))?;
                screen
                    .notice(Level::Warn, &format!("{e:#}; reconnecting"))
                    .await?;
            }
            Ended::Lost(e) | Ended::Over(e) => return Err(e),
        }
    }
}

/// A connector for every server of `config`, each URL checked (the error
/// names the first bad one) before anything is tried.
fn connectors(config: &Config) -> anyhow::Result<Vec<Connector>> {
    if config.urls.is_empty() {
        bail!("no server URL given (pass --url ws://HOST:PORT)");
    }
    let token = config.token.as_ref().map(Secret::expose);
    Connector::all(&config.urls, config.ca.as_deref(), config.max_incoming)?
        .into_iter()
        .map(|connector| connector.with_token(token))
        .collect()
}

/// The first connection when not asked to wait for a server: each server
/// once, in order, until one answers. A failure on the way is told, with
/// the server tried next; if none answers, the error names each.
async fn connect_once<O: Screen>(
    servers: &[Connector],
    hello: &Hello,
    screen: &mut O,
) -> anyhow::Result<(Socket, usize)> {
    let mut failures = Vec::new();
    for (at, connector) in servers.iter().enumerate() {
        match connector.connect(hello).await {
            Ok(ws) => return Ok((ws, at)),
            Err(e) => {
                if let Some(next) = servers.get(at + 1) {
                    screen
                        .notice(Level::Warn, &format!("{e:#}; trying {}", next.url()))
                        .await?;
                }
                failures.push(e);
            }
        }
    }
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    let each: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
    bail!(
        "none of the {} servers could be reached: {}",
        failures.len(),
        each.join("; ")
    )
}

/// What the user did while we were not connected.
enum Typed {
    /// Nothing that matters (a line was queued, or there was no line).
    Nothing,
    /// End of input or `/quit`: stop trying.
    Leave,
}

/// Keeps trying to connect, to each server in turn with the rotation's
/// pauses, until one answers; returns its socket and its index. Lines
/// typed meanwhile are queued; end of input or `/quit` gives up (`None`).
async fn retry<S: Source, O: Screen>(
    servers: &[Connector],
    hello: &Hello,
    rotation: &mut Rotation,
    input: &mut S,
    screen: &mut O,
    outbox: &mut Outbox,
) -> anyhow::Result<Option<(Socket, usize)>> {
    // Say once per server why it does not work yet; not at every attempt.
    let mut told = vec![false; servers.len()];
    loop {
        let Attempt { server, pause } = rotation.attempt();
        if let Some(pause) = pause {
            let sleep = tokio::time::sleep(pause);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    line = input.next_line() => {
                        if let Typed::Leave = offline_line(line?, screen, outbox).await? {
                            return Ok(None);
                        }
                    }
                }
            }
        }
        let attempt = servers[server].connect(hello);
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                result = &mut attempt => break result,
                line = input.next_line() => {
                    if let Typed::Leave = offline_line(line?, screen, outbox).await? {
                        return Ok(None);
                    }
                }
            }
        };
        match result {
            Ok(ws) => return Ok(Some((ws, server))),
            Err(e) => {
                if !std::mem::replace(&mut told[server], true) {
                    screen
                        .notice(Level::Warn, &format!("{e:#}; will keep trying"))
                        .await?;
                }
            }
        }
    }
}

/// A line typed while disconnected: queue it, or leave on `/quit` and at
/// the end of input.
async fn offline_line<O: Screen>(
    line: Option<String>,
    screen: &mut O,
    outbox: &mut Outbox,
) -> io::Result<Typed> {
    let Some(line) = line else {
        if !outbox.lines.is_empty() {
            let n = outbox.lines.len();
            screen
                .notice(
                    Level::Warn,
                    &format!("{n} typed line(s) were not sent: not connected"),
                )
                .await?;
        }
        return Ok(Typed::Leave);
    };
    match parse_input(&line) {
        Input::Empty => return Ok(Typed::Nothing),
        Input::Command { name, .. } if name.eq_ignore_ascii_case("quit") => {
            return Ok(Typed::Leave)
        }
        _ => {}
    }
    if outbox.lines.len() >= MAX_QUEUED_LINES {
        screen
            .notice(
                Level::Warn,
                &format!(
                    "not connected and {MAX_QUEUED_LINES} lines already wait: not sent: {line}"
                ),
            )
            .await?;
    } else {
        if outbox.lines.is_empty() {
            screen
                .notice(
                    Level::Info,
                    "not connected: what you type is sent once the connection is back",
                )
                .await?;
        }
        outbox.lines.push_back(line);
    }
    Ok(Typed::Nothing)
}

/// One connection, from the welcome to its end.
async fn session<S: Source, O: Screen>(
    connector: &Connector,
    hello: &Hello,
    mut ws: Socket,
    input: &mut S,
    screen: &mut O,
    tracker: &mut Tracker,
    outbox: &mut Outbox,
) -> anyhow::Result<Ended> {
    let url = connector.url();
    // The server speaks first: the welcome carries our address and epoch.
    let first = tokio::time::timeout(CONNECT_TIMEOUT, ws.next())
        .await
        .map_err(|_| anyhow!("the server at {url} sent no welcome (is it a chat server?)"))?;
    let mut raw = match first {
        Some(Ok(msg)) if msg.is_text() => msg.as_text().unwrap_or_default().to_string(),
        Some(Ok(msg)) if msg.is_close() => {
            return Ok(closed_by_server(url, msg.as_close(), false));
        }
        Some(Err(e)) => return Ok(Ended::Lost(anyhow!("the connection to {url} failed: {e}"))),
        _ => return Ok(Ended::Lost(anyhow!("the connection to {url} was lost"))),
    };
    let event: Event = serde_json::from_str(&raw)
        .map_err(|_| anyhow!("the server at {url} sent no welcome (is it a chat server?)"))?;
    let Event::Welcome {
        addr,
        room,
        epoch,
        rate,
        nick,
        reclaim,
        ..
    } = &event
    else {
        bail!("the server at {url} sent no welcome (is it a chat server?)");
    };
    let rate = *rate;
    let greeting = Greeting {
        addr: *addr,
        room,
        epoch: *epoch,
        nick: nick.as_deref(),
        reclaim: reclaim.as_deref(),
    };
    let mut commands = Vec::new();
    let mut reconnected = false;
    match tracker.welcome(&greeting, hello) {
        Welcomed::First { commands: first } => {
            // An older server's /nick and /join go before anything typed
            // meanwhile, and like typed lines survive a drop before they
            // are sent.
            for command in first.into_iter().rev() {
                outbox.lines.push_front(command);
            }
            // The token is ours alone: not in --json output either, which
            // may well end up in a log file.
            let mut shown = event.clone();
            if let Event::Welcome { reclaim, .. } = &mut shown {
                if reclaim.take().is_some() {
                    raw = shown.to_json();
                }
            }
            screen
                .event(&Incoming { event: shown, raw }, Some(*addr))
                .await?
        }
        Welcomed::Again {
            commands: restore,
            restarted,
        } => {
            let text = if restarted {
                format!("reconnected to {url} (the server has restarted)")
            } else {
                format!("reconnected to {url}")
            };
            screen.notice(Level::Info, &text).await?;
            commands = restore;
            reconnected = true;
        }
    }
    screen.status(&Status::of(tracker, true))?;
    let mut pacer = Pacer::new(rate, Instant::now());
    // The restoring commands go first, then the lines typed while offline,
    // so those land in the right room under the right name. Restoring
    // commands are not kept in the outbox: the next welcome makes new ones.
    let mut restore: VecDeque<String> = commands.into();
    let queued = outbox.lines.len();
    // Counts down the lines typed offline; at 0 the user is told.
    let mut untold = (reconnected && queued > 0).then_some(restore.len() + queued);
    let mut quitting = false;
    let mut input_ended = false;
    // Each turn sends one line, takes one typed line or handles one frame.
    loop {
        if input_ended && !quitting && input.broke_off() && !outbox.lines.is_empty() {
            let n = outbox.lines.len();
            outbox.lines.clear();
            let s = if n == 1 { "" } else { "s" };
            screen
                .notice(
                    Level::Warn,
                    &format!("{n} line{s} not sent: you left first"),
                )
                .await?;
        }
        if input_ended && !quitting && restore.is_empty() && outbox.lines.is_empty() {
            close(ws, screen, tracker).await?;
            return Ok(Ended::Clean);
        }
        let pending = !quitting && (!restore.is_empty() || !outbox.lines.is_empty());
        let send_at = Instant::now() + pacer.delay(Instant::now());
        // A pipe is read no faster than it is sent: memory stays bounded.
        let reading = !input_ended && !quitting && outbox.lines.len() < MAX_QUEUED_LINES;
        tokio::select! {
            () = tokio::time::sleep_until(send_at), if pending => {
                let (line, restoring) = match restore.pop_front() {
                    Some(line) => (line, true),
                    None => match outbox.lines.pop_front() {
                        Some(line) => (line, false),
                        None => continue,
                    },
                };
                let is_quit = matches!(parse_input(&line),
                    Input::Command { name, .. } if name.eq_ignore_ascii_case("quit"));
                pacer.sent(Instant::now());
                if let Err(e) = ws.send(Message::text(line.clone())).await {
                    if is_quit {
                        return Ok(Ended::Clean);
                    }
                    if !restoring {
                        // Not lost: it goes out after reconnecting.
                        outbox.lines.push_front(line);
                    }
                    return Ok(Ended::Lost(lost_sending(url, e)));
                }
                quitting = is_quit;
                if let Some(left) = &mut untold {
                    *left -= 1;
                    if *left == 0 {
                        untold = None;
                        let s = if queued == 1 { "" } else { "s" };
                        screen
                            .notice(
                                Level::Info,
                                &format!("sent {queued} line{s} typed while disconnected"),
                            )
                            .await?;
                    }
                }
            }
            line = input.next_line(), if reading => match line {
                Ok(Some(line)) => {
                    if !matches!(parse_input(&line), Input::Empty) {
                        outbox.lines.push_back(line);
                    }
                }
                Ok(None) => input_ended = true,
                Err(e) => bail!("cannot read input: {e}"),
            },
            frame = ws.next() => {
                let msg = match frame {
                    None if quitting => return Ok(Ended::Clean),
                    None => {
                        return Ok(Ended::Lost(anyhow!(
                            "the connection to {url} was lost (the server went away)"
                        )))
                    }
                    Some(Err(e)) => {
                        return Ok(Ended::Lost(anyhow!("the connection to {url} failed: {e}")))
                    }
                    Some(Ok(msg)) => msg,
                };
                if let Some(text) = msg.as_text() {
                    show(text, screen, tracker).await?;
                    screen.status(&Status::of(tracker, true))?;
                } else if msg.is_close() {
                    return Ok(closed_by_server(url, msg.as_close(), quitting));
                }
            }
        }
    }
}

fn lost_sending(url: &str, e: tokio_websockets::Error) -> anyhow::Error {
    anyhow!("lost the connection to {url} while sending: {e}")
}

/// Parses one event and shows what the tracker says is news.
async fn show<O: Screen>(raw: &str, screen: &mut O, tracker: &mut Tracker) -> io::Result<()> {
    let Ok(event) = serde_json::from_str::<Event>(raw) else {
        // A newer server's event: shown (made safe), not fatal.
        return screen.unknown(raw).await;
    };
    let incoming = Incoming {
        event,
        raw: raw.to_string(),
    };
    for shown in tracker.accept(incoming) {
        screen.event(&shown, tracker.me()).await?;
    }
    Ok(())
}

/// The outcome of a Close frame the server sent first.
fn closed_by_server(url: &str, close: Option<(CloseCode, &str)>, quitting: bool) -> Ended {
    let reason = |r: &str, default: &'static str| {
        if r.is_empty() {
            default.to_string()
        } else {
            sanitize::sanitize(r).into_owned()
        }
    };
    match close {
        // 1000 is the server's answer to /quit: the user asked to leave.
        Some((code, _)) if code == CloseCode::NORMAL_CLOSURE => Ended::Clean,
        _ if quitting => Ended::Clean,
        Some((code, _)) if u16::from(code) == crate::session::REPLACED_CLOSE => Ended::Over(anyhow!(
            "the server at {url} closed this connection: another connection took its place with its reclaim token (close code {})",
            u16::from(code)
        )),
        Some((code, r)) if code == CloseCode::GOING_AWAY => Ended::Lost(anyhow!(
            "the server at {url} went away: {} (close code {})",
            reason(r, "going away"),
            u16::from(code)
        )),
        Some((code, r)) => Ended::Lost(anyhow!(
            "the server at {url} closed the connection: {} (close code {})",
            reason(r, "no reason given"),
            u16::from(code)
        )),
        None => Ended::Lost(anyhow!("the server at {url} closed the connection")),
    }
}

/// Our input ended: say goodbye with a Close frame, show whatever the
/// server still sends until it answers, and end cleanly.
async fn close<O: Screen>(
    mut ws: Socket,
    screen: &mut O,
    tracker: &mut Tracker,
) -> anyhow::Result<()> {
    if ws
        .send(Message::close(Some(CloseCode::NORMAL_CLOSURE), ""))
        .await
        .is_err()
    {
        // Already gone: nothing more will come, and the user is done anyway.
        return Ok(());
    }
    let drain = async {
        // Ends when the answering Close has arrived (or the stream ended).
        while let Some(Ok(msg)) = ws.next().await {
            if let Some(text) = msg.as_text() {
                show(text, screen, tracker).await?;
            }
        }
        io::Result::Ok(())
    };
    // A server that never answers our Close does not keep us hanging.
    if let Ok(result) = tokio::time::timeout(CLOSE_TIMEOUT, drain).await {
        result.context("cannot write the output")?;
    }
    Ok(())
}
