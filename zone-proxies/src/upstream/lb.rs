//! Picking an endpoint, as Envoy does: a priority level by priority load (each level's health
//! times the overprovisioning factor, spilling what it cannot carry to the next level), then a
//! locality by weight times availability, then a host by the cluster's policy among the
//! available hosts (all hosts when none is available: panic mode).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;

use crate::config::LbPolicy;

use super::cluster::{now_ms, Host, Locality, Priority, UpstreamCluster};

/// A consistent-hash ring over a locality's hosts.
#[derive(Debug)]
pub struct Ring {
    /// (point, index into the locality's hosts), sorted by point.
    points: Vec<(u64, u32)>,
}

/// FNV-1a: stable across processes, unlike `DefaultHasher`'s seeds.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    // Finalise (splitmix64) so close keys spread over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

impl Ring {
    pub fn build(hosts: &[Arc<Host>], minimum_ring_size: u64) -> Ring {
        let total_weight: u64 = hosts.iter().map(|h| h.weight() as u64).sum::<u64>().max(1);
        let size = minimum_ring_size.clamp(1, 1 << 20);
        let mut points = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let replicas = (size * host.weight() as u64).div_ceil(total_weight).max(1);
            let name = format!("{:?}", host.address);
            for r in 0..replicas {
                points.push((hash_key(format!("{name}_{r}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first host at or after `key` on the ring that `ok` accepts.
    fn lookup<'a>(
        &self,
        hosts: &'a [Arc<Host>],
        key: u64,
        ok: impl Fn(&Host) -> bool,
    ) -> Option<&'a Arc<Host>> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < key);
        (0..self.points.len())
            .map(|i| &hosts[self.points[(start + i) % self.points.len()].1 as usize])
            .find(|h| ok(h))
    }
}

/// What a pick may depend on besides the cluster.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    /// The request's hash (ring hash); random when absent.
    pub hash: Option<u64>,
    /// Hosts already tried by this request (retries and connect attempts avoid them).
    pub exclude: &'a [Arc<Host>],
}

fn health_percent(available: usize, total: usize, overprovisioning: u32) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (overprovisioning as f64 * available as f64 / total as f64).min(100.0)
}

/// Each priority level's share of traffic in percent (sums to 100 unless no host exists), given
/// the number of available hosts per level.
pub fn priority_loads(levels: &[(usize, usize)], overprovisioning: u32) -> Vec<f64> {
    let health: Vec<f64> = levels
        .iter()
        .map(|(a, t)| health_percent(*a, *t, overprovisioning))
        .collect();
    let total: f64 = health.iter().sum::<f64>().min(100.0);
    let mut loads = vec![0.0; levels.len()];
    if total <= 0.0 {
        // Nothing is available anywhere: the first level with hosts takes everything (panic).
        if let Some(i) = levels.iter().position(|(_, t)| *t > 0) {
            loads[i] = 100.0;
        }
        return loads;
    }
    let mut remaining = 100.0;
    for (i, h) in health.iter().enumerate() {
        let load = (h * 100.0 / total).min(remaining);
        loads[i] = load;
        remaining -= load;
    }
    loads
}

impl UpstreamCluster {
    /// Picks an endpoint, or `None` when the cluster has none.
    pub fn pick(&self, ctx: PickContext<'_>) -> Option<Arc<Host>> {
        let now = now_ms();
        let priority = self.pick_priority(now)?;
        let locality = self.pick_locality(priority, now)?;
        self.pick_host(locality, now, ctx)
    }

    fn pick_priority(&self, now: u64) -> Option<&Priority> {
        match self.priorities.len() {
            0 => return None,
            1 => return self.priorities.first(),
            _ => {}
        }
        let of = self.overprovisioning_factor();
        let mut rng = rand::thread_rng();
        // Two passes over the levels instead of a vector per pick: health, then choice.
        let mut total = 0.0;
        for p in &self.priorities {
            total += health_percent(
                available_in(p.localities.iter().flat_map(|l| &l.hosts), now),
                p.host_count,
                of,
            );
        }
        let total = total.min(100.0);
        if total <= 0.0 {
            return self.priorities.iter().find(|p| p.host_count > 0);
        }
        let roll = rng.gen_range(0.0..100.0);
        let (mut acc, mut remaining) = (0.0, 100.0f64);
        for p in &self.priorities {
            let h = health_percent(
                available_in(p.localities.iter().flat_map(|l| &l.hosts), now),
                p.host_count,
                of,
            );
            let load = (h * 100.0 / total).min(remaining);
            remaining -= load;
            acc += load;
            if roll < acc {
                return Some(p);
            }
        }
        self.priorities.iter().rev().find(|p| p.host_count > 0)
    }

    fn pick_locality<'a>(&self, priority: &'a Priority, now: u64) -> Option<&'a Locality> {
        if priority.localities.len() == 1 {
            return priority.localities.first();
        }
        let of = self.overprovisioning_factor();
        let weighted = priority.localities.iter().any(|l| l.weight.is_some());
        let effective = |l: &Locality| -> f64 {
            let available = available_in(&l.hosts, now);
            if weighted {
                l.weight.unwrap_or(0) as f64 * health_percent(available, l.hosts.len(), of) / 100.0
            } else {
                available as f64
            }
        };
        let total: f64 = priority.localities.iter().map(effective).sum();
        if total <= 0.0 {
            return priority.localities.iter().find(|l| !l.hosts.is_empty());
        }
        let mut roll = rand::thread_rng().gen_range(0.0..total);
        for l in &priority.localities {
            let w = effective(l);
            if roll < w {
                return Some(l);
            }
            roll -= w;
        }
        priority.localities.last()
    }

    fn pick_host(&self, locality: &Locality, now: u64, ctx: PickContext<'_>) -> Option<Arc<Host>> {
        let excluded = |h: &Host| ctx.exclude.iter().any(|e| std::ptr::eq(e.as_ref(), h));
        // Preference: available and untried; available; anything (panic mode).
        let strict = |h: &Host| h.available(now) && !excluded(h);
        let relaxed = |h: &Host| h.available(now);
        let any = |_: &Host| true;
        let filters: [&dyn Fn(&Host) -> bool; 3] = [&strict, &relaxed, &any];
        for ok in filters {
            if let Some(host) = self.pick_with(locality, ok, ctx.hash) {
                return Some(host);
            }
        }
        None
    }

    fn pick_with(
        &self,
        locality: &Locality,
        ok: &dyn Fn(&Host) -> bool,
        hash: Option<u64>,
    ) -> Option<Arc<Host>> {
        let hosts = &locality.hosts;
        let (count, total_weight) = hosts
            .iter()
            .filter(|h| ok(h))
            .fold((0usize, 0u64), |(c, w), h| (c + 1, w + h.weight() as u64));
        if count == 0 {
            return None;
        }
        let by_weight = |mut position: u64| {
            hosts.iter().filter(|h| ok(h)).find(|h| {
                let w = h.weight() as u64;
                if position < w {
                    true
                } else {
                    position -= w;
                    false
                }
            })
        };
        let host = match self.config.lb_policy {
            LbPolicy::RoundRobin => {
                by_weight(self.shared.rr_next.fetch_add(1, Ordering::Relaxed) % total_weight)
            }
            LbPolicy::Random => by_weight(rand::thread_rng().gen_range(0..total_weight)),
            LbPolicy::LeastRequest { choice_count } => {
                let mut rng = rand::thread_rng();
                (0..choice_count.max(2))
                    .filter_map(|_| hosts.iter().filter(|h| ok(h)).nth(rng.gen_range(0..count)))
                    .min_by_key(|h| h.active_requests.load(Ordering::Relaxed))
            }
            LbPolicy::RingHash { .. } => {
                let key = hash.unwrap_or_else(|| rand::thread_rng().gen());
                match &locality.ring {
                    Some(ring) => ring.lookup(hosts, key, ok),
                    None => by_weight(key % total_weight),
                }
            }
        };
        host.cloned()
    }
}

fn available_in<'a>(hosts: impl IntoIterator<Item = &'a Arc<Host>>, now: u64) -> usize {
    hosts.into_iter().filter(|h| h.available(now)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_priority_keeps_all_traffic_until_its_health_drops_below_100_over_140() {
        // 5 of 5 and 4 of 5 available: 4/5 * 1.4 = 112% -> still everything.
        assert_eq!(priority_loads(&[(5, 5), (5, 5)], 140), vec![100.0, 0.0]);
        assert_eq!(priority_loads(&[(4, 5), (5, 5)], 140), vec![100.0, 0.0]);
        // 2 of 5: 56% stays, 44% spills to the next level.
        let loads = priority_loads(&[(2, 5), (5, 5)], 140);
        assert!(
            (loads[0] - 56.0).abs() < 1e-9 && (loads[1] - 44.0).abs() < 1e-9,
            "{loads:?}"
        );
        // Nothing in level 0: everything to level 1.
        assert_eq!(priority_loads(&[(0, 3), (1, 1)], 140), vec![0.0, 100.0]);
        // Both degraded: normalised so the sum stays 100.
        let loads = priority_loads(&[(1, 5), (1, 5)], 140);
        assert!(
            (loads[0] - 50.0).abs() < 1e-9 && (loads[1] - 50.0).abs() < 1e-9,
            "{loads:?}"
        );
        // Nothing available anywhere: the first level with hosts (panic).
        assert_eq!(priority_loads(&[(0, 2), (0, 2)], 140), vec![100.0, 0.0]);
    }

    #[test]
    fn hashes_are_stable_and_spread() {
        assert_eq!(hash_key(b"a"), hash_key(b"a"));
        assert_ne!(hash_key(b"a"), hash_key(b"b"));
    }
}
