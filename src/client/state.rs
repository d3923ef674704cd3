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

use crate::protocol::{Event, DEFAULT_ROOM, RATE_REFUSED};

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

/// The outcome of a new connection's welcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Welcomed {
    /// The first connection of this client: show the welcome.
    First,
    /// A reconnection: send `commands` to restore the nickname and room and
    /// ask for the missed lines; don't show the welcome again.
    Again {
        /// `/nick`, `/join` and `/resume`, in that order.
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

    /// Records a new connection's welcome and says what to do about it.
    pub fn welcome(&mut self, addr: SocketAddr, room: &str, epoch: u64) -> Welcomed {
        self.me = Some(addr);
        let Some(old_epoch) = self.epoch.replace(epoch) else {
            self.room = Some(room.to_string());
            return Welcomed::First;
        };
        let target = self.room().to_string();
        let mut commands = Vec::new();
        if let Some(nick) = &self.nick {
            commands.push(format!("/nick {nick}"));
        }
        if !target.eq_ignore_ascii_case(room) {
            commands.push(format!("/join {target}"));
        }
        let last = self.seen.get(&target).copied().unwrap_or(0);
        // Asked with the old epoch even after a restart, so the server's
        // answer says plainly that the lines in between are gone.
        commands.push(format!("/resume {old_epoch} {last}"));
        let restarted = old_epoch != epoch;
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
        assert_eq!(t.welcome(addr(1), "#lobby", 7), Welcomed::First);
        assert_eq!(seqs(&t.accept(msg("#lobby", 1, true))), [1]);
        assert_eq!(seqs(&t.accept(msg("#lobby", 2, false))), [2]);
    }

    #[test]
    fn a_reconnect_restores_identity_and_shows_each_missed_line_once() {
        let mut t = Tracker::new();
        t.welcome(addr(1), "#lobby", 7);
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
        let again = t.welcome(addr(2), "#lobby", 7);
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
        t.welcome(addr(1), "#lobby", 7);
        for seq in 1..=5 {
            t.accept(msg("#lobby", seq, false));
        }
        let again = t.welcome(addr(2), "#lobby", 8);
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
}
