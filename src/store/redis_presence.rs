//! Who is where, across every server sharing one Redis: room membership,
//! nicknames and the node-to-node channel for private messages.
//!
//! A member is named in Redis by its node and socket address,
//! `NODE/ADDR` (its *key*). Per room, beside the log's keys:
//! - `chat:{ROOM}:who`, a sorted set of member keys scored by when their
//!   entry expires (milliseconds since the Unix epoch), and
//! - `chat:{ROOM}:info`, a hash of member key to its `/who` entry (JSON).
//!
//! Across rooms: `chat:rooms`, the set of rooms that have had members;
//! `chat:nick:NICK` (lower-cased), the member key owning a nickname and a
//! proof of its reclaim token (`NODE/ADDR PROOF`, the first 128 bits of the
//! SHA-256 of the token's secret, never the secret), with an expiry, so a
//! client that moves to another node with its token takes its nickname
//! with it; `chat:node:NODE`, the channel a node hears private messages
//! for its members on; `chat:sweeper`, the lock held by the one node that
//! sweeps at a time.
//!
//! Each node refreshes its own members' entries and nicknames every third
//! of the TTL. A node that stops (`kill -9`, a lost machine) stops
//! refreshing: its entries expire, and the sweeper removes them, announces
//! the leaves in their rooms, and frees their nicknames. So a dead node's
//! users are shown leaving within about 1⅓ TTL, by another node.
//!
//! Presence announcements (joins, leaves, nickname changes) go over the
//! room's channel, beside its lines, as `P NODE JSON`: at most once, like
//! any pub/sub message. That is enough for announcements; what `/who`
//! lists is read from the sorted set, which the refresh keeps true.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::{now_millis, Event, MemberInfo, RoomInfo};
use crate::store::redis::{channel, RedisLog, StoreError};

/// How long a member's entry and nickname outlive their node's last
/// refresh, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// Most entries one sweep of a room removes (the next sweep takes more).
const SWEEP_LIMIT: usize = 500;
/// What a sweeper names as the node of the leaves it announces: matches
/// no node, so every node delivers them.
pub const SWEEPER: &str = "-";
/// The reason given for members whose node stopped.
pub const NODE_GONE: &str = "their server stopped";

/// Takes a nickname for a member if it is free or already its own, or if
/// the member shows the reclaim proof of its owner (a client that moved
/// here from another node). KEYS: nick. ARGV: member key, the value to set
/// (`KEY PROOF`), TTL ms, the proof shown (or empty). Returns 1 (had), 2
/// (taken back with the proof) or 0 (someone else has it).
const CLAIM_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
local owner, proof = nil, nil
if v then owner, proof = string.match(v, '^(%S+) (%S+)$') end
local got = 0
if (not v) or owner == ARGV[1] then
  got = 1
elseif ARGV[4] ~= '' and proof == ARGV[4] then
  got = 2
end
if got > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return got
";

/// Frees a nickname if the member still owns it. KEYS: nick. ARGV: member
/// key. Returns 1 (freed), 0 (nobody had it) or -1 (someone else has it).
const RELEASE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if string.match(v, '^(%S+) ') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return -1
";

/// Hands a nickname from one member to another (a reclaim on this node),
/// if the first still owns it or nobody does. KEYS: nick. ARGV: from's
/// key, the value to set, TTL ms.
const MOVE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or string.match(v, '^(%S+) ') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// A refresh of one nickname: extended if the member owns it, taken again
/// if it expired meanwhile (Redis was away longer than the TTL); 0 if
/// someone else has it now. The arguments of [`CLAIM_SCRIPT`], no proof.
const REFRESH_SCRIPT: &str = CLAIM_SCRIPT;

/// The live members of a room with their entries. KEYS: who, info. ARGV:
/// now (ms).
const WHO_SCRIPT: &str = r"
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
if #live == 0 then return {} end
local infos = redis.call('HMGET', KEYS[2], unpack(live))
local out = {}
for i, m in ipairs(live) do
  if infos[i] then
    table.insert(out, m)
    table.insert(out, infos[i])
  end
end
return out
";

/// Removes a room's expired entries. KEYS: who, info. ARGV: now (ms),
/// limit. Returns the number of live members left, then the removed
/// members' keys and entries, alternating.
const SWEEP_SCRIPT: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {0}
for _, m in ipairs(gone) do
  local info = redis.call('HGET', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  if info then
    table.insert(out, m)
    table.insert(out, info)
  end
end
out[1] = redis.call('ZCARD', KEYS[1])
return out
";

/// Takes or keeps the sweeper's lock. KEYS: lock. ARGV: node, TTL ms.
const LOCK_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// The sorted set of a room's members.
pub fn who_key(room: &str) -> String {
    format!("chat:{{{room}}}:who")
}

/// The hash of a room's members' `/who` entries.
pub fn info_key(room: &str) -> String {
    format!("chat:{{{room}}}:info")
}

/// The key of a nickname (ignoring ASCII case).
pub fn nick_key(nick: &str) -> String {
    format!("chat:nick:{}", nick.to_ascii_lowercase())
}

/// The set of rooms that have had members.
pub const ROOMS_KEY: &str = "chat:rooms";
/// The sweeper's lock.
pub const SWEEPER_KEY: &str = "chat:sweeper";

/// The channel `node` hears private messages on.
pub fn node_channel(node: &str) -> String {
    format!("chat:node:{node}")
}

/// The node a [`node_channel`] belongs to.
pub fn node_of_channel(name: &str) -> Option<&str> {
    name.strip_prefix("chat:node:")
}

/// The proof of a reclaim token's secret kept with a nickname: the first
/// 128 bits of its SHA-256, in hex; `-` (matching no proof) for none.
pub fn proof(secret: u128) -> String {
    if secret == 0 {
        return "-".to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &secret.to_le_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A member's key: its node and address.
pub fn member_key(node: &str, addr: SocketAddr) -> String {
    format!("{node}/{addr}")
}

/// The node and address in a member key.
pub fn parse_member_key(key: &str) -> Option<(&str, SocketAddr)> {
    let (node, addr) = key.split_once('/')?;
    Some((node, addr.parse().ok()?))
}

/// A presence announcement as published on a room's channel.
pub fn announcement(node: &str, event: &Event) -> Option<String> {
    serde_json::to_string(event)
        .ok()
        .map(|json| format!("P {node} {json}"))
}

/// What one node has: its members by room, and its nicknames (lower-cased)
/// with their owners' addresses. What it keeps fresh in Redis.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Members by room.
    pub rooms: HashMap<String, Vec<MemberInfo>>,
    /// Nicknames with their owners' addresses and reclaim secrets.
    pub nicks: Vec<(String, SocketAddr, u128)>,
}

/// The outcome of a nickname claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Someone else has it.
    Taken,
    /// It is the member's.
    Had,
    /// It is the member's, taken back from its owner on another node by
    /// the owner's reclaim token (the same client, moved here).
    Reclaimed,
}

/// One node's view of presence in Redis; cheap to clone.
#[derive(Clone, Debug)]
pub struct Presence {
    log: RedisLog,
    node: String,
    ttl: Duration,
}

/// A change to write, in the order the hub made them. Batched: see
/// [`Presence::write`].
#[derive(Debug, Clone)]
pub enum Change {
    /// A member is in `room` now; `announce` is told there.
    Enter {
        /// The room.
        room: String,
        /// Its `/who` entry.
        info: MemberInfo,
        /// The join, if it is announced.
        announce: Option<Event>,
    },
    /// A member left `room`; `announce` is told there.
    Leave {
        /// The room.
        room: String,
        /// Its address.
        addr: SocketAddr,
        /// The leave, if it is announced.
        announce: Option<Event>,
    },
    /// A member's entry changed (a new nickname) and `event` is told.
    Rename {
        /// The room.
        room: String,
        /// Its new entry.
        info: MemberInfo,
        /// The nickname change.
        event: Event,
    },
    /// Something for `room` that changes no entry (a leave announced at
    /// the end of a grace period).
    Announce {
        /// The room.
        room: String,
        /// What is told.
        event: Event,
    },
    /// A member has a nickname (claimed before it connected): its value
    /// gets the member's reclaim proof.
    Own {
        /// The nickname.
        nick: String,
        /// Its owner.
        addr: SocketAddr,
        /// The owner's reclaim secret.
        secret: u128,
    },
    /// A member gave up a nickname.
    Release {
        /// The nickname.
        nick: String,
        /// Its owner.
        addr: SocketAddr,
    },
    /// A nickname moved from one member of this node to another.
    Move {
        /// The nickname.
        nick: String,
        /// Its owner until now.
        from: SocketAddr,
        /// Its owner from now.
        to: SocketAddr,
        /// The new owner's reclaim secret.
        secret: u128,
    },
}

impl Presence {
    /// Presence for `node` (a random name of this run) in the Redis of `log`.
    pub fn new(log: RedisLog, node: String, ttl: Duration) -> Self {
        Presence { log, node, ttl }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long entries outlive the last refresh.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    fn key(&self, addr: SocketAddr) -> String {
        member_key(&self.node, addr)
    }

    /// What a nickname's key holds for its owner.
    fn owner_value(&self, addr: SocketAddr, secret: u128) -> String {
        format!("{} {}", self.key(addr), proof(secret))
    }

    fn claim_command(&self, nick: &str, addr: SocketAddr, secret: u128, shown: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM_SCRIPT)
            .arg(1)
            .arg(nick_key(nick))
            .arg(self.key(addr))
            .arg(self.owner_value(addr, secret))
            .arg(self.ttl_ms())
            .arg(shown);
        cmd
    }

    fn expiry(&self) -> u64 {
        now_millis() + self.ttl_ms()
    }

    /// Adds the commands for `changes` to `pipe` (their answers ignored),
    /// so that they go in the same round trip as lines.
    pub fn write(&self, pipe: &mut redis::Pipeline, changes: &[Change]) {
        let expiry = self.expiry();
        let ttl = self.ttl_ms();
        for change in changes {
            match change {
                Change::Enter {
                    room,
                    info,
                    announce,
                } => {
                    let key = self.key(info.addr);
                    let json = serde_json::to_string(info).unwrap_or_default();
                    pipe.cmd("ZADD")
                        .arg(who_key(room))
                        .arg(expiry)
                        .arg(&key)
                        .ignore();
                    pipe.cmd("HSET")
                        .arg(info_key(room))
                        .arg(&key)
                        .arg(json)
                        .ignore();
                    pipe.cmd("SADD").arg(ROOMS_KEY).arg(room).ignore();
                    self.publish(pipe, room, announce.as_ref());
                }
                Change::Leave {
                    room,
                    addr,
                    announce,
                } => {
                    let key = self.key(*addr);
                    pipe.cmd("ZREM").arg(who_key(room)).arg(&key).ignore();
                    pipe.cmd("HDEL").arg(info_key(room)).arg(&key).ignore();
                    self.publish(pipe, room, announce.as_ref());
                }
                Change::Rename { room, info, event } => {
                    let json = serde_json::to_string(info).unwrap_or_default();
                    pipe.cmd("HSET")
                        .arg(info_key(room))
                        .arg(self.key(info.addr))
                        .arg(json)
                        .ignore();
                    self.publish(pipe, room, Some(event));
                }
                Change::Announce { room, event } => self.publish(pipe, room, Some(event)),
                Change::Own { nick, addr, secret } => {
                    pipe.add_command(self.claim_command(nick, *addr, *secret, ""))
                        .ignore();
                }
                Change::Release { nick, addr } => {
                    pipe.cmd("EVAL")
                        .arg(RELEASE_SCRIPT)
                        .arg(1)
                        .arg(nick_key(nick))
                        .arg(self.key(*addr))
                        .ignore();
                }
                Change::Move {
                    nick,
                    from,
                    to,
                    secret,
                } => {
                    pipe.cmd("EVAL")
                        .arg(MOVE_SCRIPT)
                        .arg(1)
                        .arg(nick_key(nick))
                        .arg(self.key(*from))
                        .arg(self.owner_value(*to, *secret))
                        .arg(ttl)
                        .ignore();
                }
            }
        }
    }

    fn publish(&self, pipe: &mut redis::Pipeline, room: &str, event: Option<&Event>) {
        if let Some(message) = event.and_then(|e| announcement(&self.node, e)) {
            pipe.cmd("PUBLISH").arg(channel(room)).arg(message).ignore();
        }
    }

    /// Takes `nick` for the member at `addr` on this node, whose reclaim
    /// secret is `secret` (0: not known yet, see [`Change::Own`]), showing
    /// `shown`, the proof of the reclaim token it came with, if any.
    pub async fn claim(
        &self,
        nick: &str,
        addr: SocketAddr,
        secret: u128,
        shown: Option<&str>,
    ) -> Result<Claim, StoreError> {
        let got: i64 = self
            .claim_command(nick, addr, secret, shown.unwrap_or(""))
            .query_async(&mut self.log.conn())
            .await?;
        Ok(match got {
            1 => Claim::Had,
            2 => Claim::Reclaimed,
            _ => Claim::Taken,
        })
    }

    /// Frees `nick` if the member at `addr` on this node still owns it.
    pub async fn release(&self, nick: &str, addr: SocketAddr) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        self.write(
            &mut pipe,
            &[Change::Release {
                nick: nick.to_string(),
                addr,
            }],
        );
        pipe.query_async::<()>(&mut self.log.conn()).await?;
        Ok(())
    }

    /// Extends this node's entries and nicknames by a TTL from now.
    /// Returns the
    /// nicknames someone else took meanwhile (possible only after Redis was
    /// away longer than the TTL).
    pub async fn refresh(&self, have: &Snapshot) -> Result<Vec<String>, StoreError> {
        let Snapshot { rooms, nicks } = have;
        let expiry = self.expiry();
        let mut pipe = redis::pipe();
        for (room, members) in rooms {
            if members.is_empty() {
                continue;
            }
            // ZADD and HSET with every member at once: one command each.
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(who_key(room));
            let mut hset = redis::cmd("HSET");
            hset.arg(info_key(room));
            for info in members {
                let key = self.key(info.addr);
                zadd.arg(expiry).arg(&key);
                hset.arg(&key)
                    .arg(serde_json::to_string(info).unwrap_or_default());
            }
            pipe.add_command(zadd).ignore();
            pipe.add_command(hset).ignore();
            pipe.cmd("SADD").arg(ROOMS_KEY).arg(room).ignore();
        }
        for (nick, addr, secret) in nicks {
            pipe.cmd("EVAL")
                .arg(REFRESH_SCRIPT)
                .arg(1)
                .arg(nick_key(nick))
                .arg(self.key(*addr))
                .arg(self.owner_value(*addr, *secret))
                .arg(self.ttl_ms())
                .arg("");
        }
        let kept: Vec<i64> = pipe.query_async(&mut self.log.conn()).await?;
        Ok(nicks
            .iter()
            .zip(kept)
            .filter(|(_, kept)| *kept == 0)
            .map(|((nick, _, _), _)| nick.clone())
            .collect())
    }

    /// The live members of `room` on every node, as `/who` lists them,
    /// with their member keys.
    pub async fn who(&self, room: &str) -> Result<Vec<(String, MemberInfo)>, StoreError> {
        let flat: Vec<String> = redis::cmd("EVAL")
            .arg(WHO_SCRIPT)
            .arg(2)
            .arg(who_key(room))
            .arg(info_key(room))
            .arg(now_millis())
            .query_async(&mut self.log.conn())
            .await?;
        Ok(flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [key, json] => Some((key.clone(), serde_json::from_str(json).ok()?)),
                _ => None,
            })
            .collect())
    }

    /// Every room with live members on any node, with how many.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, StoreError> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(ROOMS_KEY)
            .query_async(&mut self.log.conn())
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("ZCOUNT").arg(who_key(name)).arg(now).arg("+inf");
        }
        let counts: Vec<usize> = pipe.query_async(&mut self.log.conn()).await?;
        Ok(names
            .into_iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(name, members)| RoomInfo { name, members })
            .collect())
    }

    /// The node and address of the member owning `nick`, if any.
    pub async fn owner(&self, nick: &str) -> Result<Option<(String, SocketAddr)>, StoreError> {
        let key: Option<String> = redis::cmd("GET")
            .arg(nick_key(nick))
            .query_async(&mut self.log.conn())
            .await?;
        Ok(key.as_deref().and_then(|value| {
            // `KEY PROOF`
            let key = value.split(' ').next()?;
            let (node, addr) = parse_member_key(key)?;
            Some((node.to_string(), addr))
        }))
    }

    /// Sends a private message to a member of `node`: false if that node
    /// does not listen (it stopped).
    pub async fn send_private(&self, node: &str, event: &Event) -> Result<bool, StoreError> {
        let json = serde_json::to_string(event).map_err(StoreError::new)?;
        let heard: u64 = redis::cmd("PUBLISH")
            .arg(node_channel(node))
            .arg(json)
            .query_async(&mut self.log.conn())
            .await?;
        Ok(heard > 0)
    }

    /// One round of the sweeper, if this node holds (or gets) the lock:
    /// removes the expired entries of every room, announces their leaves
    /// and frees their nicknames. Returns how many were removed (`None`:
    /// another node sweeps).
    pub async fn sweep(&self) -> Result<Option<usize>, StoreError> {
        let mut conn = self.log.conn();
        let locked: i64 = redis::cmd("EVAL")
            .arg(LOCK_SCRIPT)
            .arg(1)
            .arg(SWEEPER_KEY)
            .arg(&self.node)
            .arg(self.ttl_ms())
            .query_async(&mut conn)
            .await?;
        if locked != 1 {
            return Ok(None);
        }
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(ROOMS_KEY)
            .query_async(&mut conn)
            .await?;
        let now = now_millis();
        let mut removed = 0;
        for room in rooms {
            let swept: Vec<redis::Value> = redis::cmd("EVAL")
                .arg(SWEEP_SCRIPT)
                .arg(2)
                .arg(who_key(&room))
                .arg(info_key(&room))
                .arg(now)
                .arg(SWEEP_LIMIT)
                .query_async(&mut conn)
                .await?;
            let mut values = swept.into_iter();
            let left: i64 = values
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or(1);
            let rest: Vec<String> = values
                .filter_map(|v| redis::from_redis_value(v).ok())
                .collect();
            let mut pipe = redis::pipe();
            for pair in rest.chunks(2) {
                let [key, json] = pair else { continue };
                let Ok(info) = serde_json::from_str::<MemberInfo>(json) else {
                    continue;
                };
                removed += 1;
                if let Some(nick) = &info.nick {
                    let freed: i64 = redis::cmd("EVAL")
                        .arg(RELEASE_SCRIPT)
                        .arg(1)
                        .arg(nick_key(nick))
                        .arg(key)
                        .query_async(&mut conn)
                        .await?;
                    if freed < 0 {
                        // Its client took it back on another node with
                        // its reclaim token: it has not left.
                        continue;
                    }
                }
                let leave = Event::Left {
                    room: room.clone(),
                    addr: info.addr,
                    nick: info.nick,
                    reason: Some(NODE_GONE.to_string()),
                };
                if let Some(message) = announcement(SWEEPER, &leave) {
                    pipe.cmd("PUBLISH")
                        .arg(channel(&room))
                        .arg(message)
                        .ignore();
                }
            }
            if left == 0 {
                // A join racing this is put back by its node's refresh.
                pipe.cmd("SREM").arg(ROOMS_KEY).arg(&room).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(Some(removed))
    }

    /// Removes this node's entries and nicknames at once (a clean stop),
    /// announcing the leaves.
    pub async fn forget(&self, have: &Snapshot, reason: &str) -> Result<(), StoreError> {
        let Snapshot { rooms, nicks } = have;
        let mut changes = Vec::new();
        for (room, members) in rooms {
            for info in members {
                changes.push(Change::Leave {
                    room: room.clone(),
                    addr: info.addr,
                    announce: Some(Event::Left {
                        room: room.clone(),
                        addr: info.addr,
                        nick: info.nick.clone(),
                        reason: Some(reason.to_string()),
                    }),
                });
            }
        }
        for (nick, addr, _) in nicks {
            changes.push(Change::Release {
                nick: nick.clone(),
                addr: *addr,
            });
        }
        let mut pipe = redis::pipe();
        self.write(&mut pipe, &changes);
        pipe.query_async::<()>(&mut self.log.conn()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys_round_trip_and_nick_keys_ignore_case() {
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let key = member_key("n1", addr);
        assert_eq!(parse_member_key(&key), Some(("n1", addr)));
        assert_eq!(parse_member_key("garbage"), None);
        assert_eq!(nick_key("Alice"), nick_key("alice"));
        assert_eq!(who_key("#rust"), "chat:{#rust}:who");
        assert_eq!(node_of_channel(&node_channel("ab")), Some("ab"));
    }

    #[test]
    fn a_proof_is_a_hash_of_the_secret_never_the_secret() {
        let secret = 0x0123_4567_89ab_cdef_0011_2233_4455_6677_u128;
        let p = proof(secret);
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(p, proof(secret), "the same for the same secret");
        assert_ne!(p, proof(secret + 1));
        assert!(!p.contains(&format!("{secret:x}")));
        // No secret: a proof no token can show.
        assert_eq!(proof(0), "-");
    }
}
