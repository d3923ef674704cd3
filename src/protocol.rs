//! The chat protocol: what a client sends, what the server sends back, and the
//! two wire encodings of the latter. Pure data and formatting; no I/O.
//!
//! Clients always send text frames. A line that starts with `/` is a command;
//! `//` escapes a literal leading slash. Everything else is a chat message.
//!
//! The server sends [`Event`]s, encoded either as a human-readable text line
//! (the default, what a raw WebSocket client such as websocat sees) or as a
//! JSON object, chosen by the client with the [`JSON_SUBPROTOCOL`] WebSocket
//! subprotocol. Each event is encoded once per encoding ([`Encoded`]) and the
//! same bytes are shared by every recipient.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

/// Subprotocol a client offers to receive events as JSON objects.
pub const JSON_SUBPROTOCOL: &str = "chat.v1.json";
/// Subprotocol a client may offer to ask for the text encoding explicitly.
pub const TEXT_SUBPROTOCOL: &str = "chat.v1.text";

/// The room every connection starts in.
pub const DEFAULT_ROOM: &str = "#lobby";

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

/// Something the server tells a client.
///
/// The JSON encoding is this enum serialised with serde, tagged by `type`;
/// the text encoding is [`Event::to_text`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
    },
    /// A chat message in a room.
    Message {
        /// The room it was sent to.
        room: String,
        /// Per-room sequence number, starting at 1; gaps mean missed messages.
        seq: u64,
        /// Server time in milliseconds since the Unix epoch.
        ts: u64,
        /// The sender's socket address.
        from: SocketAddr,
        /// The sender's nickname, `null` until they set one.
        nick: Option<String>,
        /// The message text.
        text: String,
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

impl Event {
    /// The human-readable one-line form.
    ///
    /// Chat lines start with the sender (`127.0.0.1:53211: hi`,
    /// `alice (127.0.0.1:53211): hi`), notices with `* `, errors with `! `,
    /// so a reader can tell them apart by the first character.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match self {
            Event::Welcome {
                server,
                addr,
                room,
                online,
            } => {
                let _ = write!(
                    out,
                    "* welcome to {server}! you are {addr} in {room}; {online} online; /help lists commands"
                );
            }
            Event::Message {
                from, nick, text, ..
            } => {
                match nick {
                    Some(nick) => {
                        let _ = write!(out, "{nick} ({from}): ");
                    }
                    None => {
                        let _ = write!(out, "{from}: ");
                    }
                }
                out.push_str(text);
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
        out
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and addresses cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"error\"}"))
    }

    /// Both encodings, built once and then shared by every recipient.
    pub fn encode(&self) -> Encoded {
        Encoded {
            text: Bytes::from(self.to_text()),
            json: Bytes::from(self.to_json()),
        }
    }
}

/// An event already encoded in both forms. Cloning the [`Bytes`] shares the
/// buffer, so a broadcast costs no copy per recipient.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The text-encoding line (UTF-8).
    pub text: Bytes,
    /// The JSON-encoding object (UTF-8).
    pub json: Bytes,
}

impl Encoded {
    /// The bytes for one encoding.
    pub fn get(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Text => &self.text,
            Encoding::Json => &self.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:53211".parse().unwrap()
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
        let ev = Event::Message {
            room: DEFAULT_ROOM.into(),
            seq: 1,
            ts: 0,
            from: addr(),
            nick: None,
            text: "hello \"world\"".into(),
        };
        assert_eq!(ev.to_text(), "127.0.0.1:53211: hello \"world\"");
        let ev = Event::Message {
            room: DEFAULT_ROOM.into(),
            seq: 1,
            ts: 0,
            from: addr(),
            nick: Some("alice".into()),
            text: "hi".into(),
        };
        assert_eq!(ev.to_text(), "alice (127.0.0.1:53211): hi");
    }

    #[test]
    fn message_json_form_carries_every_field() {
        let ev = Event::Message {
            room: DEFAULT_ROOM.into(),
            seq: 7,
            ts: 1_700_000_000_123,
            from: addr(),
            nick: None,
            text: "hi".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["room"], "#lobby");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["ts"], 1_700_000_000_123u64);
        assert_eq!(v["from"], "127.0.0.1:53211");
        assert!(v["nick"].is_null());
        assert_eq!(v["text"], "hi");
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
