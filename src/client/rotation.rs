//! Which server the next connection attempt goes to, and how long to wait
//! before it: the servers of `--url A,B,C` are tried in turn, round robin,
//! and the backoff pause comes once per full round rather than before
//! every attempt.
//!
//! So when the server we were on goes away, the next attempt goes to the
//! next server after the shortest pause; a server that is down costs its
//! turn in the round, not a pause of its own; and when every server is
//! down, the pauses between rounds grow as they would for one server.
//! With one server a round is one attempt: exactly the plain backoff.
//!
//! Pure: no I/O and no clock, unit-tested.

use std::time::Duration;

/// Where the next attempt goes, and the pause before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Index of the server in the list.
    pub server: usize,
    /// How long to wait first: `Some` at the start of a round, except
    /// the very first one.
    pub pause: Option<Duration>,
}

/// The round-robin order over the servers, with the backoff between
/// rounds.
pub struct Rotation {
    servers: usize,
    /// The server the next attempt goes to.
    next: usize,
    /// Attempts left in the current round; at 0 the next attempt starts a
    /// new round, after a pause.
    left: usize,
    backoff: Backoff,
}

impl Rotation {
    /// A rotation over `servers` servers, starting with the first, with no
    /// pause before the first round.
    ///
    /// # Panics
    ///
    /// If `servers` is 0: there must be a server to try.
    pub fn new(servers: usize, min: Duration, max: Duration) -> Self {
        assert!(servers > 0, "a rotation needs at least one server");
        Rotation {
            servers,
            next: 0,
            left: servers,
            backoff: Backoff::new(min, max),
        }
    }

    /// The next attempt. Each call is one attempt: a round is as many
    /// calls as there are servers.
    pub fn attempt(&mut self) -> Attempt {
        let pause = if self.left == 0 {
            self.left = self.servers;
            Some(self.backoff.next())
        } else {
            None
        };
        let server = self.next;
        self.next = (server + 1) % self.servers;
        self.left -= 1;
        Attempt { server, pause }
    }

    /// An established connection to `server` was lost: the next round
    /// starts with the server after it (the same one if it is the only
    /// one), after the shortest pause, and the pauses grow again from
    /// there.
    pub fn lost(&mut self, server: usize) {
        self.next = (server + 1) % self.servers;
        self.left = 0;
        self.backoff.reset();
    }
}

/// Capped exponential backoff with jitter, so that clients of a restarted
/// server do not all come back in the same instant.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next pause: between half and all of the current step.
    fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_millis(1000);

    /// The servers and, for each attempt, the full step of its pause
    /// (the jittered pause lies between half of it and all of it).
    fn take(rotation: &mut Rotation, n: usize) -> Vec<(usize, Option<Duration>)> {
        (0..n)
            .map(|_| {
                let Attempt { server, pause } = rotation.attempt();
                (server, pause)
            })
            .collect()
    }

    fn assert_pause(pause: Option<Duration>, step: Duration) {
        let pause = pause.expect("a pause");
        assert!(
            pause >= step / 2 && pause <= step,
            "{pause:?} not within half of {step:?} and all of it"
        );
    }

    #[test]
    fn the_first_round_tries_every_server_in_order_without_pausing() {
        let mut rotation = Rotation::new(3, MIN, MAX);
        assert_eq!(take(&mut rotation, 3), [(0, None), (1, None), (2, None)]);
    }

    #[test]
    fn each_later_round_starts_after_a_pause_that_doubles_up_to_the_cap() {
        let mut rotation = Rotation::new(2, MIN, MAX);
        take(&mut rotation, 2);
        let mut step = MIN;
        for _ in 0..6 {
            let round = take(&mut rotation, 2);
            assert_eq!(round.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1]);
            assert_pause(round[0].1, step);
            assert_eq!(round[1].1, None, "no pause inside a round");
            step = (step * 2).min(MAX);
        }
        assert_eq!(step, MAX);
    }

    #[test]
    fn after_a_loss_the_next_server_comes_first_after_the_shortest_pause() {
        let mut rotation = Rotation::new(3, MIN, MAX);
        // Some failed rounds first, so the backoff has grown.
        take(&mut rotation, 9);
        rotation.lost(0);
        let round = take(&mut rotation, 3);
        assert_eq!(round.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 0]);
        assert_pause(round[0].1, MIN);
        assert_eq!((round[1].1, round[2].1), (None, None));
        // The round after that pauses twice as long.
        let again = rotation.attempt();
        assert_eq!(again.server, 1);
        assert_pause(again.pause, MIN * 2);
    }

    #[test]
    fn a_loss_on_the_last_server_wraps_around_to_the_first() {
        let mut rotation = Rotation::new(3, MIN, MAX);
        rotation.lost(2);
        assert_eq!(rotation.attempt().server, 0);
    }

    #[test]
    fn with_one_server_every_attempt_after_the_first_is_a_round_of_its_own() {
        let mut rotation = Rotation::new(1, MIN, MAX);
        assert_eq!(
            rotation.attempt(),
            Attempt {
                server: 0,
                pause: None
            }
        );
        let mut step = MIN;
        for _ in 0..5 {
            let attempt = rotation.attempt();
            assert_eq!(attempt.server, 0);
            assert_pause(attempt.pause, step);
            step = (step * 2).min(MAX);
        }
        // A loss starts again from the shortest pause, on the same server.
        rotation.lost(0);
        let attempt = rotation.attempt();
        assert_eq!(attempt.server, 0);
        assert_pause(attempt.pause, MIN);
    }
}
