//! The chat protocol: what a client sends, what the server sends back, and the
//! two wire encodings of the latter. Pure data and formatting; no I/O.
//!
//! Clients always send text frames. A line that starts with `/` is a command;
//! `//` escapes a literal leading slash. Everything else is a chat message.
//!
//! The server sends [`Event`]s, encoded either as a human-readable text line
//! (the default, what a raw WebSocket client such as websocat sees) or as a
//! JSON object, chosen by the client with the [`JSON_SUBPROTOCOL`] WebSocket
//! subprotocol. A room event is encoded once per encoding and the same bytes
//! are shared by every recipient (see `outbox::Encoded`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Subprotocol a client offers to receive events as JSON objects.
pub const JSON_SUBPROTOCOL: &str = "chat.v1.json";
/// Subprotocol a client may offer to ask for the text encoding explicitly.
pub const TEXT_SUBPROTOCOL: &str = "chat.v1.text";

/// The room every connection starts in.
pub const DEFAULT_ROOM: &str = "#lobby";

/// How the message refused by the rate limit begins, so a client can tell
/// that refusal from others.
pub const RATE_REFUSED: &str = "slow down:";

/// The server's per-connection rate limit, as the welcome tells it: a
/// token bucket of `burst` messages refilled at `per_second`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct RateInfo {
    /// Average messages per second.
    pub per_second: u32,
    /// Messages that may be sent at once.
    pub burst: u32,
}

/// What a client may ask for in its upgrade request, as query parameters
/// of the WebSocket URL (`ws://HOST:PORT/?nick=alice&room=%23rust`),
/// percent-decoded: a nickname and a room to start with, and the reclaim
/// token of an earlier session to take its place back. Parsed during the
/// upgrade and handed to the hub's connect; nothing of it is kept.
/// Unknown parameters (`token`, the page's) are ignored; of a repeated one
/// the first counts.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Hello {
    /// `nick`: checked as `/nick` checks it.
    pub nick: Option<String>,
    /// `room`: checked as `/join` checks it (`rust` and `#Rust` are
    /// `#rust`).
    pub room: Option<String>,
    /// `reclaim`: a secret; never logged (see the `Debug` below).
    pub reclaim: Option<String>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("nick", &self.nick)
            .field("room", &self.room)
            .field("reclaim", &self.reclaim.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Hello {
    /// Most bytes of a parameter's value that are looked at: longer ones
    /// are invalid anyway, and a peer must not make us decode without
    /// bound (hyper already caps the request head at 8 KiB).
    const MAX_VALUE: usize = 256;

    /// The parameters in a URL's query (the part after `?`).
    pub fn from_query(query: &str) -> Self {
        let mut hello = Hello::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "nick" => &mut hello.nick,
                "room" => &mut hello.room,
                "reclaim" => &mut hello.reclaim,
                _ => continue,
            };
            if slot.is_none() {
                let value = &value.as_bytes()[..value.len().min(Self::MAX_VALUE)];
                *slot = Some(String::from_utf8_lossy(&percent_decode(value)).into_owned());
            }
        }
        hello
    }

    /// Whether it asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.nick.is_none() && self.room.is_none() && self.reclaim.is_none()
    }

    /// The query that [`Hello::from_query`] reads back (without the `?`),
    /// each value percent-encoded.
    pub fn to_query(&self) -> String {
        let mut query = String::new();
        for (key, value) in [
            ("nick", &self.nick),
            ("room", &self.room),
            ("reclaim", &self.reclaim),
        ] {
            if let Some(value) = value {
                if !query.is_empty() {
                    query.push('&');
                }
                query.push_str(key);
                query.push('=');
                percent_encode(value, &mut query);
            }
        }
        query
    }
}

/// Decodes `%XX` escapes (as `encodeURIComponent` makes them); anything
/// malformed is kept as it is.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < input.len() {
        match (input[i], input.get(i + 1), input.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => match (hex(h), hex(l)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Appends `value` with every byte but RFC 3986's unreserved ones
/// (`A-Z a-z 0-9 - . _ ~`) written as `%XX`.
fn percent_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// How events are encoded for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One human-readable line per event (the default).
    Text,
    /// One JSON object per event (subprotocol [`JSON_SUBPROTOCOL`]).
    Json,
}

impl Encoding {
    /// The subprotocol name the server answers with for this encoding.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Text => TEXT_SUBPROTOCOL,
            Encoding::Json => JSON_SUBPROTOCOL,
        }
    }
}

/// What a client's text frame means.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// A chat message for the current room (already un-escaped).
    Chat(&'a str),
    /// A `/command` with its (trimmed, possibly empty) argument string.
    Command {
        /// The command name without the slash, as typed (not lower-cased).
        name: &'a str,
        /// Everything after the name, with surrounding whitespace removed.
        args: &'a str,
    },
    /// Nothing worth sending: an empty or whitespace-only line.
    Empty,
}

/// Classifies one line a client sent.
///
/// `/name args` is a command, `//text` is the chat message `/text`, and a
/// line that is empty or only whitespace is [`Input::Empty`].
pub fn parse_input(line: &str) -> Input<'_> {
    // A trailing newline is an artefact of line-based clients, not content.
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Input::Empty;
    }
    match line.strip_prefix('/') {
        Some(rest) if rest.starts_with('/') => Input::Chat(rest),
        Some(rest) => {
            let rest = rest.trim_start();
            let (name, args) = match rest.find(char::is_whitespace) {
                Some(i) => (&rest[..i], rest[i..].trim()),
                None => (rest, ""),
            };
            Input::Command { name, args }
        }
        None => Input::Chat(line),
    }
}

/// Longest nickname, in characters.
pub const MAX_NICK_LEN: usize = 32;
/// Longest room name, in characters, the leading `#` included.
pub const MAX_ROOM_LEN: usize = 32;
/// Messages `/history` replays when no count is given, and on joining.
pub const DEFAULT_HISTORY_REPLAY: usize = 20;

/// A command a client can send.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `/nick NAME`: set or change the nickname.
    Nick(&'a str),
    /// `/who`: list the members of the current room.
    Who,
    /// `/me ACTION`: an action line.
    Me(&'a str),
    /// `/msg NAME TEXT`: a private message to a nickname or an address.
    Msg {
        /// Nickname or socket address of the recipient.
        to: &'a str,
        /// The message.
        text: &'a str,
    },
    /// `/join ROOM`: move to a room (a missing `#` is added).
    Join(String),
    /// `/rooms`: list rooms and their member counts.
    Rooms,
    /// `/history [N]`: replay the last N messages of the current room.
    History(Option<usize>),
    /// `/history N before SEQ`: the N messages before message SEQ of the
    /// current room (scrollback).
    HistoryBefore {
        /// How many.
        n: usize,
        /// Lines with a `seq` below this one.
        before: u64,
    },
    /// `/resume EPOCH SEQ`: replay what was missed in the current room
    /// since message SEQ of server run EPOCH.
    Resume {
        /// The server run the client last saw (from the welcome).
        epoch: u64,
        /// The last sequence number the client saw in this room.
        seq: u64,
    },
    /// `/help`: list the commands.
    Help,
    /// `/quit [REASON]`: leave the chat.
    Quit(Option<&'a str>),
}

/// Why a command could not be understood; the text is for the user.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandError(pub String);

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(text: &str) -> CommandError {
    CommandError(format!("usage: {text}"))
}

/// Parses the command part of [`Input::Command`]. Names are
/// case-insensitive; arguments are already trimmed.
pub fn parse_command<'a>(name: &str, args: &'a str) -> Result<Command<'a>, CommandError> {
    let no_args = |cmd: Command<'a>, text: &str| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(usage(text))
        }
    };
    match name.to_ascii_lowercase().as_str() {
        "nick" => {
            if args.is_empty() || args.contains(char::is_whitespace) {
                return Err(usage("/nick NAME"));
            }
            validate_nick(args)?;
            Ok(Command::Nick(args))
        }
        "who" => no_args(Command::Who, "/who"),
        "me" if args.is_empty() => Err(usage("/me ACTION")),
        "me" => Ok(Command::Me(args)),
        "msg" => match args.split_once(char::is_whitespace) {
            Some((to, text)) if !text.trim().is_empty() => Ok(Command::Msg {
                to,
                text: text.trim(),
            }),
            _ => Err(usage("/msg NAME TEXT")),
        },
        "join" => {
            if args.is_empty() || args.contains(char::is_whitespace) {
                return Err(usage("/join ROOM"));
            }
            Ok(Command::Join(normalize_room(args)?))
        }
        "rooms" => no_args(Command::Rooms, "/rooms"),
        "history" if args.is_empty() => Ok(Command::History(None)),
        "history" => {
            let words: Vec<&str> = args.split_whitespace().collect();
            let usage = || usage("/history [N] or /history N before SEQ (N, SEQ positive numbers)");
            match words.as_slice() {
                [n] => match n.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(Command::History(Some(n))),
                    _ => Err(usage()),
                },
                [n, kw, seq] if kw.eq_ignore_ascii_case("before") => {
                    match (n.parse::<usize>(), seq.parse::<u64>()) {
                        (Ok(n), Ok(before)) if n > 0 && before > 0 => {
                            Ok(Command::HistoryBefore { n, before })
                        }
                        _ => Err(usage()),
                    }
                }
                _ => Err(usage()),
            }
        }
        "resume" => {
            let mut parts = args.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(Ok(epoch)), Some(Ok(seq)), None) => Ok(Command::Resume { epoch, seq }),
                _ => Err(usage("/resume EPOCH SEQ")),
            }
        }
        "help" => Ok(Command::Help),
        "quit" => Ok(Command::Quit(Some(args).filter(|a| !a.is_empty()))),
        _ => Err(CommandError(format!(
            "unknown command /{name}; /help lists commands"
        ))),
    }
}

/// Checks a nickname: 1 to [`MAX_NICK_LEN`] ASCII letters, digits, `_` or
/// `-`. Non-ASCII letters are refused on purpose: look-alike characters
/// (Cyrillic `а` for Latin `a`) would let one user pass for another.
pub fn validate_nick(nick: &str) -> Result<(), CommandError> {
    let ok_chars = nick
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if nick.is_empty() || nick.len() > MAX_NICK_LEN || !ok_chars {
        return Err(CommandError(format!(
            "invalid nickname {nick:?}: use 1 to {MAX_NICK_LEN} ASCII letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

/// Turns what a user typed into a room name: adds a missing `#`, lower-cases
/// (room names are case-insensitive), and checks the length and characters
/// (ASCII letters, digits, `_`, `-` after the `#`).
pub fn normalize_room(name: &str) -> Result<String, CommandError> {
    let bare = name.strip_prefix('#').unwrap_or(name);
    let ok_chars = bare
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare.is_empty() || bare.len() + 1 > MAX_ROOM_LEN || !ok_chars {
        return Err(CommandError(format!(
            "invalid room name {name:?}: use '#' and 1 to {} ASCII letters, digits, '_' or '-'",
            MAX_ROOM_LEN - 1
        )));
    }
    Ok(format!("#{}", bare.to_ascii_lowercase()))
}

/// Why a chat message was refused before it reached anyone.
#[derive(Debug, PartialEq, Eq)]
pub enum TextError {
    /// The message contains a control character (other than tab).
    ControlCharacter,
}

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextError::ControlCharacter => f.write_str(
                "message not sent: it contains control characters (such as a newline); send one line at a time",
            ),
        }
    }
}

/// Checks that chat text is safe to put on one line of the text encoding.
///
/// Control characters would let one user forge lines ("* alice joined") or
/// move the cursor in other users' terminals, so they are refused, not
/// silently stripped: the sender is told and nothing is lost unknowingly.
pub fn validate_text(text: &str) -> Result<(), TextError> {
    // Printable ASCII, the usual case, needs no decoding.
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return Ok(());
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(TextError::ControlCharacter);
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, the server timestamp carried by events.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One line of a room's conversation: a message or an action. Kept in the
/// room's history and replayed as it was, with the same sequence number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatLine {
    /// The room it was sent to.
    pub room: String,
    /// Per-room sequence number, starting at 1; gaps mean missed messages.
    pub seq: u64,
    /// Server time in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The sender's socket address.
    pub from: SocketAddr,
    /// The sender's nickname, `null` until they set one.
    pub nick: Option<String>,
    /// The message text.
    pub text: String,
    /// Set on lines replayed from history; absent on live ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
}

/// A member as listed by `/who`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    /// Their nickname, if set.
    pub nick: Option<String>,
    /// Their socket address.
    pub addr: SocketAddr,
}

/// A room as listed by `/rooms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomInfo {
    /// The room's name, `#` included.
    pub name: String,
    /// How many members are in it now.
    pub members: usize,
}

/// Something the server tells a client.
///
/// The JSON encoding is this enum serialised with serde, tagged by `type`;
/// the text encoding is [`Event::to_text`]. Clients parse the JSON encoding
/// back into it (`Deserialize`), so the client renders the same model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Sent once, first, on every new connection.
    Welcome {
        /// The server's name.
        server: String,
        /// The client's own address, as others will see it.
        addr: SocketAddr,
        /// The room the client is in.
        room: String,
        /// How many connections are online, this one included.
        online: usize,
        /// Identifies this run of the server: sequence numbers from another
        /// epoch mean nothing here (see `/resume`).
        epoch: u64,
        /// The rate limit on what this connection sends; absent when there
        /// is none (and from servers older than this field). Set by the
        /// session, which owns the limit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<RateInfo>,
        /// The nickname the client has from the start (asked for with the
        /// upgrade, see [`Hello`], or taken back with a reclaim token);
        /// absent when it has none yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nick: Option<String>,
        /// This session's reclaim token: shown by a reconnect
        /// (`?reclaim=TOKEN`), it takes the nickname and room back. Only in
        /// the JSON encoding (the text line never shows it), and absent
        /// from servers older than it, which also ignore [`Hello`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reclaim: Option<String>,
    },
    /// A chat message in a room.
    Message(ChatLine),
    /// An action (`/me waves`) in a room.
    Action(ChatLine),
    /// A private message; sent to its recipient and echoed to its sender.
    Private {
        /// Server time in milliseconds since the Unix epoch.
        ts: u64,
        /// The sender's address.
        from: SocketAddr,
        /// The sender's nickname.
        nick: Option<String>,
        /// The recipient's address.
        to: SocketAddr,
        /// The recipient's nickname.
        to_nick: Option<String>,
        /// The message.
        text: String,
    },
    /// Someone entered the room.
    Joined {
        /// The room.
        room: String,
        /// Their address.
        addr: SocketAddr,
        /// Their nickname.
        nick: Option<String>,
    },
    /// Someone left the room.
    Left {
        /// The room.
        room: String,
        /// Their address.
        addr: SocketAddr,
        /// Their nickname.
        nick: Option<String>,
        /// Why, if known (`/quit` reason, "connection lost").
        reason: Option<String>,
    },
    /// Someone in the room changed their nickname.
    Nick {
        /// Their address.
        addr: SocketAddr,
        /// The previous nickname, `null` if there was none.
        old: Option<String>,
        /// The new nickname.
        new: String,
    },
    /// The members of a room (answer to `/who`).
    Who {
        /// The room.
        room: String,
        /// Its members, in the order they joined.
        members: Vec<MemberInfo>,
    },
    /// The rooms (answer to `/rooms`).
    Rooms {
        /// Every room, by name.
        rooms: Vec<RoomInfo>,
    },
    /// Told to a client that joined `room` (after `/join`): the room's
    /// epoch and its last `seq`, for a later `/resume` there.
    Entered {
        /// The room.
        room: String,
        /// The room's epoch: changes only when its history was lost.
        epoch: u64,
        /// The last line's `seq` (0: none yet).
        last_seq: u64,
    },
    /// The next `count` events are history of `room`, oldest first.
    History {
        /// The room.
        room: String,
        /// How many lines follow.
        count: usize,
    },
    /// Answer to `/resume`, after the replayed lines.
    Resumed {
        /// The room.
        room: String,
        /// The sequence number the client asked to resume after.
        after: u64,
        /// How many missed lines were replayed.
        replayed: usize,
        /// How many missed lines are gone (history too short).
        lost: u64,
        /// The server restarted since the client's epoch: nothing it saw
        /// before can be matched, and what was sent meanwhile is lost.
        restarted: bool,
        /// The server stopped uncleanly (a crash, `kill -9`) in the stretch
        /// the client missed: lines sent in the moment before that stop
        /// may never have reached the disk. They cannot be counted, so
        /// they are not in `lost`; the numbers the server skipped after
        /// the stop are not counted either (they were never lines).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
    },
    /// The receiver fell behind and this many messages were dropped for it.
    Skipped {
        /// How many messages this client will never see.
        count: u64,
    },
    /// Information for this client alone (for example the `/help` text).
    Info {
        /// The text to show.
        text: String,
    },
    /// A request of this client's was refused; nothing was sent to others.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}

/// `alice (127.0.0.1:53211)`, or the bare address without a nickname.
fn full_name(out: &mut String, nick: Option<&str>, addr: SocketAddr) {
    let _ = match nick {
        Some(nick) => write!(out, "{nick} ({addr})"),
        None => write!(out, "{addr}"),
    };
}

/// `alice`, or the address without a nickname.
fn short_name(out: &mut String, nick: Option<&str>, addr: SocketAddr) {
    let _ = match nick {
        Some(nick) => write!(out, "{nick}"),
        None => write!(out, "{addr}"),
    };
}

/// What an event that cannot be serialised (none can) is sent as.
const JSON_FALLBACK: &str = "{\"type\":\"error\"}";

impl Event {
    /// The human-readable one-line form.
    ///
    /// Chat lines start with the sender (`127.0.0.1:53211: hi`,
    /// `alice (127.0.0.1:53211): hi`), private messages with `(private)`,
    /// notices and actions with `* `, errors with `! `, so a reader can
    /// tell them apart by the first character.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.size_hint());
        self.write_text(&mut out);
        out
    }

    /// About how many bytes the encoded event takes: enough that encoding
    /// it rarely grows the buffer.
    pub fn size_hint(&self) -> usize {
        let text = match self {
            Event::Message(line) | Event::Action(line) => {
                line.text.len() + line.nick.as_ref().map_or(0, String::len)
            }
            Event::Private { text, .. } => text.len(),
            _ => 0,
        };
        // Addresses, names and (for JSON) field names around it.
        text + 224
    }

    /// [`Event::to_text`], appended to `out`.
    pub fn write_text(&self, out: &mut String) {
        match self {
            Event::Welcome {
                server,
                addr,
                room,
                online,
                nick,
                ..
            } => {
                let _ = write!(out, "* welcome to {server}! you are ");
                full_name(out, nick.as_deref(), *addr);
                let _ = write!(out, " in {room}; {online} online; /help lists commands");
            }
            Event::Message(line) => {
                full_name(out, line.nick.as_deref(), line.from);
                out.push_str(": ");
                out.push_str(&line.text);
            }
            Event::Action(line) => {
                out.push_str("* ");
                short_name(out, line.nick.as_deref(), line.from);
                out.push(' ');
                out.push_str(&line.text);
            }
            Event::Private {
                from,
                nick,
                to,
                to_nick,
                text,
                ..
            } => {
                out.push_str("(private) ");
                full_name(out, nick.as_deref(), *from);
                out.push_str(" -> ");
                full_name(out, to_nick.as_deref(), *to);
                out.push_str(": ");
                out.push_str(text);
            }
            Event::Joined { room, addr, nick } => {
                out.push_str("* ");
                full_name(out, nick.as_deref(), *addr);
                let _ = write!(out, " joined {room}");
            }
            Event::Left {
                room,
                addr,
                nick,
                reason,
            } => {
                out.push_str("* ");
                short_name(out, nick.as_deref(), *addr);
                let _ = write!(out, " left {room}");
                if let Some(reason) = reason {
                    let _ = write!(out, " ({reason})");
                }
            }
            Event::Nick { addr, old, new } => {
                out.push_str("* ");
                short_name(out, old.as_deref(), *addr);
                let _ = write!(out, " is now known as {new}");
            }
            Event::Who { room, members } => {
                let _ = write!(out, "* {} in {room}: ", members.len());
                for (i, m) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    full_name(out, m.nick.as_deref(), m.addr);
                }
            }
            Event::Rooms { rooms } => {
                out.push_str("* rooms: ");
                for (i, r) in rooms.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{} ({})", r.name, r.members);
                }
            }
            Event::Entered {
                room,
                epoch,
                last_seq,
            } => {
                let _ = write!(
                    out,
                    "* you are in {room} (epoch {epoch}, last message {last_seq})"
                );
            }
            Event::History { room, count } => {
                let s = if *count == 1 { "" } else { "s" };
                let _ = write!(out, "* history of {room}: the last {count} message{s}");
            }
            Event::Resumed {
                room,
                replayed,
                lost,
                restarted,
                interrupted,
                ..
            } => {
                if *restarted {
                    let _ = write!(
                        out,
                        "* the server restarted since you were last here: messages sent to {room} in between are lost"
                    );
                } else {
                    let s = if *replayed == 1 { "" } else { "s" };
                    let _ = write!(out, "* caught up on {room}: {replayed} missed message{s}");
                    if *lost > 0 {
                        let _ = write!(
                            out,
                            "; {lost} older ones could not be recovered (history too short)"
                        );
                    }
                    if *interrupted {
                        let _ = write!(
                            out,
                            "; the server stopped unexpectedly meanwhile, and lines sent just before that may be missing"
                        );
                    }
                }
            }
            Event::Skipped { count } => {
                let s = if *count == 1 { "" } else { "s" };
                let _ = write!(out, "* {count} message{s} skipped (you were too slow)");
            }
            Event::Info { text } => {
                let _ = write!(out, "* {text}");
            }
            Event::Error { message } => {
                let _ = write!(out, "! {message}");
            }
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and addresses cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from(JSON_FALLBACK))
    }

    /// [`Event::to_json`], appended to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let start = out.len();
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.truncate(start);
            out.extend_from_slice(JSON_FALLBACK.as_bytes());
        }
    }

    /// The form for one encoding.
    pub fn to_encoding(&self, encoding: Encoding) -> String {
        match encoding {
            Encoding::Text => self.to_text(),
            Encoding::Json => self.to_json(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:53211".parse().unwrap()
    }

    fn line(nick: Option<&str>, text: &str) -> ChatLine {
        ChatLine {
            room: DEFAULT_ROOM.into(),
            seq: 1,
            ts: 0,
            from: addr(),
            nick: nick.map(String::from),
            text: text.into(),
            history: false,
        }
    }

    #[test]
    fn plain_lines_are_chat() {
        assert_eq!(parse_input("hello"), Input::Chat("hello"));
        assert_eq!(parse_input("hello\n"), Input::Chat("hello"));
        assert_eq!(parse_input("hello\r\n"), Input::Chat("hello"));
        assert_eq!(parse_input("  spaced  "), Input::Chat("  spaced  "));
    }

    #[test]
    fn empty_lines_are_ignored() {
        assert_eq!(parse_input(""), Input::Empty);
        assert_eq!(parse_input("   \t "), Input::Empty);
        assert_eq!(parse_input("\n"), Input::Empty);
    }

    #[test]
    fn slash_starts_a_command() {
        assert_eq!(
            parse_input("/nick alice"),
            Input::Command {
                name: "nick",
                args: "alice"
            }
        );
        assert_eq!(
            parse_input("/msg   bob   hi  there  "),
            Input::Command {
                name: "msg",
                args: "bob   hi  there"
            }
        );
        assert_eq!(
            parse_input("/help"),
            Input::Command {
                name: "help",
                args: ""
            }
        );
        assert_eq!(parse_input("/"), Input::Command { name: "", args: "" });
    }

    #[test]
    fn double_slash_escapes_a_literal_slash() {
        assert_eq!(parse_input("//shrug"), Input::Chat("/shrug"));
        assert_eq!(parse_input("///"), Input::Chat("//"));
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(validate_text("tab\tis fine").is_ok());
        assert!(validate_text("héllo wörld ✓").is_ok());
        assert_eq!(
            validate_text("two\nlines"),
            Err(TextError::ControlCharacter)
        );
        assert_eq!(validate_text("\u{1b}[2J"), Err(TextError::ControlCharacter));
        assert_eq!(validate_text("\u{85}"), Err(TextError::ControlCharacter));
    }

    #[test]
    fn message_text_form_has_no_quotes() {
        let ev = Event::Message(line(None, "hello \"world\""));
        assert_eq!(ev.to_text(), "127.0.0.1:53211: hello \"world\"");
        let ev = Event::Message(line(Some("alice"), "hi"));
        assert_eq!(ev.to_text(), "alice (127.0.0.1:53211): hi");
    }

    #[test]
    fn message_json_form_carries_every_field() {
        let ev = Event::Message(ChatLine {
            seq: 7,
            ts: 1_700_000_000_123,
            ..line(None, "hi")
        });
        let v: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["room"], "#lobby");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["ts"], 1_700_000_000_123u64);
        assert_eq!(v["from"], "127.0.0.1:53211");
        assert!(v["nick"].is_null());
        assert_eq!(v["text"], "hi");
        assert!(
            v.get("history").is_none(),
            "live lines carry no history flag"
        );
        let replayed = Event::Message(ChatLine {
            history: true,
            ..line(None, "hi")
        });
        let v: serde_json::Value = serde_json::from_str(&replayed.to_json()).unwrap();
        assert_eq!(v["history"], true);
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        let cmd = |line| match parse_input(line) {
            Input::Command { name, args } => parse_command(name, args),
            other => panic!("not a command: {other:?}"),
        };
        assert_eq!(cmd("/nick alice"), Ok(Command::Nick("alice")));
        assert_eq!(cmd("/NICK  Bob_2-x "), Ok(Command::Nick("Bob_2-x")));
        assert_eq!(cmd("/who"), Ok(Command::Who));
        assert_eq!(cmd("/me waves hello"), Ok(Command::Me("waves hello")));
        assert_eq!(
            cmd("/msg bob   hi there "),
            Ok(Command::Msg {
                to: "bob",
                text: "hi there"
            })
        );
        assert_eq!(cmd("/join #Rust"), Ok(Command::Join("#rust".into())));
        assert_eq!(cmd("/join rust"), Ok(Command::Join("#rust".into())));
        assert_eq!(cmd("/rooms"), Ok(Command::Rooms));
        assert_eq!(cmd("/history"), Ok(Command::History(None)));
        assert_eq!(cmd("/history 5"), Ok(Command::History(Some(5))));
        assert_eq!(
            cmd("/resume 17 42"),
            Ok(Command::Resume { epoch: 17, seq: 42 })
        );
        assert_eq!(cmd("/help"), Ok(Command::Help));
        assert_eq!(cmd("/quit"), Ok(Command::Quit(None)));
        assert_eq!(
            cmd("/quit  gone fishing "),
            Ok(Command::Quit(Some("gone fishing")))
        );
    }

    #[test]
    fn bad_arguments_get_usage_errors() {
        let err = |line| match parse_input(line) {
            Input::Command { name, args } => parse_command(name, args).unwrap_err().0,
            other => panic!("not a command: {other:?}"),
        };
        assert!(err("/nick").starts_with("usage: /nick"));
        assert!(err("/nick two words").starts_with("usage: /nick"));
        assert!(err("/msg bob").starts_with("usage: /msg"));
        assert!(err("/msg").starts_with("usage: /msg"));
        assert!(err("/me").starts_with("usage: /me"));
        assert!(err("/join").starts_with("usage: /join"));
        assert!(err("/join #").starts_with("invalid room"));
        assert!(err("/join #a.b").starts_with("invalid room"));
        assert!(err("/history 0").starts_with("usage: /history"));
        assert!(err("/history x").starts_with("usage: /history"));
        assert!(err("/resume 1").starts_with("usage: /resume"));
        assert!(err("/who extra").starts_with("usage: /who"));
        assert!(err("/frobnicate").contains("/help"));
    }

    #[test]
    fn nicknames_follow_the_rule() {
        for ok in ["a", "alice", "Bob_2", "x-y", &"n".repeat(MAX_NICK_LEN)] {
            assert!(validate_nick(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "dot.ted",
            "émile",
            "аlice", // Cyrillic а
            "名前",
            "tab\t",
            &"n".repeat(MAX_NICK_LEN + 1),
        ] {
            assert!(validate_nick(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn room_names_are_normalised() {
        assert_eq!(normalize_room("#Lobby").unwrap(), "#lobby");
        assert_eq!(normalize_room("dev-ops_2").unwrap(), "#dev-ops_2");
        assert!(normalize_room(&"r".repeat(MAX_ROOM_LEN - 1)).is_ok());
        assert!(normalize_room(&"r".repeat(MAX_ROOM_LEN)).is_err());
        assert!(normalize_room("#").is_err());
        assert!(normalize_room("##x").is_err());
        assert!(normalize_room("#café").is_err());
    }

    #[test]
    fn presence_lines_read_like_the_examples() {
        let a = addr();
        let joined = Event::Joined {
            room: "#lobby".into(),
            addr: a,
            nick: Some("alice".into()),
        };
        assert_eq!(joined.to_text(), "* alice (127.0.0.1:53211) joined #lobby");
        let left = Event::Left {
            room: "#lobby".into(),
            addr: a,
            nick: Some("alice".into()),
            reason: Some("bye".into()),
        };
        assert_eq!(left.to_text(), "* alice left #lobby (bye)");
        let nick = Event::Nick {
            addr: a,
            old: None,
            new: "alice".into(),
        };
        assert_eq!(nick.to_text(), "* 127.0.0.1:53211 is now known as alice");
        let action = Event::Action(line(Some("alice"), "waves"));
        assert_eq!(action.to_text(), "* alice waves");
    }

    #[test]
    fn skipped_notice_counts() {
        assert_eq!(
            Event::Skipped { count: 1 }.to_text(),
            "* 1 message skipped (you were too slow)"
        );
        assert_eq!(
            Event::Skipped { count: 12 }.to_text(),
            "* 12 messages skipped (you were too slow)"
        );
    }
}
