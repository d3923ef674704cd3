//! One monotonic clock for the whole process, so a send time written into a
//! message by one task can be compared with the receive time seen by another.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Fixes the epoch; call once at start-up so early timestamps are small.
pub fn start() {
    EPOCH.get_or_init(Instant::now);
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    ns_of(Instant::now())
}

/// Nanoseconds since the epoch for a given instant (0 if it precedes the epoch).
pub fn ns_of(t: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    let d: Duration = t.saturating_duration_since(epoch);
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
