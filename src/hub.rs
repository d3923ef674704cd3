//! The hub: who is connected, which room each member is in, and the
//! broadcast channel of every room.
//!
//! All state sits behind one `std::sync::Mutex`. Every method is synchronous
//! and short (no `.await`, no socket, no I/O under the lock), so a std mutex
//! is the right tool: it is cheaper than an async one and can never be held
//! across a suspension point. Sessions only ever talk to the hub through this
//! small API and never see its state.
//!
//! Publishing assigns the room's next sequence number, encodes the event once
//! per encoding, and sends one `Arc` through the room's `broadcast` channel
//! while still holding the lock, so sequence order and channel order are the
//! same for every receiver. That publish path is the seam where a backplane
//! shared by several servers can later sit: sessions call [`Hub::say`] and
//! receive from a [`broadcast::Receiver`], whoever fills it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::protocol::{now_millis, Encoded, Event, TextError, DEFAULT_ROOM};

/// Default capacity of each room's broadcast channel: how far (in messages)
/// a receiver may fall behind before it starts missing messages.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;

/// What a room's channel carries: an event encoded once, shared by all.
pub type Shared = Arc<Encoded>;

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Name shown in the welcome line.
    pub name: String,
    /// Capacity of each room's broadcast channel.
    pub channel_capacity: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            name: "chat".into(),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
        }
    }
}

/// Identifies one connection for the hub's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId(u64);

/// A cheap, cloneable handle to the shared chat state.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    members: HashMap<MemberId, Member>,
    rooms: HashMap<String, Room>,
}

struct Member {
    addr: SocketAddr,
    nick: Option<String>,
    room: String,
}

struct Room {
    tx: broadcast::Sender<Shared>,
    /// Sequence number of the last message published here (0: none yet).
    last_seq: u64,
}

impl Room {
    fn new(capacity: usize) -> Self {
        Room {
            tx: broadcast::channel(capacity).0,
            last_seq: 0,
        }
    }
}

/// What a new connection gets from [`Hub::connect`].
pub struct Joined {
    /// The member's identity, for later calls.
    pub id: MemberId,
    /// Live messages of the member's room, from the moment of joining.
    pub rx: broadcast::Receiver<Shared>,
    /// The welcome event for this member alone.
    pub welcome: Event,
}

impl Hub {
    /// A hub with the room [`DEFAULT_ROOM`] and nobody in it.
    pub fn new(config: HubConfig) -> Self {
        let mut state = State::default();
        state
            .rooms
            .insert(DEFAULT_ROOM.to_string(), Room::new(config.channel_capacity));
        Hub {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing the whole chat, so keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection in the default room. The receiver is
    /// subscribed before this returns, so nothing published afterwards is
    /// missed.
    pub fn connect(&self, addr: SocketAddr) -> Joined {
        let capacity = self.inner.config.channel_capacity;
        let mut state = self.state();
        state.next_id += 1;
        let id = MemberId(state.next_id);
        let room = state
            .rooms
            .entry(DEFAULT_ROOM.to_string())
            .or_insert_with(|| Room::new(capacity));
        let rx = room.tx.subscribe();
        state.members.insert(
            id,
            Member {
                addr,
                nick: None,
                room: DEFAULT_ROOM.to_string(),
            },
        );
        let welcome = Event::Welcome {
            server: self.inner.config.name.clone(),
            addr,
            room: DEFAULT_ROOM.to_string(),
            online: state.members.len(),
        };
        Joined { id, rx, welcome }
    }

    /// Removes a connection. Safe to call more than once.
    pub fn disconnect(&self, id: MemberId) {
        self.state().members.remove(&id);
    }

    /// Publishes a chat message from `id` to its current room, the sender
    /// included.
    pub fn say(&self, id: MemberId, text: &str) -> Result<(), TextError> {
        crate::protocol::validate_text(text)?;
        let mut state = self.state();
        let State { members, rooms, .. } = &mut *state;
        let Some(member) = members.get(&id) else {
            return Ok(());
        };
        let Some(room) = rooms.get_mut(&member.room) else {
            return Ok(());
        };
        room.last_seq += 1;
        let event = Event::Message {
            room: member.room.clone(),
            seq: room.last_seq,
            ts: now_millis(),
            from: member.addr,
            nick: member.nick.clone(),
            text: text.to_string(),
        };
        // An error only means nobody is listening, which is fine.
        let _ = room.tx.send(Arc::new(event.encode()));
        Ok(())
    }

    /// How many connections are registered.
    pub fn online(&self) -> usize {
        self.state().members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn messages_reach_every_member_in_sequence() {
        let hub = Hub::new(HubConfig::default());
        let mut a = hub.connect(addr(1));
        let mut b = hub.connect(addr(2));
        assert_eq!(hub.online(), 2);
        hub.say(a.id, "one").unwrap();
        hub.say(b.id, "two").unwrap();
        for rx in [&mut a.rx, &mut b.rx] {
            let first = rx.try_recv().unwrap();
            let second = rx.try_recv().unwrap();
            assert_eq!(&first.text[..], b"127.0.0.1:1: one");
            assert_eq!(&second.text[..], b"127.0.0.1:2: two");
            let json: serde_json::Value = serde_json::from_slice(&second.json).unwrap();
            assert_eq!(json["seq"], 2);
        }
        hub.disconnect(a.id);
        hub.disconnect(a.id);
        assert_eq!(hub.online(), 1);
    }

    #[test]
    fn control_characters_are_not_published() {
        let hub = Hub::new(HubConfig::default());
        let mut a = hub.connect(addr(1));
        assert!(hub.say(a.id, "evil\u{1b}[2J").is_err());
        assert!(a.rx.try_recv().is_err());
    }
}
