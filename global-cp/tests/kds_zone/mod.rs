//! A zone for the global's cluster tests: its own sled store holding a Dataplane `web`, and the
//! real KDS client (`kds::client::run`) dialling the given KDS addresses in turn, over TLS with
//! the cluster's shared KDS CA and a zone token.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use mesh_store::{ResourceStore, SledStore};
use serde_json::{json, Value};

/// A zone token for `zone`, issued by the global node whose API is `api` (admin `admin`).
pub async fn zone_token(client: &reqwest::Client, api: &str, admin: &str, zone: &str) -> String {
    let response: Value = client
        .post(format!("{api}/tokens/zone"))
        .bearer_auth(admin)
        .json(&json!({"zone": zone, "validFor": "1h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["token"].as_str().unwrap().to_owned()
}

/// `zone`'s item of the zones overview of the global node whose API is `api`.
pub async fn overview_item(client: &reqwest::Client, api: &str, zone: &str) -> Option<Value> {
    let page: Value = client
        .get(format!("{api}/zones/_overview"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    page["items"]
        .as_array()?
        .iter()
        .find(|item| item["name"] == zone)
        .cloned()
}

/// The Dataplane `web` a test zone holds, as its inventory.
pub fn web_dataplane() -> mesh_api::Resource {
    mesh_api::parse_documents(
        "type: Dataplane\nname: web\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 80\n      tags:\n        kuma.io/service: web\n",
    )
    .remove(0)
    .unwrap()
    .resource
}

pub struct TestZone {
    pub name: &'static str,
    pub store: Arc<dyn ResourceStore>,
    ca: Vec<u8>,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), kds::ClientError>>>,
    _dir: tempfile::TempDir,
}

impl TestZone {
    /// A zone with a Dataplane `web` in its store, connected to `addresses`
    /// (`https://host:port` of global nodes' KDS listeners).
    pub async fn start(
        name: &'static str,
        addresses: Vec<String>,
        ca: Vec<u8>,
        token: String,
    ) -> TestZone {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ResourceStore> = Arc::new(SledStore::open(dir.path()).unwrap());
        store.create(web_dataplane()).await.unwrap();
        let mut zone = TestZone {
            name,
            store,
            ca,
            token,
            stop: None,
            task: None,
            _dir: dir,
        };
        zone.connect(addresses);
        zone
    }

    /// Starts the KDS client (again) towards `addresses`.
    pub fn connect(&mut self, addresses: Vec<String>) {
        let mut config =
            kds::client::KdsClientConfig::new(self.name, addresses[0].clone(), self.store.clone());
        config.global_addresses = addresses;
        config.tls = Some(kds::tls::client_tls_config(&self.ca, "127.0.0.1"));
        config.token = kds::client::TokenSource::Static(self.token.clone());
        config.backoff.initial = Duration::from_millis(50);
        config.backoff.max = Duration::from_millis(500);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(kds::client::run(config, async {
            let _ = rx.await;
        })));
    }

    /// Disconnects cleanly (as a zone CP stopping does).
    pub async fn disconnect(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}
