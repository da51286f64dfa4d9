//! End-to-end KDS: a global and several zones in one process, each with a real sled store in a
//! temporary directory, talking real gRPC over 127.0.0.1. Every wait is a condition with a
//! deadline (`test_support::eventually`), never a fixed sleep.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use kds::pb::kds_sync::kds_sync_client::KdsSyncClient;
use kds::pb::{Any, DeltaDiscoveryResponse, EnvoyResource, KdsResource, RESOURCE_TYPE_URL};
use kds::{
    AllowAllZonesForTests, Backoff, ClientStatus, KdsClientConfig, KdsServer, KdsTuning,
    ZoneStatusRegistry,
};
use mesh_api::{Resource, ResourceKey, ResourceType};
use mesh_store::{ResourceStore, SledStore};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

fn tuning() -> KdsTuning {
    KdsTuning {
        heartbeat_interval: Duration::from_millis(200),
        watchdog_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        nack_backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.1,
        },
        ..KdsTuning::default()
    }
}

fn open_store(dir: &tempfile::TempDir, name: &str) -> Arc<SledStore> {
    Arc::new(SledStore::open(dir.path().join(name)).expect("open store"))
}

struct Global {
    store: Arc<SledStore>,
    status: ZoneStatusRegistry,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Global {
    async fn start(store: Arc<SledStore>, tuning: KdsTuning, addr: Option<SocketAddr>) -> Global {
        Global::start_as(store, tuning, addr, kds::version::CURRENT).await
    }

    /// A global stating (and checking zones against) `version`.
    async fn start_as(
        store: Arc<SledStore>,
        tuning: KdsTuning,
        addr: Option<SocketAddr>,
        version: &str,
    ) -> Global {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let status = ZoneStatusRegistry::new();
        let server = KdsServer::with_tuning(
            store.clone(),
            Arc::new(AllowAllZonesForTests),
            tuning,
            status.clone(),
        )
        .with_version(version)
        .expect("a valid version");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            kds::serve(listener, None, server, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Global {
            store,
            status,
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the server stops")
            .expect("server task");
    }

    fn zone(&self, zone: &str) -> kds::ZoneStatus {
        self.status.zone(zone).expect("zone known")
    }
}

struct Zone {
    name: String,
    store: Arc<SledStore>,
    status: ClientStatus,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Zone {
    fn start(name: &str, store: Arc<SledStore>, address: String, tuning: KdsTuning) -> Zone {
        Zone::start_as(name, store, address, tuning, kds::version::CURRENT)
    }

    /// A zone reporting `version` (the client config's, as a zone of that release would).
    fn start_as(
        name: &str,
        store: Arc<SledStore>,
        address: String,
        tuning: KdsTuning,
        version: &str,
    ) -> Zone {
        let mut config = KdsClientConfig::new(name, address, store.clone());
        config.tuning = tuning;
        config.version = version.to_owned();
        config.backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.2,
        };
        let status = config.status.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            kds::run(config, async {
                let _ = stopped.await;
            })
            .await
            .expect("kds client");
        });
        Zone {
            name: name.to_owned(),
            store,
            status,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> Arc<SledStore> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the client stops")
            .expect("client task");
        self.store
    }
}

fn parse(yaml: &str) -> Resource {
    let mut docs = mesh_api::parse_documents(yaml);
    let r = docs.remove(0).expect("parses").resource;
    mesh_api::validate_resource(&r).expect("valid");
    r
}

fn timeout_policy(name: &str, idle: &str) -> Resource {
    parse(&format!(
        "type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: {idle}\n"
    ))
}

fn dataplane(name: &str, address: &str) -> Resource {
    parse(&format!(
        "type: Dataplane\nname: {name}\nmesh: default\nnetworking:\n  address: {address}\n  inbound:\n    - port: 80\n      tags:\n        kuma.io/service: web\n"
    ))
}

fn ingress(name: &str) -> Resource {
    parse(&format!(
        "type: ZoneIngress\nname: {name}\nnetworking:\n  address: 10.0.0.2\n  port: 10001\n  advertisedAddress: 192.0.2.1\n  advertisedPort: 10001\navailableServices:\n  - tags:\n      kuma.io/service: web\n"
    ))
}

fn mesh(name: &str) -> Resource {
    parse(&format!("type: Mesh\nname: {name}\n"))
}

fn key(rtype: ResourceType, mesh: Option<&str>, name: &str) -> ResourceKey {
    ResourceKey::new(rtype, mesh, name)
}

fn label<'a>(r: &'a Resource, k: &str) -> Option<&'a str> {
    r.meta.labels.get(k).map(String::as_str)
}

/// Waits until `check` holds for what `store` holds under `key`.
async fn wait_for(
    what: &str,
    store: &Arc<SledStore>,
    key: &ResourceKey,
    check: impl Fn(Option<&Resource>) -> bool,
) -> anyhow::Result<()> {
    test_support::eventually(what, DEADLINE, || async {
        let got = store.get(key).await.ok()?;
        check(got.as_ref()).then_some(())
    })
    .await
}

async fn update(store: &Arc<SledStore>, mut resource: Resource) -> Resource {
    let current = store.get(&resource.key()).await.unwrap().expect("exists");
    resource.meta.version = current.meta.version;
    store.update(resource).await.unwrap()
}

async fn wait_online(global: &Global, zone: &str) -> anyhow::Result<()> {
    test_support::eventually(&format!("{zone} online"), DEADLINE, || async {
        global.status.zone(zone).filter(|s| s.online).map(|_| ())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_create_update_delete_reaches_every_zone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    global.store.create(mesh("default")).await?;
    let zones: Vec<Zone> = ["zone-1", "zone-2", "zone-3"]
        .iter()
        .map(|z| Zone::start(z, open_store(&dir, z), global.url(), tuning()))
        .collect();
    let mesh_key = key(ResourceType::Mesh, None, "default");
    let pkey = key(ResourceType::MeshTimeout, Some("default"), "t1");
    for zone in &zones {
        wait_for("mesh at zone", &zone.store, &mesh_key, |r| {
            r.is_some_and(|r| label(r, mesh_api::ORIGIN_LABEL) == Some("global"))
        })
        .await?;
    }

    global.store.create(timeout_policy("t1", "5s")).await?;
    for zone in &zones {
        wait_for("created policy", &zone.store, &pkey, |r| {
            r.is_some_and(|r| label(r, mesh_api::ORIGIN_LABEL) == Some("global"))
        })
        .await?;
    }
    let updated = update(&global.store, timeout_policy("t1", "7s")).await;
    let want = updated.spec.clone();
    for zone in &zones {
        wait_for("updated policy", &zone.store, &pkey, |r| {
            r.is_some_and(|r| r.spec == want)
        })
        .await?;
    }
    global.store.delete(&pkey, None).await?;
    for zone in &zones {
        wait_for("deleted policy", &zone.store, &pkey, |r| r.is_none()).await?;
    }
    for zone in &zones {
        let s = global.zone(&zone.name);
        assert!(s.online, "{s:?}");
        assert!(s.version.is_some(), "{s:?}");
        assert!(zone.status.is_connected());
    }
    for zone in zones {
        zone.stop().await;
    }
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inventory_goes_up_renamed_and_ingresses_are_relayed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    let zones: Vec<Zone> = ["zone-1", "zone-2", "zone-3"]
        .iter()
        .map(|z| Zone::start(z, open_store(&dir, z), global.url(), tuning()))
        .collect();
    zones[0].store.create(dataplane("web", "10.0.0.1")).await?;
    zones[0].store.create(ingress("ingress")).await?;

    let dp_at_global = key(ResourceType::Dataplane, Some("default"), "web.zone-1");
    wait_for(
        "dataplane at the global",
        &global.store,
        &dp_at_global,
        |r| {
            r.is_some_and(|r| {
                label(r, mesh_api::ORIGIN_LABEL) == Some("zone")
                    && label(r, mesh_api::ZONE_LABEL) == Some("zone-1")
                    && label(r, kds::wire::DISPLAY_NAME_LABEL) == Some("web")
            })
        },
    )
    .await?;
    let ing_at_global = key(ResourceType::ZoneIngress, None, "ingress.zone-1");
    wait_for(
        "ingress at the global",
        &global.store,
        &ing_at_global,
        |r| r.is_some(),
    )
    .await?;
    for zone in &zones[1..] {
        wait_for("ingress relayed", &zone.store, &ing_at_global, |r| {
            r.is_some_and(|r| {
                label(r, mesh_api::ORIGIN_LABEL) == Some("global")
                    && label(r, mesh_api::ZONE_LABEL) == Some("zone-1")
            })
        })
        .await?;
    }
    // Dataplanes are not relayed, and a zone never gets its own ingress back.
    assert!(zones[1].store.get(&dp_at_global).await?.is_none());
    assert!(zones[0].store.get(&ing_at_global).await?.is_none());
    // Relayed ingresses are not reported back up by the zones that received them.
    let echo = key(ResourceType::ZoneIngress, None, "ingress.zone-1.zone-2");
    assert!(global.store.get(&echo).await?.is_none());

    // An update and a delete at the zone follow.
    let mut moved = dataplane("web", "10.0.0.9");
    moved.meta.version = zones[0]
        .store
        .get(&key(ResourceType::Dataplane, Some("default"), "web"))
        .await?
        .context("dp")?
        .meta
        .version;
    let want = moved.spec.clone();
    zones[0].store.update(moved).await?;
    wait_for(
        "dataplane updated at the global",
        &global.store,
        &dp_at_global,
        |r| r.is_some_and(|r| r.spec == want),
    )
    .await?;
    zones[0]
        .store
        .delete(&key(ResourceType::ZoneIngress, None, "ingress"), None)
        .await?;
    wait_for(
        "ingress gone at the global",
        &global.store,
        &ing_at_global,
        |r| r.is_none(),
    )
    .await?;
    for zone in &zones[1..] {
        wait_for("relayed ingress gone", &zone.store, &ing_at_global, |r| {
            r.is_none()
        })
        .await?;
    }
    for zone in zones {
        zone.stop().await;
    }
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zone_cannot_touch_another_zones_resources() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    let z1 = Zone::start("zone-1", open_store(&dir, "zone-1"), global.url(), tuning());
    let z2 = Zone::start("zone-2", open_store(&dir, "zone-2"), global.url(), tuning());
    z1.store.create(dataplane("web", "10.0.0.1")).await?;
    z2.store.create(dataplane("web", "10.0.0.2")).await?;
    let k1 = key(ResourceType::Dataplane, Some("default"), "web.zone-1");
    let k2 = key(ResourceType::Dataplane, Some("default"), "web.zone-2");
    wait_for("zone-1's web", &global.store, &k1, |r| r.is_some()).await?;
    wait_for("zone-2's web", &global.store, &k2, |r| r.is_some()).await?;
    let before = global.store.get(&k1).await?.context("k1")?;

    // zone-2 removes its copy: zone-1's stays.
    z2.store
        .delete(&key(ResourceType::Dataplane, Some("default"), "web"), None)
        .await?;
    wait_for("zone-2's web gone", &global.store, &k2, |r| r.is_none()).await?;
    assert_eq!(global.store.get(&k1).await?, Some(before.clone()));

    // A hostile zone-2 speaking the protocol by hand: it claims zone-1's labels and names, and
    // asks to remove zone-1's resource under every spelling.
    let channel = tonic::transport::Endpoint::from_shared(global.url())?
        .connect()
        .await?;
    let mut client = KdsSyncClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<DeltaDiscoveryResponse>(8);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(kds::ZONE_METADATA, "zone-2".parse()?);
    let mut acks = client.zone_to_global_sync(request).await?.into_inner();
    let mut forged = dataplane("web", "10.6.6.6");
    forged
        .meta
        .labels
        .insert(mesh_api::ZONE_LABEL.into(), "zone-1".into());
    forged
        .meta
        .labels
        .insert(mesh_api::ORIGIN_LABEL.into(), "zone".into());
    let forged_wire = kds::wire::to_envoy(&forged);
    let mut renamed = forged.clone();
    renamed.meta.name = "web.zone-1".into();
    let type_url = kds::wire::type_url(ResourceType::Dataplane);
    tx.send(DeltaDiscoveryResponse {
        type_url: type_url.clone(),
        nonce: "1".into(),
        resources: vec![forged_wire, kds::wire::to_envoy(&renamed)],
        removed_resources: vec!["default/web.zone-1".into(), "default/web".into()],
        ..Default::default()
    })
    .await?;
    // Wait for the global's answer to that response (after its subscriptions).
    tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(req)) = acks.next().await {
            if req.response_nonce == "1" {
                return;
            }
        }
        panic!("the stream ended before the answer");
    })
    .await
    .context("the global answers")?;
    assert_eq!(
        global.store.get(&k1).await?,
        Some(before),
        "zone-1's web untouched"
    );
    let mine = global
        .store
        .get(&k2)
        .await?
        .context("zone-2 got its own copy")?;
    assert_eq!(label(&mine, mesh_api::ZONE_LABEL), Some("zone-2"));
    let odd = key(
        ResourceType::Dataplane,
        Some("default"),
        "web.zone-1.zone-2",
    );
    let odd = global
        .store
        .get(&odd)
        .await?
        .context("renamed under zone-2")?;
    assert_eq!(label(&odd, mesh_api::ZONE_LABEL), Some("zone-2"));
    drop(tx);

    // A stream whose node id differs from its claimed zone is refused.
    let channel = tonic::transport::Endpoint::from_shared(global.url())?
        .connect()
        .await?;
    let mut client = KdsSyncClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(kds::pb::DeltaDiscoveryRequest {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "zone-1".into(),
            ..Default::default()
        }),
        type_url: kds::wire::type_url(ResourceType::MeshTimeout),
        ..Default::default()
    })
    .await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(kds::ZONE_METADATA, "zone-2".parse()?);
    let mut down = client.global_to_zone_sync(request).await?.into_inner();
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            match down.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await?;
    assert_eq!(
        refused.map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    // And a stream without a claimed zone is refused outright.
    let mut client = KdsSyncClient::new(
        tonic::transport::Endpoint::from_shared(global.url())?
            .connect()
            .await?,
    );
    let err = client
        .global_to_zone_sync(tonic::Request::new(futures::stream::empty()))
        .await
        .expect_err("no zone");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    drop(tx);

    z1.stop().await;
    z2.stop().await;
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_sends_only_differences() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    global.store.create(mesh("default")).await?;
    for i in 0..50 {
        global
            .store
            .create(timeout_policy(&format!("p{i}"), "5s"))
            .await?;
    }
    let zone_store = open_store(&dir, "zone-1");
    for i in 0..20 {
        zone_store
            .create(dataplane(&format!("dp{i}"), "10.0.0.1"))
            .await?;
    }
    let zone = Zone::start("zone-1", zone_store, global.url(), tuning());
    let last = key(ResourceType::MeshTimeout, Some("default"), "p49");
    wait_for("initial sync down", &zone.store, &last, |r| r.is_some()).await?;
    let dp_last = key(ResourceType::Dataplane, Some("default"), "dp19.zone-1");
    wait_for("initial sync up", &global.store, &dp_last, |r| r.is_some()).await?;
    // The counters are bumped just after the writes they count become visible: wait for them.
    let first = counted(&global, 51, 20).await?;

    let zone_store = zone.stop().await;
    wait_offline(&global, "zone-1").await?;
    // While the zone is away: one update, one create, one delete at the global; one new
    // dataplane at the zone.
    update(&global.store, timeout_policy("p0", "9s")).await;
    global.store.create(timeout_policy("p50", "5s")).await?;
    global
        .store
        .delete(&key(ResourceType::MeshTimeout, Some("default"), "p1"), None)
        .await?;
    zone_store.create(dataplane("dp20", "10.0.0.1")).await?;

    let zone = Zone::start("zone-1", zone_store, global.url(), tuning());
    wait_for(
        "new policy",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "p50"),
        |r| r.is_some(),
    )
    .await?;
    wait_for(
        "deleted policy",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "p1"),
        |r| r.is_none(),
    )
    .await?;
    wait_for(
        "new dataplane",
        &global.store,
        &key(ResourceType::Dataplane, Some("default"), "dp20.zone-1"),
        |r| r.is_some(),
    )
    .await?;
    let want = timeout_policy("p0", "9s").spec;
    wait_for(
        "updated policy",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "p0"),
        |r| r.is_some_and(|r| r.spec == want),
    )
    .await?;
    // Only the differences travel: three down, one up.
    counted(
        &global,
        first.resources_sent + 3,
        first.resources_received + 1,
    )
    .await?;
    zone.stop().await;
    global.stop().await;
    Ok(())
}

/// Waits until zone-1's counters read exactly `sent` and `received` (a count that overshoots
/// times out, so the check stays exact).
async fn counted(global: &Global, sent: u64, received: u64) -> anyhow::Result<kds::ZoneStatus> {
    test_support::eventually(
        &format!("{sent} resources sent and {received} received"),
        DEADLINE,
        || async {
            let s = global.zone("zone-1");
            (s.resources_sent == sent && s.resources_received == received).then_some(s)
        },
    )
    .await
}

async fn wait_offline(global: &Global, zone: &str) -> anyhow::Result<()> {
    test_support::eventually(&format!("{zone} offline"), DEADLINE, || async {
        global.status.zone(zone).filter(|s| !s.online).map(|_| ())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_sets_are_chunked_under_the_budget() -> anyhow::Result<()> {
    const BUDGET: usize = 8 * 1024;
    let dir = tempfile::tempdir()?;
    let mut global_tuning = tuning();
    global_tuning.message_budget = BUDGET;
    let global = Global::start(open_store(&dir, "global"), global_tuning, None).await;
    // Policies of varied sizes (labels make them larger).
    for i in 0..400 {
        let mut p = timeout_policy(&format!("p{i}"), "5s");
        for l in 0..(i % 12) {
            p.meta
                .labels
                .insert(format!("example.com/label-{l}"), "x".repeat(40));
        }
        global.store.create(p).await?;
    }
    // One policy larger than the budget on its own cannot be sent (and is reported).
    let mut huge = timeout_policy("huge", "5s");
    for l in 0..200 {
        huge.meta
            .labels
            .insert(format!("example.com/label-{l}"), "y".repeat(60));
    }
    global.store.create(huge).await?;
    // The zone refuses any message over the budget: everything arriving proves every message fit.
    let mut zone_tuning = tuning();
    zone_tuning.max_received_message = BUDGET;
    let zone = Zone::start(
        "zone-1",
        open_store(&dir, "zone-1"),
        global.url(),
        zone_tuning,
    );
    test_support::eventually("all 400 policies", DEADLINE, || async {
        let page = zone
            .store
            .list(&mesh_store::ListQuery::all(ResourceType::MeshTimeout))
            .await
            .ok()?;
        (page.total == 400).then_some(())
    })
    .await?;
    let s = global.zone("zone-1");
    assert!(s.messages_sent > 10, "{s:?}");
    assert!(s.bytes_sent > (BUDGET * 10) as u64, "{s:?}");
    assert!(
        s.errors >= 1 && s.last_error.as_deref().unwrap_or("").contains("huge"),
        "{s:?}"
    );
    // No stream broke on an over-long message (tonic: "decoded message length too large").
    let zone_error = zone.status.snapshot().last_error.unwrap_or_default();
    assert!(!zone_error.contains("too large"), "{zone_error}");
    assert!(zone
        .store
        .get(&key(ResourceType::MeshTimeout, Some("default"), "huge"))
        .await?
        .is_none());
    zone.stop().await;
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nacked_resources_are_retried_with_backoff_and_counted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    let zone = Zone::start("zone-1", open_store(&dir, "zone-1"), global.url(), tuning());
    // The zone already has a local policy under this name: the global's copy is refused.
    let local = timeout_policy("clash", "1s");
    zone.store.create(local.clone()).await?;
    wait_online(&global, "zone-1").await?;
    global.store.create(timeout_policy("clash", "5s")).await?;
    global.store.create(timeout_policy("fine", "5s")).await?;
    wait_for(
        "the good policy",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "fine"),
        |r| r.is_some(),
    )
    .await?;
    test_support::eventually("NACKs retried", DEADLINE, || async {
        let s = global.zone("zone-1");
        (s.nacks_received >= 3).then_some(())
    })
    .await?;
    let snapshot = zone.status.snapshot();
    assert!(snapshot.nacks_sent >= 3, "{snapshot:?}");
    let kept = zone
        .store
        .get(&key(ResourceType::MeshTimeout, Some("default"), "clash"))
        .await?
        .context("local")?;
    assert_eq!(kept.spec, local.spec, "the local policy is not overwritten");
    // Once the clash is gone, the retry lands.
    zone.store.delete(&kept.key(), None).await?;
    wait_for("retried policy", &zone.store, &kept.key(), |r| {
        r.is_some_and(|r| label(r, mesh_api::ORIGIN_LABEL) == Some("global"))
    })
    .await?;
    zone.stop().await;
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_restart_mid_stream_recovers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open_store(&dir, "global");
    let global = Global::start(store.clone(), tuning(), None).await;
    let addr = global.addr;
    store.create(timeout_policy("before", "5s")).await?;
    let zone = Zone::start("zone-1", open_store(&dir, "zone-1"), global.url(), tuning());
    let before = key(ResourceType::MeshTimeout, Some("default"), "before");
    wait_for("first policy", &zone.store, &before, |r| r.is_some()).await?;

    global.stop().await;
    test_support::eventually("zone notices", DEADLINE, || async {
        (!zone.status.is_connected()).then_some(())
    })
    .await?;
    // The zone keeps serving what it has.
    assert!(zone.store.get(&before).await?.is_some());
    store.create(timeout_policy("during", "5s")).await?;
    zone.store.create(dataplane("web", "10.0.0.1")).await?;

    let global = Global::start(store.clone(), tuning(), Some(addr)).await;
    wait_for(
        "policy written while the global was down",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "during"),
        |r| r.is_some(),
    )
    .await?;
    wait_for(
        "inventory written while the global was down",
        &global.store,
        &key(ResourceType::Dataplane, Some("default"), "web.zone-1"),
        |r| r.is_some(),
    )
    .await?;
    assert!(zone.status.snapshot().dials >= 2);
    zone.stop().await;
    global.stop().await;
    Ok(())
}

/// A TCP relay that can stop forwarding on every connection it holds (without closing them), as
/// a stuck middlebox or a partition does; connections made after that are forwarded normally.
struct Relay {
    addr: SocketAddr,
    freeze: watch::Sender<u64>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (freeze, _) = watch::channel(0u64);
        let freezes = freeze.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let generation = *freezes.borrow();
                let frozen = freezes.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let a = pipe(&mut ri, &mut wo, frozen.clone(), generation);
                    let b = pipe(&mut ro, &mut wi, frozen, generation);
                    tokio::join!(a, b);
                    // Hold the sockets open: a frozen link never closes by itself.
                    std::future::pending::<()>().await;
                });
            }
        });
        Relay { addr, freeze }
    }

    /// Every connection open now stops moving bytes, for good.
    fn freeze_existing(&self) {
        self.freeze.send_modify(|g| *g += 1);
    }
}

async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    frozen: watch::Receiver<u64>,
    generation: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let current = frozen.clone();
    let mut frozen = frozen;
    let moved = async move {
        loop {
            if *frozen.borrow_and_update() != generation {
                return;
            }
            if frozen.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::pin!(moved);
    loop {
        tokio::select! {
            n = from.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                let stale = *current.borrow() != generation;
                if stale || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = &mut moved => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_that_stops_moving_is_torn_down_and_redialled() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    let relay = Relay::start(global.addr).await;
    let zone = Zone::start(
        "zone-1",
        open_store(&dir, "zone-1"),
        format!("http://{}", relay.addr),
        tuning(),
    );
    global.store.create(timeout_policy("a", "5s")).await?;
    wait_for(
        "first policy",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "a"),
        |r| r.is_some(),
    )
    .await?;
    let dials = zone.status.snapshot().dials;

    let errors_before = global.zone("zone-1").errors;
    let frozen_at = Instant::now();
    relay.freeze_existing();
    // Both ends notice within the watchdog deadline (1 s here) plus slack. (The zone may redial
    // before the global's old streams end, so the zone need not be seen offline in between.)
    test_support::eventually("the global's watchdog fires", DEADLINE, || async {
        let s = global.zone("zone-1");
        (s.errors > errors_before
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("watchdog") || e.contains("stalled")))
        .then_some(())
    })
    .await?;
    let global_noticed = frozen_at.elapsed();
    test_support::eventually("the zone redials", DEADLINE, || async {
        (zone.status.snapshot().dials > dials).then_some(())
    })
    .await?;
    let zone_noticed = frozen_at.elapsed();
    assert!(
        global_noticed < Duration::from_secs(5),
        "{global_noticed:?}"
    );
    assert!(zone_noticed < Duration::from_secs(5), "{zone_noticed:?}");
    assert!(zone.status.snapshot().last_error.is_some());
    // The new connection works.
    global.store.create(timeout_policy("b", "5s")).await?;
    wait_for(
        "policy after the redial",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "b"),
        |r| r.is_some(),
    )
    .await?;
    wait_online(&global, "zone-1").await?;
    zone.stop().await;
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_payloads_are_nacked_with_detail() -> anyhow::Result<()> {
    // The global as receiver: a zone reporting an undecodable resource gets a NACK naming it.
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    let mut client = KdsSyncClient::new(
        tonic::transport::Endpoint::from_shared(global.url())?
            .connect()
            .await?,
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<DeltaDiscoveryResponse>(8);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(kds::ZONE_METADATA, "zone-9".parse()?);
    let mut acks = client.zone_to_global_sync(request).await?.into_inner();
    let garbage = EnvoyResource {
        name: "default/bad".into(),
        resource: Some(Any {
            type_url: RESOURCE_TYPE_URL.into(),
            value: KdsResource {
                r#type: "Dataplane".into(),
                mesh: "default".into(),
                name: "bad".into(),
                labels: BTreeMap::new(),
                spec: b"{not json".to_vec(),
            }
            .encode_to_vec(),
        }),
        ..Default::default()
    };
    tx.send(DeltaDiscoveryResponse {
        type_url: kds::wire::type_url(ResourceType::Dataplane),
        nonce: "7".into(),
        resources: vec![garbage],
        ..Default::default()
    })
    .await?;
    let nack = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(req)) = acks.next().await {
            if req.response_nonce == "7" {
                return Some(req);
            }
        }
        None
    })
    .await?
    .context("an answer")?;
    let detail = nack.error_detail.context("a NACK")?;
    assert!(detail.message.contains("default/bad"), "{}", detail.message);
    let errors: Vec<kds::pb::ResourceError> = detail
        .details
        .iter()
        .map(|d| kds::pb::ResourceError::decode(d.value.as_slice()).unwrap())
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].name, "default/bad");
    assert_eq!(global.zone("zone-9").nacks_sent, 1);
    drop(tx);
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_store_watch_resyncs_by_differences() -> anyhow::Result<()> {
    // A global store whose watchers fall behind almost at once: the KDS sender must reload and
    // send the differences rather than lose changes.
    let dir = tempfile::tempdir()?;
    let options = mesh_store::SledStoreOptions {
        broadcast_capacity: 2,
        watch_buffer: 1,
        ..mesh_store::SledStoreOptions::default()
    };
    let store = Arc::new(SledStore::open_with(dir.path().join("global"), options)?);
    let global = Global::start(store, tuning(), None).await;
    let zone = Zone::start("zone-1", open_store(&dir, "zone-1"), global.url(), tuning());
    wait_online(&global, "zone-1").await?;
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let store = global.store.clone();
            tokio::spawn(async move { store.create(timeout_policy(&format!("p{i}"), "5s")).await })
        })
        .collect();
    for w in writes {
        w.await??;
    }
    test_support::eventually("all 300 policies", DEADLINE, || async {
        let page = zone
            .store
            .list(&mesh_store::ListQuery::all(ResourceType::MeshTimeout))
            .await
            .ok()?;
        (page.total == 300).then_some(())
    })
    .await?;
    let s = global.zone("zone-1");
    assert!(s.resources_sent <= 300 + 10, "no full resends: {s:?}");
    zone.stop().await;
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_changes_travels_in_few_messages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start(open_store(&dir, "global"), tuning(), None).await;
    let zone = Zone::start("zone-1", open_store(&dir, "zone-1"), global.url(), tuning());
    wait_online(&global, "zone-1").await?;
    let before = global.zone("zone-1").messages_sent;
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let store = global.store.clone();
            tokio::spawn(async move { store.create(timeout_policy(&format!("p{i}"), "5s")).await })
        })
        .collect();
    for w in writes {
        w.await??;
    }
    test_support::eventually("all 200 policies", DEADLINE, || async {
        let page = zone
            .store
            .list(&mesh_store::ListQuery::all(ResourceType::MeshTimeout))
            .await
            .ok()?;
        (page.total == 200).then_some(())
    })
    .await?;
    let s = global.zone("zone-1");
    assert_eq!(s.resources_sent, 200, "{s:?}");
    assert!(
        s.messages_sent - before < 100,
        "coalesced into few messages: {s:?}"
    );
    zone.stop().await;
    global.stop().await;
    Ok(())
}

/// Waits until the zone's latest handshake was refused; the reason.
async fn refusal(zone: &Zone) -> anyhow::Result<String> {
    test_support::eventually(&format!("{} refused", zone.name), DEADLINE, || async {
        zone.status.snapshot().refused
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zone_one_minor_behind_syncs_and_versions_are_reported_both_ways() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let global = Global::start_as(open_store(&dir, "global"), tuning(), None, "0.5.2").await;
    global.store.create(mesh("default")).await?;
    global.store.create(timeout_policy("t1", "5s")).await?;
    let zone = Zone::start_as(
        "zone-1",
        open_store(&dir, "zone-1"),
        global.url(),
        tuning(),
        "0.4.7",
    );
    wait_for(
        "the policy at the older zone",
        &zone.store,
        &key(ResourceType::MeshTimeout, Some("default"), "t1"),
        |r| r.is_some(),
    )
    .await?;
    zone.store.create(dataplane("web", "10.0.0.1")).await?;
    wait_for(
        "the older zone's inventory at the global",
        &global.store,
        &key(ResourceType::Dataplane, Some("default"), "web.zone-1"),
        |r| r.is_some(),
    )
    .await?;
    let at_global = global.zone("zone-1");
    assert!(at_global.online, "{at_global:?}");
    assert_eq!(at_global.version.as_deref(), Some("0.4.7"));
    assert_eq!(at_global.refused, None);
    let at_zone = zone.status.snapshot();
    assert_eq!(at_zone.global_version.as_deref(), Some("0.5.2"));
    assert_eq!(at_zone.refused, None);
    zone.stop().await;
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zones_ahead_or_two_minors_behind_are_refused_until_the_global_is_upgraded(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = open_store(&dir, "global");
    store.create(mesh("default")).await?;
    let global = Global::start_as(store.clone(), tuning(), None, "0.5.0").await;
    let ahead = Zone::start_as(
        "ahead",
        open_store(&dir, "a"),
        global.url(),
        tuning(),
        "0.6.0",
    );
    let behind = Zone::start_as(
        "behind",
        open_store(&dir, "b"),
        global.url(),
        tuning(),
        "0.3.9",
    );
    let garbled = Zone::start_as(
        "garbled",
        open_store(&dir, "c"),
        global.url(),
        tuning(),
        "latest",
    );

    let why = refusal(&ahead).await?;
    assert!(
        why.contains("0.6.0") && why.contains("0.5.0") && why.contains("upgrade the global first"),
        "{why}"
    );
    let why = refusal(&behind).await?;
    assert!(
        why.contains("0.3.9")
            && why.contains("0.5.0")
            && why.contains("more than one minor version behind")
            && why.contains("0.4.x or 0.5.x"),
        "{why}"
    );
    let why = refusal(&garbled).await?;
    assert!(why.contains("\"latest\" is not a version"), "{why}");
    for zone in [&ahead, &behind, &garbled] {
        let s = zone.status.snapshot();
        assert!(!s.connected, "{s:?}");
        assert_eq!(s.global_version.as_deref(), Some("0.5.0"), "{s:?}");
    }
    // The global's overview says who was refused, with which version, and why.
    for (name, version, reason) in [
        ("ahead", "0.6.0", "is newer than the global's 0.5.0"),
        (
            "behind",
            "0.3.9",
            "more than one minor version behind the global's 0.5.0",
        ),
        ("garbled", "latest", "is not a version"),
    ] {
        let s = global.zone(name);
        assert!(!s.online, "{s:?}");
        assert_eq!(s.version.as_deref(), Some(version), "{s:?}");
        let refused = s.refused.clone().unwrap_or_default();
        assert!(refused.contains(reason), "{s:?}");
        assert_eq!(s.resources_sent + s.resources_received, 0, "{s:?}");
    }
    // Nothing reached a refused zone.
    assert!(ahead
        .store
        .get(&key(ResourceType::Mesh, None, "default"))
        .await?
        .is_none());

    // The zones keep redialling; the global upgraded to 0.6 on the same address lets the newer
    // zone in (and still refuses the one now two minors behind).
    let dials = ahead.status.snapshot().dials;
    test_support::eventually("the refused zone redials", DEADLINE, || async {
        (ahead.status.snapshot().dials > dials).then_some(())
    })
    .await?;
    let addr = global.addr;
    global.stop().await;
    let global = Global::start_as(store.clone(), tuning(), Some(addr), "0.6.1").await;
    wait_for(
        "the mesh at the zone once the global is upgraded",
        &ahead.store,
        &key(ResourceType::Mesh, None, "default"),
        |r| r.is_some(),
    )
    .await?;
    wait_online(&global, "ahead").await?;
    assert_eq!(global.zone("ahead").refused, None);
    let s = ahead.status.snapshot();
    assert_eq!(
        (s.refused, s.global_version.as_deref()),
        (None, Some("0.6.1"))
    );
    let why = test_support::eventually(
        "the old zone refused by the new global",
        DEADLINE,
        || async { global.status.zone("behind").and_then(|s| s.refused) },
    )
    .await?;
    assert!(why.contains("0.6.1") && why.contains("0.3.9"), "{why}");
    for zone in [ahead, behind, garbled] {
        zone.stop().await;
    }
    global.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zone_without_version_metadata_is_checked_on_its_node() -> anyhow::Result<()> {
    // A zone of a release before the x-meridian-version metadata states its version only in its
    // node's user_agent_version: the global checks that on the first request.
    use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
    use kds::pb::DeltaDiscoveryRequest;
    let dir = tempfile::tempdir()?;
    let global = Global::start_as(open_store(&dir, "global"), tuning(), None, "0.5.0").await;
    let mut client = KdsSyncClient::new(
        tonic::transport::Endpoint::from_shared(global.url())?
            .connect()
            .await?,
    );
    let open = |zone: &str, version: &str| {
        let (tx, rx) = tokio::sync::mpsc::channel::<DeltaDiscoveryRequest>(8);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert(kds::ZONE_METADATA, zone.parse().unwrap());
        let first = DeltaDiscoveryRequest {
            node: Some(Node {
                id: zone.to_owned(),
                user_agent_version_type: (!version.is_empty())
                    .then(|| UserAgentVersionType::UserAgentVersion(version.to_owned())),
                ..Default::default()
            }),
            type_url: kds::wire::type_url(ResourceType::Mesh),
            ..Default::default()
        };
        tx.try_send(first).unwrap();
        (tx, request)
    };
    for (zone, version, code, reason) in [
        (
            "old",
            "0.3.0",
            tonic::Code::FailedPrecondition,
            "more than one minor version behind",
        ),
        (
            "new",
            "0.6.0",
            tonic::Code::FailedPrecondition,
            "is newer than the global's 0.5.0",
        ),
        (
            "none",
            "",
            tonic::Code::InvalidArgument,
            "reports no version",
        ),
    ] {
        let (_tx, request) = open(zone, version);
        let response = client.global_to_zone_sync(request).await?;
        assert_eq!(
            response
                .metadata()
                .get(kds::version::VERSION_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("0.5.0")
        );
        let mut stream = response.into_inner();
        let ended = tokio::time::timeout(DEADLINE, async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => return Some(status),
                    None => return None,
                }
            }
        })
        .await?
        .context("the stream ends with a status")?;
        assert_eq!(ended.code(), code, "{zone}: {ended:?}");
        assert!(
            ended.message().starts_with(kds::version::REFUSAL_PREFIX),
            "{ended:?}"
        );
        assert!(ended.message().contains(reason), "{zone}: {ended:?}");
        let s = global.zone(zone);
        assert!(s.refused.is_some_and(|r| r.contains(reason)), "{zone}");
    }
    // One minor behind, by its node only: served.
    let (_tx, request) = open("older", "0.4.2");
    let mut stream = client.global_to_zone_sync(request).await?.into_inner();
    tokio::time::timeout(DEADLINE, stream.next())
        .await?
        .context("a response")??;
    let s = global.zone("older");
    assert_eq!((s.version.as_deref(), s.refused), (Some("0.4.2"), None));
    global.stop().await;
    Ok(())
}
