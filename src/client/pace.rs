//! Pacing what the client sends to stay under the server's rate limit, as
//! the welcome tells it (`rate`: a token bucket of `burst` messages refilled
//! at `per_second`). A pasted block or a piped file is then delivered whole,
//! only more slowly, instead of having lines refused.
//!
//! The client's bucket is a little smaller and slower than the server's
//! (one message less of burst, 10% less rate), so that lines bunched up on
//! the way (the network, the server's scheduling) still find a token there.
//! Pure: time is passed in, so tests need no clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::RateInfo;

/// Share of the server's rate the client uses.
const RATE_MARGIN: f64 = 0.9;

/// A token bucket mirroring the server's, with a margin.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// `None`: the server has no limit (or did not say): send at once.
    bucket: Option<Bucket>,
}

#[derive(Debug, Clone)]
struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer for the limit in a welcome, starting full at `now` (the
    /// server's bucket is full when the connection starts).
    pub fn new(rate: Option<RateInfo>, now: Instant) -> Self {
        let bucket = rate.filter(|r| r.per_second > 0 && r.burst > 0).map(|r| {
            let burst = f64::from(r.burst.saturating_sub(1).max(1));
            Bucket {
                per_second: f64::from(r.per_second) * RATE_MARGIN,
                burst,
                tokens: burst,
                last: now,
            }
        });
        Pacer { bucket }
    }

    /// How long to wait from `now` before the next message may go.
    pub fn delay(&mut self, now: Instant) -> Duration {
        let Some(b) = &mut self.bucket else {
            return Duration::ZERO;
        };
        b.refill(now);
        if b.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - b.tokens) / b.per_second)
        }
    }

    /// Records a message sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        if let Some(b) = &mut self.bucket {
            b.refill(now);
            b.tokens = (b.tokens - 1.0).max(-b.burst);
        }
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_limit_nothing_waits() {
        let now = Instant::now();
        let mut p = Pacer::new(None, now);
        for _ in 0..100 {
            assert_eq!(p.delay(now), Duration::ZERO);
            p.sent(now);
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_the_pace_stays_under_the_rate() {
        let start = Instant::now();
        let rate = RateInfo {
            per_second: 5,
            burst: 10,
        };
        let mut p = Pacer::new(Some(rate), start);
        let mut now = start;
        let mut sent_at = Vec::new();
        for _ in 0..40 {
            now += p.delay(now);
            p.sent(now);
            sent_at.push(now);
        }
        // One less than the server's burst goes at once.
        assert_eq!(sent_at[8], start);
        assert!(sent_at[9] > start);
        // Replay the server's own bucket over these times: nothing refused.
        let mut tokens = f64::from(rate.burst);
        let mut last = start;
        for at in sent_at {
            tokens = (tokens + (at - last).as_secs_f64() * f64::from(rate.per_second))
                .min(f64::from(rate.burst));
            last = at;
            assert!(tokens >= 1.0, "the server would refuse at {:?}", at - start);
            tokens -= 1.0;
        }
    }
}
