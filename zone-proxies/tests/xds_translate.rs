//! The zone CP's golden configurations (xds-server/tests/golden: a sidecar of web and of api, a
//! zone ingress and a zone egress) read back with config-dump and translated: every resource
//! translates, the pieces the data path depends on come out as generated, and broken resources
//! are refused with errors naming the resource and the field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use zone_proxies::config::{
    ChainHandler, Discovery, EndpointAddress, HttpManager, LbPolicy, PathMatch, Principal,
    RbacAction, RouteAction, RouteSource, Secret, UpstreamProtocol, ValueMatch,
};
use zone_proxies::xds::resources::Resources;
use zone_proxies::xds::static_file::{resources_from_json, StaticError};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../xds-server/tests/golden")
}

/// A golden dump with its redacted private key replaced by the PKI file's (as an operator
/// running `--static` from a dump would do).
fn golden(name: &str, key: Option<&str>) -> Value {
    let dir = golden_dir();
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let mut dump: Value = serde_json::from_str(&text).unwrap();
    if let Some(key) = key {
        let pem = std::fs::read_to_string(dir.join("pki").join(key)).unwrap();
        for secret in dump["secrets"].as_array_mut().unwrap() {
            if let Some(cert) = secret.get_mut("tlsCertificate") {
                cert["privateKey"] = json!({ "inlineString": pem });
            }
        }
    }
    dump
}

fn translate(name: &str, key: Option<&str>) -> Resources {
    resources_from_json(name, &golden(name, key))
        .unwrap_or_else(|e| panic!("{name}.json does not translate: {e}"))
}

fn http(chain_handler: &ChainHandler) -> &HttpManager {
    match chain_handler {
        ChainHandler::Http(h) => h,
        other => panic!("not HTTP: {other:?}"),
    }
}

#[test]
fn the_web_sidecar_translates() {
    let config = translate("web", Some("web.key.pem")).config();
    // api listeners (gRPC proxyless) have no socket.
    assert_eq!(
        config.listeners.keys().collect::<Vec<_>>(),
        ["inbound:10.1.0.1:15000", "outbound:127.0.0.1:10001"]
    );
    let inbound = &config.listeners["inbound:10.1.0.1:15000"];
    assert_eq!(
        inbound.address,
        "10.1.0.1:15000".parse::<SocketAddr>().unwrap()
    );
    let chain = &inbound.filter_chains[0];
    let tls = chain.tls.as_ref().expect("inbound mTLS");
    assert_eq!(tls.certificate, "identity_cert:default");
    assert_eq!(tls.trusted_ca.as_deref(), Some("mesh_ca:default"));
    assert!(tls.require_client_certificate);
    assert_eq!(
        tls.match_san,
        [ValueMatch::Prefix("spiffe://default/".into())]
    );
    let manager = http(&chain.handler);
    // An empty RBAC allow list: nobody is allowed (no MeshTrafficPermission for web).
    let rbac = manager.rbac.as_ref().expect("rbac");
    assert_eq!(rbac.action, RbacAction::Allow);
    assert!(rbac.policies.is_empty());
    assert_eq!(manager.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(manager.access_logs[0].path, "/dev/stdout");
    let RouteSource::Inline(table) = &manager.routes else {
        panic!("inline routes expected");
    };
    let route = &table.virtual_hosts[0].routes[0];
    assert_eq!(route.matcher.path, PathMatch::Prefix(String::new()));
    let RouteAction::Forward(forward) = &route.action else {
        panic!("forward expected");
    };
    assert_eq!(forward.clusters[0].name, "localhost:8080");
    assert_eq!(forward.timeout, None, "timeout 0s disables it");

    let outbound = &config.listeners["outbound:127.0.0.1:10001"];
    let manager = http(&outbound.filter_chains[0].handler);
    assert_eq!(manager.routes, RouteSource::Rds("outbound:api".into()));
    let table = &config.routes["outbound:api"];
    let RouteAction::Forward(forward) = &table.virtual_hosts[0].routes[0].action else {
        panic!("forward expected");
    };
    let split: Vec<(&str, u32)> = forward
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight))
        .collect();
    assert_eq!(split, [("api_63acdb7e", 90), ("api_1f0afdb2", 10)]);
    assert_eq!(forward.timeout, Some(Duration::from_secs(5)));
    let retry = forward.retry.as_ref().expect("retry policy");
    assert!(retry.retry_on.five_xx && retry.retry_on.reset && !retry.retry_on.gateway_error);
    assert_eq!(retry.num_retries, 3);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(retry.backoff_base, Duration::from_millis(100));
    assert_eq!(retry.backoff_max, Duration::from_secs(1));

    let api = &config.clusters["api"];
    assert_eq!(api.discovery, Discovery::Eds("api".into()));
    assert_eq!(api.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(api.connect_timeout, Duration::from_secs(2));
    assert_eq!(api.circuit_breakers.max_connections, 512);
    assert_eq!(api.circuit_breakers.max_pending_requests, 128);
    let outlier = api.outlier_detection.as_ref().unwrap();
    assert_eq!(outlier.consecutive_5xx, Some(10));
    assert_eq!(outlier.consecutive_gateway_failure, None);
    assert_eq!(outlier.max_ejection_percent, 20);
    assert_eq!(api.health_checks.len(), 1);
    assert_eq!(api.idle_timeout, Some(Duration::from_secs(1800)));
    assert_eq!(api.protocol, UpstreamProtocol::Downstream);
    let tls = api.tls.as_ref().unwrap();
    assert_eq!(tls.sni, "api.0.zone-1.default.mesh");
    assert_eq!(tls.certificate.as_deref(), Some("identity_cert:default"));
    assert_eq!(
        tls.match_san,
        [ValueMatch::Exact("spiffe://default/api".into())]
    );
    let (zone_match, zone_tls) = &api.tls_by_metadata[0];
    assert_eq!(zone_match.get("zone").map(String::as_str), Some("zone-2"));
    assert_eq!(zone_tls.as_ref().unwrap().sni, "api.0.zone-2.default.mesh");
    let Discovery::Static(local) = &config.clusters["localhost:8080"].discovery else {
        panic!("static expected");
    };
    assert_eq!(
        local.localities[0].endpoints[0].address,
        EndpointAddress::Socket("127.0.0.1:8080".parse().unwrap())
    );

    let endpoints = &config.endpoints["api"];
    assert_eq!(endpoints.overprovisioning_factor, 140);
    let priorities: Vec<(&str, u32, Option<u32>)> = endpoints
        .localities
        .iter()
        .map(|l| (l.zone.as_str(), l.priority, l.weight))
        .collect();
    assert_eq!(priorities, [("zone-1", 0, Some(2)), ("zone-2", 1, Some(2))]);
    let remote = &endpoints.localities[1].endpoints[0];
    assert_eq!(remote.weight, 2);
    assert_eq!(
        remote.metadata.get("zone").map(String::as_str),
        Some("zone-2")
    );

    assert!(matches!(
        config.secrets["identity_cert:default"].as_ref(),
        Secret::Certificate { key_pem, .. } if key_pem.contains("PRIVATE KEY")
    ));
    assert!(matches!(
        config.secrets["mesh_ca:default"].as_ref(),
        Secret::TrustedCa { ca_pem } if ca_pem.contains("BEGIN CERTIFICATE")
    ));
}

#[test]
fn the_api_sidecar_allows_web_only() {
    let config = translate("api", Some("api.key.pem")).config();
    let inbound = &config.listeners["inbound:10.1.0.2:15000"];
    let rbac = http(&inbound.filter_chains[0].handler)
        .rbac
        .clone()
        .unwrap();
    assert_eq!(rbac.action, RbacAction::Allow);
    assert_eq!(
        rbac.policies["MeshTrafficPermission"],
        [Principal::UriSan(ValueMatch::Exact(
            "spiffe://default/web".into()
        ))]
    );
}

#[test]
fn the_ingress_passes_tls_through_by_sni() {
    let config = translate("ingress", None).config();
    let listener = &config.listeners["ingress:10.1.0.10:10001"];
    assert!(listener.inspect_tls);
    let names: Vec<(&[String], Option<&str>)> = listener
        .filter_chains
        .iter()
        .map(|c| {
            let ChainHandler::Tcp(tcp) = &c.handler else {
                panic!("tcp expected");
            };
            assert!(c.tls.is_none(), "passthrough: no termination");
            (
                c.server_names.as_slice(),
                tcp.clusters.first().map(|c| c.name.as_str()),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            (
                &["api.0.zone-1.default.mesh".to_owned()][..],
                Some("default:api")
            ),
            // A chain per subset the mesh's routes reference (the SNI names its tags).
            (
                &["api.version.v1.0.t1.zone-1.default.mesh".to_owned()][..],
                Some("default:api_63acdb7e")
            ),
            (
                &["api.version.v2.0.t1.zone-1.default.mesh".to_owned()][..],
                Some("default:api_1f0afdb2")
            ),
            (
                &["web.0.zone-1.default.mesh".to_owned()][..],
                Some("default:web")
            ),
        ]
    );
    assert_eq!(
        config.endpoints["default:api"].localities[0]
            .endpoints
            .len(),
        2
    );
}

#[test]
fn the_egress_originates_tls_to_external_services() {
    let config = translate("egress", Some("zone-egress.key.pem")).config();
    let listener = &config.listeners["egress:10.1.0.20:10002"];
    let external = listener
        .filter_chains
        .iter()
        .find(|c| c.server_names == ["httpbin.443.external.default.mesh"])
        .unwrap();
    assert!(external.tls.as_ref().unwrap().require_client_certificate);
    let httpbin = &config.clusters["default:httpbin"];
    let Discovery::Static(assignment) = &httpbin.discovery else {
        panic!("static expected");
    };
    assert_eq!(
        assignment.localities[0].endpoints[0].address,
        EndpointAddress::Host("httpbin.org".into(), 443)
    );
    let tls = httpbin.tls.as_ref().unwrap();
    assert_eq!(tls.sni, "httpbin.org");
    assert_eq!(tls.match_san, [ValueMatch::Exact("httpbin.org".into())]);
    // The system bundle, given inline by file name, is a secret of its own.
    let ca = tls.trusted_ca.as_deref().unwrap();
    assert_eq!(ca, "file:/etc/ssl/certs/ca-certificates.crt");
    assert!(matches!(
        config.secrets[ca].as_ref(),
        Secret::TrustedCa { .. }
    ));
    assert!(Arc::strong_count(&config.secrets[ca]) >= 1);
}

/// The web golden with one resource changed by `edit`, translated.
fn web_with(edit: impl FnOnce(&mut Value)) -> StaticError {
    let mut dump = golden("web", Some("web.key.pem"));
    edit(&mut dump);
    resources_from_json("web", &dump).map(|_| ()).unwrap_err()
}

fn inbound(dump: &mut Value) -> &mut Value {
    dump["listeners"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["name"] == "inbound:10.1.0.1:15000")
        .unwrap()
}

#[test]
fn bad_resources_are_refused_naming_the_field() {
    let err = web_with(|dump| {
        let filters = inbound(dump)["filterChains"][0]["filters"]
            .as_array_mut()
            .unwrap();
        filters.insert(
            0,
            json!({"name": "envoy.filters.network.echo", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}}),
        );
    })
    .to_string();
    assert_eq!(
        err,
        "web: listener \"inbound:10.1.0.1:15000\": filter_chains[0].filters[0]: unsupported \
         filter type envoy.extensions.filters.network.echo.v3.Echo"
    );

    let err = web_with(|dump| {
        let hcm = &mut inbound(dump)["filterChains"][0]["filters"][0]["typedConfig"];
        hcm["routeConfig"]["virtualHosts"][0]["routes"][0] = json!({
            "match": {"prefix": "/"},
            "redirect": {"regexRewrite": {"pattern": {"regex": "^.*$"}, "substitution": "/x"}}
        });
    })
    .to_string();
    assert!(
        err.contains(
            "listener \"inbound:10.1.0.1:15000\": filter_chains[0].filters[0].typed_config.\
             route_config.virtual_hosts[0].routes[0].redirect.regex_rewrite: regex path \
             redirects are not supported"
        ),
        "{err}"
    );

    let err = web_with(|dump| {
        let cluster = dump["clusters"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == "api")
            .unwrap();
        cluster["healthChecks"][0] = json!({
            "interval": "1s", "timeout": "1s",
            "grpcHealthCheck": {"initialMetadata": [{"header": {"key": "a", "value": "b"}}]}
        });
    })
    .to_string();
    assert!(
        err.contains(
            "cluster \"api\": health_checks[0].grpc_health_check.initial_metadata: initial \
             metadata is not supported"
        ),
        "{err}"
    );

    let err = web_with(|dump| {
        dump["secrets"]
            .as_array_mut()
            .unwrap()
            .retain(|s| s["name"] != "mesh_ca:default");
    })
    .to_string();
    assert!(
        err.contains("secrets") && err.contains("mesh_ca:default"),
        "{err}"
    );

    // A dump as the zone CP serves it: the key is redacted.
    let dump = golden("web", None);
    let err = resources_from_json("web", &dump)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tlsCertificate.privateKey"), "{err}");
}

#[test]
fn a_refused_update_keeps_what_was_there() {
    let mut resources = translate("web", Some("web.key.pem"));
    let before = resources.config();
    let raw = resources.raw();
    let mut clusters: Vec<_> = raw[zone_proxies::xds::CLUSTER_TYPE]
        .values()
        .cloned()
        .collect();
    // Garbage bytes in one cluster.
    clusters[0].value = vec![0xff, 0xff, 0xff];
    let err = resources
        .replace(zone_proxies::xds::CLUSTER_TYPE, &clusters)
        .unwrap_err();
    assert!(err.to_string().contains("does not decode"), "{err}");
    assert_eq!(resources.config(), before);
}

/// `zone-proxy run --static FILE`: the file's configuration is published at once and the proxy
/// is ready; its admin `/config_dump` shows the same resources.
#[tokio::test]
async fn a_static_file_runs_the_same_translation() {
    use zone_proxies::run::{run, ConfigSource, Shutdown};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(&file, golden("web", Some("web.key.pem")).to_string()).unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (config_tx, config_rx) = tokio::sync::oneshot::channel();
    let data_path =
        move |config: tokio::sync::watch::Receiver<Arc<zone_proxies::config::ProxyConfig>>,
              shutdown: Shutdown| {
            let _ = config_tx.send(config);
            async move {
                shutdown.await;
                Ok::<(), std::convert::Infallible>(())
            }
        };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(run(
        ConfigSource::Static(file),
        admin,
        Arc::new(String::new),
        data_path,
        async {
            let _ = stopped.await;
        },
    ));
    let config = config_rx.await.unwrap();
    assert_eq!(
        **config.borrow(),
        translate("web", Some("web.key.pem")).config()
    );
    let ready = reqwest::get(format!("http://{admin_addr}/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let dump: Value = reqwest::get(format!("http://{admin_addr}/config_dump"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"api_63acdb7e") && names.contains(&"localhost:8080"),
        "{names:?}"
    );
    assert_eq!(
        dump["secrets"][0]["tlsCertificate"]["privateKey"],
        "[redacted]"
    );
    stop.send(()).unwrap();
    proxy.await.unwrap().unwrap();

    // A file that does not translate stops the proxy before it starts, saying why.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, golden("web", None).to_string()).unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err =
        run(
            ConfigSource::Static(broken),
            admin,
            Arc::new(String::new),
            |_: tokio::sync::watch::Receiver<Arc<zone_proxies::config::ProxyConfig>>,
             _: Shutdown| async { Ok::<(), std::convert::Infallible>(()) },
            std::future::pending(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.json") && err.contains("privateKey"),
        "{err}"
    );
}
