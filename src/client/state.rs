//! What the client remembers about its place in the chat, so that it can
//! come back after a dropped connection: who it is (address, nickname), where
//! (room), which server run (epoch) and the last message it showed in each
//! room (seq). It also decides which incoming events are shown, so that a
//! reconnect shows exactly the missed messages, each once.
//!
//! Pure bookkeeping: no sockets, no terminal. The engine feeds it events and
//! sends the commands it asks for.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use super::Secret;
use crate::protocol::{Event, Hello, DEFAULT_ROOM, RATE_REFUSED};

/// Lines buffered while catching up before they are shown regardless, so a
/// server that never answers `/resume` cannot make the client hoard.
const MAX_BUFFERED: usize = 10_000;

/// An event as received: parsed, with its JSON text for `--json` output.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The parsed event.
    pub event: Event,
    /// The JSON the server sent.
    pub raw: String,
}

/// What a welcome says that the tracker keeps.
#[derive(Debug, Clone, Copy)]
pub struct Greeting<'a> {
    /// Our address on this connection.
    pub addr: SocketAddr,
    /// The room the server put us in.
    pub room: &'a str,
    /// The server run's epoch.
    pub epoch: u64,
    /// The nickname the server gave us from the start.
    pub nick: Option<&'a str>,
    /// This session's reclaim token. Its presence also says that the
    /// server read our [`Hello`]; an older server has neither.
    pub reclaim: Option<&'a str>,
}

/// The outcome of a new connection's welcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Welcomed {
    /// The first connection of this client: show the welcome, then send
    /// `commands` (`/nick`, `/join`: only to an older server, which did not
    /// read the nickname and room from our [`Hello`]).
    First {
        /// `/nick` and `/join`, in that order, or nothing.
        commands: Vec<String>,
    },
    /// A reconnection: send `commands` to restore the nickname and room and
    /// ask for the missed lines; don't show the welcome again.
    Again {
        /// `/nick` and `/join` (to an older server only) and `/resume`, in
        /// that order.
        commands: Vec<String>,
        /// The server has restarted since (a different epoch).
        restarted: bool,
    },
}

/// Catching up after a reconnect: from the welcome to the `resumed` answer.
#[derive(Debug)]
struct CatchUp {
    /// The room being resumed.
    room: String,
    /// New lines of that room by `seq`, which both orders them and drops
    /// the ones the join replay and the resume replay both carry.
    lines: BTreeMap<u64, Incoming>,
}

/// The client's memory across connections.
#[derive(Debug, Default)]
pub struct Tracker {
    me: Option<SocketAddr>,
    nick: Option<String>,
    room: Option<String>,
    /// The current session's reclaim token, shown by the next connection.
    reclaim: Option<Secret>,
    epoch: Option<u64>,
    /// Highest `seq` shown per room, in the current epoch.
    seen: HashMap<String, u64>,
    catch_up: Option<CatchUp>,
    /// Lines the server refused for going over its rate limit.
    refused: usize,
}

impl Tracker {
    /// A client that has not connected yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// This connection's own address, once welcomed.
    pub fn me(&self) -> Option<SocketAddr> {
        self.me
    }

    /// The nickname the server confirmed, if any.
    pub fn nick(&self) -> Option<&str> {
        self.nick.as_deref()
    }

    /// The room the client is in.
    pub fn room(&self) -> &str {
        self.room.as_deref().unwrap_or(DEFAULT_ROOM)
    }

    /// Whether a connection was ever welcomed (so there is something to
    /// resume).
    pub fn established(&self) -> bool {
        self.epoch.is_some()
    }

    /// How many lines the server refused for going over its rate limit.
    pub fn refused(&self) -> usize {
        self.refused
    }

    /// Whether the client is still catching up after a reconnect.
    pub fn catching_up(&self) -> bool {
        self.catch_up.is_some()
    }

    /// What to ask for with the next connection's upgrade: at first the
    /// nickname and room the user asked for, later the ones we have, with
    /// the reclaim token that takes them back at once.
    pub fn hello(&self, nick: Option<&str>, room: Option<&str>) -> Hello {
        if !self.established() {
            return Hello {
                nick: nick.map(String::from),
                room: room.map(String::from),
                reclaim: None,
            };
        }
        Hello {
            nick: self.nick.clone(),
            room: Some(self.room().to_string()),
            reclaim: self.reclaim.as_ref().map(|s| s.expose().to_string()),
        }
    }

    /// Records a new connection's welcome and says what to do about it;
    /// `asked` is the [`Hello`] this connection was opened with.
    pub fn welcome(&mut self, greeting: &Greeting<'_>, asked: &Hello) -> Welcomed {
        self.me = Some(greeting.addr);
        // A server that sends a token read the Hello: what it could not
        // grant it has said why, and asking again would only repeat that.
        let read_hello = greeting.reclaim.is_some();
        self.reclaim = greeting.reclaim.map(Secret::new);
        let Some(old_epoch) = self.epoch.replace(greeting.epoch) else {
            self.room = Some(greeting.room.to_string());
            self.nick = greeting.nick.map(String::from);
            let mut commands = Vec::new();
            if !read_hello {
                if let Some(nick) = &asked.nick {
                    commands.push(format!("/nick {nick}"));
                }
                if let Some(room) = &asked.room {
                    if !same_room(room, greeting.room) {
                        commands.push(format!("/join {room}"));
                    }
                }
            }
            return Welcomed::First { commands };
        };
        let mut commands = Vec::new();
        if read_hello {
            // Where the server put us is where we are now.
            self.nick = greeting.nick.map(String::from);
            self.room = Some(greeting.room.to_string());
        } else {
            if let Some(nick) = &self.nick {
                commands.push(format!("/nick {nick}"));
            }
            if !same_room(self.room(), greeting.room) {
                commands.push(format!("/join {}", self.room()));
            }
        }
        let target = self.room().to_string();
        let last = self.seen.get(&target).copied().unwrap_or(0);
        // Asked with the old epoch even after a restart, so the server's
        // answer says plainly that the lines in between are gone.
        commands.push(format!("/resume {old_epoch} {last}"));
        let restarted = old_epoch != greeting.epoch;
        if restarted {
            // The new run numbers from 1 again: old numbers mean nothing.
            self.seen.clear();
        }
        self.catch_up = Some(CatchUp {
            room: target,
            lines: BTreeMap::new(),
        });
        Welcomed::Again {
            commands,
            restarted,
        }
    }

    /// Takes one event (not the welcome) and returns what to show now,
    /// in order: usually the event itself; nothing for duplicates and for
    /// the noise of re-entering; the caught-up lines when the catch-up ends.
    pub fn accept(&mut self, incoming: Incoming) -> Vec<Incoming> {
        let me = self.me;
        let mine = |addr: &SocketAddr| Some(*addr) == me;
        if let Event::Error { message } = &incoming.event {
            self.refused += usize::from(message.starts_with(RATE_REFUSED));
        }
        match &incoming.event {
            Event::Nick { addr, new, .. } if mine(addr) => {
                self.nick = Some(new.clone());
                if self.catch_up.is_some() {
                    return Vec::new();
                }
            }
            Event::Joined { addr, room, .. } if mine(addr) => {
                self.room = Some(room.clone());
                if self.catch_up.is_some() {
                    return Vec::new();
                }
            }
            Event::Left { addr, .. } if mine(addr) && self.catch_up.is_some() => {
                return Vec::new();
            }
            Event::History { .. } | Event::Entered { .. } if self.catch_up.is_some() => {
                return Vec::new()
            }
            Event::Message(line) | Event::Action(line) => {
                let (room, seq) = (line.room.clone(), line.seq);
                return self.chat_line(room, seq, incoming);
            }
            Event::Resumed {
                room, restarted, ..
            } if self.catch_up.as_ref().is_some_and(|c| &c.room == room) => {
                let restarted = *restarted;
                let mut shown = self.end_catch_up();
                // After a restart the warning comes first: the lines that
                // follow are the new run's, not the ones that were missed.
                if restarted {
                    shown.insert(0, incoming);
                } else {
                    shown.push(incoming);
                }
                return shown;
            }
            // A server that does not know /resume would never answer it.
            Event::Error { message } if self.catch_up.is_some() && message.contains("/resume") => {
                let mut shown = self.end_catch_up();
                shown.push(incoming);
                return shown;
            }
            _ => {}
        }
        vec![incoming]
    }

    fn chat_line(&mut self, room: String, seq: u64, incoming: Incoming) -> Vec<Incoming> {
        let seen = self.seen.get(&room).copied().unwrap_or(0);
        if let Some(catch_up) = &mut self.catch_up {
            // Lines of the room we land in before /join takes us back, and
            // lines we already showed, are not news.
            if room != catch_up.room || seq <= seen {
                return Vec::new();
            }
            catch_up.lines.insert(seq, incoming);
            if catch_up.lines.len() >= MAX_BUFFERED {
                return self.end_catch_up();
            }
            return Vec::new();
        }
        self.seen.insert(room, seen.max(seq));
        vec![incoming]
    }

    fn end_catch_up(&mut self) -> Vec<Incoming> {
        let Some(catch_up) = self.catch_up.take() else {
            return Vec::new();
        };
        if let Some((&last, _)) = catch_up.lines.last_key_value() {
            let seen = self.seen.entry(catch_up.room).or_insert(0);
            *seen = (*seen).max(last);
        }
        catch_up.lines.into_values().collect()
    }
}

/// Whether two room names, as typed (`rust`, `#Rust`) or as the server
/// writes them, are the same room.
fn same_room(a: &str, b: &str) -> bool {
    let bare = |r: &str| r.strip_prefix('#').unwrap_or(r).to_ascii_lowercase();
    bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChatLine;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn msg(room: &str, seq: u64, history: bool) -> Incoming {
        Incoming {
            event: Event::Message(ChatLine {
                room: room.into(),
                seq,
                ts: 0,
                from: addr(9),
                nick: None,
                text: format!("m{seq}"),
                history,
            }),
            raw: String::new(),
        }
    }

    fn inc(event: Event) -> Incoming {
        Incoming {
            event,
            raw: String::new(),
        }
    }

    /// A welcome from an older server, which ignores the Hello.
    fn old(addr: SocketAddr, room: &str, epoch: u64) -> Greeting<'_> {
        Greeting {
            addr,
            room,
            epoch,
            nick: None,
            reclaim: None,
        }
    }

    fn seqs(shown: &[Incoming]) -> Vec<u64> {
        shown
            .iter()
            .filter_map(|i| match &i.event {
                Event::Message(l) => Some(l.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_welcome_is_shown_and_lines_pass() {
        let mut t = Tracker::new();
        assert_eq!(
            t.welcome(&old(addr(1), "#lobby", 7), &Hello::default()),
            Welcomed::First { commands: vec![] }
        );
        assert_eq!(seqs(&t.accept(msg("#lobby", 1, true))), [1]);
        assert_eq!(seqs(&t.accept(msg("#lobby", 2, false))), [2]);
    }

    #[test]
    fn a_reconnect_restores_identity_and_shows_each_missed_line_once() {
        let mut t = Tracker::new();
        t.welcome(&old(addr(1), "#lobby", 7), &Hello::default());
        t.accept(inc(Event::Nick {
            addr: addr(1),
            old: None,
            new: "alice".into(),
        }));
        t.accept(inc(Event::Joined {
            room: "#rust".into(),
            addr: addr(1),
            nick: Some("alice".into()),
        }));
        for seq in 1..=5 {
            t.accept(msg("#rust", seq, false));
        }
        let again = t.welcome(&old(addr(2), "#lobby", 7), &Hello::default());
        assert_eq!(
            again,
            Welcomed::Again {
                commands: vec![
                    "/nick alice".into(),
                    "/join #rust".into(),
                    "/resume 7 5".into()
                ],
                restarted: false
            }
        );
        // Lobby history, our own presence, the join replay (3..=8) and the
        // resume replay (6..=8), interleaved with a live line 9.
        assert!(t.accept(msg("#lobby", 40, true)).is_empty());
        assert!(t
            .accept(inc(Event::Joined {
                room: "#rust".into(),
                addr: addr(2),
                nick: Some("alice".into())
            }))
            .is_empty());
        for seq in 3..=8 {
            assert!(t.accept(msg("#rust", seq, true)).is_empty());
        }
        assert!(t.accept(msg("#rust", 9, false)).is_empty());
        for seq in 6..=8 {
            assert!(t.accept(msg("#rust", seq, true)).is_empty());
        }
        let shown = t.accept(inc(Event::Resumed {
            room: "#rust".into(),
            after: 5,
            replayed: 3,
            lost: 0,
            restarted: false,
            interrupted: false,
        }));
        assert_eq!(seqs(&shown), [6, 7, 8, 9]);
        assert!(matches!(shown.last().unwrap().event, Event::Resumed { .. }));
        assert!(!t.catching_up());
        assert_eq!(seqs(&t.accept(msg("#rust", 10, false))), [10]);
    }

    #[test]
    fn after_a_restart_old_numbers_are_forgotten() {
        let mut t = Tracker::new();
        t.welcome(&old(addr(1), "#lobby", 7), &Hello::default());
        for seq in 1..=5 {
            t.accept(msg("#lobby", seq, false));
        }
        let again = t.welcome(&old(addr(2), "#lobby", 8), &Hello::default());
        assert_eq!(
            again,
            Welcomed::Again {
                commands: vec!["/resume 7 5".into()],
                restarted: true
            }
        );
        assert!(t.accept(msg("#lobby", 1, true)).is_empty());
        let shown = t.accept(inc(Event::Resumed {
            room: "#lobby".into(),
            after: 5,
            replayed: 0,
            lost: 0,
            restarted: true,
            interrupted: false,
        }));
        assert!(matches!(shown[0].event, Event::Resumed { .. }));
        assert_eq!(seqs(&shown), [1]);
    }

    #[test]
    fn an_older_server_is_sent_nick_and_join_after_the_first_welcome() {
        let mut t = Tracker::new();
        let asked = t.hello(Some("alice"), Some("rust"));
        assert_eq!(asked.to_query(), "nick=alice&room=rust");
        assert_eq!(
            t.welcome(&old(addr(1), "#lobby", 7), &asked),
            Welcomed::First {
                commands: vec!["/nick alice".into(), "/join rust".into()]
            }
        );
    }

    #[test]
    fn a_server_that_read_the_hello_is_sent_only_the_resume() {
        let mut t = Tracker::new();
        let asked = t.hello(Some("alice"), Some("#rust"));
        let first = Greeting {
            addr: addr(1),
            room: "#rust",
            epoch: 7,
            nick: Some("alice"),
            reclaim: Some("t1"),
        };
        assert_eq!(
            t.welcome(&first, &asked),
            Welcomed::First { commands: vec![] }
        );
        assert_eq!((t.nick(), t.room()), (Some("alice"), "#rust"));
        for seq in 1..=3 {
            t.accept(msg("#rust", seq, false));
        }
        // The reconnect shows the token and asks for the same place.
        let asked = t.hello(Some("ignored"), None);
        assert_eq!(
            asked,
            Hello {
                nick: Some("alice".into()),
                room: Some("#rust".into()),
                reclaim: Some("t1".into()),
            }
        );
        let again = Greeting {
            addr: addr(2),
            reclaim: Some("t2"),
            ..first
        };
        assert_eq!(
            t.welcome(&again, &asked),
            Welcomed::Again {
                commands: vec!["/resume 7 3".into()],
                restarted: false
            }
        );
        assert_eq!(t.hello(None, None).reclaim.as_deref(), Some("t2"));
        // The token never shows in the tracker's Debug.
        assert!(!format!("{t:?}").contains("t2"));
    }
}
