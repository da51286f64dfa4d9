//! What the server knows of each proxy: online or offline, connected since, and per type URL the
//! last version ACKed and the last NACK (with Envoy's error message). The registry's map is locked
//! only when a stream opens or closes; each stream updates its own entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};

use crate::auth::ProxyId;

/// A NACK: the version and nonce refused and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Nack {
    pub version: String,
    pub nonce: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// One type URL's state for one proxy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypeStatus {
    /// The last version ACKed, and when.
    pub acked: Option<(String, DateTime<Utc>)>,
    pub last_nack: Option<Nack>,
}

/// One proxy's state.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyStatus {
    pub online: bool,
    pub connected_since: DateTime<Utc>,
    pub disconnected_at: Option<DateTime<Utc>>,
    pub types: BTreeMap<String, TypeStatus>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ProxyStatusRegistry {
    proxies: Arc<RwLock<HashMap<ProxyId, Arc<Mutex<ProxyStatus>>>>>,
}

/// A stream's handle on its proxy's entry.
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<ProxyStatus>>);

impl StatusHandle {
    fn with(&self, f: impl FnOnce(&mut ProxyStatus)) {
        // Each update is one assignment: a poisoned lock still holds a consistent entry.
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn ack(&self, type_url: &str, version: &str) {
        self.with(|s| {
            s.types.entry(type_url.to_string()).or_default().acked =
                Some((version.to_string(), Utc::now()));
        });
    }

    pub fn nack(&self, type_url: &str, nack: Nack) {
        self.with(|s| {
            s.types.entry(type_url.to_string()).or_default().last_nack = Some(nack);
        });
    }

    pub fn disconnected(&self) {
        self.with(|s| {
            s.online = false;
            s.disconnected_at = Some(Utc::now());
        });
    }
}

impl ProxyStatusRegistry {
    /// Records a new stream for `proxy` (a reconnect starts a fresh entry).
    pub fn connected(&self, proxy: &ProxyId) -> StatusHandle {
        let entry = Arc::new(Mutex::new(ProxyStatus {
            online: true,
            connected_since: Utc::now(),
            disconnected_at: None,
            types: BTreeMap::new(),
        }));
        self.proxies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(proxy.clone(), entry.clone());
        StatusHandle(entry)
    }

    /// The state of one proxy.
    pub fn get(&self, proxy: &ProxyId) -> Option<ProxyStatus> {
        let map = self.proxies.read().unwrap_or_else(|e| e.into_inner());
        map.get(proxy)
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Every proxy seen, in id order.
    pub fn all(&self) -> BTreeMap<ProxyId, ProxyStatus> {
        let map = self.proxies.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                )
            })
            .collect()
    }
}
