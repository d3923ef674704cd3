//! One chat connection after its WebSocket upgrade: with `outbox`, the only
//! server code that speaks WebSocket.
//!
//! A session is one task running one loop. Each turn it writes — every
//! reply it owes, then every room message waiting past its cursor, all in
//! one [`Outbox`] written with as few vectored writes as the socket allows —
//! and then waits for what comes next: a frame from the client, news from
//! its room, a private message, the keepalive timer, or shutdown. A busy
//! connection therefore gets many frames per `writev`, which is where the
//! fan-out's speed comes from. The wait looks only at what its
//! [`Mailbox`]'s bits say woke it, and room messages that come while nothing
//! else is going on are written within the wait itself
//! (`Session::poll_wait`).
//!
//! An idle session is not woken for room messages at all: before it waits
//! it parks its line (`Mailbox::park`), and the room's writer writes to the
//! socket for it. Whatever wakes it, it first claims the line back
//! (`Mailbox::claim`), with any frame the writer left half-written, which
//! goes out before anything else. So the session and the writer never
//! write at the same time, and never into the middle of each other's
//! frames.
//!
//! Reading, pongs and closing go through tokio-websockets; data frames and
//! pings go through the outbox, straight to the stream underneath. The two
//! never interleave: the library's own queue (pongs) is flushed before the
//! outbox is written, and the outbox is empty whenever the library reads (it
//! may write a pong then) or closes — except after a write was cut short, in
//! which case no Close is sent into the middle of a frame.
//!
//! A receiver that lags is told how many messages it missed and carries on;
//! lagging never ends a session.
//!
//! What a peer may cost is bounded here ([`SessionConfig`]): the size of a
//! message, how long it may stay silent (keepalive pings), how fast it may
//! send (a token bucket), and how much is queued for it (one turn: the next
//! frame is read only once everything owed has been written, so a client
//! that stops reading stops being read, and keepalive closes it).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::{Instant, Sleep};
use tokio_websockets::{CloseCode, Message, WebSocketStream};
use tracing::{debug, info};

use crate::fanout::feed::Taken;
use crate::fanout::mailbox::{self, Mailbox};
use crate::fanout::outbox::{frame_event, Outbox};
use crate::fanout::socket::Transport;
use crate::hub::{Greeting, History, Hub, Joined, MemberId};
use crate::protocol::{
    parse_command, parse_input, Command, Encoding, Event, Hello, Input, RateInfo,
    DEFAULT_HISTORY_REPLAY, RATE_REFUSED,
};

/// Most room messages written in one turn before the loop looks at the
/// client and at shutdown again.
const MAX_BATCH: usize = 512;
/// Most batches of room messages written within one wait before the
/// socket, the timer and the mailbox get a look.
const ROOM_WRITES_PER_POLL: usize = 4;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After closing a connection for a fault, at most this much of what the
/// peer still sends is read and discarded, so that the Close frame is not
/// lost to a TCP reset (closing a socket with unread input resets it).
const LINGER_BYTES: usize = 1024 * 1024;

/// A ping with no payload, as the server sends it (unmasked).
const PING_FRAME: &[u8] = &[0x89, 0x00];

/// Default largest message (one frame or a fragmented message, after
/// reassembly); bigger ones end the connection with Close 1009.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default time a client may stay silent before the server pings it.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default time a pinged client has to show a sign of life (any frame)
/// before it is closed with [`PING_TIMEOUT_CLOSE`].
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default messages per second a client may send, on average.
pub const DEFAULT_RATE_LIMIT: u32 = 10;
/// Default messages a client may send at once above the average.
pub const DEFAULT_RATE_BURST: u32 = 20;
/// Refused messages a sender may pile up before it is disconnected for
/// flooding ([`CloseCode::POLICY_VIOLATION`]): this many in a burst...
pub const FLOOD_REFUSALS: u32 = 50;
/// ...refilled over this time, so "more than 50 refused in 10 s" ends it.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// Close code for a client that did not answer a ping in time: one of the
/// codes RFC 6455 leaves to applications (4000-4999).
pub const PING_TIMEOUT_CLOSE: u16 = 4000;
/// Close code for a connection whose place a reconnect took back with its
/// reclaim token (the ghost of a dropped connection): the client should
/// not reconnect, its successor is already there.
pub const REPLACED_CLOSE: u16 = 4001;

/// What one connection may cost. `None` means no limit.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest message, in bytes (reassembled, for fragmented ones).
    pub max_message_bytes: Option<usize>,
    /// Silence after which the server pings; `None`: no pings at all (and
    /// so no ping timeout either).
    pub ping_interval: Option<Duration>,
    /// Time a pinged client has to send any frame; `None`: pinged clients
    /// are never closed for silence. This also bounds how long a write to
    /// a client that does not read may block.
    pub ping_timeout: Option<Duration>,
    /// Messages (chat lines, commands other than `/quit`, binary frames)
    /// a client may send; `None`: no rate limit.
    pub rate: Option<Rate>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_message_bytes: Some(DEFAULT_MAX_MESSAGE_BYTES),
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            ping_timeout: Some(DEFAULT_PING_TIMEOUT),
            rate: Some(Rate {
                per_second: DEFAULT_RATE_LIMIT,
                burst: DEFAULT_RATE_BURST,
            }),
        }
    }
}

/// A token bucket's settings: `burst` messages at once, refilled at
/// `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Average messages per second (at least 1).
    pub per_second: u32,
    /// Messages that may be sent at once (at least 1).
    pub burst: u32,
}

/// Runs one session to its end. Never returns an error: whatever ends the
/// session is logged here, in the connection's span, and touches no one else.
///
/// On plain TCP the room's writer writes room messages to the socket while
/// the session is idle (see `mailbox`); on TLS the session writes
/// everything itself.
///
/// The session is built here, before the future exists, and moved into it
/// once: an `async fn` would keep its arguments and the session built from
/// them side by side for the connection's whole life.
pub fn run<S>(
    ws: WebSocketStream<S>,
    addr: SocketAddr,
    encoding: Encoding,
    hello: Hello,
    greeting: Greeting,
    hub: Hub,
    config: &SessionConfig,
) -> impl Future<Output = ()>
where
    S: Transport,
{
    // Used here and dropped: the session keeps nothing of it.
    let mut connected = hub.connect_greeted(addr, encoding, &hello, &greeting);
    drop(hello);
    // The welcome tells the client our limit, so it can pace itself.
    if let Event::Welcome { rate, .. } = &mut connected.welcome {
        *rate = config.rate.map(|r| RateInfo {
            per_second: r.per_second,
            burst: r.burst,
        });
    }
    let socket = ws.get_ref().shared().cloned();
    connected
        .mailbox
        .attach(connected.joined.cursor, socket, encoding);
    let now = Instant::now();
    let mut session = Session {
        ws,
        encoding,
        hub,
        id: connected.id,
        io_waker: connected.mailbox.io_waker(),
        mailbox: connected.mailbox,
        // Look at everything on the first turn.
        due: mailbox::ROOM | mailbox::IO | mailbox::POST,
        ws_queued: true,
        parked: false,
        outbox: Outbox::new(),
        limiter: config.rate.map(|rate| Limiter::new(rate, now)),
    };
    // Welcome, then history, then live lines: the hub subscribed us and
    // took the history snapshot together, so nothing is missed or doubled.
    session.reply(&connected.welcome);
    for notice in greeting.refused.iter().chain(&connected.notices) {
        session.reply(notice);
    }
    session.replay(&connected.joined.history);
    let keepalive = config
        .ping_interval
        .map(|interval| Keepalive::new(interval, config.ping_timeout, now));
    async move {
        let mut end = session.serve(keepalive).await;
        if matches!(end, End::Shutdown) && !session.hub.is_closing() {
            // Our mailbox was closed by a reclaim, not by shutdown.
            end = End::Replaced;
        }
        session.hub.metrics().disconnected(end.label());
        let reason = end.leave_reason();
        if !end.gets_grace() {
            session.hub.disconnect(session.id, reason.as_deref());
        } else if let Some(grace) = session.hub.hold(session.id, reason.as_deref()) {
            // The leave is announced when the grace ends, unless a
            // reconnect takes the place back first (then this finds
            // nothing). A task of its own, so the connection's task, and
            // its place in the connection caps, end now.
            let (hub, id) = (session.hub.clone(), session.id);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                hub.expire(id);
            });
        }
        // Boxed: the closing handshake runs once, and inline its state would
        // make every connection's task bigger for its whole life.
        Box::pin(session.finish(end)).await;
    }
}

/// Why a session's loop ended.
#[derive(Debug)]
enum End {
    /// The server is shutting down.
    Shutdown,
    /// The client sent a Close frame.
    ClosedByClient(Option<(CloseCode, String)>),
    /// The client asked to leave with `/quit`, maybe giving a reason.
    Quit(Option<String>),
    /// The connection ended without a Close frame.
    Gone,
    /// A protocol or I/O error, or a message over the size limit.
    Failed(tokio_websockets::Error),
    /// No sign of life within the ping timeout; `writing` if a write was
    /// blocked that long (the client stopped reading).
    TimedOut { writing: bool },
    /// Kept sending over the rate limit after being told to slow down.
    Flooded,
    /// A reconnect took this session's place with its reclaim token.
    Replaced,
}

impl End {
    /// The `reason` label of `chat_disconnects_total`: a small fixed set.
    fn label(&self) -> &'static str {
        match self {
            End::Shutdown => "shutdown",
            End::ClosedByClient(_) => "closed",
            End::Quit(_) => "quit",
            End::Gone => "lost",
            End::Failed(tokio_websockets::Error::PayloadTooLong { .. }) => "too_big",
            End::Failed(tokio_websockets::Error::Protocol(_)) => "protocol_error",
            End::Failed(_) => "lost",
            End::TimedOut { writing: true } => "slow_reader",
            End::TimedOut { writing: false } => "ping_timeout",
            End::Flooded => "flooding",
            End::Replaced => "replaced",
        }
    }

    /// Whether the connection was lost without a Close (dropped, reset,
    /// no answer to pings), so the member's place is held for the grace
    /// period (see `Hub::hold`). A clean `/quit` or Close, and the
    /// server's own reasons (a broken protocol, flooding, a client that
    /// stopped reading while still connected), announce at once.
    fn gets_grace(&self) -> bool {
        matches!(
            self,
            End::Gone
                | End::Failed(tokio_websockets::Error::Io(_))
                | End::TimedOut { writing: false }
        )
    }

    /// What the others in the room are told about this departure.
    fn leave_reason(&self) -> Option<String> {
        match self {
            End::Quit(reason) => Some(reason.clone().unwrap_or_else(|| "quit".into())),
            End::ClosedByClient(_) => None,
            End::Shutdown => Some("server shutting down".into()),
            End::Failed(tokio_websockets::Error::PayloadTooLong { .. }) => {
                Some("message too big".into())
            }
            End::Failed(tokio_websockets::Error::Protocol(_)) => Some("protocol error".into()),
            End::Gone | End::Failed(_) => Some("connection lost".into()),
            End::TimedOut { .. } => Some("ping timeout".into()),
            End::Flooded => Some("flooding".into()),
            // Never announced: the successor has the place.
            End::Replaced => None,
        }
    }
}

/// What a wait in the session's loop came back with.
enum Woken {
    /// Something to write or to look at: go round the loop.
    Again,
    /// The server is shutting down.
    Shutdown,
    /// A write of room messages failed.
    WriteFailed(std::io::Error),
    /// A frame from the client, or the end of the stream.
    Frame(Option<Result<Message, tokio_websockets::Error>>),
    /// The keepalive timer fired.
    Timer,
}

struct Session<S> {
    ws: WebSocketStream<S>,
    encoding: Encoding,
    hub: Hub,
    id: MemberId,
    /// Private messages, shutdown, and what woke the session.
    mailbox: Arc<Mailbox>,
    /// The waker the socket and the timer are polled with: it raises
    /// [`mailbox::IO`].
    io_waker: Waker,
    /// What the mailbox said and the session has yet to look at
    /// ([`mailbox::ROOM`], [`mailbox::IO`], [`mailbox::POST`]). `IO` stays
    /// up until a poll of the socket finds nothing.
    due: u8,
    /// The socket was read since tokio-websockets' own queue (pongs) was
    /// last flushed.
    ws_queued: bool,
    /// The session has left its socket to the room's writer and waits
    /// (`Mailbox::park`); it claims it back when woken.
    parked: bool,
    /// Frames waiting to be written: replies, pings and room messages in
    /// the order they are owed.
    outbox: Outbox,
    /// The rate limit, if any.
    limiter: Option<Limiter>,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn serve(&mut self, mut keepalive: Option<Keepalive>) -> End {
        // One timer for the whole session, re-armed lazily: a frame from
        // the client only records the time, and the timer, when it fires,
        // works out whether to ping, wait longer or give up.
        let timer = tokio::time::sleep_until(
            keepalive
                .as_ref()
                .map_or_else(far_future, Keepalive::next_wake),
        );
        tokio::pin!(timer);
        loop {
            // Write first: what the last step produced (and the welcome, on
            // the first turn), then every room message already waiting.
            self.take_ready(MAX_BATCH);
            {
                let write = flush_owed(&mut self.ws, &mut self.ws_queued, &mut self.outbox);
                tokio::pin!(write);
                // Almost every write finishes at once. One that blocks (a
                // client that does not read) must still give way to
                // shutdown, and keepalive bounds how long it may block.
                let first = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
                if let Poll::Ready(written) = first {
                    if let Err(e) = written {
                        return End::Failed(e);
                    }
                } else {
                    loop {
                        tokio::select! {
                            biased;
                            raised = poll_fn(|cx| self.mailbox.poll_raised(cx)) => {
                                if self.mailbox.is_closing() {
                                    return End::Shutdown;
                                }
                                self.due |= raised;
                            }
                            written = &mut write => match written {
                                Ok(()) => break,
                                Err(e) => return End::Failed(e),
                            },
                            () = &mut timer, if keepalive.is_some() => {
                                // A ping cannot overtake what is already
                                // being written; only the deadline matters.
                                let deadline =
                                    keepalive.as_ref().and_then(Keepalive::write_deadline);
                                match deadline {
                                    Some(d) if d <= Instant::now() => {
                                        return End::TimedOut { writing: true };
                                    }
                                    Some(d) => timer.as_mut().reset(d),
                                    None => timer.as_mut().reset(far_future()),
                                }
                            }
                        }
                    }
                    if let Some(k) = &keepalive {
                        timer.as_mut().reset(k.next_wake());
                    }
                    // The timer was polled with the task's own waker here:
                    // poll it (and the socket) again with the mailbox's.
                    self.due |= mailbox::IO;
                }
            }
            // Then wait for the next thing to do, looking only at what the
            // mailbox says woke us (see `mailbox`).
            let timed = keepalive.is_some();
            let step = match poll_fn(|cx| self.poll_wait(cx, timer.as_mut(), timed)).await {
                Woken::Again => Ok(()),
                Woken::Shutdown => Err(End::Shutdown),
                Woken::WriteFailed(e) => Err(End::Failed(tokio_websockets::Error::Io(e))),
                Woken::Frame(incoming) => {
                    if let Some(k) = &mut keepalive {
                        k.seen(Instant::now());
                    }
                    self.on_frame(incoming)
                }
                Woken::Timer => {
                    // Re-armed below: poll it again so it registers.
                    self.due |= mailbox::IO;
                    match keepalive.as_mut().map(|k| k.on_timer(Instant::now())) {
                        Some(Tick::Wait(until)) => {
                            timer.as_mut().reset(until);
                            Ok(())
                        }
                        Some(Tick::Ping(next)) => {
                            self.outbox.push(Bytes::from_static(PING_FRAME));
                            timer.as_mut().reset(next);
                            Ok(())
                        }
                        Some(Tick::Dead) => Err(End::TimedOut { writing: false }),
                        None => Ok(()),
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// One look at what woke the session. Room messages that come while
    /// nothing else is going on, the common case in a busy room, are taken
    /// and written right here, within this one poll of the task; everything
    /// else is handed to the loop in `serve`.
    fn poll_wait(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        timed: bool,
    ) -> Poll<Woken> {
        for _ in 0..ROOM_WRITES_PER_POLL {
            if let Poll::Ready(raised) = self.mailbox.poll_raised(cx) {
                if self.parked {
                    // Whatever woke us, the socket is ours until we park
                    // again, with anything the writer left unfinished.
                    self.mailbox.claim(&mut self.outbox);
                    self.parked = false;
                }
                if self.mailbox.is_closing() {
                    return Poll::Ready(Woken::Shutdown);
                }
                self.due |= raised;
            }
            // tokio-websockets' own queue (pongs) goes first: the loop's
            // write step handles that.
            if self.due & mailbox::ROOM == 0 || self.ws_queued {
                break;
            }
            self.take_ready(MAX_BATCH);
            match self.outbox.poll_flush(cx, Pin::new(self.ws.get_mut())) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Woken::WriteFailed(e)),
                // Blocked: the write step waits for it, minding shutdown
                // and the keepalive deadline.
                Poll::Pending => return Poll::Ready(Woken::Again),
            }
        }
        if self.due & mailbox::IO != 0 {
            if let Poll::Ready(incoming) = poll_socket(
                &mut self.ws,
                &self.io_waker,
                &mut self.due,
                &mut self.ws_queued,
            ) {
                return Poll::Ready(Woken::Frame(incoming));
            }
            if timed
                && timer
                    .as_mut()
                    .poll(&mut Context::from_waker(&self.io_waker))
                    .is_ready()
            {
                return Poll::Ready(Woken::Timer);
            }
        }
        // More room or private messages than one turn takes, or something
        // still to write (a pong the library queued while reading): go on.
        if self.due & (mailbox::ROOM | mailbox::POST) != 0
            || self.ws_queued
            || !self.outbox.is_empty()
        {
            return Poll::Ready(Woken::Again);
        }
        // Nothing owed: the room's writer may write to the socket while we
        // wait, unless room messages came in the meantime.
        if !self.parked {
            if !self.mailbox.park() {
                self.due |= mailbox::ROOM;
                return Poll::Ready(Woken::Again);
            }
            self.parked = true;
        }
        Poll::Pending
    }

    /// Handles one frame from the client.
    fn on_frame(
        &mut self,
        incoming: Option<Result<Message, tokio_websockets::Error>>,
    ) -> Result<(), End> {
        let msg = match incoming {
            None => return Err(End::Gone),
            Some(Err(e)) => return Err(End::Failed(e)),
            Some(Ok(msg)) => msg,
        };
        if msg.is_text() || msg.is_binary() {
            let quit = msg.as_text().is_some_and(is_quit);
            if !quit && !self.admit()? {
                return Ok(());
            }
        }
        if let Some(text) = msg.as_text() {
            self.on_line(text)
        } else if let Some((code, reason)) = msg.as_close() {
            Err(End::ClosedByClient(Some((code, reason.to_string()))))
        } else if msg.is_close() {
            Err(End::ClosedByClient(None))
        } else if msg.is_binary() {
            self.reply(&Event::Error {
                message: "binary frames are not supported; send text frames".into(),
            });
            Ok(())
        } else {
            // Ping and pong: tokio-websockets answers pings itself.
            Ok(())
        }
    }

    /// Applies the rate limit to one message: `Ok(true)` to carry it out,
    /// `Ok(false)` if it was refused (the sender is told), `Err` if the
    /// sender keeps flooding.
    fn admit(&mut self) -> Result<bool, End> {
        let Some(limiter) = &mut self.limiter else {
            return Ok(true);
        };
        match limiter.check(Instant::now()) {
            Verdict::Pass => Ok(true),
            Verdict::Refuse => {
                let rate = limiter.rate;
                self.reply(&Event::Error {
                    message: format!(
                        "{RATE_REFUSED} at most {} messages a second (bursts of {}); this one was refused",
                        rate.per_second, rate.burst
                    ),
                });
                Ok(false)
            }
            Verdict::Flooding => Err(End::Flooded),
        }
    }

    /// Handles one line of text: a chat message or a command.
    fn on_line(&mut self, line: &str) -> Result<(), End> {
        // What this publishes to our own room comes back to us: look at the
        // room on the next turn rather than when its writer gets to ring.
        self.due |= mailbox::ROOM;
        let result = match parse_input(line) {
            Input::Empty => Ok(()),
            Input::Chat(text) => self.hub.say(self.id, text).map_err(|e| e.to_string()),
            Input::Command { name, args } => match parse_command(name, args) {
                Ok(command) => self.on_command(command)?,
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(message) = result {
            self.reply(&Event::Error { message });
        }
        Ok(())
    }

    /// Carries out one command. `Err(End)` ends the session; `Ok(Err(..))`
    /// is an error reply for this client alone.
    fn on_command(&mut self, command: Command<'_>) -> Result<Result<(), String>, End> {
        let id = self.id;
        let hub = self.hub.clone();
        let done = match command {
            Command::Nick(nick) => hub.set_nick(id, nick),
            Command::Me(action) => hub.act(id, action),
            Command::Msg { to, text } => hub.private(id, to, text).map(|echo| {
                // `None`: to another node; the echo comes by the mailbox.
                if let Some(echo) = echo {
                    self.reply(&echo);
                }
            }),
            Command::Join(room) => hub.join(id, &room).map(|joined| self.switch_room(joined)),
            // `None`: asked of every node; the answer comes by the mailbox.
            Command::Who => {
                if let Some(who) = hub.who(id) {
                    self.reply(&who);
                }
                Ok(())
            }
            Command::Rooms => {
                if let Some(rooms) = hub.rooms(id) {
                    self.reply(&rooms);
                }
                Ok(())
            }
            Command::History(n) => {
                let history = hub.history(id, n.unwrap_or(DEFAULT_HISTORY_REPLAY));
                if history.is_empty() {
                    self.reply(&Event::Info {
                        text: format!("no messages in {} yet", history.room()),
                    });
                } else {
                    self.replay(&history);
                }
                Ok(())
            }
            Command::HistoryBefore { n, before } => {
                let history = hub.history_before(id, n, before);
                if history.is_empty() {
                    self.reply(&Event::Info {
                        text: format!("no messages before {before} in {}", history.room()),
                    });
                } else {
                    self.replay(&history);
                }
                Ok(())
            }
            Command::Resume { epoch, seq } => {
                let resumed = hub.resume(id, epoch, seq);
                for event in resumed.history.events() {
                    self.reply(&event);
                }
                self.reply(&resumed.summary);
                Ok(())
            }
            Command::Help => {
                for line in HELP {
                    self.reply(&Event::Info {
                        text: (*line).to_string(),
                    });
                }
                Ok(())
            }
            Command::Quit(reason) => return Err(End::Quit(reason.map(String::from))),
        };
        Ok(done.map_err(|e| e.to_string()))
    }

    /// Moves this session to another room's channel. Lines of the old room
    /// that were already published are delivered first.
    fn switch_room(&mut self, joined: Joined) {
        // Whatever the old room sent before we left, rung or not yet.
        self.mailbox.switch_room(joined.cursor, &mut self.outbox);
        self.due |= mailbox::ROOM;
        self.reply(&joined.entered);
        self.replay(&joined.history);
    }

    /// Queues a room's history (if any) for this client.
    fn replay(&mut self, history: &History) {
        if history.is_empty() {
            return;
        }
        self.reply(&history.header());
        for event in history.events() {
            self.reply(&event);
        }
    }

    /// Queues an event for this client alone.
    fn reply(&mut self, event: &Event) {
        self.outbox.push(frame_event(event, self.encoding));
    }

    /// Moves every waiting private message and up to `max` waiting room
    /// messages into the outbox, if the mailbox said there may be some.
    fn take_ready(&mut self, max: usize) {
        if self.due & mailbox::POST != 0 {
            self.due &= !mailbox::POST;
            while let Some(shared) = self.mailbox.pop() {
                self.outbox.push_shared(shared, self.encoding);
            }
        }
        if self.due & mailbox::ROOM != 0 {
            self.due &= !mailbox::ROOM;
            if self.mailbox.take_room(&mut self.outbox, max) == Taken::More {
                // Stopped at `max` with more waiting: the rest next turn.
                self.due |= mailbox::ROOM;
            }
        }
    }

    /// Sends a Close after whatever the outbox still holds (shutdown may
    /// have cut a write short) and waits, bounded, for the answer.
    async fn close_with(&mut self, code: CloseCode, reason: &str) {
        let close = Message::close(Some(code), reason);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.outbox
                .flush(self.ws.get_mut())
                .await
                .map_err(tokio_websockets::Error::Io)?;
            self.ws.send(close).await?;
            self.ws.close().await
        })
        .await;
    }

    /// Queues a Close for a peer being closed for a fault, unless a write
    /// to it was cut short mid-frame (a Close there would be garbage).
    async fn queue_close(&mut self, code: Option<CloseCode>, reason: &str) {
        if self.outbox.mid_frame() {
            return;
        }
        let close = Message::close(code, reason);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.feed(close)).await;
    }

    /// Delivers a queued Close to a peer being closed for a fault: flushes
    /// it, ends our side of the TCP stream, and reads and discards what the
    /// peer still sends (up to [`LINGER_BYTES`]) until it closes its side,
    /// all within [`CLOSE_TIMEOUT`]. Dropping a socket with unread input
    /// would reset it, and a reset can destroy the Close before the peer
    /// reads it.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.ws.flush().await.map_err(std::io::Error::other)?;
            let io = self.ws.get_mut();
            io.shutdown().await?;
            let mut scratch = [0u8; 4096];
            let mut discarded = 0;
            while discarded < LINGER_BYTES {
                match io.read(&mut scratch).await? {
                    0 => break,
                    n => discarded += n,
                }
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
    }

    /// Ends the connection politely where the peer can still hear it, and
    /// logs why it ended: the ordinary ends (a Close, /quit, a dropped
    /// connection) at debug, since `chat_disconnects_total` counts them by
    /// reason and a line each was a tenth of a connection's cost; the
    /// others (faults, timeouts, floods, shutdown) at info.
    async fn finish(mut self, end: End) {
        match end {
            End::Shutdown => {
                info!("closing: server shutting down");
                self.close_with(CloseCode::GOING_AWAY, "server shutting down")
                    .await;
            }
            End::Quit(_) => {
                debug!("left with /quit");
                self.close_with(CloseCode::NORMAL_CLOSURE, "bye").await;
            }
            End::ClosedByClient(close) => {
                match close {
                    Some((code, reason)) => {
                        debug!(code = u16::from(code), reason = %reason, "client closed the connection")
                    }
                    None => debug!("client closed the connection"),
                }
                // tokio-websockets has queued the answering Close; the next
                // read flushes it and reports the end of the stream.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.next()).await;
            }
            End::Gone => debug!("connection dropped without a Close frame"),
            End::Failed(tokio_websockets::Error::Io(e)) => debug!(error = %e, "connection failed"),
            End::Failed(e) => {
                info!(error = %e, "closing: the client broke the protocol");
                // For protocol errors and single oversized frames
                // tokio-websockets has queued a Close with the right code
                // (1002, 1007, 1009). For a fragmented message over the limit
                // it has not: send 1009 ourselves (when a Close is already
                // queued, this is refused and changes nothing).
                if matches!(e, tokio_websockets::Error::PayloadTooLong { .. }) {
                    self.queue_close(Some(CloseCode::MESSAGE_TOO_BIG), "message too big")
                        .await;
                }
                self.linger().await;
            }
            End::TimedOut { writing } => {
                if writing {
                    info!("closing: ping timeout (the client stopped reading)");
                } else {
                    info!("closing: ping timeout (no answer)");
                }
                // The client is probably not reading; try briefly.
                self.queue_close(close_code(PING_TIMEOUT_CLOSE), "ping timeout")
                    .await;
                self.linger().await;
            }
            End::Flooded => {
                info!("closing: flooding over the rate limit");
                self.queue_close(
                    Some(CloseCode::POLICY_VIOLATION),
                    "flooding: too many messages over the rate limit",
                )
                .await;
                self.linger().await;
            }
            End::Replaced => {
                info!("closing: a reconnect took this session's place");
                // Most often nobody hears it: the ghost of a dropped
                // connection.
                self.queue_close(close_code(REPLACED_CLOSE), "replaced by a new connection")
                    .await;
                self.linger().await;
            }
        }
        // The writer lets go of the socket, which closes when we drop it.
        self.mailbox.detach();
        debug!("session ended");
    }
}

/// Polls the socket for the next frame with the mailbox's waker. Finding
/// nothing clears [`mailbox::IO`] from `due`: the waker raises it again when
/// there is news.
fn poll_socket<S>(
    ws: &mut WebSocketStream<S>,
    io_waker: &Waker,
    due: &mut u8,
    ws_queued: &mut bool,
) -> Poll<Option<Result<Message, tokio_websockets::Error>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Reading is when tokio-websockets queues frames of its own (pongs).
    *ws_queued = true;
    let polled = ws.poll_next_unpin(&mut Context::from_waker(io_waker));
    if polled.is_pending() {
        *due &= !mailbox::IO;
    }
    polled
}

/// Writes what tokio-websockets queued itself (pongs) first, so the outbox
/// never writes into the middle of one of its frames, then the outbox, in
/// as few writes as the socket allows. The library's queue is flushed only
/// if the socket was read since the last time (`ws_queued`): a session
/// woken by its room does not touch the library's state at all.
async fn flush_owed<S>(
    ws: &mut WebSocketStream<S>,
    ws_queued: &mut bool,
    outbox: &mut Outbox,
) -> Result<(), tokio_websockets::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if *ws_queued {
        ws.flush().await?;
        *ws_queued = false;
    }
    outbox
        .flush(ws.get_mut())
        .await
        .map_err(tokio_websockets::Error::Io)
}

/// Whether a text message is `/quit` (which the rate limit lets through, so
/// a limited client can always leave politely).
fn is_quit(text: &str) -> bool {
    matches!(parse_input(text), Input::Command { name, .. } if name.eq_ignore_ascii_case("quit"))
}

/// A close code from a number in the valid ranges.
fn close_code(code: u16) -> Option<CloseCode> {
    CloseCode::try_from(code).ok()
}

/// A time the timer can wait for that never comes in practice.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// When to ping a client and when to give up on it.
///
/// Any frame from the client counts as a sign of life, not only a pong: a
/// client that is talking is alive, and it is not pinged while it talks.
/// After `interval` of silence the client is pinged; if nothing at all
/// arrives within `timeout` of the ping, it is closed. While the session
/// is blocked writing to the client, nothing is read, so a client that
/// stops reading is closed `interval + timeout` after its last frame.
#[derive(Debug)]
struct Keepalive {
    interval: Duration,
    timeout: Option<Duration>,
    last_seen: Instant,
    ping_sent: Option<Instant>,
}

/// What the keepalive timer says when it fires.
#[derive(Debug, PartialEq, Eq)]
enum Tick {
    /// Nothing due yet; wake again then.
    Wait(Instant),
    /// Send a ping now; wake again then.
    Ping(Instant),
    /// The client missed its deadline.
    Dead,
}

impl Keepalive {
    fn new(interval: Duration, timeout: Option<Duration>, now: Instant) -> Self {
        Keepalive {
            interval,
            timeout,
            last_seen: now,
            ping_sent: None,
        }
    }

    /// A frame arrived.
    fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.ping_sent = None;
    }

    /// When something may next be due.
    fn next_wake(&self) -> Instant {
        match self.ping_sent {
            None => self.last_seen + self.interval,
            Some(sent) => sent + self.timeout.unwrap_or(self.interval),
        }
    }

    /// By when a write must have finished: the moment the client would be
    /// closed had it been pinged on time. `None` without a timeout.
    fn write_deadline(&self) -> Option<Instant> {
        let timeout = self.timeout?;
        Some(match self.ping_sent {
            Some(sent) => sent + timeout,
            None => self.last_seen + self.interval + timeout,
        })
    }

    fn on_timer(&mut self, now: Instant) -> Tick {
        let due = self.next_wake();
        if now < due {
            return Tick::Wait(due);
        }
        match (self.ping_sent, self.timeout) {
            (Some(_), Some(_)) => Tick::Dead,
            // Not yet pinged, or no timeout: (re)ping.
            _ => {
                self.ping_sent = Some(now);
                Tick::Ping(self.next_wake())
            }
        }
    }
}

/// A token bucket: holds up to `burst` tokens, refilled continuously at
/// `per_second`; each message takes one.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection's rate limit: one bucket for messages, and one for refused
/// messages, so that a sender who keeps going after being told to slow
/// down is disconnected.
#[derive(Debug)]
struct Limiter {
    rate: Rate,
    messages: TokenBucket,
    refusals: TokenBucket,
}

/// What the rate limit says about one message.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Refuse,
    Flooding,
}

impl Limiter {
    fn new(rate: Rate, now: Instant) -> Self {
        let refusals = f64::from(FLOOD_REFUSALS);
        Limiter {
            rate,
            messages: TokenBucket::new(
                f64::from(rate.per_second.max(1)),
                f64::from(rate.burst.max(1)),
                now,
            ),
            refusals: TokenBucket::new(refusals / FLOOD_WINDOW.as_secs_f64(), refusals, now),
        }
    }

    fn check(&mut self, now: Instant) -> Verdict {
        if self.messages.take(now) {
            Verdict::Pass
        } else if self.refusals.take(now) {
            Verdict::Refuse
        } else {
            Verdict::Flooding
        }
    }
}

/// The `/help` text, one line per command.
const HELP: &[&str] = &[
    "commands:",
    "  /nick NAME         set your nickname (letters, digits, _ and -; up to 32)",
    "  /join ROOM         move to a room, e.g. /join #rust (created if new)",
    "  /rooms             list the rooms and how many are in each",
    "  /who               list who is in your room",
    "  /me ACTION         say what you are doing: * alice waves",
    "  /msg NAME TEXT     private message to a nickname (or address)",
    "  /history [N]       replay the last N messages of your room (default 20)",
    "  /history N before SEQ  the N messages before message SEQ (scrollback)",
    "  /resume EPOCH SEQ  replay what you missed after message SEQ (for clients)",
    "  /quit [REASON]     leave the chat",
    "  /help              this list",
    "  //text             send a message that starts with '/'",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_pings_after_silence_then_gives_up() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut k = Keepalive::new(s(25), Some(s(10)), t0);
        assert_eq!(k.on_timer(t0 + s(1)), Tick::Wait(t0 + s(25)));
        // Any frame pushes the ping back.
        k.seen(t0 + s(20));
        assert_eq!(k.on_timer(t0 + s(25)), Tick::Wait(t0 + s(45)));
        assert_eq!(k.on_timer(t0 + s(45)), Tick::Ping(t0 + s(55)));
        assert_eq!(k.write_deadline(), Some(t0 + s(55)));
        assert_eq!(k.on_timer(t0 + s(50)), Tick::Wait(t0 + s(55)));
        assert_eq!(k.on_timer(t0 + s(55)), Tick::Dead);
        // An answer in time resets everything.
        k.seen(t0 + s(54));
        assert_eq!(k.on_timer(t0 + s(55)), Tick::Wait(t0 + s(79)));
        assert_eq!(k.write_deadline(), Some(t0 + s(89)));
    }

    #[test]
    fn keepalive_without_timeout_pings_forever() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut k = Keepalive::new(s(25), None, t0);
        assert_eq!(k.on_timer(t0 + s(25)), Tick::Ping(t0 + s(50)));
        assert_eq!(k.on_timer(t0 + s(50)), Tick::Ping(t0 + s(75)));
        assert_eq!(k.write_deadline(), None);
    }

    #[test]
    fn the_limiter_allows_bursts_refuses_then_cuts_off_flooders() {
        let t0 = Instant::now();
        let rate = Rate {
            per_second: 10,
            burst: 20,
        };
        let mut l = Limiter::new(rate, t0);
        for _ in 0..20 {
            assert_eq!(l.check(t0), Verdict::Pass);
        }
        for _ in 0..FLOOD_REFUSALS {
            assert_eq!(l.check(t0), Verdict::Refuse);
        }
        assert_eq!(l.check(t0), Verdict::Flooding);

        // A steady sender at the limit is never refused.
        let mut l = Limiter::new(rate, t0);
        for i in 0..1000 {
            assert_eq!(l.check(t0 + Duration::from_millis(100 * i)), Verdict::Pass);
        }
        // One a little over the limit is refused now and then, but refusals
        // refill too: it is never cut off.
        let mut l = Limiter::new(rate, t0);
        let mut refused = 0;
        for i in 0..1200 {
            match l.check(t0 + Duration::from_millis(83 * i)) {
                Verdict::Pass => {}
                Verdict::Refuse => refused += 1,
                Verdict::Flooding => panic!("cut off after {i}"),
            }
        }
        assert!(refused > 0);
    }

    #[test]
    fn help_lists_every_handled_command() {
        for cmd in [
            "/nick", "/join", "/rooms", "/who", "/me", "/msg", "/history", "/resume", "/quit",
            "/help",
        ] {
            assert!(super::HELP.iter().any(|l| l.contains(cmd)), "{cmd}");
        }
    }
}
