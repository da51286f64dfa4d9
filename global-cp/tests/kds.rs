//! The global's KDS as zones meet it: over TLS with the generated CA, authenticated by tokens from
//! `POST /tokens/zone`. A zone with a valid token comes online and receives policy; a token for
//! another zone, a revoked one and none at all are refused with a status saying why; rotating the
//! signing key keeps a connected zone online. A zone that leaves keeps its inventory at the global
//! for `--zone-grace-period`, then loses it (also in the other zones), and at once when its Zone
//! resource is deleted. Real global (in-process `global_cp::run`), real KDS
//! clients on real sled stores.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::{ResourceKey, ResourceType};
use mesh_store::{ResourceStore, SledStore};
use serde_json::json;

mod common;
use common::{start_global, start_global_with, Global};

struct Zone {
    store: Arc<dyn ResourceStore>,
    status: kds::client::ClientStatus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), kds::client::ClientError>>,
    _dir: tempfile::TempDir,
}

fn start_zone(global: &Global, zone: &str, token: Option<String>) -> Zone {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> = Arc::new(SledStore::open(dir.path()).unwrap());
    let mut config = kds::client::KdsClientConfig::new(zone, global.kds.clone(), store.clone());
    config.tls = Some(kds::tls::client_tls_config(&global.ca, "127.0.0.1"));
    config.token = match token {
        Some(t) => kds::client::TokenSource::Static(t),
        None => kds::client::TokenSource::None,
    };
    config.backoff.initial = Duration::from_millis(50);
    config.backoff.max = Duration::from_millis(500);
    let status = config.status.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(kds::client::run(config, async {
        let _ = rx.await;
    }));
    Zone {
        store,
        status,
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

impl Zone {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    async fn refused_with(&self, what: &str) -> String {
        let status = self.status.clone();
        test_support::eventually(what, Duration::from_secs(10), || {
            let snapshot = status.snapshot();
            async move { snapshot.last_error.filter(|_| !snapshot.connected) }
        })
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn token_endpoint_checks_its_input_and_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(dir.path()).await;
    let (status, _) = global
        .post("/tokens/zone", json!({"zone": "zone-1"}), false)
        .await;
    assert_eq!(status, 401);
    let (status, body) = global
        .post("/tokens/zone", json!({"zone": "Bad_Zone"}), true)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["causes"][0]["field"], "zone", "{body}");
    let (status, body) = global
        .post(
            "/tokens/zone",
            json!({"zone": "zone-1", "validFor": "soon"}),
            true,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["causes"][0]["field"], "validFor", "{body}");
    let (status, body) = global
        .post(
            "/tokens/zone",
            json!({"zone": "zone-1", "validFor": "24h"}),
            true,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["token"].as_str().unwrap().is_empty());
    global.stop().await;
}

#[tokio::test]
async fn a_zone_with_its_token_comes_online_and_receives_policy() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(dir.path()).await;
    let token = global.zone_token("zone-1").await;
    let zone = start_zone(&global, "zone-1", Some(token));
    test_support::eventually("zone-1 online", Duration::from_secs(10), || async {
        (global.zone_status("zone-1").await.as_deref() == Some("online")).then_some(())
    })
    .await
    .unwrap();
    // The default mesh (created at the global's first start) reached the zone, labelled.
    let key = ResourceKey::new(ResourceType::Mesh, None, "default");
    let mesh = test_support::eventually(
        "the default mesh in zone-1",
        Duration::from_secs(10),
        || {
            let (store, key) = (zone.store.clone(), key.clone());
            async move { store.get(&key).await.unwrap() }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        mesh.meta.labels.get("kuma.io/origin").map(String::as_str),
        Some("global")
    );

    // The zone got a Zone resource when it first connected.
    test_support::eventually(
        "the Zone resource of zone-1",
        Duration::from_secs(10),
        || async {
            let url = format!("{}/zones/zone-1", global.api);
            let response = global.client.get(url).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await
    .unwrap();

    // Rotating the signing key does not drop the connected zone.
    let (status, body) = global.post("/tokens/zone/rotate", json!({}), true).await;
    assert_eq!(status, 200, "{body}");
    let overview = global.overview().await;
    assert_eq!(overview["items"][0]["status"], "online", "{overview}");
    assert!(zone.status.snapshot().connected);

    zone.stop().await;
    test_support::eventually(
        "zone-1 offline after it left",
        Duration::from_secs(30),
        || async {
            (global.zone_status("zone-1").await.as_deref() == Some("offline")).then_some(())
        },
    )
    .await
    .unwrap();
    global.stop().await;
}

#[tokio::test]
async fn streams_without_a_valid_token_for_their_zone_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(dir.path()).await;

    let none = start_zone(&global, "zone-1", None);
    let why = none
        .refused_with("a stream with no token to be refused")
        .await;
    assert!(why.to_lowercase().contains("token"), "{why}");
    none.stop().await;

    // zone-2 presenting zone-1's token: impersonation.
    let stolen = global.zone_token("zone-1").await;
    let impostor = start_zone(&global, "zone-2", Some(stolen));
    let why = impostor.refused_with("impersonation to be refused").await;
    assert!(why.contains("zone-1") && why.contains("zone-2"), "{why}");
    impostor.stop().await;

    // A revoked token.
    let token = global.zone_token("zone-3").await;
    let (status, body) = global
        .post("/tokens/zone/revoke", json!({"token": token}), true)
        .await;
    assert_eq!(status, 200, "{body}");
    let revoked = start_zone(&global, "zone-3", Some(token));
    let why = revoked.refused_with("a revoked token to be refused").await;
    assert!(why.to_lowercase().contains("revoked"), "{why}");
    revoked.stop().await;

    // None of them ever came online.
    for zone in ["zone-1", "zone-2", "zone-3"] {
        assert_ne!(
            global.zone_status(zone).await.as_deref(),
            Some("online"),
            "{zone}"
        );
    }
    global.stop().await;
}

fn parse(yaml: &str) -> mesh_api::Resource {
    let mut docs = mesh_api::parse_documents(yaml);
    docs.remove(0).expect("parses").resource
}

fn dataplane() -> mesh_api::Resource {
    parse("type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 80\n      tags:\n        kuma.io/service: web\n")
}

fn ingress() -> mesh_api::Resource {
    parse("type: ZoneIngress\nname: ingress\nnetworking:\n  address: 10.0.0.2\n  port: 10001\n  advertisedAddress: 192.0.2.1\n  advertisedPort: 10001\navailableServices:\n  - tags:\n      kuma.io/service: web\n")
}

async fn present(store: &Arc<dyn ResourceStore>, key: &ResourceKey) -> bool {
    store.get(key).await.unwrap().is_some()
}

const DP_AT_GLOBAL: &str = "/meshes/default/dataplanes/web.zone-1";
const INGRESS_AT_GLOBAL: &str = "/zoneingresses/ingress.zone-1";

fn ingress_in_zone_2() -> ResourceKey {
    ResourceKey::new(ResourceType::ZoneIngress, None, "ingress.zone-1")
}

impl Global {
    async fn has(&self, path: &str) -> bool {
        let status = self
            .send(self.client.get(format!("{}{path}", self.api)))
            .await;
        assert!(status == 200 || status == 404, "GET {path}: {status}");
        status == 200
    }

    async fn until_has(&self, what: &str, paths: &[&str], want: bool) {
        test_support::eventually(what, Duration::from_secs(15), || async {
            for path in paths {
                if self.has(path).await != want {
                    return None;
                }
            }
            Some(())
        })
        .await
        .unwrap();
    }
}

async fn until_in_store(what: &str, store: &Arc<dyn ResourceStore>, key: &ResourceKey, want: bool) {
    test_support::eventually(what, Duration::from_secs(15), || async {
        (present(store, key).await == want).then_some(())
    })
    .await
    .unwrap();
}

/// zone-1 (reporting a Dataplane and a ZoneIngress) and zone-2 online, everything synced.
async fn two_zones_with_inventory(global: &Global) -> (Zone, Zone) {
    let zone1 = start_zone(global, "zone-1", Some(global.zone_token("zone-1").await));
    let zone2 = start_zone(global, "zone-2", Some(global.zone_token("zone-2").await));
    zone1.store.create(dataplane()).await.unwrap();
    zone1.store.create(ingress()).await.unwrap();
    global
        .until_has(
            "zone-1's inventory at the global",
            &[DP_AT_GLOBAL, INGRESS_AT_GLOBAL],
            true,
        )
        .await;
    until_in_store(
        "zone-1's ingress relayed to zone-2",
        &zone2.store,
        &ingress_in_zone_2(),
        true,
    )
    .await;
    (zone1, zone2)
}

#[tokio::test]
async fn a_departed_zone_loses_its_inventory_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global_with(dir.path(), &["--zone-grace-period", "300ms"]).await;
    let (zone1, zone2) = two_zones_with_inventory(&global).await;

    zone1.stop().await;
    global
        .until_has(
            "zone-1's inventory to leave the global after the grace period",
            &[DP_AT_GLOBAL, INGRESS_AT_GLOBAL],
            false,
        )
        .await;
    // The removal flowed to the other zone: it no longer routes to zone-1's ingress.
    until_in_store(
        "zone-1's ingress to leave zone-2",
        &zone2.store,
        &ingress_in_zone_2(),
        false,
    )
    .await;
    assert_eq!(
        global.zone_status("zone-2").await.as_deref(),
        Some("online")
    );
    zone2.stop().await;
    global.stop().await;
}

#[tokio::test]
async fn deleting_a_zone_removes_its_inventory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A grace period far longer than the test: only the deletion can remove anything.
    let global = start_global_with(dir.path(), &["--zone-grace-period", "1h"]).await;
    let status = global
        .send(
            global
                .client
                .put(format!("{}/zones/zone-1", global.api))
                .json(&json!({"type": "Zone", "name": "zone-1"})),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "PUT /zones/zone-1: {status}"
    );
    let (zone1, zone2) = two_zones_with_inventory(&global).await;

    zone1.stop().await;
    test_support::eventually("zone-1 offline", Duration::from_secs(30), || async {
        (global.zone_status("zone-1").await.as_deref() == Some("offline")).then_some(())
    })
    .await
    .unwrap();
    // Within the grace period: still there, and still relayed.
    assert!(global.has(DP_AT_GLOBAL).await && global.has(INGRESS_AT_GLOBAL).await);
    assert!(present(&zone2.store, &ingress_in_zone_2()).await);

    let status = global
        .send(global.client.delete(format!("{}/zones/zone-1", global.api)))
        .await;
    assert_eq!(status, 200, "DELETE /zones/zone-1");
    global
        .until_has(
            "zone-1's inventory to leave the global",
            &[DP_AT_GLOBAL, INGRESS_AT_GLOBAL],
            false,
        )
        .await;
    until_in_store(
        "zone-1's ingress to leave zone-2",
        &zone2.store,
        &ingress_in_zone_2(),
        false,
    )
    .await;
    zone2.stop().await;
    global.stop().await;
}
