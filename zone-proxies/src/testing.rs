//! Building blocks for tests and benchmarks: hand-built configurations (the shapes the zone CP
//! generates, without xDS) and a data plane started in-process on ephemeral ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::*;
use crate::dataplane::{run_with, DataplaneError, DataplaneOptions};
use crate::stats::Stats;
use crate::workers::Workers;

/// A healthy endpoint of weight 1.
pub fn endpoint(address: SocketAddr) -> Endpoint {
    Endpoint {
        address: EndpointAddress::Socket(address),
        weight: 1,
        health: EndpointHealth::Healthy,
        metadata: BTreeMap::new(),
    }
}

/// A load assignment with one locality per `(priority, endpoints)`.
pub fn assignment(cluster: &str, priorities: &[(u32, Vec<SocketAddr>)]) -> LoadAssignment {
    LoadAssignment {
        cluster_name: cluster.to_string(),
        localities: priorities
            .iter()
            .map(|(priority, addrs)| LocalityEndpoints {
                zone: format!("zone-{priority}"),
                priority: *priority,
                weight: None,
                endpoints: addrs.iter().copied().map(endpoint).collect(),
            })
            .collect(),
        overprovisioning_factor: 140,
    }
}

/// A round-robin cluster with endpoints from EDS under its own name.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        discovery: Discovery::Eds(name.to_string()),
        lb_policy: LbPolicy::RoundRobin,
        connect_timeout: Duration::from_secs(1),
        circuit_breakers: CircuitBreakers::default(),
        outlier_detection: None,
        health_checks: Vec::new(),
        tls: None,
        tls_by_metadata: Vec::new(),
        protocol: UpstreamProtocol::Downstream,
        idle_timeout: None,
    }
}

/// A round-robin cluster with the given endpoints inline, priority 0.
pub fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> Cluster {
    Cluster {
        discovery: Discovery::Static(Arc::new(assignment(name, &[(0, endpoints.to_vec())]))),
        ..eds_cluster(name)
    }
}

pub fn weighted(clusters: &[(&str, u32)]) -> Vec<WeightedCluster> {
    clusters
        .iter()
        .map(|(name, weight)| WeightedCluster {
            name: name.to_string(),
            weight: *weight,
        })
        .collect()
}

pub fn tcp_chain(name: &str, clusters: &[(&str, u32)]) -> FilterChain {
    FilterChain {
        name: name.to_string(),
        server_names: Vec::new(),
        tls: None,
        rbac: None,
        connection_rate_limit: None,
        handler: ChainHandler::Tcp(TcpProxy {
            stat_prefix: name.to_string(),
            clusters: weighted(clusters),
            idle_timeout: None,
            access_logs: Vec::new(),
        }),
    }
}

pub fn listener(name: &str, address: SocketAddr, chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: name.to_string(),
        address,
        inspect_tls: false,
        filter_chains: chains,
        default_chain: None,
    }
}

/// A route forwarding everything under `prefix` to the weighted clusters.
pub fn forward_route(name: &str, prefix: &str, clusters: &[(&str, u32)]) -> Route {
    Route {
        name: name.to_string(),
        matcher: RouteMatch {
            path: PathMatch::Prefix(prefix.to_string()),
            ..Default::default()
        },
        action: RouteAction::Forward(Forward {
            clusters: weighted(clusters),
            timeout: Some(Duration::from_secs(15)),
            idle_timeout: None,
            retry: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
        }),
        headers: HeaderRules::default(),
    }
}

/// A route table with one virtual host for any domain.
pub fn route_table(name: &str, routes: Vec<Route>) -> RouteTable {
    RouteTable {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "any".to_string(),
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn http_manager(name: &str, routes: RouteTable) -> HttpManager {
    HttpManager {
        stat_prefix: name.to_string(),
        routes: RouteSource::Inline(Arc::new(routes)),
        rbac: None,
        faults: Vec::new(),
        local_rate_limit: None,
        access_logs: Vec::new(),
        idle_timeout: None,
    }
}

pub fn http_chain(name: &str, manager: HttpManager) -> FilterChain {
    FilterChain {
        name: name.to_string(),
        server_names: Vec::new(),
        tls: None,
        rbac: None,
        connection_rate_limit: None,
        handler: ChainHandler::Http(manager),
    }
}

/// Adds resources to a configuration by name.
pub trait ConfigExt {
    fn with_listener(self, l: Listener) -> Self;
    fn with_cluster(self, c: Cluster) -> Self;
    fn with_endpoints(self, a: LoadAssignment) -> Self;
    fn with_secret(self, name: &str, s: Secret) -> Self;
}

impl ConfigExt for ProxyConfig {
    fn with_listener(mut self, l: Listener) -> Self {
        self.listeners.insert(l.name.clone(), Arc::new(l));
        self
    }
    fn with_cluster(mut self, c: Cluster) -> Self {
        self.clusters.insert(c.name.clone(), Arc::new(c));
        self
    }
    fn with_endpoints(mut self, a: LoadAssignment) -> Self {
        self.endpoints.insert(a.cluster_name.clone(), Arc::new(a));
        self
    }
    fn with_secret(mut self, name: &str, s: Secret) -> Self {
        self.secrets.insert(name.to_string(), Arc::new(s));
        self
    }
}

/// A data plane running in this process.
pub struct RunningDataplane {
    pub config: watch::Sender<Arc<ProxyConfig>>,
    pub stats: Arc<Stats>,
    bound: watch::Receiver<BTreeMap<String, SocketAddr>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DataplaneError>>,
}

impl std::fmt::Debug for RunningDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningDataplane")
            .field("bound", &*self.bound.borrow())
            .finish()
    }
}

impl RunningDataplane {
    pub fn start(config: ProxyConfig) -> RunningDataplane {
        RunningDataplane::start_with_drain(config, Duration::from_secs(5))
    }

    pub fn start_with_drain(config: ProxyConfig, drain_timeout: Duration) -> RunningDataplane {
        RunningDataplane::start_with(config, drain_timeout, None)
    }

    /// Connections served on `workers`' threads, as `zone-proxy run` serves them.
    pub fn start_on_workers(config: ProxyConfig, workers: Arc<Workers>) -> RunningDataplane {
        RunningDataplane::start_with(config, Duration::from_secs(5), Some(workers))
    }

    fn start_with(
        config: ProxyConfig,
        drain_timeout: Duration,
        workers: Option<Arc<Workers>>,
    ) -> RunningDataplane {
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let (bound_tx, bound) = watch::channel(BTreeMap::new());
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let stats = Stats::new();
        let options = DataplaneOptions {
            drain_timeout,
            bound: Some(bound_tx),
            workers,
            ..Default::default()
        };
        let task = tokio::spawn(run_with(
            config_rx,
            stats.clone(),
            async move {
                let _ = shutdown_rx.await;
            },
            options,
        ));
        RunningDataplane {
            config: config_tx,
            stats,
            bound,
            shutdown: Some(shutdown_tx),
            task,
        }
    }

    /// The address listener `name` is bound to, once it is (5 s at most).
    pub async fn addr(&self, name: &str) -> SocketAddr {
        let mut bound = self.bound.clone();
        let found = tokio::time::timeout(
            Duration::from_secs(5),
            bound.wait_for(|b| b.contains_key(name)),
        )
        .await;
        match found {
            Ok(Ok(map)) => map[name],
            _ => panic!("listener {name:?} was not bound within 5 s"),
        }
    }

    /// Whether listener `name` is currently bound.
    pub fn is_bound(&self, name: &str) -> bool {
        self.bound.borrow().contains_key(name)
    }

    /// Waits until the bound listeners satisfy `check` (5 s at most).
    pub async fn wait_bound(&self, check: impl Fn(&BTreeMap<String, SocketAddr>) -> bool) {
        let mut bound = self.bound.clone();
        if tokio::time::timeout(Duration::from_secs(5), bound.wait_for(|b| check(b)))
            .await
            .is_err()
        {
            panic!(
                "listeners did not reach the expected state within 5 s: {:?}",
                *self.bound.borrow()
            );
        }
    }

    /// Applies a change to the running configuration.
    pub fn update(&self, change: impl FnOnce(&mut ProxyConfig)) {
        self.config.send_modify(|c| change(Arc::make_mut(c)));
    }

    /// Starts draining and waits for the data plane to finish.
    pub async fn stop(mut self) -> Result<(), DataplaneError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap_or(Ok(()))
    }

    /// Starts draining without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(self) -> Result<(), DataplaneError> {
        self.task.await.unwrap_or(Ok(()))
    }
}
