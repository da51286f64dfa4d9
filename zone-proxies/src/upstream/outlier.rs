//! Passive health: outlier detection from request and connection outcomes. Consecutive 5xx
//! (connect failures, resets and timeouts count as 5xx, as Envoy counts them without split
//! local/external origin) or consecutive gateway failures (502/503/504 and the same local
//! failures) eject a host for `base_ejection_time * times ejected`, unless that would take the
//! cluster's ejected share over `max_ejection_percent` (one host may always be ejected).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::cluster::{now_ms, Host, UpstreamCluster};

/// Per-host outlier counters and ejection deadline.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// `now_ms()` until which the host is ejected (0: never ejected).
    ejected_until_ms: AtomicU64,
    times_ejected: AtomicU32,
}

impl OutlierState {
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }
}

/// How one attempt against a host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    ConnectFailure,
    Reset,
    Timeout,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            _ => true,
        }
    }

    fn is_gateway_failure(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            _ => true,
        }
    }
}

impl UpstreamCluster {
    /// Records an outcome for `host`, ejecting it when a threshold is reached.
    pub fn record_outcome(&self, host: &Host, outcome: Outcome) {
        let Some(od) = &self.config.outlier_detection else {
            return;
        };
        let state = &host.outlier;
        if !outcome.is_5xx() {
            state.consecutive_5xx.store(0, Ordering::Relaxed);
            state.consecutive_gateway.store(0, Ordering::Relaxed);
            return;
        }
        let c5 = state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let gw = if outcome.is_gateway_failure() {
            state.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            state.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let tripped = od.consecutive_5xx.is_some_and(|n| n > 0 && c5 >= n)
            || od
                .consecutive_gateway_failure
                .is_some_and(|n| n > 0 && gw >= n);
        if !tripped {
            return;
        }
        let now = now_ms();
        if state.ejected(now) {
            return;
        }
        let ejected = self.hosts.iter().filter(|h| h.outlier.ejected(now)).count();
        let allowed = (self.hosts.len() * od.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            return;
        }
        let times = state.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = od.base_ejection_time.as_millis() as u64 * times as u64;
        state
            .ejected_until_ms
            .store(now + duration.max(1), Ordering::Relaxed);
        state.consecutive_5xx.store(0, Ordering::Relaxed);
        state.consecutive_gateway.store(0, Ordering::Relaxed);
        self.stats()
            .outlier_detection_ejections_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %self.name(), host = ?host.address, ms = duration, "outlier ejected");
    }
}
