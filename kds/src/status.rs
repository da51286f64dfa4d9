//! What the global knows about each zone's KDS link: online or offline (online while at least
//! one of its streams is open; a stream ends when the zone disconnects, fails, or its watchdog
//! fires), when it connected, when it last sent or received anything, resources sent and
//! received, NACKs and errors, the version the zone reports, and why the global refused the zone's
//! last handshake when it did (a version outside the skew rule, [`crate::version`]). Counters are per-zone atomics;
//! the registry's map is locked only when a stream opens. A zone going offline (its last stream
//! ended) or online (its first stream opened), and a refused handshake, are announced to
//! subscribers ([`ZoneStatusRegistry::subscribe`]) as a [`ZoneTransition`]; only those send
//! anything, never the per-message counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

/// How many transitions a slow subscriber may fall behind before it is told it lagged.
const TRANSITIONS_BUFFER: usize = 1024;

/// A zone came online (its first stream opened) or went offline (its last stream ended), or its
/// handshake was refused (`online` then says whether another stream of it is open).
/// Transitions of different streams may be observed out of order: on receipt, read the zone's
/// current state ([`ZoneStatusRegistry::is_online`], [`ZoneStatusRegistry::zone`]) rather than
/// trusting `online` alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneTransition {
    pub zone: String,
    pub online: bool,
}

/// One zone's status, as of [`ZoneStatusRegistry::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZoneStatus {
    pub zone: String,
    pub online: bool,
    /// How many times the zone came online here (its first stream opened): a new value is a new
    /// connection.
    pub connections: u64,
    /// Since when the current connection is up (`None` while offline).
    pub connected_since: Option<DateTime<Utc>>,
    pub last_connected: Option<DateTime<Utc>>,
    pub last_disconnected: Option<DateTime<Utc>>,
    /// Last time anything was applied from or sent to the zone.
    pub last_updated: Option<DateTime<Utc>>,
    pub resources_sent: u64,
    pub resources_received: u64,
    /// Responses sent to the zone (heartbeats excluded).
    pub messages_sent: u64,
    /// Bytes of encoded responses sent to the zone.
    pub bytes_sent: u64,
    /// NACKs the zone sent (resources it could not apply).
    pub nacks_received: u64,
    /// NACKs the global sent (zone resources it refused).
    pub nacks_sent: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The version the zone control plane reports (`x-meridian-version`, node `user_agent_version`).
    pub version: Option<String>,
    /// Why the global refused the zone's latest handshake (its version is outside the skew rule);
    /// `None` once a handshake is accepted.
    pub refused: Option<String>,
}

#[derive(Debug, Default)]
struct Times {
    connected_since: Option<DateTime<Utc>>,
    last_connected: Option<DateTime<Utc>>,
    last_disconnected: Option<DateTime<Utc>>,
    last_updated: Option<DateTime<Utc>>,
    last_error: Option<String>,
    version: Option<String>,
    refused: Option<String>,
}

/// The live counters of one zone, shared by its streams.
#[derive(Debug)]
pub struct ZoneEntry {
    zone: String,
    transitions: broadcast::Sender<ZoneTransition>,
    streams: AtomicUsize,
    connections: AtomicU64,
    resources_sent: AtomicU64,
    resources_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    nacks_received: AtomicU64,
    nacks_sent: AtomicU64,
    errors: AtomicU64,
    times: Mutex<Times>,
}

impl ZoneEntry {
    fn new(zone: String, transitions: broadcast::Sender<ZoneTransition>) -> ZoneEntry {
        ZoneEntry {
            zone,
            transitions,
            streams: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
            resources_sent: AtomicU64::new(0),
            resources_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            nacks_received: AtomicU64::new(0),
            nacks_sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            times: Mutex::default(),
        }
    }

    fn announce(&self, online: bool) {
        // No subscriber is fine (a global without a janitor, tests).
        let _ = self.transitions.send(ZoneTransition {
            zone: self.zone.clone(),
            online,
        });
    }

    /// The zone's name.
    pub(crate) fn name(&self) -> &str {
        &self.zone
    }

    fn online(&self) -> bool {
        self.streams.load(Ordering::SeqCst) > 0
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stream_opened(&self) {
        let now = Utc::now();
        if self.streams.fetch_add(1, Ordering::SeqCst) == 0 {
            self.connections.fetch_add(1, Ordering::SeqCst);
            {
                let mut t = self.times();
                t.connected_since = Some(now);
                t.last_connected = Some(now);
            }
            self.announce(true);
        }
    }

    pub(crate) fn stream_closed(&self) {
        if self.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            {
                let mut t = self.times();
                t.connected_since = None;
                t.last_disconnected = Some(Utc::now());
            }
            self.announce(false);
        }
    }

    pub(crate) fn sent(&self, resources: usize, bytes: usize) {
        self.resources_sent
            .fetch_add(resources as u64, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        if resources > 0 {
            self.times().last_updated = Some(Utc::now());
        }
    }

    pub(crate) fn received(&self, resources: usize) {
        self.resources_received
            .fetch_add(resources as u64, Ordering::Relaxed);
        if resources > 0 {
            self.times().last_updated = Some(Utc::now());
        }
    }

    pub(crate) fn nack_received(&self) {
        self.nacks_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn nack_sent(&self) {
        self.nacks_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.times().last_error = Some(message);
    }

    /// The zone's handshake passed the version rule.
    pub(crate) fn accepted(&self, version: &str) {
        let mut t = self.times();
        t.version = Some(version.to_owned());
        t.refused = None;
    }

    /// The zone's handshake was refused: `version` as reported (if any), `why` for the overview.
    /// Announced, so that the refusal can be recorded where every node of the global sees it.
    pub(crate) fn refused(&self, version: Option<&str>, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        {
            let mut t = self.times();
            if let Some(v) = version.filter(|v| !v.is_empty()) {
                t.version = Some(v.to_owned());
            }
            t.last_error = Some(why.clone());
            t.refused = Some(why);
        }
        self.announce(self.online());
    }

    fn snapshot(&self, zone: &str) -> ZoneStatus {
        let t = self.times();
        ZoneStatus {
            zone: zone.to_owned(),
            online: self.online(),
            connections: self.connections.load(Ordering::SeqCst),
            connected_since: t.connected_since,
            last_connected: t.last_connected,
            last_disconnected: t.last_disconnected,
            last_updated: t.last_updated,
            resources_sent: self.resources_sent.load(Ordering::Relaxed),
            resources_received: self.resources_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            nacks_received: self.nacks_received.load(Ordering::Relaxed),
            nacks_sent: self.nacks_sent.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: t.last_error.clone(),
            version: t.version.clone(),
            refused: t.refused.clone(),
        }
    }
}

/// Per-zone KDS status at the global. Cloning shares the registry.
#[derive(Debug, Clone)]
pub struct ZoneStatusRegistry {
    zones: Arc<RwLock<HashMap<String, Arc<ZoneEntry>>>>,
    transitions: broadcast::Sender<ZoneTransition>,
}

impl Default for ZoneStatusRegistry {
    fn default() -> ZoneStatusRegistry {
        ZoneStatusRegistry {
            zones: Arc::default(),
            transitions: broadcast::channel(TRANSITIONS_BUFFER).0,
        }
    }
}

impl ZoneStatusRegistry {
    pub fn new() -> ZoneStatusRegistry {
        ZoneStatusRegistry::default()
    }

    /// Every later online/offline transition of any zone. A receiver that falls more than
    /// a thousand transitions behind gets `Lagged` once and should re-read [`Self::snapshot`].
    pub fn subscribe(&self) -> broadcast::Receiver<ZoneTransition> {
        self.transitions.subscribe()
    }

    /// Whether a zone has a KDS stream open now.
    pub fn is_online(&self, zone: &str) -> bool {
        self.zones
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(zone)
            .is_some_and(|e| e.online())
    }

    /// The entry of a zone, created on first use.
    pub(crate) fn entry(&self, zone: &str) -> Arc<ZoneEntry> {
        if let Some(entry) = self
            .zones
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(zone)
        {
            return entry.clone();
        }
        self.zones
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(zone.to_owned())
            .or_insert_with(|| Arc::new(ZoneEntry::new(zone.to_owned(), self.transitions.clone())))
            .clone()
    }

    /// Every zone that ever connected, by name.
    pub fn snapshot(&self) -> Vec<ZoneStatus> {
        let zones = self.zones.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ZoneStatus> = zones.iter().map(|(z, e)| e.snapshot(z)).collect();
        out.sort_by(|a, b| a.zone.cmp(&b.zone));
        out
    }

    /// One zone's status.
    pub fn zone(&self, zone: &str) -> Option<ZoneStatus> {
        self.zones
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(zone)
            .map(|e| e.snapshot(zone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_while_a_stream_is_open() {
        let reg = ZoneStatusRegistry::new();
        let e = reg.entry("zone-1");
        e.stream_opened();
        e.stream_opened();
        e.sent(3, 100);
        e.nack_received();
        let s = reg.zone("zone-1").unwrap();
        assert!(s.online);
        assert!(s.connected_since.is_some());
        assert_eq!(
            (s.resources_sent, s.bytes_sent, s.nacks_received),
            (3, 100, 1)
        );
        e.stream_closed();
        assert!(reg.zone("zone-1").unwrap().online);
        e.stream_closed();
        let s = reg.zone("zone-1").unwrap();
        assert!(!s.online);
        assert!(s.connected_since.is_none() && s.last_disconnected.is_some());
        assert_eq!(reg.snapshot().len(), 1);
        // Two streams of one connection count once; the next connection counts again.
        assert_eq!(s.connections, 1);
        e.stream_opened();
        assert_eq!(reg.zone("zone-1").unwrap().connections, 2);
    }

    #[test]
    fn only_the_online_and_offline_edges_are_announced() {
        let reg = ZoneStatusRegistry::new();
        let mut rx = reg.subscribe();
        let e = reg.entry("zone-1");
        e.stream_opened();
        e.stream_opened();
        e.sent(1, 10);
        e.stream_closed();
        assert!(reg.is_online("zone-1"));
        e.stream_closed();
        assert!(!reg.is_online("zone-1") && !reg.is_online("zone-2"));
        let t = |online| ZoneTransition {
            zone: "zone-1".into(),
            online,
        };
        assert_eq!(rx.try_recv().unwrap(), t(true));
        assert_eq!(rx.try_recv().unwrap(), t(false));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_refusal_is_shown_until_a_handshake_is_accepted() {
        let reg = ZoneStatusRegistry::new();
        let mut rx = reg.subscribe();
        let e = reg.entry("zone-1");
        e.refused(Some("0.9.0"), "too new".into());
        // Announced (to be recorded for every node of the global), as offline.
        let announced = rx.try_recv().unwrap();
        assert_eq!(
            (announced.zone.as_str(), announced.online),
            ("zone-1", false)
        );
        let s = reg.zone("zone-1").unwrap();
        assert!(!s.online);
        assert_eq!(
            (s.version.as_deref(), s.refused.as_deref(), s.errors),
            (Some("0.9.0"), Some("too new"), 1)
        );
        e.accepted("0.1.0");
        let s = reg.zone("zone-1").unwrap();
        assert_eq!((s.version.as_deref(), s.refused), (Some("0.1.0"), None));
        assert_eq!(s.last_error.as_deref(), Some("too new"));
    }
}
