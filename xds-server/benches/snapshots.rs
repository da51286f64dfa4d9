//! xDS snapshots at zone scale (issue [3]): one zone holding 10,000 Dataplanes of 1,000 services
//! in mesh `default` (builtin mTLS), with 100 policies, all real parts: a SledStore in a temporary
//! directory, the real `Generator`, `SnapshotCache` and ADS server on loopback TCP.
//!
//! Phases, each printed as it finishes:
//! 1. ADS: 1,000 real state-of-the-world streams (one connection each, as Envoy opens them:
//!    wildcard LDS/CDS, then EDS/RDS/SDS by the names those name, every response ACKed) from a
//!    CHILD process (this binary re-executed with [`CLIENT_ENV`]), so this process's resident
//!    memory counts only the server: (VmRSS with the streams - VmRSS before) / 1,000, split into
//!    what the generator keeps per proxy (built first, through the cache) and what each stream
//!    adds. Then pushes:
//!    a Mesh-wide MeshTimeout change reaches every stream; the child counts responses until each
//!    stream has the new clusters and reports back over its stdout.
//! 2. Change -> ready without ADS: 1,000 proxies subscribed to a `SnapshotCache` following the
//!    store; one Mesh-wide policy update, timed from the store write until every receiver holds a
//!    new snapshot version.
//! 3. Cold build: a fresh `Generator` builds all 10,000 snapshots one after the other (as the
//!    cache does), issuing every certificate; then again with contexts invalidated but
//!    certificates kept, which isolates the issuance share.
//!
//! The ADS phase runs first, while the heap holds nothing freed by earlier bulk work, so the
//! memory delta is not hidden by reused free memory.
//!
//! Each Dataplane declares two outbounds and no transparent proxying, so its sidecar reaches two
//! services (`xds_server::reachable`). With [`TRANSPARENT_ENV`]`=1` every Dataplane has
//! transparent proxying instead and reaches all 1,000 services (Kuma's default on Kubernetes).
//! [`PHASES_ENV`] (a comma-separated subset of `ads,change,cold`) runs only some phases.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use mesh_api::{Resource, Spec};
use mesh_store::ResourceStore;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use xds_server::generator::Generator;
use xds_server::snapshot::{
    Snapshot, SnapshotSource, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE,
};
use xds_server::{DataplaneAuthenticator, ProxyId, SnapshotCache, XdsServer};

const MESH: &str = "default";
const ZONE: &str = "zone-1";
const SERVICES: usize = 1_000;
const PER_SERVICE: usize = 10;
/// Proxies connected over ADS and subscribed to the cache: instance 0 of every service.
const CONNECTED: usize = 1_000;
/// Policies selecting some proxies by service (the rest select the whole mesh), so proxies fall
/// into several policy fingerprints (several outbound bundles), as in a real mesh.
const SELECTIVE: usize = 5;
const PUSH_ROUNDS: usize = 5;
const CHANGE_ROUNDS: usize = 20;
/// Set in the child: the server's URL.
const CLIENT_ENV: &str = "MERIDIAN_BENCH_ADS_CLIENT";
/// Set in the child: a file of `<node id> <token>` lines.
const TOKENS_ENV: &str = "MERIDIAN_BENCH_ADS_TOKENS";
const WAIT: Duration = Duration::from_secs(300);
/// Set to `1`: every Dataplane has transparent proxying (reaches every service).
const TRANSPARENT_ENV: &str = "MERIDIAN_BENCH_TRANSPARENT";
/// The phases to run (`ads,change,cold`, the default).
const PHASES_ENV: &str = "MERIDIAN_BENCH_PHASES";

fn transparent() -> bool {
    std::env::var(TRANSPARENT_ENV).is_ok_and(|v| v == "1")
}

fn phase(name: &str) -> bool {
    std::env::var(PHASES_ENV).map_or(true, |phases| phases.split(',').any(|p| p.trim() == name))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(url) = std::env::var(CLIENT_ENV) {
        let tokens = std::env::var(TOKENS_ENV).expect("MERIDIAN_BENCH_ADS_TOKENS in the child");
        runtime.block_on(client::run(url, tokens));
    } else {
        runtime.block_on(server_main());
    }
}

fn service(k: usize) -> String {
    format!("svc-{k}")
}

fn is_http(k: usize) -> bool {
    k.is_multiple_of(2)
}

fn dataplane_name(k: usize, i: usize) -> String {
    format!("svc-{k}-{i}")
}

fn connected_ids() -> Vec<ProxyId> {
    (0..CONNECTED)
        .map(|k| ProxyId::dataplane(MESH, &dataplane_name(k % SERVICES, 0)))
        .collect()
}

const MESH_YAML: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n";

/// Instance `i` of service `k`: one inbound (http for even services, tcp for odd ones) and two
/// outbounds, one to an http service and one to a tcp service; transparent proxying when
/// `transparent`.
fn dataplane_yaml(k: usize, i: usize, transparent: bool) -> String {
    let n = k * PER_SERVICE + i + 1;
    let protocol = if is_http(k) { "http" } else { "tcp" };
    let (a, b) = ((k + 1) % SERVICES, (k + 2) % SERVICES);
    let tp = if transparent {
        "  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n"
    } else {
        ""
    };
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: 10.1.{hi}.{lo}\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: {svc}\n        kuma.io/protocol: {protocol}\n  outbound:\n    - port: 10001\n      tags:\n        kuma.io/service: {sa}\n    - port: 10002\n      tags:\n        kuma.io/service: {sb}\n{tp}",
        name = dataplane_name(k, i),
        hi = n / 256,
        lo = n % 256,
        svc = service(k),
        sa = service(a),
        sb = service(b),
    )
}

/// The Mesh-wide MeshTimeout the change phases update (`connect` seconds).
fn mesh_timeout_yaml(connect: u32) -> String {
    format!("type: MeshTimeout\nname: timeout-mesh\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: Mesh}}\n      default: {{connectionTimeout: {connect}s, idleTimeout: 1h}}\n")
}

/// 100 policies: MeshTrafficPermission 5, MeshTimeout 25, MeshRetry 20, MeshCircuitBreaker 20,
/// MeshHealthCheck 25, MeshHTTPRoute 5. Each kind has a Mesh-wide entry; the others target one
/// service (`to`), and the first [`SELECTIVE`] MeshTimeouts select that service's proxies only.
fn policies_yaml() -> Vec<String> {
    let mut docs = vec![mesh_timeout_yaml(5)];
    let top = |j: usize| {
        if j < SELECTIVE {
            format!("{{kind: MeshService, name: {}}}", service(j))
        } else {
            "{kind: Mesh}".to_string()
        }
    };
    docs.push("type: MeshTrafficPermission\nname: allow-all\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n".into());
    for j in 1..5 {
        docs.push(format!("type: MeshTrafficPermission\nname: deny-{j}\nmesh: default\nspec:\n  targetRef: {{kind: MeshService, name: {s}}}\n  from:\n    - targetRef: {{kind: MeshService, name: {o}}}\n      default: {{action: Deny}}\n", s = service(10 * j), o = service(10 * j + 3)));
    }
    for j in 0..24 {
        docs.push(format!("type: MeshTimeout\nname: timeout-{j}\nmesh: default\nspec:\n  targetRef: {top}\n  to:\n    - targetRef: {{kind: MeshService, name: {s}}}\n      default: {{connectionTimeout: 2s, http: {{requestTimeout: 9s}}}}\n", top = top(j), s = service(j * 37 % SERVICES)));
    }
    docs.push("type: MeshRetry\nname: retry-mesh\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    - targetRef: {kind: Mesh}\n      default: {tcp: {maxConnectAttempt: 3}, http: {numRetries: 2}}\n".into());
    for j in 0..19 {
        let k = j * 41 % SERVICES;
        let default = if is_http(k) {
            "{http: {numRetries: 4, perTryTimeout: 2s}}"
        } else {
            "{tcp: {maxConnectAttempt: 5}}"
        };
        docs.push(format!("type: MeshRetry\nname: retry-{j}\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: MeshService, name: {s}}}\n      default: {default}\n", s = service(k)));
    }
    docs.push("type: MeshCircuitBreaker\nname: cb-mesh\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    - targetRef: {kind: Mesh}\n      default: {connectionLimits: {maxConnections: 1024, maxPendingRequests: 1024}, outlierDetection: {detectors: {totalFailures: {consecutive: 10}}}}\n".into());
    for j in 0..19 {
        docs.push(format!("type: MeshCircuitBreaker\nname: cb-{j}\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: MeshService, name: {s}}}\n      default: {{connectionLimits: {{maxConnections: 64}}}}\n", s = service(j * 43 % SERVICES)));
    }
    docs.push("type: MeshHealthCheck\nname: hc-mesh\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n    - targetRef: {kind: Mesh}\n      default: {interval: 10s, timeout: 2s, unhealthyThreshold: 3, healthyThreshold: 1, http: {path: /health}}\n".into());
    for j in 0..24 {
        docs.push(format!("type: MeshHealthCheck\nname: hc-{j}\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: MeshService, name: {s}}}\n      default: {{interval: 5s, timeout: 1s, unhealthyThreshold: 2, healthyThreshold: 2, tcp: {{}}}}\n", s = service(j * 47 % SERVICES)));
    }
    for j in 0..5 {
        let k = 2 * (j * 53 % (SERVICES / 2));
        docs.push(format!("type: MeshHTTPRoute\nname: route-{j}\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: MeshService, name: {s}}}\n      rules: [{{matches: [{{path: {{type: PathPrefix, value: /v2}}}}], default: {{backendRefs: [{{kind: MeshService, name: {v2}}}]}}}}]\n", s = service(k), v2 = service((k + 2) % SERVICES)));
    }
    assert_eq!(docs.len(), 100, "the bench promises 100 policies");
    docs
}

/// Parses one document the way `meshctl apply` does, and validates it.
fn parse(text: &str) -> Resource {
    let mut parsed = mesh_api::parse_documents(text);
    assert_eq!(parsed.len(), 1, "one document expected in {text}");
    let resource = match parsed.remove(0) {
        Ok(p) => p.resource,
        Err(e) => panic!("bench resource does not parse: {e}\n{text}"),
    };
    if let Err(e) = mesh_api::validate_resource(&resource) {
        panic!("bench resource is invalid: {e}\n{text}");
    }
    resource
}

/// Fills `store`; returns the Mesh-wide MeshTimeout as stored (the one the phases update).
async fn populate(store: &Arc<dyn ResourceStore>) -> Resource {
    let started = Instant::now();
    let mesh = parse(MESH_YAML);
    let Spec::Mesh(spec) = &mesh.spec else {
        unreachable!("MESH_YAML is a Mesh")
    };
    let backend = spec.enabled_mtls_backend().expect("builtin mTLS").clone();
    let ca = tokio::task::spawn_blocking(move || mesh_ca::MeshCa::generate(MESH, &backend))
        .await
        .unwrap()
        .expect("mesh CA");
    store.create(mesh).await.unwrap();
    store.create(ca.key_secret()).await.unwrap();
    store.create(ca.cert_secret()).await.unwrap();
    let mut docs: Vec<String> = policies_yaml();
    let tp = transparent();
    docs.extend(
        (0..SERVICES).flat_map(|k| (0..PER_SERVICE).map(move |i| dataplane_yaml(k, i, tp))),
    );
    let count = docs.len();
    // 16 writers share the store's flushes (group commit).
    let mut created = futures::stream::iter(docs)
        .map(|text| {
            let store = store.clone();
            async move { store.create(parse(&text)).await.unwrap() }
        })
        .buffer_unordered(16);
    let mut timeout = None;
    while let Some(r) = created.next().await {
        if r.meta.name == "timeout-mesh" {
            timeout = Some(r);
        }
    }
    println!(
        "populated: mesh + CA + {count} resources ({} Dataplanes, 100 policies; each sidecar reaches {}) in {:.1} s",
        SERVICES * PER_SERVICE,
        if tp { "every service" } else { "its 2 outbounds' services" },
        started.elapsed().as_secs_f64()
    );
    timeout.expect("timeout-mesh created")
}

/// Replaces the Mesh-wide MeshTimeout with one of `connect` seconds.
async fn change_timeout(store: &Arc<dyn ResourceStore>, current: &mut Resource, connect: u32) {
    let mut next = parse(&mesh_timeout_yaml(connect));
    next.meta.version = current.meta.version;
    *current = store.update(next).await.unwrap();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`), so that VmRSS counts
/// live memory rather than what the allocator keeps around from transient buffers (each push
/// encodes half a megabyte per stream).
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn encoded_size(snapshot: &Snapshot) -> usize {
    [
        LISTENER_TYPE,
        CLUSTER_TYPE,
        ENDPOINT_TYPE,
        ROUTE_TYPE,
        SECRET_TYPE,
    ]
    .iter()
    .flat_map(|t| snapshot.of_type(t))
    .map(|(_, r)| r.resource.value.len())
    .sum()
}

fn resource_count(snapshot: &Snapshot) -> usize {
    [
        LISTENER_TYPE,
        CLUSTER_TYPE,
        ENDPOINT_TYPE,
        ROUTE_TYPE,
        SECRET_TYPE,
    ]
    .iter()
    .map(|t| snapshot.of_type(t).count())
    .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn server_main() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> =
        Arc::new(mesh_store::SledStore::open(dir.path().join("store")).unwrap());
    let mut timeout = populate(&store).await;
    let mut connect = 5;

    if phase("ads") {
        ads_phase(&store, dir.path(), &mut timeout, &mut connect).await;
    }
    if phase("change") {
        change_phase(&store, &mut timeout, &mut connect).await;
    }
    if phase("cold") {
        cold_build(&store).await;
    }
}

async fn ads_phase(
    store: &Arc<dyn ResourceStore>,
    dir: &std::path::Path,
    timeout: &mut Resource,
    connect: &mut u32,
) {
    let auth = DataplaneAuthenticator::new(kds::token_keys::StoreKeys::new(
        store.clone(),
        kds::token_keys::KeyOwnership::Owned,
    ));
    let generator = Arc::new(Generator::new(store.clone(), Some(ZONE.to_string())));
    let cache = Arc::new(SnapshotCache::new(generator.clone()));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let cache_run = tokio::spawn(cache.clone().run(store.clone(), stop_rx.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut stop_serve = stop_rx.clone();
    let served = tokio::spawn(xds_server::serve(
        listener,
        XdsServer::new(cache.clone(), auth.clone()),
        async move {
            let _ = stop_serve.wait_for(|s| *s).await;
        },
    ));

    // The mesh context is shared by every proxy: build it before the baseline (through proxies
    // that will not connect: instance 1 of the services whose policies give them their own
    // bundle, and of a few others). Outbound bundles are shared by proxies with the same policies
    // and reachable services: with transparent proxying these few are all of them; with two
    // outbounds each, every connected proxy (instance 0 of its service) has its own bundle, built
    // when it connects, and it counts in the per-proxy memory.
    let mut sizes = Vec::new();
    for k in 0..20 {
        let id = ProxyId::dataplane(MESH, &dataplane_name(k, 1));
        let snapshot = cache.snapshot_of(&id).await.unwrap();
        let own: usize = snapshot
            .resources
            .values()
            .flat_map(|r| r.values())
            .map(|r| r.resource.value.len())
            .sum();
        sizes.push((encoded_size(&snapshot), resource_count(&snapshot), own));
    }
    let (size, count, own) = sizes[SELECTIVE + 1];
    println!(
        "one proxy's snapshot: {count} resources, {size} bytes encoded, of which {own} bytes its own (the rest shared)"
    );

    let tokens_path = dir.join("tokens");
    let mut tokens = String::new();
    for id in connected_ids() {
        let token = auth.issue(&id, Duration::from_secs(3600)).await.unwrap();
        tokens.push_str(&format!("{MESH}/{} {token}\n", id.name));
    }
    std::fs::write(&tokens_path, tokens).unwrap();

    // What the generator keeps per proxy (its certificate; its bundle, unless shared) is
    // measured apart from what its stream costs: build the connecting proxies' configuration
    // first, through the cache as the ADS server will.
    trim_heap();
    let before_config = rss_kib();
    for id in connected_ids() {
        cache.snapshot_of(&id).await.unwrap();
    }
    trim_heap();
    let before = rss_kib();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_ENV, &url)
        .env(TOKENS_ENV, &tokens_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut expect = async |prefix: &str| -> Vec<String> {
        let line = tokio::time::timeout(WAIT, from_child.next_line())
            .await
            .unwrap_or_else(|_| panic!("the ADS client did not say {prefix:?} in time"))
            .unwrap()
            .unwrap_or_else(|| panic!("the ADS client exited before saying {prefix:?}"));
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        assert_eq!(words.first().map(String::as_str), Some(prefix), "{line}");
        words
    };
    let connecting = Instant::now();
    let ready = expect("ready").await;
    let connected_in = connecting.elapsed();
    let after_raw = rss_kib();
    trim_heap();
    let after = rss_kib();
    let (bytes, responses): (u64, u64) = (ready[1].parse().unwrap(), ready[2].parse().unwrap());
    println!(
        "ADS: {CONNECTED} streams connected, every type received and ACKed in {:.2} s ({responses} responses, {:.0} bytes per proxy)",
        connected_in.as_secs_f64(),
        bytes as f64 / CONNECTED as f64
    );
    let per_proxy = |kib: u64| kib as f64 / CONNECTED as f64;
    println!(
        "memory: VmRSS {:.1} MiB before, {:.1} MiB with the proxies' configuration built, {:.1} MiB with {CONNECTED} streams ({:.1} MiB before trimming the heap): {:.1} KiB per connected proxy ({:.1} KiB untrimmed), of which {:.1} KiB its configuration (certificate, bundle unless shared) and {:.1} KiB its stream (snapshot, stream state, transport)",
        before_config as f64 / 1024.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after_raw as f64 / 1024.0,
        per_proxy(after.saturating_sub(before_config)),
        per_proxy(after_raw.saturating_sub(before_config)),
        per_proxy(before.saturating_sub(before_config)),
        per_proxy(after.saturating_sub(before)),
    );

    let mut rates = Vec::new();
    for round in 0..PUSH_ROUNDS {
        to_child.write_all(b"go\n").await.unwrap();
        to_child.flush().await.unwrap();
        expect("armed").await;
        *connect += 1;
        change_timeout(store, timeout, *connect).await;
        let pushed = expect("pushed").await;
        let responses: u64 = pushed[1].parse().unwrap();
        let bytes: u64 = pushed[2].parse().unwrap();
        let secs: f64 = pushed[3].parse().unwrap();
        let total: f64 = pushed[4].parse().unwrap();
        let rate = responses as f64 / secs;
        println!(
            "push round {round}: {responses} responses ({:.0} bytes each) to {CONNECTED} streams in {} from the first to the last, {} from the store write: {rate:.0} pushes/s",
            bytes as f64 / responses as f64,
            ms(Duration::from_secs_f64(secs)),
            ms(Duration::from_secs_f64(total))
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "push rate, median of {PUSH_ROUNDS}: {:.0} pushes/s",
        rates[rates.len() / 2]
    );
    drop(to_child);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "ADS client: {status}");
    stop.send(true).unwrap();
    let _ = cache_run.await;
    let _ = served.await;
}

async fn change_phase(store: &Arc<dyn ResourceStore>, timeout: &mut Resource, connect: &mut u32) {
    let generator = Arc::new(Generator::new(store.clone(), Some(ZONE.to_string())));
    let cache = Arc::new(SnapshotCache::new(generator));
    let mut receivers = Vec::with_capacity(CONNECTED);
    for id in connected_ids() {
        receivers.push(cache.subscribe(&id).await.unwrap());
    }
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(cache.clone().run(store.clone(), stop_rx));
    let mut times = Vec::new();
    for _ in 0..CHANGE_ROUNDS {
        for rx in &mut receivers {
            rx.borrow_and_update();
        }
        *connect += 1;
        let started = Instant::now();
        change_timeout(store, timeout, *connect).await;
        for rx in &mut receivers {
            tokio::time::timeout(WAIT, rx.changed())
                .await
                .expect("new snapshot in time")
                .unwrap();
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "change -> ready ({CONNECTED} subscribed proxies, {CHANGE_ROUNDS} changes): p50 {}, p99 {}, max {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
    stop.send(true).unwrap();
    let _ = run.await;
}

async fn cold_build(store: &Arc<dyn ResourceStore>) {
    let generator = Generator::new(store.clone(), Some(ZONE.to_string()));
    let ids: Vec<ProxyId> = (0..SERVICES)
        .flat_map(|k| {
            (0..PER_SERVICE).map(move |i| ProxyId::dataplane(MESH, &dataplane_name(k, i)))
        })
        .collect();
    let pass = async |label: &str| {
        let started = Instant::now();
        let (mut bytes, mut resources) = (0usize, 0usize);
        for id in &ids {
            let snapshot = generator.snapshot(id).await.unwrap();
            bytes += encoded_size(&snapshot);
            resources += resource_count(&snapshot);
        }
        let took = started.elapsed();
        println!(
            "cold build, {label}: {} snapshots in {:.2} s ({:.0} µs each; {:.0} resources, {:.0} bytes encoded per snapshot)",
            ids.len(),
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / ids.len() as f64,
            resources as f64 / ids.len() as f64,
            bytes as f64 / ids.len() as f64,
        );
        took
    };
    let cold = pass("issuing every certificate").await;
    generator.invalidate(None, true);
    let warm = pass("certificates already issued").await;
    println!(
        "certificate issuance share of the cold build: {:.2} s ({:.0}%)",
        (cold.saturating_sub(warm)).as_secs_f64(),
        100.0 * cold.saturating_sub(warm).as_secs_f64() / cold.as_secs_f64()
    );
}

/// The child: 1,000 ADS streams standing in for Envoy sidecars.
mod client {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager, HttpConnectionManager,
    };
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use prost::Message as _;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    enum Event {
        Response {
            stream: usize,
            type_url: String,
            version: String,
            bytes: usize,
        },
        /// Every type answered, every subscription change answered.
        Settled(usize),
    }

    pub async fn run(url: String, tokens: String) {
        let tokens = std::fs::read_to_string(&tokens).expect("tokens file");
        let (events, mut rx) = mpsc::unbounded_channel();
        let cache: Arc<Derived> = Arc::default();
        // Streams being set up at once: a connect storm of 1,000 resets connections on loopback.
        let connecting = Arc::new(tokio::sync::Semaphore::new(64));
        for (stream, line) in tokens.lines().enumerate() {
            let (node, token) = line.split_once(' ').expect("`<node id> <token>` lines");
            let (url, node, token, events, cache) = (
                url.clone(),
                node.to_string(),
                token.to_string(),
                events.clone(),
                cache.clone(),
            );
            let connecting = connecting.clone();
            tokio::spawn(async move {
                // Like Envoy, a stream whose connection fails reconnects (with a short backoff).
                for attempt in 1.. {
                    let result =
                        proxy(stream, &url, &node, &token, &events, &cache, &connecting).await;
                    match result {
                        Ok(()) => return,
                        Err(e) if attempt < 5 => {
                            eprintln!("ADS stream {node}: {e}; reconnecting");
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                        Err(e) => {
                            eprintln!("ADS stream {node}: {e}; giving up");
                            std::process::exit(2);
                        }
                    }
                }
            });
        }
        let streams = tokens.lines().count();
        drop(events);
        let mut out = std::io::stdout();
        let mut settled = BTreeSet::new();
        let (mut bytes, mut responses) = (0u64, 0u64);
        let mut cds: HashMap<usize, String> = HashMap::new();
        while settled.len() < streams {
            match rx.recv().await.expect("streams alive") {
                Event::Response {
                    stream,
                    type_url,
                    version,
                    bytes: b,
                } => {
                    bytes += b as u64;
                    responses += 1;
                    if type_url == CLUSTER_TYPE {
                        cds.insert(stream, version);
                    }
                }
                Event::Settled(stream) => {
                    settled.insert(stream);
                    if settled.len() % 100 == 0 {
                        eprintln!("ADS client: {} streams settled", settled.len());
                    }
                }
            }
        }
        say(&mut out, &format!("ready {bytes} {responses}"));
        let mut commands = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(command)) = commands.next_line().await {
            assert_eq!(command, "go");
            let baseline = cds.clone();
            say(&mut out, "armed");
            let armed = Instant::now();
            let mut started = None;
            let mut done = BTreeSet::new();
            let (mut bytes, mut responses) = (0u64, 0u64);
            while done.len() < streams {
                if let Event::Response {
                    stream,
                    type_url,
                    version,
                    bytes: b,
                } = rx.recv().await.expect("streams alive")
                {
                    started.get_or_insert_with(Instant::now);
                    bytes += b as u64;
                    responses += 1;
                    if type_url == CLUSTER_TYPE {
                        if baseline.get(&stream) != Some(&version) {
                            done.insert(stream);
                        }
                        cds.insert(stream, version);
                    }
                }
            }
            // From the first push received to the last: the server's push rate.
            let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            // From just before the store write to the last stream having the change.
            let total = armed.elapsed().as_secs_f64();
            say(
                &mut out,
                &format!("pushed {responses} {bytes} {secs} {total}"),
            );
        }
    }

    fn say(out: &mut std::io::Stdout, line: &str) {
        use std::io::Write as _;
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }

    fn node(id: &str) -> Option<Node> {
        Some(Node {
            id: id.to_string(),
            ..Node::default()
        })
    }

    /// The RDS names an Envoy would ask for: its HTTP connection managers' `rds` names.
    fn route_names(response: &DiscoveryResponse) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for any in &response.resources {
            let listener = Listener::decode(any.value.as_slice()).expect("a Listener");
            for chain in &listener.filter_chains {
                for filter in &chain.filters {
                    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
                    let Some(ConfigType::TypedConfig(config)) = &filter.config_type else {
                        continue;
                    };
                    if !config.type_url.ends_with("HttpConnectionManager") {
                        continue;
                    }
                    let hcm = HttpConnectionManager::decode(config.value.as_slice())
                        .expect("an HttpConnectionManager");
                    if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                        hcm.route_specifier
                    {
                        names.insert(rds.route_config_name);
                    }
                }
            }
        }
        names
    }

    /// Names derived from a response, by its version: proxies sharing a configuration share the
    /// work of decoding it (the client shares two cores with the server).
    type Derived = std::sync::Mutex<HashMap<(String, String), BTreeSet<String>>>;

    fn derived(
        cache: &Derived,
        response: &DiscoveryResponse,
        derive: fn(&DiscoveryResponse) -> BTreeSet<String>,
    ) -> BTreeSet<String> {
        let key = (response.type_url.clone(), response.version_info.clone());
        if let Some(names) = cache.lock().unwrap().get(&key) {
            return names.clone();
        }
        let names = derive(response);
        cache.lock().unwrap().insert(key, names.clone());
        names
    }

    /// The EDS names an Envoy would ask for: its EDS clusters' names.
    fn endpoint_names(response: &DiscoveryResponse) -> BTreeSet<String> {
        response
            .resources
            .iter()
            .map(|any| Cluster::decode(any.value.as_slice()).expect("a Cluster"))
            .filter(|c| {
                c.cluster_discovery_type
                    == Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::Eds as i32,
                    ))
            })
            .map(|c| {
                c.eds_cluster_config
                    .map(|e| e.service_name)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(c.name)
            })
            .collect()
    }

    #[derive(Default)]
    struct TypeState {
        names: Vec<String>,
        nonce: String,
        answered: bool,
        /// A request (first, or with new names) awaits its response.
        awaiting: bool,
    }

    async fn proxy(
        stream: usize,
        url: &str,
        node_id: &str,
        token: &str,
        events: &mpsc::UnboundedSender<Event>,
        cache: &Derived,
        connecting: &tokio::sync::Semaphore,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut permit = Some(connecting.acquire().await?);
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string()).await?;
        let (tx, rx) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let mut types: HashMap<&'static str, TypeState> = HashMap::new();
        // Envoy starts with CDS and LDS by wildcard; SDS names come from the transport sockets
        // (the mesh's identity and CA secrets).
        let secrets = vec![
            xds_server::generator::envoy::identity_secret_name(MESH),
            xds_server::generator::envoy::ca_secret_name(MESH),
        ];
        for (type_url, names) in [
            (CLUSTER_TYPE, vec![]),
            (LISTENER_TYPE, vec![]),
            (SECRET_TYPE, secrets),
        ] {
            tx.send(DiscoveryRequest {
                node: node(node_id),
                type_url: type_url.to_string(),
                resource_names: names.clone(),
                ..DiscoveryRequest::default()
            })
            .await?;
            types.insert(
                type_url,
                TypeState {
                    names,
                    awaiting: true,
                    ..TypeState::default()
                },
            );
        }
        let mut responses = client
            .stream_aggregated_resources(request)
            .await?
            .into_inner();
        let mut settled = false;
        while let Some(response) = responses.message().await? {
            let type_url: &'static str = [
                LISTENER_TYPE,
                CLUSTER_TYPE,
                ENDPOINT_TYPE,
                ROUTE_TYPE,
                SECRET_TYPE,
            ]
            .into_iter()
            .find(|t| *t == response.type_url)
            .ok_or("unexpected type")?;
            let _ = events.send(Event::Response {
                stream,
                type_url: type_url.to_string(),
                version: response.version_info.clone(),
                bytes: response.encoded_len(),
            });
            let state = types.entry(type_url).or_default();
            state.nonce = response.nonce.clone();
            state.answered = true;
            state.awaiting = false;
            tx.send(DiscoveryRequest {
                node: node(node_id),
                version_info: response.version_info.clone(),
                resource_names: state.names.clone(),
                type_url: type_url.to_string(),
                response_nonce: response.nonce.clone(),
                ..DiscoveryRequest::default()
            })
            .await?;
            // What this response makes the proxy ask for next.
            let follow = match type_url {
                LISTENER_TYPE => Some((ROUTE_TYPE, derived(cache, &response, route_names))),
                CLUSTER_TYPE => Some((ENDPOINT_TYPE, derived(cache, &response, endpoint_names))),
                _ => None,
            };
            if let Some((next, names)) = follow {
                let names: Vec<String> = names.into_iter().collect();
                let state = types.entry(next).or_default();
                if state.names != names && (state.answered || !names.is_empty()) {
                    state.names = names.clone();
                    state.awaiting = true;
                    tx.send(DiscoveryRequest {
                        node: node(node_id),
                        resource_names: names,
                        type_url: next.to_string(),
                        response_nonce: state.nonce.clone(),
                        ..DiscoveryRequest::default()
                    })
                    .await?;
                }
            }
            let all_answered = [LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE]
                .iter()
                .all(|t| types.get(t).is_some_and(|s| s.answered))
                && types.values().all(|s| !s.awaiting);
            if !settled && all_answered {
                settled = true;
                permit.take();
                let _ = events.send(Event::Settled(stream));
            }
        }
        Ok(())
    }
}
