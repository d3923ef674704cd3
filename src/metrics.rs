//! The server's metrics: one prometheus-client registry per server (so
//! servers started in one process, as tests do, never share counters), and
//! the few counters the hot path bumps in bulk.
//!
//! Never labelled by nickname, room or address: labels are a small fixed
//! set of reasons. Gauges that describe state (rooms, open file
//! descriptors) are read when `/metrics` is scraped, not kept up to date.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::hub::Hub;

/// A label set of one `reason`.
type Reason = [(&'static str, &'static str); 1];

/// See the module documentation.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Gauge,
    accepted: Counter,
    rejected: Family<Reason, Counter>,
    received: Counter,
    delivered: Counter,
    delivered_bytes: Counter,
    disconnects: Family<Reason, Counter>,
    rooms: Gauge,
    open_fds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        registry.register(
            "chat_connections",
            "Open chat sessions",
            connections.clone(),
        );
        let accepted = Counter::default();
        registry.register(
            "chat_connections_accepted",
            "Connections that became chat sessions (WebSocket upgrades accepted)",
            accepted.clone(),
        );
        let rejected = Family::<Reason, Counter>::default();
        registry.register(
            "chat_handshakes_rejected",
            "Connections refused before becoming a session, by reason",
            rejected.clone(),
        );
        let received = Counter::default();
        registry.register(
            "chat_messages_received",
            "Chat lines and actions accepted from clients",
            received.clone(),
        );
        let delivered = Counter::default();
        registry.register(
            "chat_messages_delivered",
            "Room messages written to recipients (one per recipient)",
            delivered.clone(),
        );
        let delivered_bytes = Counter::default();
        registry.register(
            "chat_delivered_bytes",
            "Bytes of room messages written to recipients",
            delivered_bytes.clone(),
        );
        let disconnects = Family::<Reason, Counter>::default();
        registry.register(
            "chat_disconnects",
            "Sessions ended, by reason",
            disconnects.clone(),
        );
        let rooms = Gauge::default();
        registry.register("chat_rooms", "Rooms that exist now", rooms.clone());
        let build = Family::<Reason, Gauge>::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("chat_build_info", "The running build, as a label", build);
        let open_fds = Gauge::default();
        registry.register(
            "process_open_fds",
            "File descriptors the process has open",
            open_fds.clone(),
        );
        Metrics {
            registry,
            connections,
            accepted,
            rejected,
            received,
            delivered,
            delivered_bytes,
            disconnects,
            rooms,
            open_fds,
        }
    }

    /// A connection became a session.
    pub fn session_opened(&self) {
        self.accepted.inc();
        self.connections.inc();
    }

    /// A session ended.
    pub fn session_closed(&self) {
        self.connections.dec();
    }

    /// A connection was refused before its session, for `reason`.
    pub fn handshake_rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    /// A session ended for `reason`.
    pub fn disconnected(&self, reason: &'static str) {
        self.disconnects.get_or_create(&[("reason", reason)]).inc();
    }

    /// A client's chat line or action was accepted.
    pub fn received(&self) {
        self.received.inc();
    }

    /// One room message reached `recipients` members, `bytes` each.
    pub fn delivered(&self, recipients: u64, bytes: u64) {
        self.delivered.inc_by(recipients);
        self.delivered_bytes.inc_by(recipients * bytes);
    }

    /// The registry in the text exposition format, state gauges read now.
    pub fn encode(&self, hub: &Hub) -> String {
        self.rooms.set(hub.room_count() as i64);
        self.open_fds.set(open_fds() as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// How many file descriptors this process has open (0 where /proc is not).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}
