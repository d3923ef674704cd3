//! A member's mailbox: events for it alone (private messages), the news of
//! shutdown, and the wake-up bits that tell its session what woke it.
//!
//! A session waits on four things: its socket, its room, its keepalive
//! timer and its private messages. Polling all of them on every wake-up
//! would cost more than the delivery itself when a busy room wakes the
//! session for one message: asking the socket whether a frame has arrived
//! goes through tokio-websockets, tokio-util's codec and tokio's readiness
//! check before it says no, and waiting in a `broadcast` channel registers
//! and unregisters a waiter under the channel's lock each time. So each
//! source raises a bit of its own and wakes the task, and the session looks
//! only at what the bits name:
//! - [`ROOM`]: the hub rang after publishing to the member's room
//!   ([`Mailbox::ring`]); the session drains its receiver with `try_recv`;
//! - [`IO`]: the socket or the keepalive timer has news; both are polled
//!   with [`Mailbox::io_waker`], the mailbox itself as a waker;
//! - [`POST`]: a private message was posted, or the server is shutting down.
//!
//! One allocation per connection holds it all, which matters when idle
//! connections are counted by the ten thousand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::outbox::Encoded;

/// Private messages and other events for one member that may wait for its
/// session; beyond this the sender is told the recipient is not keeping up.
pub const CAPACITY: usize = 256;

/// Wake-up bit: the room has new messages.
pub const ROOM: u8 = 1;
/// Wake-up bit: the socket (something to read or to flush) or the
/// keepalive timer has news.
pub const IO: u8 = 2;
/// Wake-up bit: an event was posted, or the server is shutting down.
pub const POST: u8 = 4;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Arc<Encoded>>>,
    /// The server is shutting down: the session should close.
    closing: AtomicBool,
    /// Raised wake-up bits not yet taken by the session.
    raised: AtomicU8,
    /// The session's task, as of its latest [`Mailbox::poll_raised`].
    task: AtomicWaker,
}

impl Mailbox {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Arc<Encoded>>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Raises `bit` and wakes the session (unless the bit was already up:
    /// the session has not yet looked, and will see this too).
    fn raise(&self, bit: u8) {
        if self.raised.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            self.task.wake();
        }
    }

    /// Tells the session its room has new messages.
    pub fn ring(&self) {
        self.raise(ROOM);
    }

    /// Queues an event unless [`CAPACITY`] are already waiting.
    pub fn push(&self, event: Arc<Encoded>) -> bool {
        {
            let mut queue = self.queue();
            if queue.len() >= CAPACITY {
                return false;
            }
            queue.push_back(event);
        }
        self.raise(POST);
        true
    }

    /// Tells the session the server is shutting down.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.raise(POST);
    }

    /// Whether the server is shutting down.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Takes the oldest waiting event, if any.
    pub fn pop(&self) -> Option<Arc<Encoded>> {
        self.queue().pop_front()
    }

    /// Takes the raised bits, or, if none is up, arranges for the task of
    /// `cx` to be woken when one is.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<u8> {
        // Register before looking, so a bit raised in between still wakes.
        self.task.register(cx.waker());
        match self.raised.swap(0, Ordering::AcqRel) {
            0 => Poll::Pending,
            bits => Poll::Ready(bits),
        }
    }

    /// A waker for the session's socket and timer: waking it raises [`IO`].
    pub fn io_waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }
}

/// Waking a mailbox means its socket or timer has news (see
/// [`Mailbox::io_waker`]).
impl Wake for Mailbox {
    fn wake(self: Arc<Self>) {
        self.raise(IO);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raise(IO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use futures_util::task::noop_waker_ref;

    fn event() -> Arc<Encoded> {
        Arc::new(Encoded::new(Event::Error {
            message: "x".into(),
        }))
    }

    /// Counts wake-ups of the "task".
    struct Counter(std::sync::atomic::AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn each_source_raises_its_own_bit_and_wakes_the_task_once() {
        let mailbox = Arc::new(Mailbox::default());
        let counter = Arc::new(Counter(Default::default()));
        let task = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&task);
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Pending);

        mailbox.io_waker().wake_by_ref();
        mailbox.io_waker().wake();
        assert_eq!(counter.0.load(Ordering::Relaxed), 1, "one wake per raise");
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Ready(IO));
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Pending);

        mailbox.ring();
        mailbox.ring();
        mailbox.io_waker().wake();
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Ready(ROOM | IO));
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);

        assert!(mailbox.push(event()));
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Ready(POST));
        assert!(mailbox.pop().is_some());
        assert!(mailbox.pop().is_none());
        assert_eq!(counter.0.load(Ordering::Relaxed), 3);

        mailbox.close();
        assert!(mailbox.is_closing());
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Ready(POST));
    }

    #[test]
    fn a_bit_raised_before_the_first_poll_is_not_lost() {
        let mailbox = Arc::new(Mailbox::default());
        assert!(mailbox.push(event()));
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Ready(POST));
    }

    #[test]
    fn a_full_mailbox_refuses() {
        let mailbox = Mailbox::default();
        for _ in 0..CAPACITY {
            assert!(mailbox.push(event()));
        }
        assert!(!mailbox.push(event()));
    }
}
