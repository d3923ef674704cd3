//! Tab completion: the nicknames seen in the current room, slash commands,
//! and room names after `/join`. Pure: [`Known`] learns names from the
//! events shown, [`complete`] works on the text before the cursor.
//!
//! The client has no member list of its own, so "in the room" means what
//! it has seen there: joins, leaves and renames, the senders of lines
//! (history included) and the answer to `/who`.

use std::collections::BTreeSet;

use super::sanitize::is_dangerous;
use crate::protocol::Event;

/// The commands the server knows (`/help` lists them), for completion.
pub const COMMANDS: &[&str] = &[
    "/help", "/history", "/join", "/me", "/msg", "/nick", "/quit", "/rooms", "/who",
];

/// Names the client has seen.
#[derive(Debug, Default)]
pub struct Known {
    /// The room these nicknames are in.
    room: String,
    nicks: BTreeSet<String>,
    rooms: BTreeSet<String>,
    /// Our own nickname: never offered.
    me: Option<String>,
    /// The oldest `seq` of this room shown, where PageUp pages back from.
    oldest: Option<u64>,
}

/// What Tab does to the text before the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Nothing matches (or nothing to complete).
    None,
    /// Replace the text before the cursor with this.
    Replace(String),
    /// Several match and share no longer prefix: show them.
    Choices(Vec<String>),
}

impl Known {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// We are in `room` as `me`: a new room starts with no nicknames.
    pub fn place(&mut self, room: &str, me: Option<&str>) {
        if !self.room.eq_ignore_ascii_case(room) {
            self.room = room.to_string();
            self.nicks.clear();
            self.oldest = None;
        }
        self.rooms.insert(room.to_string());
        self.me = me.map(str::to_string);
    }

    /// Learns from one shown event. Names holding characters a terminal
    /// would act on are never learnt: a completion goes into the prompt row
    /// as it is, not through the sanitiser.
    pub fn see(&mut self, event: &Event) {
        self.learn(event);
        self.nicks.retain(|n| safe(n));
        self.rooms.retain(|r| safe(r));
    }

    fn learn(&mut self, event: &Event) {
        let here = |room: &str| room.eq_ignore_ascii_case(&self.room);
        match event {
            Event::Welcome { room, .. } => {
                self.rooms.insert(room.clone());
            }
            Event::Message(line) | Event::Action(line) if here(&line.room) => {
                self.oldest = Some(self.oldest.map_or(line.seq, |o| o.min(line.seq)));
                if let Some(nick) = &line.nick {
                    self.nicks.insert(nick.clone());
                }
            }
            Event::Joined { room, nick, .. } => {
                self.rooms.insert(room.clone());
                if let (true, Some(nick)) = (here(room), nick) {
                    self.nicks.insert(nick.clone());
                }
            }
            Event::Left {
                room,
                nick: Some(nick),
                ..
            } if here(room) => {
                self.nicks.remove(nick);
            }
            Event::Nick { old, new, .. } => {
                // Renames are told to the room we are in.
                if let Some(old) = old {
                    self.nicks.remove(old);
                }
                self.nicks.insert(new.clone());
            }
            Event::Who { room, members } if here(room) => {
                self.nicks = members.iter().filter_map(|m| m.nick.clone()).collect();
            }
            Event::Rooms { rooms } => {
                self.rooms = rooms.iter().map(|r| r.name.clone()).collect();
            }
            _ => {}
        }
    }

    /// The oldest line of the current room shown so far, if any.
    pub fn oldest(&self) -> Option<u64> {
        self.oldest
    }

    fn nicks(&self) -> impl Iterator<Item = &str> {
        self.nicks
            .iter()
            .map(String::as_str)
            .filter(|n| Some(*n) != self.me.as_deref())
    }
}

fn safe(name: &str) -> bool {
    !name.chars().any(is_dangerous)
}

/// Completes the word that ends at the cursor (`before` is the text before
/// the cursor): a command at the start of a line, a room after `/join`,
/// otherwise a nickname, followed by `: ` when it opens the line.
pub fn complete(before: &str, known: &Known) -> Completion {
    let start = before.rfind(char::is_whitespace).map_or(0, |i| {
        i + before[i..].chars().next().map_or(1, char::len_utf8)
    });
    let (head, word) = before.split_at(start);
    let first_word = head.trim().is_empty();
    let (candidates, suffix): (Vec<&str>, &str) = if first_word && word.starts_with('/') {
        (COMMANDS.to_vec(), " ")
    } else if head.trim_end().eq_ignore_ascii_case("/join") {
        (known.rooms.iter().map(String::as_str).collect(), "")
    } else if first_word {
        (known.nicks().collect(), ": ")
    } else {
        (known.nicks().collect(), " ")
    };
    if word.is_empty() && !head.trim_end().eq_ignore_ascii_case("/join") {
        return Completion::None;
    }
    let lower = word.to_lowercase();
    let matches: Vec<&str> = candidates
        .into_iter()
        .filter(|c| c.to_lowercase().starts_with(&lower))
        .collect();
    match matches.as_slice() {
        [] => Completion::None,
        [one] => Completion::Replace(format!("{head}{one}{suffix}")),
        several => {
            let common = common_prefix(several);
            if common.chars().count() > word.chars().count() {
                Completion::Replace(format!("{head}{common}"))
            } else {
                Completion::Choices(several.iter().map(|s| s.to_string()).collect())
            }
        }
    }
}

/// The longest prefix all of `words` share, ignoring case (taken from the
/// first of them).
fn common_prefix(words: &[&str]) -> String {
    let Some(first) = words.first() else {
        return String::new();
    };
    let mut len = first.chars().count();
    for w in &words[1..] {
        len = len.min(
            first
                .chars()
                .zip(w.chars())
                .take_while(|(a, b)| a.to_lowercase().eq(b.to_lowercase()))
                .count(),
        );
    }
    first.chars().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChatLine, MemberInfo, RoomInfo};
    use std::net::SocketAddr;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn known() -> Known {
        let mut k = Known::new();
        k.place("#rust", Some("erin"));
        k.see(&Event::Who {
            room: "#rust".into(),
            members: ["alice", "alfred", "bob", "erin"]
                .iter()
                .enumerate()
                .map(|(i, n)| MemberInfo {
                    nick: Some((*n).into()),
                    addr: addr(i as u16),
                })
                .collect(),
        });
        k.see(&Event::Rooms {
            rooms: ["#lobby", "#rust", "#rustaceans"]
                .iter()
                .map(|r| RoomInfo {
                    name: (*r).into(),
                    members: 1,
                })
                .collect(),
        });
        k
    }

    #[test]
    fn a_nick_at_the_start_of_a_line_gets_a_colon() {
        let k = known();
        assert_eq!(complete("bo", &k), Completion::Replace("bob: ".into()));
        assert_eq!(complete("BO", &k), Completion::Replace("bob: ".into()));
        assert_eq!(
            complete("thanks b", &k),
            Completion::Replace("thanks bob ".into())
        );
        assert_eq!(
            complete("/msg b", &k),
            Completion::Replace("/msg bob ".into())
        );
        // Shared prefix first, then the choices.
        assert_eq!(complete("a", &k), Completion::Replace("al".into()));
        assert_eq!(
            complete("al", &k),
            Completion::Choices(vec!["alfred".into(), "alice".into()])
        );
        // Never ourselves, and nothing for an empty word.
        assert_eq!(complete("er", &k), Completion::None);
        assert_eq!(complete("", &k), Completion::None);
    }

    #[test]
    fn the_oldest_line_shown_is_where_scrollback_starts_and_a_new_room_forgets_it() {
        let mut k = known();
        let line = |room: &str, seq| {
            Event::Message(crate::protocol::ChatLine {
                room: room.into(),
                seq,
                ts: 0,
                from: addr(9),
                nick: None,
                text: "x".into(),
                history: false,
            })
        };
        assert_eq!(k.oldest(), None);
        k.see(&line("#rust", 40));
        k.see(&line("#rust", 12));
        k.see(&line("#rust", 41));
        k.see(&line("#lobby", 3));
        assert_eq!(k.oldest(), Some(12), "only this room's lines count");
        k.place("#lobby", Some("erin"));
        assert_eq!(k.oldest(), None);
    }

    #[test]
    fn commands_and_rooms_complete() {
        let k = known();
        assert_eq!(complete("/jo", &k), Completion::Replace("/join ".into()));
        assert_eq!(
            complete("/h", &k),
            Completion::Choices(vec!["/help".into(), "/history".into()])
        );
        assert_eq!(
            complete("/join #l", &k),
            Completion::Replace("/join #lobby".into())
        );
        assert_eq!(
            complete("/join #rust", &k),
            Completion::Choices(vec!["#rust".into(), "#rustaceans".into()])
        );
    }

    #[test]
    fn names_follow_presence_and_renames() {
        let mut k = known();
        k.see(&Event::Left {
            room: "#rust".into(),
            addr: addr(2),
            nick: Some("bob".into()),
            reason: None,
        });
        k.see(&Event::Nick {
            addr: addr(0),
            old: Some("alice".into()),
            new: "carol".into(),
        });
        k.see(&Event::Message(ChatLine {
            room: "#rust".into(),
            seq: 1,
            ts: 0,
            from: addr(7),
            nick: Some("dave".into()),
            text: "hi".into(),
            history: true,
        }));
        assert_eq!(complete("b", &k), Completion::None);
        assert_eq!(complete("c", &k), Completion::Replace("carol: ".into()));
        assert_eq!(complete("d", &k), Completion::Replace("dave: ".into()));
        // A name a terminal would act on is never offered.
        k.see(&Event::Nick {
            addr: addr(8),
            old: None,
            new: "eve\u{1b}[2J".into(),
        });
        assert_eq!(complete("ev", &k), Completion::None);
        // Another room: its own names.
        k.place("#lobby", Some("erin"));
        assert_eq!(complete("d", &k), Completion::None);
    }
}
