//! A room's writer: one task that takes each new room message to every
//! member whose session is idle, writing straight to their sockets.
//!
//! Without it, a message to a room of 500 wakes 500 session tasks, each
//! scheduled, polled and put back to sleep for one frame, each touching a
//! future, a task header and an outbox the kernel's work in between has
//! pushed out of the cache. With it, a publish only says a pass is owed;
//! the pass runs once the runtime has finished what it was doing (the
//! other senders' reads, typically, so one pass carries all their
//! messages), and walks the members, each a lock, a cursor read and a
//! write ([`Mailbox::deliver`]). Members whose session holds its line (it
//! is busy, or behind, or on TLS) are rung as before and write for
//! themselves.
//!
//! The task is spawned on the first publish made inside a tokio runtime;
//! outside one (the hub used on its own) every publish rings each member.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use crate::fanout::mailbox::Mailbox;
use crate::fanout::outbox::Outbox;

/// Members written to before the writer lets the runtime look at sockets
/// and other tasks, as it does every so many task polls when sessions do
/// the writing.
const MEMBERS_PER_TURN: usize = 1024;

/// See the module documentation. Held by its room; the writer's task holds
/// a second handle and ends when the room closes it.
#[derive(Debug, Default)]
pub struct RoomWriter {
    /// The members' mailboxes, in no particular order.
    members: Mutex<Vec<Arc<Mailbox>>>,
    /// A pass is owed: something was published since the last one began.
    owed: AtomicBool,
    /// The task, once spawned.
    task: AtomicWaker,
    spawned: AtomicBool,
    /// The room is gone: the task ends.
    closed: AtomicBool,
}

impl RoomWriter {
    /// A writer for an empty room; no task yet.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn members(&self) -> MutexGuard<'_, Vec<Arc<Mailbox>>> {
        // Every critical section leaves the list consistent.
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a member.
    pub fn add(&self, mailbox: Arc<Mailbox>) {
        self.members().push(mailbox);
    }

    /// Removes a member (a pass already under way may still visit it,
    /// which is harmless: its line tells the writer what to do).
    pub fn remove(&self, mailbox: &Arc<Mailbox>) {
        let mut members = self.members();
        if let Some(i) = members.iter().position(|m| Arc::ptr_eq(m, mailbox)) {
            members.swap_remove(i);
        }
    }

    /// Says that something was published: a pass is owed. Cheap when one
    /// already is.
    pub fn schedule(self: &Arc<Self>) {
        if self.owed.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.spawned.load(Ordering::Acquire) {
            self.task.wake();
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !self.spawned.swap(true, Ordering::AcqRel) => {
                runtime.spawn(self.clone().run());
            }
            // Spawned in between by another thread: it will see `owed`.
            Ok(_) => self.task.wake(),
            Err(_) => {
                self.owed.store(false, Ordering::Release);
                for mailbox in self.members().iter() {
                    mailbox.ring();
                }
            }
        }
    }

    /// Ends the task (the room is gone).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.task.wake();
    }

    /// The task: a pass each time one is owed, until the room closes.
    async fn run(self: Arc<Self>) {
        // The members of the current pass: a copy, so that joins and
        // leaves need not wait for a pass's writes; kept for its capacity.
        let mut pass: Vec<Arc<Mailbox>> = Vec::new();
        let mut scratch = Outbox::new();
        loop {
            let owed = poll_fn(|cx| {
                self.task.register(cx.waker());
                if self.closed.load(Ordering::Acquire) {
                    Poll::Ready(false)
                } else if self.owed.swap(false, Ordering::AcqRel) {
                    // Cleared before the pass, so a publish during it owes
                    // another.
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if !owed {
                return;
            }
            pass.extend(self.members().iter().cloned());
            for (i, mailbox) in pass.drain(..).enumerate() {
                mailbox.deliver(&mut scratch);
                if i % MEMBERS_PER_TURN == MEMBERS_PER_TURN - 1 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::feed::Feed;
    use crate::fanout::mailbox::ROOM;
    use crate::fanout::outbox::Encoded;
    use crate::protocol::{Encoding, Event};
    use futures_util::task::noop_waker_ref;
    use std::task::Context;
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::{TcpListener, TcpStream};

    fn event(text: &str) -> Arc<Encoded> {
        Arc::new(Encoded::new(Event::Info { text: text.into() }))
    }

    #[test]
    fn without_a_runtime_every_member_is_rung() {
        let feed = Feed::new(4);
        let writer = RoomWriter::new();
        let members: Vec<_> = (0..3).map(|_| Arc::new(Mailbox::default())).collect();
        for m in &members {
            m.attach(feed.subscribe(), None, Encoding::Text);
            writer.add(m.clone());
        }
        writer.remove(&members[1]);
        feed.publish(event("hi"));
        writer.schedule();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(members[0].poll_raised(&mut cx), Poll::Ready(ROOM));
        assert_eq!(members[1].poll_raised(&mut cx), Poll::Pending, "removed");
        assert_eq!(members[2].poll_raised(&mut cx), Poll::Ready(ROOM));
    }

    #[tokio::test]
    async fn a_pass_writes_to_parked_members_and_rings_the_others() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let feed = Feed::new(4);
        let writer = RoomWriter::new();
        let parked = Arc::new(Mailbox::default());
        parked.attach(feed.subscribe(), Some(Arc::new(server)), Encoding::Text);
        assert!(parked.park());
        let busy = Arc::new(Mailbox::default());
        busy.attach(feed.subscribe(), None, Encoding::Text);
        writer.add(parked.clone());
        writer.add(busy.clone());

        // Two publishes before the task runs: one pass, both frames.
        let (one, two) = (event("one"), event("two"));
        feed.publish(one.clone());
        writer.schedule();
        feed.publish(two.clone());
        writer.schedule();
        let expected = [
            &one.frame(Encoding::Text)[..],
            &two.frame(Encoding::Text)[..],
        ]
        .concat();
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .expect("the writer wrote nothing")
            .unwrap();
        assert_eq!(got, expected);
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(busy.poll_raised(&mut cx), Poll::Ready(ROOM));
        assert_eq!(parked.poll_raised(&mut cx), Poll::Pending);
        writer.close();
    }
}
