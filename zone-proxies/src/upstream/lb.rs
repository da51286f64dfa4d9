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
    let health = levels
        .iter()
        .map(|(a, t)| health_percent(*a, *t, overprovisioning));
    match spill(health) {
        Some(loads) => loads.collect(),
        None => {
            // Nothing is available anywhere: the first level with hosts takes everything (panic).
            let first = levels.iter().position(|(_, t)| *t > 0);
            (0..levels.len())
                .map(|i| if Some(i) == first { 100.0 } else { 0.0 })
                .collect()
        }
    }
}

/// Envoy's priority load from each level's health percent: a level takes its health
/// (normalised by the total health when that is under 100) and spills the rest to the levels
/// below. `None` when no level has any health. Lazy, so picking allocates nothing.
fn spill(health: impl Iterator<Item = f64> + Clone) -> Option<impl Iterator<Item = f64>> {
    let total = health.clone().sum::<f64>().min(100.0);
    if total <= 0.0 {
        return None;
    }
    let mut remaining = 100.0f64;
    Some(health.map(move |h| {
        let load = (h * 100.0 / total).min(remaining);
        remaining -= load;
        load
    }))
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
        let health = self.priorities.iter().map(|p| {
            health_percent(
                available_in(p.localities.iter().flat_map(|l| &l.hosts), now),
                p.host_count,
                of,
            )
        });
        let Some(loads) = spill(health) else {
            return self.priorities.iter().find(|p| p.host_count > 0);
        };
        let roll = rand::thread_rng().gen_range(0.0..100.0);
        let mut acc = 0.0;
        for (p, load) in self.priorities.iter().zip(loads) {
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

    use crate::config::{LbPolicy, ProxyConfig};
    use crate::stats::Stats;
    use crate::testing::{assignment, eds_cluster, ConfigExt};
    use crate::upstream::Clusters;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn addrs(base: u16, n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)))
            .collect()
    }

    fn cluster(policy: LbPolicy, levels: &[(u32, Vec<SocketAddr>)]) -> Arc<UpstreamCluster> {
        let mut c = eds_cluster("c");
        c.lb_policy = policy;
        let config = ProxyConfig::default()
            .with_cluster(c)
            .with_endpoints(assignment("c", levels));
        Clusters::build(&config, &Clusters::default(), &Stats::new())
            .get("c")
            .unwrap()
            .clone()
    }

    fn shares(c: &UpstreamCluster, picks: usize) -> HashMap<SocketAddr, usize> {
        let mut counts = HashMap::new();
        for _ in 0..picks {
            let host = c.pick(PickContext::default()).unwrap();
            let crate::config::EndpointAddress::Socket(a) = host.address else {
                unreachable!()
            };
            *counts.entry(a).or_default() += 1;
        }
        counts
    }

    #[test]
    fn picking_spills_from_a_degraded_priority_by_the_overprovisioning_factor() {
        let p0 = addrs(1000, 5);
        let p1 = addrs(2000, 2);
        let c = cluster(LbPolicy::RoundRobin, &[(0, p0.clone()), (1, p1.clone())]);
        let to_p0 = |c: &UpstreamCluster| {
            shares(c, 10_000)
                .iter()
                .filter(|(a, _)| p0.contains(a))
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        assert_eq!(to_p0(&c), 10_000);
        // 4 of 5 available: 112% health, P0 keeps everything.
        c.hosts[0].set_health_check_failed(true);
        assert_eq!(to_p0(&c), 10_000);
        // 2 of 5: 56% stays on P0.
        c.hosts[1].set_health_check_failed(true);
        c.hosts[2].set_health_check_failed(true);
        let share = to_p0(&c) as f64 / 100.0;
        assert!((53.0..59.0).contains(&share), "{share}");
        // The hosts that are out get nothing.
        let counts = shares(&c, 1000);
        assert!(
            !counts.contains_key(&p0[0])
                && !counts.contains_key(&p0[1])
                && !counts.contains_key(&p0[2])
        );
        // An update keeps the state of hosts that stay.
        let config = ProxyConfig::default()
            .with_cluster(eds_cluster("c"))
            .with_endpoints(assignment("c", &[(0, p0.clone()), (1, p1)]));
        let mut previous = Clusters::default();
        previous.by_name.insert("c".into(), c.clone());
        let next = Clusters::build(&config, &previous, &Stats::new());
        assert!(next.get("c").unwrap().hosts[0].health_check_failed());
    }

    #[test]
    fn round_robin_is_even_and_ring_hash_is_sticky() {
        let rr = cluster(LbPolicy::RoundRobin, &[(0, addrs(3000, 4))]);
        assert!(shares(&rr, 4000).values().all(|n| *n == 1000));
        let ring = cluster(
            LbPolicy::RingHash {
                minimum_ring_size: 1024,
            },
            &[(0, addrs(4000, 4))],
        );
        let pick = |key: &str| {
            ring.pick(PickContext {
                hash: Some(hash_key(key.as_bytes())),
                exclude: &[],
            })
            .unwrap()
        };
        assert!(Arc::ptr_eq(&pick("user-1"), &pick("user-1")));
        let distinct: std::collections::HashSet<_> = (0..200)
            .map(|i| Arc::as_ptr(&pick(&format!("user-{i}"))))
            .collect();
        assert_eq!(distinct.len(), 4, "keys spread over every host");
    }

    #[test]
    fn least_request_avoids_the_busy_host() {
        let c = cluster(
            LbPolicy::LeastRequest { choice_count: 2 },
            &[(0, addrs(5000, 2))],
        );
        c.hosts[0]
            .active_requests
            .store(10, std::sync::atomic::Ordering::Relaxed);
        let counts = shares(&c, 1000);
        let busy = counts.get(&addrs(5000, 1)[0]).copied().unwrap_or(0);
        // Only when both choices land on the busy host (1 in 4).
        assert!(busy < 350, "{busy}");
    }

    #[test]
    fn hashes_are_stable_and_spread() {
        assert_eq!(hash_key(b"a"), hash_key(b"a"));
        assert_ne!(hash_key(b"a"), hash_key(b"b"));
    }
}
