//! Token signing keys in the store, end to end on the real control planes (in-process, KDS over
//! TLS): a global started over an older version's key directory imports it, so a zone token
//! issued before still connects its zone; dataplane-token keys made at the global reach the zone,
//! and a zone CP whose data directory is wiped gets them back and accepts a proxy token issued
//! before the wipe (issue [7], `zone-cp-wiped`), while a token signed by other keys is refused.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use serde_json::{json, Value};

mod common;
use common::start_global;

const DEADLINE: Duration = Duration::from_secs(60);
const LISTENERS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// A zone control plane running in-process.
struct Zone {
    api: String,
    xds: String,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_zone(config: zone_cp::Config) -> Zone {
    let data = config.data_dir.clone();
    let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
    let api = format!("http://{}", listeners.api.local_addr().unwrap());
    let xds = format!("http://{}", listeners.xds.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(zone_cp::run(config, listeners, async {
        let _ = stopped.await;
    }));
    let token = test_support::eventually("the zone's admin token", DEADLINE, || {
        let path = data.join("admin-token");
        async move {
            std::fs::read_to_string(path)
                .ok()
                .filter(|t| !t.trim().is_empty())
        }
    })
    .await
    .unwrap()
    .trim()
    .to_owned();
    Zone {
        api,
        xds,
        token,
        stop,
        task,
    }
}

impl Zone {
    async fn get(&self, path: &str) -> Option<Value> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())?;
        response.json().await.ok()
    }

    async fn put(&self, path: &str, body: Value) {
        let response = reqwest::Client::new()
            .put(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "PUT {path}: {status} {:?}",
            response.text().await
        );
    }

    async fn proxy_token(&self, body: Value) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/tokens/dataplane", self.api))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{status}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Opens an ADS stream as `node_id` with `token`: `Ok` once the zone CP answers, the refusal
/// otherwise.
async fn ads(xds: &str, node_id: &str, token: &str) -> Result<(), tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(xds.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node_id.to_owned(),
            ..Node::default()
        }),
        type_url: LISTENERS.to_owned(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no response"))??
        .ok_or_else(|| tonic::Status::unavailable("stream ended"))?;
    Ok(())
}

fn dataplane() -> Value {
    json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
        "address": "10.0.0.1",
        "inbound": [{"port": 15000, "servicePort": 8080, "tags": {"kuma.io/service": "web"}}]
    }})
}

async fn admitted(zone: &Zone, node_id: &str, token: &str) {
    let refusal = std::sync::Mutex::new(String::new());
    let result = test_support::eventually(&format!("{node_id} admitted"), DEADLINE, || async {
        match ads(&zone.xds, node_id, token).await {
            Ok(()) => Some(()),
            Err(status) => {
                *refusal.lock().unwrap() = format!("{:?}: {}", status.code(), status.message());
                None
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "{node_id} not admitted: {}",
        refusal.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_keys_are_imported_and_a_wiped_zone_cp_accepts_its_proxies_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let global_dir = dir.path().join("global");
    // The zone-token keys of an older global, and a zone token it issued.
    let old_keys = global_dir.join("data").join("kds").join("signing-keys");
    let old = kds::auth::ZoneTokenIssuer::open(&old_keys).unwrap();
    let old_zone_token = old.issue("zone-1", Duration::from_secs(3600)).unwrap();
    drop(old);

    let global = start_global(&global_dir).await;
    // Imported once, then set aside so a key retired later is not imported again.
    test_support::eventually("the old key directory set aside", DEADLINE, || async {
        (!old_keys.exists() && old_keys.with_extension("imported").exists()).then_some(())
    })
    .await
    .unwrap();
    let key_ids: Value = global
        .client
        .post(format!("{}/tokens/zone/rotate", global.api))
        .bearer_auth(&global.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key_ids["keyIds"], json!(["1", "2"]), "{key_ids}");
    // Key material is a Secret: not readable without the admin token.
    let anonymous = global
        .client
        .get(format!(
            "{}/global-secrets/zone-token-signing-key-1",
            global.api
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(anonymous, 401);

    let config = global.zone_config(dir.path(), "zone-1").await;
    // The zone connects with the token the older global issued.
    std::fs::write(config.zone_token_file.as_ref().unwrap(), &old_zone_token).unwrap();
    let data = config.data_dir.clone();
    let zone = start_zone(config.clone()).await;
    test_support::eventually(
        "the mesh's dataplane-token key in the zone",
        DEADLINE,
        || zone.get("/meshes/default/secrets/dataplane-token-signing-key-default-1"),
    )
    .await
    .unwrap();
    // The zone-token keys never leave the global.
    assert!(zone
        .get("/global-secrets/zone-token-signing-key-1")
        .await
        .is_none());
    zone.put("/meshes/default/dataplanes/web-1", dataplane())
        .await;
    let sidecar = zone
        .proxy_token(json!({"mesh": "default", "name": "web-1", "validFor": "1h"}))
        .await;
    let ingress = zone
        .proxy_token(json!({"type": "ingress", "name": "ingress-1"}))
        .await;
    admitted(&zone, "default/web-1", &sidecar).await;

    // The zone CP loses its data directory and starts again.
    zone.stop().await;
    std::fs::remove_dir_all(&data).unwrap();
    let zone = start_zone(config).await;
    zone_is_back(&zone, &data).await;
    zone.put("/meshes/default/dataplanes/web-1", dataplane())
        .await;
    admitted(&zone, "default/web-1", &sidecar).await;
    // The ingress token verifies too (an ingress not registered is refused for that, not for
    // its token).
    test_support::eventually("the ingress token accepted", DEADLINE, || async {
        let status = ads(&zone.xds, "ingress:ingress-1", &ingress).await.err()?;
        (status.code() == tonic::Code::PermissionDenied).then_some(())
    })
    .await
    .unwrap();

    // A token signed with other keys (the wiped zone's old way) is refused.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = kds::auth::ZoneTokenIssuer::open(foreign_dir.path()).unwrap();
    let (forged, _) = foreign
        .issue_subject_at(
            "default/web-1",
            Duration::from_secs(3600),
            chrono::Utc::now(),
        )
        .unwrap();
    let status = ads(&zone.xds, "default/web-1", &forged).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("invalid"), "{status:?}");

    zone.stop().await;
    global.stop().await;
}

/// Waits until the restarted zone has its mesh again from the global.
async fn zone_is_back(zone: &Zone, data: &Path) {
    assert!(data.join("admin-token").exists());
    test_support::eventually("the default mesh back in the zone", DEADLINE, || {
        zone.get("/meshes/default")
    })
    .await
    .unwrap();
}
