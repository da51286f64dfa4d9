//! The zone proxy's xDS client against a real zone CP (`zone_cp::run` in-process): the proxy
//! (`zone_proxies::run::run`, as the binary runs it) gets a complete configuration for its
//! Dataplane with mTLS (listeners, routes, clusters, endpoints, secrets) and becomes ready; a
//! Dataplane created elsewhere reaches it; the zone CP restarted, it keeps its configuration and
//! reconnects; a policy whose configuration it cannot carry out (a MeshRetry back-off ceiling
//! under its base) is NACKed, which the zone CP's insight shows, and the configuration it had
//! stays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use zone_proxies::config::{ChainHandler, ProxyConfig, RouteSource};
use zone_proxies::run::{run, ConfigSource, Shutdown};
use zone_proxies::xds::client::ClientOptions;
use zone_proxies::xds::{LISTENER_TYPE, ROUTE_TYPE};

const WAIT: Duration = Duration::from_secs(30);

mod zone_cp;
use zone_cp::ZoneCp;

/// A TCP relay in front of the zone CP's xDS port: the proxy connects through it, so a zone CP
/// restart can look as it does between processes. (In-process, a stopped zone CP's open HTTP/2
/// connections stay alive in the runtime; a real restart resets them.) Pointing it at a new
/// target drops every relayed connection.
struct Relay {
    addr: SocketAddr,
    target: watch::Sender<SocketAddr>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (target, target_rx) = watch::channel(target);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut target_rx = target_rx.clone();
                let to = *target_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = target_rx.changed() => {}
                    }
                });
            }
        });
        Relay { addr, target }
    }

    fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(target);
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
    let outcome = tokio::time::timeout(WAIT, rx.wait_for(|c| check(c)))
        .await
        .map(|r| r.map(|config| config.clone()));
    match outcome {
        Ok(Ok(config)) => config,
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
    let cp = ZoneCp::start(dir.path()).await;
    let relay = Relay::start(cp.xds).await;
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
    let mut options = ClientOptions::new(format!("http://{}", relay.addr), "default/web-1");
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

    // A complete configuration, with mTLS once the mesh's CA exists (the zone CP creates it
    // just after the Mesh, so a first configuration may come without).
    let first = config_until(&mut config, "a complete configuration", |c| {
        c.listeners.contains_key("inbound:10.0.0.1:15000")
            && c.listeners.contains_key("outbound:127.0.0.1:10001")
            && api_endpoints(c) == 1
            && c.listeners["inbound:10.0.0.1:15000"].filter_chains[0]
                .tls
                .is_some()
            && c.secrets.len() == 2
    })
    .await;
    let outbound = &first.listeners["outbound:127.0.0.1:10001"];
    let ChainHandler::Http(http) = &outbound.filter_chains[0].handler else {
        panic!("HTTP outbound expected");
    };
    let RouteSource::Rds(route_name) = &http.routes else {
        panic!("RDS expected");
    };
    assert!(
        first.routes.contains_key(route_name),
        "routes arrive with their listener"
    );
    assert!(first.clusters.contains_key("api"));
    for secret in ["identity_cert:default", "mesh_ca:default"] {
        assert!(
            first.secrets.contains_key(secret),
            "{secret}: {:?}",
            first.secrets.keys()
        );
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
    assert!(
        !dump.to_string().contains("PRIVATE KEY"),
        "keys are redacted"
    );
    let (status, stats) = admin_get(admin_addr, "/stats/prometheus").await;
    assert_eq!(
        (status, stats.as_str()),
        (200, "upstream_rq_total{cluster=\"api\"} 0\n")
    );
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
    config_until(&mut config, "the second api endpoint", |c| {
        api_endpoints(c) == 2
    })
    .await;

    // The zone CP restarts: the proxy keeps its configuration while it is away, then
    // reconnects and follows changes again.
    // As when its process dies: its connections are reset and nothing listens until it is back.
    // (Cut first, so the in-process zone CP has no open stream keeping its store open.)
    relay.retarget("127.0.0.1:1".parse().unwrap());
    cp.stop().await;
    let kept = config.borrow().clone();
    assert_eq!(api_endpoints(&kept), 2);
    assert_eq!(admin_get(admin_addr, "/ready").await.0, 200, "still ready");
    let cp = ZoneCp::start(dir.path()).await;
    relay.retarget(cp.xds);
    cp.insight_until("web-1", "web-1 reconnected", |i| i["online"] == true)
        .await;
    cp.put(
        "/meshes/default/dataplanes/api-3",
        dataplane("api-3", "10.0.0.4", "api", false),
    )
    .await;
    config_until(
        &mut config,
        "the third api endpoint after the restart",
        |c| api_endpoints(c) == 3,
    )
    .await;

    // A MeshRetry whose back-off ceiling is under its base is accepted by the zone CP (as by
    // Kuma's) and passed on, but no proxy can carry it out (Envoy refuses
    // `max_interval < base_interval` too): the route configuration is NACKed, the zone CP
    // records why, and the proxy keeps the routes it had.
    let before = config.borrow().clone();
    cp.put(
        "/meshes/default/meshretries/inverted-backoff",
        json!({"type": "MeshRetry", "mesh": "default", "name": "inverted-backoff", "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "api"}, "default": {"http": {
                "numRetries": 2, "backOff": {"baseInterval": "2s", "maxInterval": "1s"}}}}]
        }}),
    )
    .await;
    let insight = cp
        .insight_until("web-1", "the route NACK", |i| {
            i["xds"][ROUTE_TYPE]["lastNack"]["message"].is_string()
        })
        .await;
    let message = insight["xds"][ROUTE_TYPE]["lastNack"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("route configuration \"outbound:api\"")
            && message.contains("retry_back_off.max_interval: less than base_interval"),
        "{message}"
    );
    assert_eq!(
        config.borrow().routes,
        before.routes,
        "the NACKed routes are not applied"
    );
    // Removing the policy makes the routes acceptable again.
    cp.delete("/meshes/default/meshretries/inverted-backoff")
        .await;
    // (The routes are what they were before the policy, so their version is too: the ACK
    // shows in its time.)
    let acked_at = insight["xds"][ROUTE_TYPE]["lastAckedAt"].clone();
    cp.insight_until("web-1", "routes ACKed again", |i| {
        i["xds"][ROUTE_TYPE]["lastAckedAt"] != acked_at
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
