//! Passive health: outlier detection from request and connection outcomes. Consecutive 5xx
//! (connect failures, resets and timeouts count as 5xx, as Envoy counts them without split
//! local/external origin) or consecutive gateway failures (502/503/504 and the same local
//! failures) eject a host, unless that would take the cluster's ejected share over
//! `max_ejection_percent` (one host may always be ejected).
//!
//! Ejection time backs off as Envoy's does: each ejection raises the host's multiplier by one
//! and lasts `base_ejection_time * multiplier`, capped at Envoy's default `max_ejection_time`
//! (300 s, or the base when larger); every `interval` the host spends back in service lowers
//! the multiplier by one, so a host that stays healthy returns to the base time. Envoy lowers
//! it on its interval timer; here it is settled when the host is next ejected (no timer).

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
    /// The ejection time multiplier as of `ejected_until_ms` (decays while not ejected).
    backoff: AtomicU32,
}

/// Envoy's default `max_ejection_time`.
pub const MAX_EJECTION_TIME_MS: u64 = 300_000;

/// Envoy's default outlier detection `interval`, used when the configuration has none.
const DEFAULT_INTERVAL_MS: u64 = 10_000;

/// The next ejection's multiplier and duration: the multiplier left after the time spent in
/// service since the last ejection ended (one step per interval), plus one.
fn next_ejection(backoff: u32, in_service_ms: u64, interval_ms: u64, base_ms: u64) -> (u32, u64) {
    let decayed = (in_service_ms / interval_ms.max(1)).min(u32::MAX as u64) as u32;
    let multiplier = backoff.saturating_sub(decayed) + 1;
    let cap = MAX_EJECTION_TIME_MS.max(base_ms);
    (multiplier, (base_ms * multiplier as u64).min(cap))
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
        state.times_ejected.fetch_add(1, Ordering::Relaxed);
        let last_end = state.ejected_until_ms.load(Ordering::Relaxed);
        let interval_ms = match od.interval.as_millis() as u64 {
            0 => DEFAULT_INTERVAL_MS,
            ms => ms,
        };
        let (multiplier, duration) = next_ejection(
            state.backoff.load(Ordering::Relaxed),
            now.saturating_sub(last_end),
            interval_ms,
            od.base_ejection_time.as_millis() as u64,
        );
        state.backoff.store(multiplier, Ordering::Relaxed);
        state
            .ejected_until_ms
            .store(now + duration.max(1), Ordering::Relaxed);
        state.consecutive_5xx.store(0, Ordering::Relaxed);
        state.consecutive_gateway.store(0, Ordering::Relaxed);
        self.stats()
            .outlier_detection_ejections_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %self.name(), host = ?host.address, ms = duration, "outlier ejected");
        host.http_pool.ejected();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_grows_with_ejections_and_decays_in_service() {
        let (base, interval) = (1_000, 10_000);
        // Ejected again right after each ejection ends: 1x, 2x, 3x the base.
        let (m1, d1) = next_ejection(0, 0, interval, base);
        let (m2, d2) = next_ejection(m1, 0, interval, base);
        let (m3, d3) = next_ejection(m2, 5_000, interval, base);
        assert_eq!((d1, d2, d3), (1_000, 2_000, 3_000));
        // Two intervals in service take two steps off: 3 -> 1, then +1 for this ejection.
        let (m4, d4) = next_ejection(m3, 2 * interval, interval, base);
        assert_eq!((m4, d4), (2, 2_000));
        // Long in service: back to the base time.
        assert_eq!(
            next_ejection(m4, 100 * interval, interval, base),
            (1, 1_000)
        );
        // Capped at max_ejection_time (Envoy's 300 s), or the base when that is larger.
        assert_eq!(
            next_ejection(1_000, 0, interval, base).1,
            MAX_EJECTION_TIME_MS
        );
        assert_eq!(next_ejection(5, 0, interval, 400_000).1, 400_000);
    }
}
