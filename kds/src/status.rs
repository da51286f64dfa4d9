//! What the global knows about each zone's KDS link: online or offline (online while at least
//! one of its streams is open; a stream ends when the zone disconnects, fails, or its watchdog
//! fires), when it connected, when it last sent or received anything, resources sent and
//! received, NACKs and errors, and the version the zone reports. Counters are per-zone atomics;
//! the registry's map is locked only when a stream opens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};

/// One zone's status, as of [`ZoneStatusRegistry::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZoneStatus {
    pub zone: String,
    pub online: bool,
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
    /// The version the zone control plane reports (node `user_agent_version`).
    pub version: Option<String>,
}

#[derive(Debug, Default)]
struct Times {
    connected_since: Option<DateTime<Utc>>,
    last_connected: Option<DateTime<Utc>>,
    last_disconnected: Option<DateTime<Utc>>,
    last_updated: Option<DateTime<Utc>>,
    last_error: Option<String>,
    version: Option<String>,
}

/// The live counters of one zone, shared by its streams.
#[derive(Debug, Default)]
pub struct ZoneEntry {
    streams: AtomicUsize,
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
    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stream_opened(&self) {
        let now = Utc::now();
        if self.streams.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut t = self.times();
            t.connected_since = Some(now);
            t.last_connected = Some(now);
        }
    }

    pub(crate) fn stream_closed(&self) {
        if self.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut t = self.times();
            t.connected_since = None;
            t.last_disconnected = Some(Utc::now());
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

    pub(crate) fn set_version(&self, version: String) {
        if !version.is_empty() {
            self.times().version = Some(version);
        }
    }

    fn snapshot(&self, zone: &str) -> ZoneStatus {
        let t = self.times();
        ZoneStatus {
            zone: zone.to_owned(),
            online: self.streams.load(Ordering::SeqCst) > 0,
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
        }
    }
}

/// Per-zone KDS status at the global. Cloning shares the registry.
#[derive(Debug, Clone, Default)]
pub struct ZoneStatusRegistry {
    zones: Arc<RwLock<HashMap<String, Arc<ZoneEntry>>>>,
}

impl ZoneStatusRegistry {
    pub fn new() -> ZoneStatusRegistry {
        ZoneStatusRegistry::default()
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
            .or_default()
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
    }
}
