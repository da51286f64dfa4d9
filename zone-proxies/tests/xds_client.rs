//! The zone proxy's xDS client against a real zone CP (`zone_cp::run` in-process): the proxy
//! (`zone_proxies::run::run`, as the binary runs it) gets a complete configuration for its
//! Dataplane with mTLS (listeners, routes, clusters, endpoints, secrets) and becomes ready; a
//! Dataplane created elsewhere reaches it; the zone CP restarted, it keeps its configuration and
//! reconnects; a policy whose configuration it cannot carry out is NACKed, which the zone CP's
//! insight shows, and the configuration it had stays.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use zone_proxies::config::{ChainHandler, ProxyConfig, RouteSource};
use zone_proxies::run::{run, ConfigSource, Shutdown};
use zone_proxies::xds::client::ClientOptions;
use zone_proxies::xds::LISTENER_TYPE;

const WAIT: Duration = Duration::from_secs(30);

/// A zone CP running in-process on a data directory.
struct ZoneCp {
    api: String,
    xds: SocketAddr,
    admin: String,
    http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ZoneCp {
    /// Starts on `data_dir`; on `xds` when given (a restart), else on an ephemeral port.
    async fn start(data_dir: &Path, api: Option<SocketAddr>, xds: Option<SocketAddr>) -> ZoneCp {
        let any = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
        let config = zone_cp::Config::try_parse_from([
            "zone-cp".to_owned(),
            "--zone".to_owned(),
            "zone-1".to_owned(),
            "--data-dir".to_owned(),
            data_dir.to_str().unwrap().to_owned(),
            "--api-addr".to_owned(),
            api.unwrap_or(any).to_string(),
            "--diagnostics-addr".to_owned(),
            any.to_string(),
            "--xds-addr".to_owned(),
            xds.unwrap_or(any).to_string(),
        ])
        .unwrap();
        let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
        let api = format!("http://{}", listeners.api.local_addr().unwrap());
        let xds = listeners.xds.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(zone_cp::run(config, listeners, async {
            let _ = stopped.await;
        }));
        let token_file = data_dir.join(control_plane::auth::ADMIN_TOKEN_FILE);
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
        ZoneCp {
            api,
            xds,
            admin,
            http: reqwest::Client::new(),
            stop,
            task,
        }
    }

    fn api_addr(&self) -> SocketAddr {
        self.api.trim_start_matches("http://").parse().unwrap()
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

    async fn delete(&self, path: &str) {
        let response = self
            .http
            .delete(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "DELETE {path}");
    }

    async fn dataplane_token(&self, name: &str) -> String {
        let reply: Value = self
            .http
            .post(format!("{}/tokens/dataplane", self.api))
            .bearer_auth(&self.admin)
            .json(&json!({"mesh": "default", "name": name, "validFor": "1h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["token"].as_str().expect("a token").to_string()
    }

    /// Waits until the insight of Dataplane `name` satisfies `check`.
    async fn insight_until(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let url = format!("{}/meshes/default/dataplanes+insights/{name}", self.api);
        test_support::eventually(what, WAIT, || {
            let request = self.http.get(&url);
            let check = &check;
            async move {
                let body: Value = request.send().await.ok()?.json().await.ok()?;
                check(&body["dataplaneInsight"]).then(|| body["dataplaneInsight"].clone())
            }
        })
        .await
        .unwrap()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the zone CP stops")
            .unwrap()
            .unwrap();
    }
}

fn dataplane(name: &str, address: &str, service: &str, outbound: bool) -> Value {
    let mut networking = json!({
        "address": address,
        "inbound": [{"port": 15000, "servicePort": 8080,
                     "tags": {"kuma.io/service": service, "kuma.io/protocol": "http"}}]
    });
    if outbound {
        networking["outbound"] = json!([{"port": 10001, "tags": {"kuma.io/service": "api"}}]);
    }
    json!({"type": "Dataplane", "mesh": "default", "name": name, "networking": networking})
}

/// Waits until the published configuration satisfies `check` (on each publication, with a
/// deadline).
async fn config_until(
    rx: &mut watch::Receiver<Arc<ProxyConfig>>,
    what: &str,
    check: impl Fn(&ProxyConfig) -> bool,
) -> Arc<ProxyConfig> {
    match tokio::time::timeout(WAIT, rx.wait_for(|c| check(c))).await {
        Ok(Ok(config)) => config.clone(),
        Ok(Err(_)) => panic!("{what}: the proxy stopped publishing"),
        Err(_) => panic!("{what}: not within {WAIT:?}; last: {:#?}", rx.borrow()),
    }
}

fn api_endpoints(config: &ProxyConfig) -> usize {
    config
        .endpoints
        .get("api")
        .map_or(0, |a| a.localities.iter().map(|l| l.endpoints.len()).sum())
}

async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{admin}{path}")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_its_zone_cp() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ZoneCp::start(dir.path(), None, None).await;
    cp.put(
        "/meshes/default",
        json!({"type": "Mesh", "name": "default",
               "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
    )
    .await;
    cp.put(
        "/meshes/default/dataplanes/web-1",
        dataplane("web-1", "10.0.0.1", "web", true),
    )
    .await;
    cp.put(
        "/meshes/default/dataplanes/api-1",
        dataplane("api-1", "10.0.0.2", "api", false),
    )
    .await;
    let token_file = dir.path().join("web-1.token");
    std::fs::write(&token_file, cp.dataplane_token("web-1").await).unwrap();

    // The proxy, as `zone-proxy run --mode sidecar --cp ... --name web-1` runs it; the data path
    // hands the configuration watch to the test.
    let mut options = ClientOptions::new(format!("http://{}", cp.xds), "default/web-1");
    options.token_file = Some(token_file);
    options.backoff_max = Duration::from_secs(1);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (config_tx, config_rx) = oneshot::channel();
    let data_path = move |config: watch::Receiver<Arc<ProxyConfig>>, shutdown: Shutdown| {
        let _ = config_tx.send(config);
        async move {
            shutdown.await;
            Ok::<(), std::convert::Infallible>(())
        }
    };
    let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
    let proxy = tokio::spawn(run(
        ConfigSource::Ads(options),
        admin,
        Arc::new(|| "upstream_rq_total{cluster=\"api\"} 0\n".to_owned()),
        data_path,
        async {
            let _ = proxy_stopped.await;
        },
    ));
    let mut config = config_rx.await.unwrap();

    // A complete configuration.
    let first = config_until(&mut config, "a complete configuration", |c| {
        c.listeners.contains_key("inbound:10.0.0.1:15000")
            && c.listeners.contains_key("outbound:127.0.0.1:10001")
            && api_endpoints(c) == 1
    })
    .await;
    let outbound = &first.listeners["outbound:127.0.0.1:10001"];
    let ChainHandler::Http(http) = &outbound.filter_chains[0].handler else {
        panic!("HTTP outbound expected");
    };
    let RouteSource::Rds(route_name) = &http.routes else {
        panic!("RDS expected");
    };
    assert!(first.routes.contains_key(route_name), "routes arrive with their listener");
    assert!(first.clusters.contains_key("api"));
    for secret in ["identity_cert:default", "mesh_ca:default"] {
        assert!(first.secrets.contains_key(secret), "{secret}: {:?}", first.secrets.keys());
    }
    assert_eq!(admin_get(admin_addr, "/ready").await.0, 200);
    let (status, dump) = admin_get(admin_addr, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert!(
        dump["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "inbound:10.0.0.1:15000"),
        "{dump}"
    );
    assert!(!dump.to_string().contains("PRIVATE KEY"), "keys are redacted");
    let (status, stats) = admin_get(admin_addr, "/stats/prometheus").await;
    assert_eq!((status, stats.as_str()), (200, "upstream_rq_total{cluster=\"api\"} 0\n"));
    cp.insight_until("web-1", "web-1 online and ACKing listeners", |i| {
        i["online"] == true && i["xds"][LISTENER_TYPE]["lastAckedVersion"].is_string()
    })
    .await;

    // A Dataplane created elsewhere reaches the proxy.
    cp.put(
        "/meshes/default/dataplanes/api-2",
        dataplane("api-2", "10.0.0.3", "api", false),
    )
    .await;
    config_until(&mut config, "the second api endpoint", |c| api_endpoints(c) == 2).await;

    // The zone CP restarts: the proxy keeps its configuration while it is away, then
    // reconnects and follows changes again.
    let (api_addr, xds_addr) = (cp.api_addr(), cp.xds);
    cp.stop().await;
    let kept = config.borrow().clone();
    assert_eq!(api_endpoints(&kept), 2);
    assert_eq!(admin_get(admin_addr, "/ready").await.0, 200, "still ready");
    let cp = ZoneCp::start(dir.path(), Some(api_addr), Some(xds_addr)).await;
    cp.insight_until("web-1", "web-1 reconnected", |i| i["online"] == true)
        .await;
    cp.put(
        "/meshes/default/dataplanes/api-3",
        dataplane("api-3", "10.0.0.4", "api", false),
    )
    .await;
    config_until(&mut config, "the third api endpoint after the restart", |c| {
        api_endpoints(c) == 3
    })
    .await;

    // A connection rate limit is something this proxy cannot carry out: the listeners are
    // NACKed, the zone CP records why, and the proxy keeps the listeners it had.
    let before = config.borrow().clone();
    cp.put(
        "/meshes/default/meshratelimits/web-connections",
        json!({"type": "MeshRateLimit", "mesh": "default", "name": "web-connections", "spec": {
            "targetRef": {"kind": "MeshService", "name": "web"},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {
                "tcp": {"connectionRate": {"num": 5, "interval": "1s"}}}}}]
        }}),
    )
    .await;
    let insight = cp
        .insight_until("web-1", "the listener NACK", |i| {
            i["xds"][LISTENER_TYPE]["lastNack"]["message"].is_string()
        })
        .await;
    let message = insight["xds"][LISTENER_TYPE]["lastNack"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("listener \"inbound:10.0.0.1:15000\"")
            && message.contains("unsupported filter type")
            && message.contains("local_ratelimit"),
        "{message}"
    );
    assert_eq!(
        config.borrow().listeners,
        before.listeners,
        "the NACKed listeners are not applied"
    );
    // Removing the policy makes the listeners acceptable again.
    cp.delete("/meshes/default/meshratelimits/web-connections").await;
    let acked = insight["xds"][LISTENER_TYPE]["lastAckedVersion"].clone();
    cp.insight_until("web-1", "listeners ACKed again", |i| {
        i["xds"][LISTENER_TYPE]["lastAckedVersion"] != acked
    })
    .await;

    stop_proxy.send(()).unwrap();
    tokio::time::timeout(WAIT, proxy)
        .await
        .expect("the proxy stops")
        .unwrap()
        .unwrap();
    cp.stop().await;
}
