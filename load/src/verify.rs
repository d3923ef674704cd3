//! Delivery checking: every client must see every message of the run exactly
//! once and in per-sender order.
//!
//! Each client owns one `Track` per sender. In the common case messages arrive
//! in order and a track is just a counter (`next`), so memory stays
//! O(clients x senders) however long the run; only messages that arrive ahead
//! of a gap are remembered individually until the gap fills.

use std::collections::BTreeSet;

/// What one received message meant for the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First delivery of this message to this client.
    New,
    /// First delivery, but a later message of the same sender arrived before it.
    Reordered,
    /// This client already had this message.
    Duplicate,
}

impl Seen {
    /// True when this is the first delivery (counts towards delivered).
    pub fn is_first(self) -> bool {
        !matches!(self, Seen::Duplicate)
    }
}

/// One client's view of one sender's messages.
#[derive(Debug, Default, Clone)]
pub struct Track {
    /// Every seq below this has been received.
    next: u32,
    /// Received seqs at or above `next` (only non-empty after a gap).
    ahead: BTreeSet<u32>,
    /// Highest seq received so far, plus one (0 = none yet).
    high: u32,
}

impl Track {
    pub fn record(&mut self, seq: u32) -> Seen {
        if seq < self.next || self.ahead.contains(&seq) {
            return Seen::Duplicate;
        }
        let reordered = seq < self.high;
        self.high = self.high.max(seq.saturating_add(1));
        if seq == self.next {
            self.next += 1;
            // Fill the gap with anything that already arrived ahead of it.
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        if reordered {
            Seen::Reordered
        } else {
            Seen::New
        }
    }

    /// Distinct messages received.
    pub fn distinct(&self) -> u64 {
        u64::from(self.next) + self.ahead.len() as u64
    }
}

/// Totals over all clients and senders.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Deliveries the run should have produced: sent messages x clients.
    pub expected: u64,
    /// Distinct (client, message) pairs received.
    pub delivered: u64,
    /// Expected deliveries never seen.
    pub lost: u64,
    /// Deliveries of a message a client already had.
    pub duplicated: u64,
    /// First deliveries that arrived after a later message of the same sender.
    pub reordered: u64,
}

/// Per-client tally, kept by that client's reader task.
#[derive(Debug, Clone)]
pub struct ClientLog {
    tracks: Vec<Track>,
    duplicated: u64,
    reordered: u64,
    /// Frames whose sender or seq is outside the run (e.g. a corrupted marker).
    pub foreign: u64,
}

impl ClientLog {
    pub fn new(senders: usize) -> Self {
        ClientLog {
            tracks: vec![Track::default(); senders],
            duplicated: 0,
            reordered: 0,
            foreign: 0,
        }
    }

    /// Records one received message; `limit` is how many messages each sender sends.
    pub fn record(&mut self, sender: u32, seq: u32, limit: u32) -> Option<Seen> {
        let track = self.tracks.get_mut(sender as usize).filter(|_| seq < limit);
        let Some(track) = track else {
            self.foreign += 1;
            return None;
        };
        let seen = track.record(seq);
        match seen {
            Seen::Duplicate => self.duplicated += 1,
            Seen::Reordered => self.reordered += 1,
            Seen::New => {}
        }
        Some(seen)
    }

    #[cfg(test)]
    pub fn delivered(&self) -> u64 {
        self.tracks.iter().map(Track::distinct).sum()
    }
}

/// Adds up the clients' logs against what each sender actually sent.
///
/// `sent[s]` is the number of messages sender `s` put on the wire; a client
/// that disconnected early still counts as expecting all of them, so its
/// missing deliveries show up as lost.
pub fn tally<'a>(logs: impl IntoIterator<Item = &'a ClientLog>, sent: &[u32]) -> Counts {
    let mut c = Counts::default();
    for log in logs {
        for (s, track) in log.tracks.iter().enumerate() {
            let sent = u64::from(sent.get(s).copied().unwrap_or(0));
            // Only count receipts of messages that were sent (a sender's count
            // is taken after its last write, so normally all receipts qualify).
            let got = track.distinct().min(sent);
            c.expected += sent;
            c.delivered += got;
            c.lost += sent - got;
        }
        c.duplicated += log.duplicated;
        c.reordered += log.reordered;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u32]) -> (Track, Vec<Seen>) {
        let mut t = Track::default();
        let seen = seqs.iter().map(|&s| t.record(s)).collect();
        (t, seen)
    }

    #[test]
    fn in_order_is_all_new() {
        let (t, seen) = run(&[0, 1, 2, 3]);
        assert!(seen.iter().all(|s| *s == Seen::New));
        assert_eq!(t.distinct(), 4);
        assert!(t.ahead.is_empty());
    }

    #[test]
    fn duplicates_are_flagged_before_and_after_the_gap() {
        let (t, seen) = run(&[0, 0, 2, 2, 1, 1]);
        use Seen::*;
        assert_eq!(seen, [New, Duplicate, New, Duplicate, Reordered, Duplicate]);
        assert_eq!(t.distinct(), 3);
        assert!(t.ahead.is_empty(), "gap filled, nothing left ahead");
    }

    #[test]
    fn late_arrivals_count_as_reordered_once_each() {
        let (t, seen) = run(&[3, 0, 1, 2, 4]);
        use Seen::*;
        assert_eq!(seen, [New, Reordered, Reordered, Reordered, New]);
        assert_eq!(t.distinct(), 5);
    }

    #[test]
    fn gaps_never_filled_are_lost() {
        let mut a = ClientLog::new(2);
        for seq in [0, 1, 3] {
            a.record(0, seq, 5);
        }
        a.record(1, 0, 5);
        let mut b = ClientLog::new(2);
        for seq in 0..5 {
            b.record(0, seq, 5);
            b.record(1, seq, 5);
        }
        b.record(1, 4, 5);
        let c = tally([&a, &b], &[5, 5]);
        assert_eq!(
            c,
            Counts {
                expected: 20,
                delivered: 14,
                lost: 6,
                duplicated: 1,
                reordered: 0,
            }
        );
    }

    #[test]
    fn expected_follows_what_was_actually_sent() {
        // Sender 1 stopped after 2 messages: its 3 unsent ones are not "lost".
        let mut a = ClientLog::new(2);
        for seq in 0..5 {
            a.record(0, seq, 5);
        }
        a.record(1, 0, 5);
        a.record(1, 1, 5);
        let c = tally([&a], &[5, 2]);
        assert_eq!((c.expected, c.delivered, c.lost), (7, 7, 0));
    }

    #[test]
    fn out_of_range_marks_are_foreign_not_counted() {
        let mut a = ClientLog::new(1);
        assert_eq!(a.record(1, 0, 5), None);
        assert_eq!(a.record(0, 5, 5), None);
        assert_eq!(a.foreign, 2);
        assert_eq!(a.delivered(), 0);
    }
}
