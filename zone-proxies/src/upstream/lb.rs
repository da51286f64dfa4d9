//! Picking an endpoint, as Envoy does: a priority level by priority load (each level's health
//! times the overprovisioning factor, spilling what it cannot carry to the next level), then a
//! locality by weight times availability, then a host by the cluster's policy among the
//! available hosts.
//!
//! Panic mode, with Envoy's default `healthy_panic_threshold` of 50%: when the priorities
//! together cannot carry all traffic (normalised total health under 100%), a priority whose
//! available share of hosts is under 50% is in panic and balances across all its hosts,
//! available or not (so a few healthy hosts are not crushed by the whole load). When every
//! priority with hosts is in panic, the load goes to the priorities in proportion to their
//! host counts.

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
    hash_parts(&[bytes])
}

/// [`hash_key`] of the concatenation of `parts`, each followed by a NUL (so `("ab", "c")` and
/// `("a", "bc")` differ), without building it.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    };
    match parts {
        [one] => one.iter().copied().for_each(&mut feed),
        _ => {
            for part in parts {
                part.iter().copied().for_each(&mut feed);
                feed(0);
            }
        }
    }
    // Finalise (splitmix64) so close keys spread over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// The key an HTTP request is placed on a hash ring with (Meridian's fixed hash policy, as the
/// configuration carries none): its `:authority` (the `Host` header for HTTP/1.1) and its
/// path with the query, so the same resource keeps going to the same endpoint.
pub fn request_hash(authority: &str, path_and_query: &str) -> u64 {
    hash_parts(&[authority.as_bytes(), path_and_query.as_bytes()])
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

/// Envoy's default `healthy_panic_threshold`, in percent.
pub const PANIC_THRESHOLD: f64 = 50.0;

/// Whether a priority with `available` of `total` hosts is in panic, given the normalised
/// total health of all priorities (at most 100).
fn in_panic(available: usize, total: usize, normalized_total: f64) -> bool {
    normalized_total < 100.0
        && total > 0
        && (100.0 * available as f64 / total as f64) < PANIC_THRESHOLD
}

/// How traffic is split over priority levels, from each level's (available, total) hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityPlan {
    /// Each level's share in percent (sums to 100 unless no level has hosts).
    pub loads: Vec<f64>,
    /// Whether each level is in panic (balances across all its hosts).
    pub panic: Vec<bool>,
}

/// Each priority level's share of traffic and panic state, given the number of available and
/// total hosts per level (allocates: for inspection and tests; picking uses the same rules
/// without allocating).
pub fn priority_plan(levels: &[(usize, usize)], overprovisioning: u32) -> PriorityPlan {
    let health = levels
        .iter()
        .map(|(a, t)| health_percent(*a, *t, overprovisioning));
    let normalized = health.clone().sum::<f64>().min(100.0);
    let panic: Vec<bool> = levels
        .iter()
        .map(|(a, t)| in_panic(*a, *t, normalized))
        .collect();
    let total_panic = levels.iter().zip(&panic).all(|((_, t), p)| *t == 0 || *p);
    let loads = match spill(health) {
        Some(loads) if !total_panic => loads.collect(),
        _ => {
            let hosts: usize = levels.iter().map(|(_, t)| t).sum();
            levels
                .iter()
                .map(|(_, t)| {
                    if hosts == 0 {
                        0.0
                    } else {
                        100.0 * *t as f64 / hosts as f64
                    }
                })
                .collect()
        }
    };
    PriorityPlan { loads, panic }
}

/// Each priority level's share of traffic in percent (see [`priority_plan`]).
pub fn priority_loads(levels: &[(usize, usize)], overprovisioning: u32) -> Vec<f64> {
    priority_plan(levels, overprovisioning).loads
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
        self.pick_at(ctx, now_ms())
    }

    /// [`UpstreamCluster::pick`] at `now` ([`now_ms`]), for a caller that read the clock.
    pub fn pick_at(&self, ctx: PickContext<'_>, now: u64) -> Option<Arc<Host>> {
        let (priority, panic) = self.pick_priority(now)?;
        let locality = self.pick_locality(priority, now, panic)?;
        if !ctx.exclude.is_empty() {
            if let Some(host) = self.pick_untried(priority, locality, now, ctx, panic) {
                return Some(host);
            }
        }
        self.pick_host(locality, now, ctx, panic)
    }

    /// A retry's pick (Envoy's `previous_hosts` predicate): a host this request has not tried,
    /// in the chosen locality if it has one, else in the chosen priority's other localities,
    /// else in the other priorities in order. Only when every available host was tried does
    /// the retry go back to one ([`Self::pick_host`]'s fallbacks).
    fn pick_untried(
        &self,
        priority: &Priority,
        locality: &Locality,
        now: u64,
        ctx: PickContext<'_>,
        panic: bool,
    ) -> Option<Arc<Host>> {
        let excluded = |h: &Host| ctx.exclude.iter().any(|e| std::ptr::eq(e.as_ref(), h));
        let untried = |h: &Host| (panic || h.available(now)) && !excluded(h);
        if let Some(host) = self.pick_with(locality, &untried, ctx.hash) {
            return Some(host);
        }
        let strict = |h: &Host| h.available(now) && !excluded(h);
        let others = priority
            .localities
            .iter()
            .chain(self.priorities.iter().flat_map(|p| &p.localities));
        others
            .filter(|l| !std::ptr::eq(*l, locality))
            .find_map(|l| self.pick_with(l, &strict, ctx.hash))
    }

    fn available_at(p: &Priority, now: u64) -> usize {
        available_in(p.localities.iter().flat_map(|l| &l.hosts), now)
    }

    /// A priority level by priority load, and whether it is in panic.
    fn pick_priority(&self, now: u64) -> Option<(&Priority, bool)> {
        let of = self.overprovisioning_factor();
        if let [p] = self.priorities.as_slice() {
            // One level (the usual case): its hosts counted once, no spill to work out.
            let available = Self::available_at(p, now);
            let normalized = health_percent(available, p.host_count, of);
            return Some((p, in_panic(available, p.host_count, normalized)));
        }
        let health = self
            .priorities
            .iter()
            .map(|p| health_percent(Self::available_at(p, now), p.host_count, of));
        let normalized = health.clone().sum::<f64>().min(100.0);
        let panic = |p: &Priority| in_panic(Self::available_at(p, now), p.host_count, normalized);
        if self.priorities.is_empty() {
            return None;
        }
        let total_panic = self
            .priorities
            .iter()
            .all(|p| p.host_count == 0 || panic(p));
        let loads = spill(health).filter(|_| !total_panic);
        let Some(loads) = loads else {
            // Every level in panic: by host count, each level across all its hosts.
            let hosts: usize = self.priorities.iter().map(|p| p.host_count).sum();
            if hosts == 0 {
                return None;
            }
            let mut roll = rand::thread_rng().gen_range(0..hosts);
            for p in &self.priorities {
                if roll < p.host_count {
                    return Some((p, true));
                }
                roll -= p.host_count;
            }
            return None;
        };
        let roll = rand::thread_rng().gen_range(0.0..100.0);
        let mut acc = 0.0;
        for (p, load) in self.priorities.iter().zip(loads) {
            acc += load;
            if roll < acc {
                return Some((p, panic(p)));
            }
        }
        self.priorities
            .iter()
            .rev()
            .find(|p| p.host_count > 0)
            .map(|p| (p, panic(p)))
    }

    fn pick_locality<'a>(
        &self,
        priority: &'a Priority,
        now: u64,
        panic: bool,
    ) -> Option<&'a Locality> {
        if priority.localities.len() == 1 {
            return priority.localities.first();
        }
        let of = self.overprovisioning_factor();
        let weighted = priority.localities.iter().any(|l| l.weight.is_some());
        let effective = |l: &Locality| -> f64 {
            // In panic every host counts, as every host may be picked.
            let available = if panic {
                l.hosts.len()
            } else {
                available_in(&l.hosts, now)
            };
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

    fn pick_host(
        &self,
        locality: &Locality,
        now: u64,
        ctx: PickContext<'_>,
        panic: bool,
    ) -> Option<Arc<Host>> {
        let excluded = |h: &Host| ctx.exclude.iter().any(|e| std::ptr::eq(e.as_ref(), h));
        // Preference: available and untried; available; anything (no host available).
        // In panic: untried; anything.
        let strict = |h: &Host| h.available(now) && !excluded(h);
        let relaxed = |h: &Host| h.available(now);
        let untried = |h: &Host| !excluded(h);
        let any = |_: &Host| true;
        let normal: [&dyn Fn(&Host) -> bool; 3] = [&strict, &relaxed, &any];
        let panicked: [&dyn Fn(&Host) -> bool; 2] = [&untried, &any];
        let filters: &[&dyn Fn(&Host) -> bool] = if panic { &panicked } else { &normal };
        for ok in filters {
            if let Some(host) = self.pick_with(locality, *ok, ctx.hash) {
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
        // Both degraded but above the panic threshold: normalised so the sum stays 100.
        let loads = priority_loads(&[(3, 5), (3, 10)], 140);
        let expected = [84.0, 16.0];
        assert!(
            (loads[0] - expected[0]).abs() < 1e-9 && (loads[1] - expected[1]).abs() < 1e-9,
            "{loads:?}"
        );
        // Every level under 50% available: total panic, load by host count.
        assert_eq!(priority_loads(&[(1, 5), (1, 15)], 140), vec![25.0, 75.0]);
        assert_eq!(priority_loads(&[(0, 2), (0, 2)], 140), vec![50.0, 50.0]);
    }

    use crate::config::{EndpointAddress, LbPolicy, ProxyConfig};
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
    fn a_retry_goes_to_an_untried_host_of_the_next_priority_before_a_tried_one() {
        // Priority 0 healthy with one host: its load is 100%, but a retry after trying that
        // host goes to priority 1 (Envoy's previous_hosts), and back to it only when every
        // available host was tried.
        let p0 = addrs(5000, 1);
        let p1 = addrs(5100, 2);
        let c = cluster(LbPolicy::RoundRobin, &[(0, p0.clone()), (1, p1.clone())]);
        let first = c.pick(PickContext::default()).unwrap();
        assert_eq!(first.address, EndpointAddress::Socket(p0[0]));
        let mut tried = vec![first];
        for _ in 0..2 {
            let next = c
                .pick(PickContext {
                    hash: None,
                    exclude: &tried,
                })
                .unwrap();
            assert!(
                p1.iter()
                    .any(|a| next.address == EndpointAddress::Socket(*a)),
                "{:?}",
                next.address
            );
            assert!(!tried.iter().any(|t| Arc::ptr_eq(t, &next)));
            tried.push(next);
        }
        let again = c
            .pick(PickContext {
                hash: None,
                exclude: &tried,
            })
            .unwrap();
        assert_eq!(again.address, EndpointAddress::Socket(p0[0]));
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
    fn under_the_panic_threshold_a_priority_balances_across_all_its_hosts() {
        let hosts = addrs(6000, 4);
        let c = cluster(LbPolicy::RoundRobin, &[(0, hosts.clone())]);
        // 2 of 4 available (50%): not in panic, only the available hosts.
        c.hosts[0].set_health_check_failed(true);
        c.hosts[1].set_health_check_failed(true);
        let counts = shares(&c, 1000);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(!counts.contains_key(&hosts[0]) && !counts.contains_key(&hosts[1]));
        // 1 of 4 (25%): panic, every host gets its share.
        c.hosts[2].set_health_check_failed(true);
        let counts = shares(&c, 1000);
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(counts.values().all(|n| *n == 250), "{counts:?}");
        let plan = priority_plan(&[(1, 4)], 140);
        assert_eq!(plan.panic, vec![true]);

        // Two priorities, P0 at 1 of 4 but P1 healthy: the total is 100%, so no panic and
        // P0's one host keeps 35% (25% x 1.4), the rest spills to P1.
        let plan = priority_plan(&[(1, 4), (2, 2)], 140);
        assert_eq!(plan.panic, vec![false, false]);
        assert!((plan.loads[0] - 35.0).abs() < 1e-9, "{plan:?}");
        // P1 degraded too (1 of 4 and 1 of 3): the total is under 100, both are in panic, and
        // the load follows host counts.
        let plan = priority_plan(&[(1, 4), (1, 3)], 140);
        assert_eq!(plan.panic, vec![true, true]);
        assert!((plan.loads[0] - 400.0 / 7.0).abs() < 1e-9, "{plan:?}");
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
