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
//! - [`ROOM`]: the room has messages the session must write itself: its
//!   writer found the session busy, or could not finish a write
//!   ([`Mailbox::ring`]);
//! - [`IO`]: the socket or the keepalive timer has news; both are polled
//!   with [`Mailbox::io_waker`], the mailbox itself as a waker;
//! - [`POST`]: a private message was posted, or the server is shutting down.
//!
//! The mailbox also holds the member's [`Line`]: its place in its room's
//! feed and, for a plain TCP connection, a handle on the socket. Room
//! messages reach an idle session without waking it: the room's writer
//! (`writer.rs`) takes them from the cursor and writes them itself
//! ([`Mailbox::deliver`]). A session that has anything of its own to do
//! holds the line ([`Mailbox::claim`]) and gives it back only when it has
//! written everything it owes and is about to wait ([`Mailbox::park`]);
//! while it holds it, the writer rings it instead, as it always does for a
//! TLS session. So exactly one of them writes at a time, always whole
//! frames: what the writer could not finish is left in the line for the
//! session, which writes it before anything else.
//!
//! One allocation per connection holds it all, which matters when idle
//! connections are counted by the ten thousand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;

use crate::fanout::feed::{Cursor, Next, Taken};
use crate::fanout::outbox::{frame_event, Encoded, Outbox};
use crate::protocol::{Encoding, Event};

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

/// Most room messages the writer takes for one member in one pass; a
/// member further behind is left to its session.
const WRITER_BATCH: usize = 512;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Mailbox {
    /// Who writes to the socket, and what the room has for this member.
    line: Mutex<Line>,
    queue: Mutex<VecDeque<Arc<Encoded>>>,
    /// The server is shutting down: the session should close.
    closing: AtomicBool,
    /// Raised wake-up bits not yet taken by the session.
    raised: AtomicU8,
    /// The session's task, as of its latest [`Mailbox::poll_raised`].
    task: AtomicWaker,
}

/// A member's way out: its place in the room's feed, and the socket the
/// room's writer may write to while the session is idle.
#[derive(Debug)]
pub struct Line {
    /// The session holds the socket: it writes for itself, and the writer
    /// only rings. Until the session is attached and first idle, it does.
    held: bool,
    /// This member's place in its room's feed (none before the session is
    /// attached or after it ended).
    cursor: Option<Cursor>,
    /// The socket, for plain TCP connections; `None` for TLS, whose
    /// session always writes for itself.
    socket: Option<Arc<TcpStream>>,
    /// The encoding the client asked for.
    encoding: Encoding,
    /// Frames the writer could not finish (the socket was full): the
    /// session writes them before anything else. Boxed: rare, and every
    /// connection carries the field.
    leftover: Option<Box<Outbox>>,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            held: true,
            cursor: None,
            socket: None,
            encoding: Encoding::Text,
            leftover: None,
        }
    }
}

/// Moves up to `max` of the room messages waiting past `cursor` into
/// `outbox`, with a notice first if some were dropped before the member
/// took them.
fn read_room(cursor: &mut Cursor, outbox: &mut Outbox, encoding: Encoding, max: usize) -> Taken {
    cursor.read(max, |step| match step {
        Next::Event(shared) => outbox.push_shared(shared, encoding),
        Next::Skipped(count) => outbox.push(frame_event(&Event::Skipped { count }, encoding)),
    })
}

impl Mailbox {
    fn line(&self) -> MutexGuard<'_, Line> {
        // Every critical section leaves the line consistent.
        self.line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connects the session: its place in the room, the socket the writer
    /// may use (`None`: the session writes everything itself), and the
    /// encoding. The session holds the line until it first parks.
    pub fn attach(&self, cursor: Cursor, socket: Option<Arc<TcpStream>>, encoding: Encoding) {
        let mut line = self.line();
        line.cursor = Some(cursor);
        line.socket = socket;
        line.encoding = encoding;
        line.held = true;
    }

    /// Disconnects the session for good: the writer lets go of the socket
    /// (so it closes when the session drops it) and of the room.
    pub fn detach(&self) {
        let mut line = self.line();
        line.held = true;
        line.cursor = None;
        line.socket = None;
    }

    /// The session takes the socket back from the writer (it has something
    /// to do), with whatever the writer left unfinished, which goes before
    /// everything in `outbox`.
    pub fn claim(&self, outbox: &mut Outbox) {
        let mut line = self.line();
        line.held = true;
        if let Some(mut rest) = line.leftover.take() {
            outbox.take_front(&mut rest);
        }
    }

    /// The session, holding the line with nothing left to write, offers it
    /// to the writer before it waits. `false` if room messages came in the
    /// meantime: the session keeps the line and takes them itself.
    pub fn park(&self) -> bool {
        let mut line = self.line();
        debug_assert!(line.leftover.is_none(), "the writer wrote to a held line");
        if line.cursor.as_ref().is_some_and(Cursor::has_news) {
            return false;
        }
        line.held = false;
        true
    }

    /// For the session: moves up to `max` waiting room messages into its
    /// outbox.
    pub fn take_room(&self, outbox: &mut Outbox, max: usize) -> Taken {
        let mut line = self.line();
        let Line {
            cursor, encoding, ..
        } = &mut *line;
        match cursor {
            Some(cursor) => read_room(cursor, outbox, *encoding, max),
            None => Taken::All,
        }
    }

    /// For the session moving to another room: whatever the old room sent
    /// goes into `outbox` first, then the member reads `cursor`.
    pub fn switch_room(&self, cursor: Cursor, outbox: &mut Outbox) {
        let mut line = self.line();
        let encoding = line.encoding;
        if let Some(old) = &mut line.cursor {
            read_room(old, outbox, encoding, usize::MAX);
        }
        line.cursor = Some(cursor);
    }

    /// For the room's writer: writes what the room has for this member
    /// straight to its socket if the session is idle, using `scratch` (left
    /// empty) as the outbox; otherwise, or if the socket is full, rings the
    /// session, which then holds the line and writes the rest itself.
    pub fn deliver(&self, scratch: &mut Outbox) {
        let mut line = self.line();
        let Line {
            held: false,
            cursor: Some(cursor),
            socket: Some(socket),
            encoding,
            leftover,
        } = &mut *line
        else {
            drop(line);
            self.ring();
            return;
        };
        if !cursor.has_news() {
            return;
        }
        let taken = read_room(cursor, scratch, *encoding, WRITER_BATCH);
        // An error is left for the session to meet on its own write.
        let finished = scratch.try_flush(socket).unwrap_or(false);
        if finished && taken == Taken::All {
            return;
        }
        // The socket is full or the member far behind: hand over.
        *leftover = Some(Box::new(std::mem::take(scratch)));
        line.held = true;
        drop(line);
        self.ring();
    }

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

    /// A connected pair on loopback: the server's side, shared as the room's
    /// writer would get it, and the client's.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    #[tokio::test]
    async fn the_writer_writes_to_a_parked_line_and_rings_a_held_one() {
        use tokio::io::AsyncReadExt as _;
        let (server, mut client) = socket_pair().await;
        let feed = crate::fanout::feed::Feed::new(16);
        let mailbox = Arc::new(Mailbox::default());
        mailbox.attach(feed.subscribe(), Some(server), Encoding::Text);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut scratch = Outbox::new();

        // Held (as after attaching): the writer rings and writes nothing.
        let first = event();
        feed.publish(first.clone());
        mailbox.deliver(&mut scratch);
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Ready(ROOM));
        // The session cannot park with the message waiting; it takes it.
        assert!(!mailbox.park());
        let mut own = Outbox::new();
        assert_eq!(mailbox.take_room(&mut own, 8), Taken::All);
        assert_eq!(own.pending_bytes(), first.frame(Encoding::Text).len());

        // Parked: the writer writes the frame itself and wakes nobody.
        assert!(mailbox.park());
        let second = event();
        feed.publish(second.clone());
        mailbox.deliver(&mut scratch);
        assert!(scratch.is_empty());
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Pending);
        let expected = second.frame(Encoding::Text);
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &expected[..]);

        // Claimed again: rung again.
        mailbox.claim(&mut own);
        feed.publish(event());
        mailbox.deliver(&mut scratch);
        assert_eq!(mailbox.poll_raised(&mut cx), Poll::Ready(ROOM));

        // Detached: the socket is let go.
        mailbox.detach();
        mailbox.deliver(&mut scratch);
        assert!(scratch.is_empty());
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
