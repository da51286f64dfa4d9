//! Per-cluster endpoint sets, rebuilt from `ProxyConfig::{clusters, endpoints, secrets}` on
//! every configuration version while keeping the state of endpoints that stay.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{self, Discovery, EndpointAddress, EndpointHealth, LbPolicy, ProxyConfig};
use crate::stats::{ClusterStats, Stats};
use crate::tls::{client_tls, ClientTls};

use super::health::HealthChecker;
use super::lb::Ring;
use super::outlier::OutlierState;

/// Milliseconds since the first call in this process: a cheap clock for atomics.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `t`, for a caller that read the clock already.
pub fn ms_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    t.saturating_duration_since(*EPOCH.get_or_init(|| t))
        .as_millis() as u64
}

/// One endpoint and the state that outlives configuration versions.
#[derive(Debug)]
pub struct Host {
    pub address: EndpointAddress,
    pub metadata: BTreeMap<String, String>,
    weight: AtomicU32,
    /// What EDS says (`EndpointHealth` as u8); updated in place when an assignment changes it.
    eds_health: AtomicU8,
    /// Set by active health checks.
    hc_failed: AtomicBool,
    /// Whether an active health check has probed this host yet.
    hc_probed: AtomicBool,
    pub outlier: OutlierState,
    /// Requests in flight to this endpoint (least-request picking).
    pub active_requests: AtomicU32,
    /// Pooled HTTP connections to this endpoint (kept while the endpoint stays).
    pub http_pool: crate::http::client::EndpointPool,
}

impl Host {
    /// A new endpoint. With active health checks configured it starts as failed (Envoy's
    /// "pending first health check") and is not picked until its first check passes.
    fn new(endpoint: &config::Endpoint, health_checked: bool) -> Host {
        let host = Host {
            address: endpoint.address.clone(),
            metadata: endpoint.metadata.clone(),
            weight: AtomicU32::new(1),
            eds_health: AtomicU8::new(0),
            hc_failed: AtomicBool::new(health_checked),
            hc_probed: AtomicBool::new(false),
            outlier: OutlierState::default(),
            active_requests: AtomicU32::new(0),
            http_pool: Default::default(),
        };
        host.update(endpoint);
        host
    }

    fn update(&self, endpoint: &config::Endpoint) {
        self.weight.store(endpoint.weight.max(1), Ordering::Relaxed);
        let health = match endpoint.health {
            EndpointHealth::Unknown | EndpointHealth::Healthy => 0,
            EndpointHealth::Unhealthy => 1,
            EndpointHealth::Draining => 2,
        };
        self.eds_health.store(health, Ordering::Relaxed);
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether load balancing may pick this endpoint now: healthy per EDS and active health
    /// checks, and not ejected by outlier detection.
    pub fn available(&self, now_ms: u64) -> bool {
        self.eds_health.load(Ordering::Relaxed) == 0
            && !self.hc_failed.load(Ordering::Relaxed)
            && !self.outlier.ejected(now_ms)
    }

    pub fn set_health_check_failed(&self, failed: bool) {
        self.hc_failed.store(failed, Ordering::Relaxed);
    }

    /// Records that a health check probed this host; `true` the first time.
    pub fn first_health_check(&self) -> bool {
        !self.hc_probed.swap(true, Ordering::Relaxed)
    }

    pub fn health_check_failed(&self) -> bool {
        self.hc_failed.load(Ordering::Relaxed)
    }
}

/// What outlives a cluster's configuration versions besides its hosts.
pub struct ClusterShared {
    pub stats: Arc<ClusterStats>,
    /// Round-robin position.
    pub rr_next: AtomicU64,
    /// Requests admitted and not finished (circuit breaker `max_requests`).
    pub requests: AtomicU32,
    /// Requests waiting for a connection (circuit breaker `max_pending_requests`).
    pub pending: AtomicU32,
    /// Retries in flight (circuit breaker `max_retries`, the retry budget).
    pub retries: AtomicU32,
    health_checker: Mutex<Option<HealthChecker>>,
}

impl std::fmt::Debug for ClusterShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterShared")
    }
}

/// The endpoints of one locality within one priority.
#[derive(Debug)]
pub struct Locality {
    pub zone: String,
    pub weight: Option<u32>,
    pub hosts: Vec<Arc<Host>>,
    pub ring: Option<Ring>,
}

/// The localities of one priority level.
#[derive(Debug)]
pub struct Priority {
    pub level: u32,
    pub localities: Vec<Locality>,
    pub host_count: usize,
}

/// The TLS a connection to an endpoint uses: `None` plaintext; `Some(Err)` a context that
/// could not be built (connections fail with the reason).
pub type TlsChoice = Option<Result<ClientTls, String>>;

/// One cluster as of one configuration version.
#[derive(Debug)]
pub struct UpstreamCluster {
    pub config: Arc<config::Cluster>,
    pub assignment: Option<Arc<config::LoadAssignment>>,
    /// By ascending priority level.
    pub priorities: Vec<Priority>,
    pub hosts: Vec<Arc<Host>>,
    pub shared: Arc<ClusterShared>,
    tls_default: TlsChoice,
    tls_by_metadata: Vec<(BTreeMap<String, String>, TlsChoice)>,
    /// Identifies the TLS and protocol settings, so pooled clients are rebuilt only when they change.
    pub settings_version: u64,
}

impl UpstreamCluster {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.shared.stats
    }

    /// The TLS towards `host`: the first `tls_by_metadata` entry whose every key/value is in
    /// the endpoint's metadata, else the cluster's.
    pub fn tls_for(&self, host: &Host) -> &TlsChoice {
        self.tls_by_metadata
            .iter()
            .find(|(wanted, _)| wanted.iter().all(|(k, v)| host.metadata.get(k) == Some(v)))
            .map(|(_, tls)| tls)
            .unwrap_or(&self.tls_default)
    }

    pub fn overprovisioning_factor(&self) -> u32 {
        self.assignment
            .as_ref()
            .map(|a| a.overprovisioning_factor)
            .unwrap_or(140)
    }

    pub fn host_by_address(&self, address: &EndpointAddress) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| &h.address == address)
    }
}

/// All clusters of one configuration version, by name.
#[derive(Debug, Default, Clone)]
pub struct Clusters {
    pub by_name: HashMap<String, Arc<UpstreamCluster>>,
}

fn build_tls(
    tls: &Option<config::UpstreamTls>,
    secrets: &crate::tls::Secrets,
    cluster: &str,
) -> TlsChoice {
    tls.as_ref().map(|t| {
        client_tls(t, secrets).map_err(|e| {
            tracing::warn!(cluster, error = %e, "upstream TLS context unavailable");
            format!("cluster {cluster:?}: upstream TLS: {e}")
        })
    })
}

fn settings_version(cluster: &config::Cluster, secrets: &crate::tls::Secrets) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!(
        "{:?}{:?}{:?}",
        cluster.tls, cluster.tls_by_metadata, cluster.protocol
    )
    .hash(&mut h);
    cluster.idle_timeout.hash(&mut h);
    let mut names: Vec<&String> = Vec::new();
    for t in cluster.tls.iter().chain(
        cluster
            .tls_by_metadata
            .iter()
            .filter_map(|(_, t)| t.as_ref()),
    ) {
        names.extend(t.certificate.iter());
        names.extend(t.trusted_ca.iter());
    }
    for name in names {
        if let Some(secret) = secrets.get(name) {
            format!("{secret:?}").hash(&mut h);
        }
    }
    h.finish()
}

impl Clusters {
    /// Builds this version's clusters, reusing `previous`'s hosts (by address), statistics,
    /// counters and pools.
    pub fn build(config: &ProxyConfig, previous: &Clusters, stats: &Stats) -> Clusters {
        let mut by_name = HashMap::new();
        for (name, cluster) in &config.clusters {
            let old = previous.by_name.get(name);
            let assignment = match &cluster.discovery {
                Discovery::Eds(service) => config.endpoints.get(service).cloned(),
                Discovery::Static(assignment) => Some(assignment.clone()),
            };
            let old_hosts: HashMap<&EndpointAddress, &Arc<Host>> = old
                .map(|o| o.hosts.iter().map(|h| (&h.address, h)).collect())
                .unwrap_or_default();
            let mut hosts: Vec<Arc<Host>> = Vec::new();
            let mut levels: BTreeMap<u32, Vec<Locality>> = BTreeMap::new();
            for locality in assignment.iter().flat_map(|a| a.localities.iter()) {
                let mut members = Vec::new();
                for endpoint in &locality.endpoints {
                    let host = match old_hosts.get(&endpoint.address) {
                        Some(h) if h.metadata == endpoint.metadata => {
                            h.update(endpoint);
                            (*h).clone()
                        }
                        _ => Arc::new(Host::new(endpoint, !cluster.health_checks.is_empty())),
                    };
                    if !hosts.iter().any(|h| Arc::ptr_eq(h, &host)) {
                        hosts.push(host.clone());
                    }
                    members.push(host);
                }
                let ring = match cluster.lb_policy {
                    LbPolicy::RingHash { minimum_ring_size } => {
                        Some(Ring::build(&members, minimum_ring_size))
                    }
                    _ => None,
                };
                levels.entry(locality.priority).or_default().push(Locality {
                    zone: locality.zone.clone(),
                    weight: locality.weight,
                    hosts: members,
                    ring,
                });
            }
            let priorities = levels
                .into_iter()
                .map(|(level, localities)| Priority {
                    level,
                    host_count: localities.iter().map(|l| l.hosts.len()).sum(),
                    localities,
                })
                .collect();
            let shared = match old {
                Some(o) => o.shared.clone(),
                None => Arc::new(ClusterShared {
                    stats: stats.cluster(name),
                    rr_next: AtomicU64::new(0),
                    requests: AtomicU32::new(0),
                    pending: AtomicU32::new(0),
                    retries: AtomicU32::new(0),
                    health_checker: Mutex::new(None),
                }),
            };
            shared
                .stats
                .membership_total
                .store(hosts.len() as i64, Ordering::Relaxed);
            let built = UpstreamCluster {
                config: cluster.clone(),
                assignment,
                priorities,
                tls_default: build_tls(&cluster.tls, &config.secrets, name),
                tls_by_metadata: cluster
                    .tls_by_metadata
                    .iter()
                    .map(|(m, t)| (m.clone(), build_tls(t, &config.secrets, name)))
                    .collect(),
                settings_version: settings_version(cluster, &config.secrets),
                hosts,
                shared,
            };
            // Health checks follow the cluster's current hosts: restarted when they or the
            // checks change (a host that stays keeps its state on the `Host`).
            {
                let mut checker = built
                    .shared
                    .health_checker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let unchanged = checker
                    .as_ref()
                    .is_some_and(|c| c.runs_for(&cluster.health_checks, &built.hosts));
                if !unchanged {
                    if cluster.health_checks.is_empty() && checker.is_some() {
                        // The checks were removed: what they last said no longer applies.
                        for host in &built.hosts {
                            host.set_health_check_failed(false);
                        }
                    }
                    *checker = if cluster.health_checks.is_empty() || built.hosts.is_empty() {
                        None
                    } else {
                        Some(HealthChecker::spawn(
                            name,
                            &cluster.health_checks,
                            &built.hosts,
                            &built.shared.stats,
                        ))
                    };
                }
            }
            by_name.insert(name.clone(), Arc::new(built));
        }
        Clusters { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<UpstreamCluster>> {
        self.by_name.get(name)
    }

    /// Closes the connection pools of the endpoints `previous` had and this version has not
    /// (a removed cluster's, a removed endpoint's, one replaced for new metadata).
    pub fn close_departed(&self, previous: &Clusters) {
        let kept: std::collections::HashSet<*const Host> = self
            .by_name
            .values()
            .flat_map(|c| c.hosts.iter().map(Arc::as_ptr))
            .collect();
        for host in previous.by_name.values().flat_map(|c| c.hosts.iter()) {
            if !kept.contains(&Arc::as_ptr(host)) {
                host.http_pool.close();
            }
        }
    }

    /// Closes every endpoint's connection pool: the proxy is stopping.
    pub fn close_pools(&self) {
        for host in self.by_name.values().flat_map(|c| c.hosts.iter()) {
            host.http_pool.close();
        }
    }
}

/// Waits for the cluster's health to be seen by a test or tool: the number of available hosts.
pub fn available_hosts(cluster: &UpstreamCluster) -> usize {
    let now = now_ms();
    cluster.hosts.iter().filter(|h| h.available(now)).count()
}

/// A deadline helper for connect attempts.
pub fn connect_timeout(cluster: &UpstreamCluster) -> Duration {
    if cluster.config.connect_timeout.is_zero() {
        Duration::from_secs(5)
    } else {
        cluster.config.connect_timeout
    }
}
