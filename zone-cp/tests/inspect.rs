//! Dataplane inspection end to end, through `zone_cp::run`: the Envoy JSON of a proxy's
//! configuration (`/xds`), the policies that apply to it (`/_policies`), and its insight
//! (`dataplanes+insights`) as a proxy (envoy-types' ADS client) connects, ACKs, NACKs and leaves.

use std::time::Duration;

use clap::Parser as _;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const WAIT: Duration = Duration::from_secs(20);

struct Cp {
    _dir: tempfile::TempDir,
    api: String,
    xds: String,
    admin: String,
    http: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Cp {
    async fn start() -> Cp {
        let dir = tempfile::tempdir().unwrap();
        let config = zone_cp::Config::try_parse_from([
            "zone-cp",
            "--zone",
            "zone-1",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
        let api = format!("http://{}", listeners.api.local_addr().unwrap());
        let xds = format!("http://{}", listeners.xds.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(zone_cp::run(config, listeners, async {
            let _ = stopped.await;
        }));
        let token_file = dir.path().join(control_plane::auth::ADMIN_TOKEN_FILE);
        let admin = test_support::eventually("the admin token", WAIT, || {
            let file = token_file.clone();
            async move {
                std::fs::read_to_string(&file)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            }
        })
        .await
        .unwrap()
        .trim()
        .to_string();
        Cp {
            _dir: dir,
            api,
            xds,
            admin,
            http: reqwest::Client::new(),
            stop,
            task,
        }
    }

    async fn put(&self, path: &str, body: Value) {
        let response = self
            .http
            .put(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT {path}: {:?}",
            response.text().await
        );
    }

    /// GETs `path` (with the admin token when `admin`); the status and the JSON body.
    async fn get(&self, path: &str, admin: bool) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.api));
        if admin {
            request = request.bearer_auth(&self.admin);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path, true).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn token(&self, mesh: &str, name: &str) -> String {
        let reply: Value = self
            .http
            .post(format!("{}/tokens/dataplane", self.api))
            .bearer_auth(&self.admin)
            .json(&json!({"mesh": mesh, "name": name, "validFor": "1h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["token"].as_str().expect("a token").to_string()
    }

    /// Waits until `/dataplanes+insights/{name}` satisfies `check`; returns the insight.
    async fn insight_until(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/meshes/default/dataplanes+insights/{name}");
        test_support::eventually(what, WAIT, || {
            let path = path.clone();
            let check = &check;
            async move {
                let (status, body) = self.get(&path, false).await;
                (status == 200 && check(&body["dataplaneInsight"]))
                    .then(|| body["dataplaneInsight"].clone())
            }
        })
        .await
        .unwrap()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the zone CP stops")
            .unwrap()
            .unwrap();
    }
}

/// A state-of-the-world ADS stream of `default/web-1`.
struct Proxy {
    tx: mpsc::Sender<DiscoveryRequest>,
    stream: tonic::Streaming<DiscoveryResponse>,
}

impl Proxy {
    async fn connect(xds: &str, token: &str) -> Proxy {
        let mut client = AggregatedDiscoveryServiceClient::connect(xds.to_string())
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tx.send(Proxy::request(LISTENER_TYPE, "", "", None))
            .await
            .unwrap();
        let stream = client
            .stream_aggregated_resources(request)
            .await
            .unwrap()
            .into_inner();
        Proxy { tx, stream }
    }

    fn request(type_url: &str, version: &str, nonce: &str, nack: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(Node {
                id: "default/web-1".into(),
                ..Node::default()
            }),
            type_url: type_url.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: nack.map(|message| rpc::Status {
                code: 3,
                message: message.into(),
                ..rpc::Status::default()
            }),
            ..DiscoveryRequest::default()
        }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.tx.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.stream.message())
            .await
            .expect("a response in time")
            .unwrap()
            .expect("stream open")
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn dataplane_config_policies_and_insight() {
    let cp = Cp::start().await;
    cp.put(
        "/meshes/default/dataplanes/web-1",
        json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": 15000, "servicePort": 8080, "tags": {"kuma.io/service": "web"}}],
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "api"}}]
        }}),
    )
    .await;
    cp.put(
        "/meshes/default/dataplanes/api-1",
        json!({"type": "Dataplane", "mesh": "default", "name": "api-1", "networking": {
            "address": "10.0.0.2",
            "inbound": [{"port": 15000, "servicePort": 9090,
                         "tags": {"kuma.io/service": "api", "kuma.io/protocol": "http"}}]
        }}),
    )
    .await;
    // The inspection routes sit beside the generic ones without shadowing them.
    let (status, plain) = cp.get("/meshes/default/dataplanes/web-1", false).await;
    assert_eq!((status, plain["name"].clone()), (200, json!("web-1")));

    // --- the Envoy configuration, before any proxy connected (built from the store) ---
    let (status, refused) = cp.get("/meshes/default/dataplanes/web-1/xds", false).await;
    assert_eq!(status, 401, "{refused}");
    let dump = cp.ok("/meshes/default/dataplanes/web-1/xds").await;
    assert!(
        dump["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{dump}"
    );
    let listeners = &dump["listeners"];
    let inbound = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "inbound:10.0.0.1:15000")
        .unwrap_or_else(|| panic!("no inbound listener: {listeners}"));
    assert_eq!(inbound["@type"], LISTENER_TYPE);
    assert_eq!(inbound["address"]["socketAddress"]["portValue"], 15000);
    let filter = &inbound["filterChains"][0]["filters"][0];
    assert_eq!(
        filter["name"], "envoy.filters.network.tcp_proxy",
        "{inbound}"
    );
    assert_eq!(filter["typedConfig"]["@type"], TCP_PROXY_TYPE, "{inbound}");
    assert_eq!(
        filter["typedConfig"]["cluster"], "localhost:8080",
        "{inbound}"
    );
    // The outbound to the HTTP service goes through an HTTP connection manager and RDS.
    let outbound = listeners
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "outbound:127.0.0.1:10001")
        .unwrap_or_else(|| panic!("no outbound listener: {listeners}"));
    assert_eq!(
        outbound["filterChains"][0]["filters"][0]["typedConfig"]["@type"], HCM_TYPE,
        "{outbound}"
    );
    assert!(!dump["routes"].as_array().unwrap().is_empty(), "{dump}");
    assert!(
        names(&dump["clusters"]).contains(&"api".to_string()),
        "{dump}"
    );
    assert!(names(&dump["clusters"]).contains(&"localhost:8080".to_string()));
    assert_eq!(
        dump["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["clusterName"] == "api")
            .map(
                |e| e["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
                    ["address"]
                    .clone()
            ),
        Some(json!("10.0.0.2")),
        "{dump}"
    );
    let (status, missing) = cp.get("/meshes/default/dataplanes/nope/xds", true).await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["title"], "Not Found");
    assert!(
        missing["details"].as_str().unwrap().contains("nope"),
        "{missing}"
    );

    // --- the policies that apply: the mesh's default ones ---
    let policies = cp.ok("/meshes/default/dataplanes/web-1/_policies").await;
    let of_type = |t: &str| {
        policies["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} in {policies}"))
    };
    let timeouts = of_type("MeshTimeout");
    assert_eq!(
        timeouts["applied"][0]["name"], "mesh-timeout-all-default",
        "{timeouts}"
    );
    assert_eq!(timeouts["applied"][0]["targetRef"]["kind"], "Mesh");
    assert_eq!(timeouts["to"][0]["targetRef"]["kind"], "Mesh", "{timeouts}");
    assert!(
        timeouts["to"][0]["conf"]["connectionTimeout"].is_string(),
        "{timeouts}"
    );
    let permissions = of_type("MeshTrafficPermission");
    assert_eq!(permissions["applied"][0]["name"], "allow-all-default");
    assert_eq!(
        permissions["from"][0]["conf"]["action"], "Allow",
        "{permissions}"
    );
    for t in ["MeshRetry", "MeshCircuitBreaker"] {
        assert!(!of_type(t)["applied"].as_array().unwrap().is_empty());
    }
    let (status, _) = cp
        .get("/meshes/default/dataplanes/nope/_policies", false)
        .await;
    assert_eq!(status, 404);

    // --- insight: never connected, then online with ACKs, a NACK, offline ---
    let list = cp.ok("/meshes/default/dataplanes+insights?size=1").await;
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert!(
        list["next"]
            .as_str()
            .is_some_and(|n| n.contains("dataplanes+insights")),
        "{list}"
    );
    let first = &list["items"][0];
    assert_eq!(first["type"], "DataplaneOverview");
    assert_eq!(first["name"], "api-1");
    assert_eq!(first["dataplane"]["networking"]["address"], "10.0.0.2");
    assert_eq!(first["dataplaneInsight"]["online"], false);
    let (status, _) = cp
        .get("/meshes/default/dataplanes+insights/nope", false)
        .await;
    assert_eq!(status, 404);

    let token = cp.token("default", "web-1").await;
    let mut proxy = Proxy::connect(&cp.xds, &token).await;
    let lds = proxy.next().await;
    assert_eq!(lds.type_url, LISTENER_TYPE);
    proxy
        .send(Proxy::request(
            LISTENER_TYPE,
            &lds.version_info,
            &lds.nonce,
            None,
        ))
        .await;
    let insight = cp
        .insight_until("web-1", "web-1 online with its LDS ACKed", |i| {
            i["online"] == true && i["xds"][LISTENER_TYPE]["lastAckedVersion"] == lds.version_info
        })
        .await;
    assert!(insight["connectedSince"].is_string(), "{insight}");
    assert_eq!(insight["disconnectedAt"], Value::Null);
    // Connected now: /xds serves what was published to the proxy.
    let published = cp.ok("/meshes/default/dataplanes/web-1/xds").await;
    assert_eq!(published["version"], dump["version"]);

    proxy.send(Proxy::request(CLUSTER_TYPE, "", "", None)).await;
    let cds = proxy.next().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    proxy
        .send(Proxy::request(
            CLUSTER_TYPE,
            "",
            &cds.nonce,
            Some("cluster api: unknown field"),
        ))
        .await;
    let insight = cp
        .insight_until("web-1", "the CDS NACK in the insight", |i| {
            i["xds"][CLUSTER_TYPE]["lastNack"]["message"] == "cluster api: unknown field"
        })
        .await;
    assert_eq!(insight["xds"][CLUSTER_TYPE]["lastNack"]["nonce"], cds.nonce);
    assert_eq!(
        insight["xds"][CLUSTER_TYPE]["lastAckedVersion"],
        Value::Null
    );
    assert_eq!(insight["online"], true);

    drop(proxy);
    let insight = cp
        .insight_until("web-1", "web-1 offline after it disconnected", |i| {
            i["online"] == false
        })
        .await;
    assert!(insight["disconnectedAt"].is_string(), "{insight}");
    // The last known state stays visible while offline.
    assert_eq!(
        insight["xds"][LISTENER_TYPE]["lastAckedVersion"],
        lds.version_info
    );

    cp.stop().await;
}
