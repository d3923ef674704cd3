//! Who gets in: the connection caps checked the moment a TCP connection is
//! accepted, before any byte of it is read.
//!
//! A connection holds a [`Ticket`] from accept until its task ends, through
//! the TLS and HTTP handshakes and the whole session, so sockets that never
//! finish their handshake (slowloris) count against the caps like everyone
//! else and cannot pile up without bound. Dropping the ticket frees both
//! slots; nothing has to remember to give them back.
//!
//! A connection over a cap is refused with a short HTTP answer
//! ([`Refused::response`]). Refusals come in bursts, so they are logged once
//! per burst by [`RefusalLog`], not once per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use super::policy::Rejection;

/// Default for `--max-connections`: connections open at once, handshakes
/// included.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default for `--max-connections-per-ip`: connections open at once from one
/// source address, handshakes included.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// How often, at most, refusals are summed up in the log while a burst lasts.
pub const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Why a connection was turned away at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server holds `--max-connections` connections already.
    Global,
    /// This source address holds `--max-connections-per-ip` already.
    PerIp,
}

impl Refused {
    /// The HTTP answer: 503 for the global cap, 429 for the per-address cap.
    pub fn response(self) -> Vec<u8> {
        let rejection = match self {
            Refused::Global => Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is full; try again later",
            ),
            Refused::PerIp => Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from your address; close one and try again",
            ),
        };
        rejection.with_header("Retry-After", "5").to_bytes()
    }
}

/// The caps, shared by the accept loop and (through tickets) every
/// connection task.
#[derive(Debug)]
pub struct Admission {
    /// `None`: no global cap.
    global: Option<Arc<Semaphore>>,
    /// `None`: no per-address cap.
    per_ip: Option<Arc<PerIp>>,
}

impl Admission {
    /// Caps of `max_connections` in all and `max_per_ip` per source address;
    /// 0 means no cap.
    pub fn new(max_connections: usize, max_per_ip: usize) -> Self {
        Admission {
            global: (max_connections > 0)
                .then(|| Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)))),
            per_ip: (max_per_ip > 0).then(|| {
                Arc::new(PerIp {
                    max: max_per_ip,
                    open: Mutex::new(HashMap::new()),
                })
            }),
        }
    }

    /// Lets a connection from `ip` in, or says which cap it hit. Never waits:
    /// a connection over a cap is answered at once, not queued.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refused> {
        // The per-address cap first: when one address floods, it is that
        // address that should hear "429", not everyone "503".
        let per_ip = match &self.per_ip {
            Some(per_ip) => Some(per_ip.enter(ip).ok_or(Refused::PerIp)?),
            None => None,
        };
        let global = match &self.global {
            // On failure `per_ip` is dropped here, giving its slot back.
            Some(sem) => Some(
                sem.clone()
                    .try_acquire_owned()
                    .map_err(|_| Refused::Global)?,
            ),
            None => None,
        };
        Ok(Ticket {
            _global: global,
            _per_ip: per_ip,
        })
    }
}

/// A connection's place inside the caps; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    _global: Option<OwnedSemaphorePermit>,
    _per_ip: Option<IpSlot>,
}

/// Open connections per source address. A std mutex: every use is a short
/// map update with no `.await` while it is held.
#[derive(Debug)]
struct PerIp {
    max: usize,
    /// Only addresses with at least one open connection, so the map is as
    /// big as the set of connected addresses and no bigger.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A panic elsewhere while holding the lock cannot leave the map
        // inconsistent (each update is one statement), so go on with it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d;
        // count it as the IPv4 address it is.
        let ip = ip.to_canonical();
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

#[derive(Debug)]
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Logs refusals once per burst: a warning for the first refusal after a
/// quiet spell, then at most one summary per [`REFUSAL_REPORT_INTERVAL`]
/// while refusals go on. A flood of refused connections therefore costs a
/// few log lines, not one line per connection.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    /// Refusals not yet reported, per cap.
    pending: [u64; 2],
    /// When the last line was written; `None` when quiet.
    last_report: Option<Instant>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new(REFUSAL_REPORT_INTERVAL)
    }
}

impl RefusalLog {
    /// A log that sums refusals up at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        RefusalLog {
            interval,
            pending: [0; 2],
            last_report: None,
        }
    }

    /// Records one refusal at `now`; logs it if it starts a burst.
    pub fn refused(&mut self, why: Refused, now: Instant) {
        match self.last_report {
            None => {
                self.last_report = Some(now);
                match why {
                    Refused::Global => warn!(
                        "connection limit reached: refusing new connections with 503 (--max-connections)"
                    ),
                    Refused::PerIp => warn!(
                        "per-address connection limit reached: refusing that address with 429 (--max-connections-per-ip)"
                    ),
                }
            }
            Some(_) => self.pending[why as usize] += 1,
        }
        self.tick(now);
    }

    /// Writes the summary if one is due at `now`; the accept loop calls this
    /// regularly so that the last refusals of a burst are reported too.
    pub fn tick(&mut self, now: Instant) {
        let Some(last) = self.last_report else {
            return;
        };
        if now.saturating_duration_since(last) < self.interval {
            return;
        }
        let [global, per_ip] = self.pending;
        if global + per_ip == 0 {
            // A whole interval without refusals: the burst is over.
            self.last_report = None;
            return;
        }
        warn!(
            refused_full = global,
            refused_per_address = per_ip,
            "refused {} connections over the limits in the last {:?}",
            global + per_ip,
            now.saturating_duration_since(last)
        );
        self.pending = [0; 2];
        self.last_report = Some(now);
    }

    /// Refusals counted but not yet logged (for tests).
    pub fn pending(&self) -> u64 {
        self.pending.iter().sum()
    }

    /// Whether a burst is in progress (for tests).
    pub fn in_burst(&self) -> bool {
        self.last_report.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_per_address_cap_counts_each_address_and_frees_on_drop() {
        let admission = Admission::new(0, 2);
        let a1 = admission.admit(ip(2)).unwrap();
        let _a2 = admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(2)).unwrap_err(), Refused::PerIp);
        // Another address is not affected.
        let b = admission.admit(ip(3)).unwrap();
        drop(a1);
        let _a3 = admission.admit(ip(2)).unwrap();
        drop(b);
        let per_ip = admission.per_ip.as_ref().unwrap();
        assert!(
            !per_ip.lock().contains_key(&ip(3)),
            "entries at zero are removed"
        );
    }

    #[test]
    fn a_refusal_by_the_global_cap_gives_back_the_address_slot() {
        let admission = Admission::new(1, 1);
        let held = admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(3)).unwrap_err(), Refused::Global);
        assert!(!admission
            .per_ip
            .as_ref()
            .unwrap()
            .lock()
            .contains_key(&ip(3)));
        drop(held);
        let _ = admission.admit(ip(3)).unwrap();
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let admission = Admission::new(0, 1);
        let _v4 = admission.admit(ip(2)).unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(admission.admit(mapped).unwrap_err(), Refused::PerIp);
    }

    #[test]
    fn zero_means_no_cap() {
        let admission = Admission::new(0, 0);
        let tickets: Vec<_> = (0..1000).map(|_| admission.admit(ip(2)).unwrap()).collect();
        assert_eq!(tickets.len(), 1000);
    }

    #[test]
    fn refusals_are_logged_once_per_burst() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut log = RefusalLog::new(5 * second);
        log.refused(Refused::Global, start);
        assert!(log.in_burst());
        for i in 0..100 {
            log.refused(Refused::PerIp, start + Duration::from_millis(i));
        }
        assert_eq!(log.pending(), 100, "counted, not logged");
        log.tick(start + 6 * second);
        assert_eq!(log.pending(), 0, "summed up after the interval");
        log.tick(start + 12 * second);
        assert!(!log.in_burst(), "a quiet interval ends the burst");
    }

    #[test]
    fn responses_carry_the_right_status() {
        assert!(String::from_utf8(Refused::Global.response())
            .unwrap()
            .starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(String::from_utf8(Refused::PerIp.response())
            .unwrap()
            .starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
    }
}
