//! Whether the server should be sent traffic: what `GET /readyz` answers.
//!
//! A [`Readiness`] is a cheap `Clone` handle. The server marks itself down
//! the moment shutdown begins; any component the chat cannot work without
//! (a store, say) takes a handle from `server::Config::readiness` and calls
//! [`Readiness::down`] with its name while it is unavailable and
//! [`Readiness::up`] when it is back. `/readyz` answers 200 while nothing is
//! down, else 503 naming what is.

use std::sync::{Arc, Mutex, MutexGuard};

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// The names of what is down now, in the order they went down.
    down: Arc<Mutex<Vec<&'static str>>>,
}

/// The name shutdown marks down.
pub const SHUTTING_DOWN: &str = "shutting down";

impl Readiness {
    /// A handle with nothing down.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<&'static str>> {
        // Every critical section leaves the list consistent.
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `component` unavailable (once, however often it is called).
    pub fn down(&self, component: &'static str) {
        let mut down = self.lock();
        if !down.contains(&component) {
            down.push(component);
        }
    }

    /// Marks `component` available again.
    pub fn up(&self, component: &'static str) {
        self.lock().retain(|c| *c != component);
    }

    /// `Ok` when ready; else the names of what is down.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let down = self.lock();
        if down.is_empty() {
            Ok(())
        } else {
            Err(down.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_something_is_down_and_again_once_it_is_back() {
        let r = Readiness::new();
        let other = r.clone();
        assert_eq!(r.check(), Ok(()));
        other.down("store");
        other.down("store");
        r.down(SHUTTING_DOWN);
        assert_eq!(r.check(), Err(vec!["store", SHUTTING_DOWN]));
        other.up("store");
        assert_eq!(r.check(), Err(vec![SHUTTING_DOWN]));
    }
}
