//! One chat connection after its WebSocket upgrade: with `outbox`, the only
//! server code that speaks WebSocket.
//!
//! A session is one task running one loop. Each turn it waits for whichever
//! comes first — a frame from the client, a message from its room or for it
//! alone, or shutdown — handles it, and then writes: every reply it owes,
//! then every room message already waiting in its receiver, all in one
//! [`Outbox`] written with as few vectored writes as the socket allows. A
//! busy connection therefore gets many frames per `writev`, which is where
//! the fan-out's speed comes from.
//!
//! Reading, pings, pongs and closing go through tokio-websockets; data
//! frames go through the outbox, straight to the stream underneath. The two
//! never interleave: the library's own queue (pongs) is flushed before the
//! outbox is written, and the outbox is always empty when the library reads
//! (it may write a pong then) or closes.
//!
//! A receiver that lags is told how many messages it missed and carries on;
//! lagging never ends a session.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_websockets::{CloseCode, Message, WebSocketStream};
use tracing::{debug, info};

use crate::hub::{History, Hub, Joined, MemberId, Shared};
use crate::outbox::{text_frame, Outbox};
use crate::protocol::{
    parse_command, parse_input, Command, Encoding, Event, Input, DEFAULT_HISTORY_REPLAY,
};

/// Most room messages written in one turn before the loop looks at the
/// client and at shutdown again.
const MAX_BATCH: usize = 512;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one session to its end. Never returns an error: whatever ends the
/// session is logged here, in the connection's span, and touches no one else.
///
/// The session is built here, before the future exists, and moved into it
/// once: an `async fn` would keep its arguments and the session built from
/// them side by side for the connection's whole life.
pub fn run<S>(
    ws: WebSocketStream<S>,
    addr: SocketAddr,
    encoding: Encoding,
    hub: Hub,
    shutdown: CancellationToken,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connected = hub.connect(addr);
    let mut session = Session {
        ws,
        encoding,
        hub,
        id: connected.id,
        rx: connected.joined.rx,
        direct: connected.direct,
        outbox: Outbox::new(),
    };
    // Welcome, then history, then live lines: the hub subscribed us and
    // took the history snapshot together, so nothing is missed or doubled.
    session.reply(&connected.welcome);
    session.replay(&connected.joined.history);
    async move {
        let end = session.serve(&shutdown).await;
        session
            .hub
            .disconnect(session.id, end.leave_reason().as_deref());
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
    /// A protocol or I/O error.
    Failed(tokio_websockets::Error),
}

impl End {
    /// What the others in the room are told about this departure.
    fn leave_reason(&self) -> Option<String> {
        match self {
            End::Quit(reason) => Some(reason.clone().unwrap_or_else(|| "quit".into())),
            End::ClosedByClient(_) => None,
            End::Shutdown => Some("server shutting down".into()),
            End::Gone | End::Failed(_) => Some("connection lost".into()),
        }
    }
}

struct Session<S> {
    ws: WebSocketStream<S>,
    encoding: Encoding,
    hub: Hub,
    id: MemberId,
    rx: tokio::sync::broadcast::Receiver<Shared>,
    /// Events addressed to this member alone (private messages).
    direct: mpsc::Receiver<Shared>,
    /// Frames waiting to be written: replies and room messages in the
    /// order they are owed.
    outbox: Outbox,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn serve(&mut self, shutdown: &CancellationToken) -> End {
        loop {
            // Write first: what the last step produced (and the welcome, on
            // the first turn). Writing can block on a client that does not
            // read; shutdown must still get through.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                written = self.write_ready() => {
                    if let Err(e) = written {
                        return End::Failed(e);
                    }
                }
            }
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(End::Shutdown),
                incoming = self.ws.next() => self.on_frame(incoming),
                received = self.rx.recv() => {
                    self.on_room_message(received);
                    Ok(())
                }
                Some(shared) = self.direct.recv() => {
                    self.outbox.push_shared(shared, self.encoding);
                    Ok(())
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
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

    /// Handles one line of text: a chat message or a command.
    fn on_line(&mut self, line: &str) -> Result<(), End> {
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
            Command::Msg { to, text } => hub.private(id, to, text).map(|echo| self.reply(&echo)),
            Command::Join(room) => hub.join(id, &room).map(|joined| self.switch_room(joined)),
            Command::Who => {
                self.reply(&hub.who(id));
                Ok(())
            }
            Command::Rooms => {
                self.reply(&hub.rooms());
                Ok(())
            }
            Command::History(n) => {
                let history = hub.history(id, n.unwrap_or(DEFAULT_HISTORY_REPLAY));
                self.reply(&history.header());
                for event in history.events() {
                    self.reply(&event);
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
        self.take_ready(usize::MAX);
        self.rx = joined.rx;
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

    fn on_room_message(&mut self, received: Result<Shared, RecvError>) {
        match received {
            Ok(shared) => self.outbox.push_shared(shared, self.encoding),
            Err(RecvError::Lagged(count)) => self.reply(&Event::Skipped { count }),
            // The hub never drops a room that has members.
            Err(RecvError::Closed) => {}
        }
    }

    /// Queues an event for this client alone.
    fn reply(&mut self, event: &Event) {
        let frame = text_frame(event.to_encoding(self.encoding).as_bytes());
        self.outbox.push(frame);
    }

    /// Moves up to `max` waiting room messages (and every private one) into
    /// the outbox.
    fn take_ready(&mut self, max: usize) {
        while let Ok(shared) = self.direct.try_recv() {
            self.outbox.push_shared(shared, self.encoding);
        }
        for _ in 0..max {
            match self.rx.try_recv() {
                Ok(shared) => self.outbox.push_shared(shared, self.encoding),
                Err(TryRecvError::Lagged(count)) => self.reply(&Event::Skipped { count }),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
    }

    /// Writes what this client is owed, then every room message already
    /// waiting (up to [`MAX_BATCH`]), in as few writes as the socket allows.
    async fn write_ready(&mut self) -> Result<(), tokio_websockets::Error> {
        // Whatever tokio-websockets queued itself (pongs) goes first, so the
        // outbox never writes into the middle of one of its frames.
        self.ws.flush().await?;
        self.take_ready(MAX_BATCH);
        self.outbox
            .flush(self.ws.get_mut())
            .await
            .map_err(tokio_websockets::Error::Io)
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

    /// Ends the connection politely where the peer can still hear it, and
    /// logs why it ended.
    async fn finish(mut self, end: End) {
        match end {
            End::Shutdown => {
                info!("closing: server shutting down");
                self.close_with(CloseCode::GOING_AWAY, "server shutting down")
                    .await;
            }
            End::Quit(_) => {
                info!("left with /quit");
                self.close_with(CloseCode::NORMAL_CLOSURE, "bye").await;
            }
            End::ClosedByClient(close) => {
                match close {
                    Some((code, reason)) => {
                        info!(code = u16::from(code), reason = %reason, "client closed the connection")
                    }
                    None => info!("client closed the connection"),
                }
                // tokio-websockets has queued the answering Close; the next
                // read flushes it and reports the end of the stream.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.next()).await;
            }
            End::Gone => info!("connection dropped without a Close frame"),
            End::Failed(e) => {
                info!(error = %e, "connection failed");
                // For protocol errors tokio-websockets has queued a Close with
                // the right code; try to deliver it.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
            }
        }
        debug!("session ended");
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
    "  /resume EPOCH SEQ  replay what you missed after message SEQ (for clients)",
    "  /quit [REASON]     leave the chat",
    "  /help              this list",
    "  //text             send a message that starts with '/'",
];

#[cfg(test)]
mod tests {
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
