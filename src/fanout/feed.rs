//! A room's live feed: every event published to the room, in order, of
//! which the last `capacity` are kept for members that have not taken them
//! yet. Each member reads it through a [`Cursor`], its position in the feed.
//!
//! The hub publishes under its own lock and then tells the room's writer;
//! the writer, or a busy member's session, takes everything past the
//! member's cursor in one short critical section. Whether there is anything
//! to take is one atomic load, so a look that finds nothing new takes no
//! lock at all. A
//! member that falls more than `capacity` events behind skips to the oldest
//! kept one and is told how many it missed; nobody waits for it. When the
//! last cursor goes, the kept events go too: an empty room holds none.
//!
//! (This does what a `tokio::sync::broadcast` channel did, minus its waiter
//! list: the room's writer and the mailboxes do the waking, so it needs none,
//! and taking an event is a reference count and an index, not a lock per
//! event.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fanout::outbox::Encoded;

/// See the module documentation. Not `Clone`: the room holds the one
/// handle, and the cursors the others (see `Drop for Cursor`).
#[derive(Debug)]
pub struct Feed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Events ever published: the position the next one will get.
    published: AtomicU64,
    /// The kept events, at positions `published - kept.len() .. published`.
    kept: Mutex<VecDeque<Arc<Encoded>>>,
    capacity: usize,
    /// The room still holds its [`Feed`] (a room without members or lines
    /// is forgotten while cursors may still read what it sent last).
    open: AtomicBool,
}

impl Inner {
    fn kept(&self) -> MutexGuard<'_, VecDeque<Arc<Encoded>>> {
        // Every critical section leaves the queue consistent.
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Feed {
    /// An empty feed keeping up to `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        Feed {
            inner: Arc::new(Inner {
                published: AtomicU64::new(0),
                kept: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                open: AtomicBool::new(true),
            }),
        }
    }

    /// Appends an event, dropping the oldest kept one if the feed is full.
    pub fn publish(&self, event: Arc<Encoded>) {
        let mut kept = self.inner.kept();
        if kept.len() == self.inner.capacity {
            kept.pop_front();
        }
        kept.push_back(event);
        // Under the lock, so a reader that sees the new count and then takes
        // the lock finds the event there.
        self.inner.published.fetch_add(1, Ordering::Release);
    }

    /// A cursor at the end of the feed: it will see what is published from
    /// now on.
    pub fn subscribe(&self) -> Cursor {
        // Under the lock, like the last cursor's check in `drop`.
        let _kept = self.inner.kept();
        Cursor {
            inner: self.inner.clone(),
            next: self.inner.published.load(Ordering::Acquire),
        }
    }
}

/// One member's position in a room's [`Feed`].
#[derive(Debug)]
pub struct Cursor {
    inner: Arc<Inner>,
    /// Position of the next event to take.
    next: u64,
}

/// What [`Cursor::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Everything published so far has been taken.
    All,
    /// It stopped at `max`: more is waiting.
    More,
}

/// One step of [`Cursor::next`].
#[derive(Debug)]
pub enum Next {
    /// The next event.
    Event(Arc<Encoded>),
    /// This many events were dropped before this cursor took them.
    Skipped(u64),
}

impl Cursor {
    /// Whether events wait to be taken (one atomic load, no lock).
    pub fn has_news(&self) -> bool {
        self.inner.published.load(Ordering::Acquire) != self.next
    }

    /// Reads up to `max` waiting events, oldest first, handing each to
    /// `each`. If some were dropped before this cursor got to them, `each`
    /// is first told how many ([`Next::Skipped`]).
    pub fn read(&mut self, max: usize, mut each: impl FnMut(Next)) -> Taken {
        if !self.has_news() {
            return Taken::All;
        }
        let kept = self.inner.kept();
        let published = self.inner.published.load(Ordering::Acquire);
        let first = published - kept.len() as u64;
        if let Some(missed) = catch_up(&mut self.next, first) {
            each(Next::Skipped(missed));
        }
        let from = (self.next - first) as usize;
        let n = (kept.len() - from).min(max);
        if n == 1 {
            // One new event, the usual case in a quiet room: the last.
            if let Some(shared) = kept.get(from) {
                each(Next::Event(shared.clone()));
            }
        } else {
            for shared in kept.range(from..from + n) {
                each(Next::Event(shared.clone()));
            }
        }
        self.next += n as u64;
        if self.next == published {
            Taken::All
        } else {
            Taken::More
        }
    }
}

/// Moves a cursor position `next` that fell behind `first`, the oldest kept
/// position, up to it, and says how many events it missed.
fn catch_up(next: &mut u64, first: u64) -> Option<u64> {
    let missed = first.checked_sub(*next).filter(|&n| n > 0)?;
    *next = first;
    Some(missed)
}

impl Drop for Feed {
    fn drop(&mut self) {
        // From now on the handles left are cursors; the last one frees all.
        let _kept = self.inner.kept();
        self.inner.open.store(false, Ordering::Release);
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        // The last reader gone (the other handle is the room's feed): nobody
        // can need the kept events. Checked under the lock that `subscribe`
        // takes, so no cursor can appear between the check and the clearing;
        // one made after starts past them anyway.
        let mut kept = self.inner.kept();
        if self.inner.open.load(Ordering::Acquire) && Arc::strong_count(&self.inner) == 2 {
            kept.clear();
            kept.shrink_to_fit();
        }
    }
}

/// One event at a time (for tests and the benchmark; sessions use
/// [`Cursor::read`]): the next event, or how many were skipped before it;
/// `None` when nothing waits.
impl Iterator for Cursor {
    type Item = Next;

    fn next(&mut self) -> Option<Next> {
        if !self.has_news() {
            return None;
        }
        let kept = self.inner.kept();
        let first = self.inner.published.load(Ordering::Acquire) - kept.len() as u64;
        if let Some(missed) = catch_up(&mut self.next, first) {
            return Some(Next::Skipped(missed));
        }
        let shared = kept.get((self.next - first) as usize)?.clone();
        self.next += 1;
        Some(Next::Event(shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;

    fn event(i: usize) -> Arc<Encoded> {
        Arc::new(Encoded::new(Event::Error {
            message: i.to_string(),
        }))
    }

    fn number(shared: &Arc<Encoded>) -> usize {
        match shared.event() {
            Event::Error { message } => message.parse().unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn event_number(step: Next) -> usize {
        match step {
            Next::Event(shared) => number(&shared),
            Next::Skipped(n) => panic!("unexpected skip of {n}"),
        }
    }

    #[test]
    fn a_cursor_sees_what_comes_after_it_in_order() {
        let feed = Feed::new(8);
        feed.publish(event(0));
        let mut cursor = feed.subscribe();
        assert!(!cursor.has_news());
        for i in 1..=3 {
            feed.publish(event(i));
        }
        assert!(cursor.has_news());
        let mut got = vec![];
        let taken = cursor.read(10, |step| got.push(event_number(step)));
        assert_eq!((taken, got), (Taken::All, vec![1, 2, 3]));
        assert!(!cursor.has_news());
    }

    #[test]
    fn take_stops_at_max_and_says_more_waits() {
        let feed = Feed::new(8);
        let mut cursor = feed.subscribe();
        for i in 0..5 {
            feed.publish(event(i));
        }
        let mut got = vec![];
        assert_eq!(
            cursor.read(2, |step| got.push(event_number(step))),
            Taken::More
        );
        assert_eq!(
            cursor.read(2, |step| got.push(event_number(step))),
            Taken::More
        );
        assert_eq!(
            cursor.read(2, |step| got.push(event_number(step))),
            Taken::All
        );
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_cursor_left_behind_is_told_exactly_how_many_it_missed() {
        let feed = Feed::new(4);
        let mut cursor = feed.subscribe();
        for i in 0..10 {
            feed.publish(event(i));
        }
        let mut steps = vec![];
        cursor.read(100, |step| steps.push(step));
        assert!(matches!(steps[0], Next::Skipped(6)));
        let got: Vec<_> = steps.into_iter().skip(1).map(event_number).collect();
        assert_eq!(got, [6, 7, 8, 9]);
    }

    #[test]
    fn next_reports_the_gap_then_the_events_after_it() {
        let feed = Feed::new(2);
        let mut cursor = feed.subscribe();
        for i in 0..5 {
            feed.publish(event(i));
        }
        assert!(matches!(cursor.next(), Some(Next::Skipped(3))));
        assert!(matches!(cursor.next(), Some(Next::Event(s)) if number(&s) == 3));
        assert!(matches!(cursor.next(), Some(Next::Event(s)) if number(&s) == 4));
        assert!(cursor.next().is_none());
    }

    #[test]
    fn events_stay_until_the_last_reader_goes_then_positions_go_on() {
        let feed = Feed::new(4);
        let a = feed.subscribe();
        let mut b = feed.subscribe();
        feed.publish(event(0));
        drop(a);
        // b has not read it yet: still there.
        assert!(matches!(b.next(), Some(Next::Event(s)) if number(&s) == 0));
        feed.publish(event(1));
        drop(b);
        assert!(feed.inner.kept().is_empty(), "nobody left to read");
        let mut c = feed.subscribe();
        feed.publish(event(2));
        assert!(matches!(c.next(), Some(Next::Event(s)) if number(&s) == 2));
        assert!(c.next().is_none());
    }

    #[test]
    fn readers_left_behind_by_a_forgotten_room_still_read_its_last_events() {
        let feed = Feed::new(4);
        let mut a = feed.subscribe();
        let b = feed.subscribe();
        feed.publish(event(7));
        drop(feed);
        drop(b);
        assert!(matches!(a.next(), Some(Next::Event(s)) if number(&s) == 7));
    }
}
