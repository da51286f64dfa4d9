//! Cross-zone configuration end to end, on real processes' code (a global and two zone control
//! planes, in-process, over KDS with TLS): a Mesh with builtin mTLS applied at the global gets
//! its CA, which reaches the zones; zone-2's ingress advertises the `backend` instances of
//! zone-2; a sidecar of zone-1 connecting over ADS gets `backend`'s endpoints through zone-2's
//! ingress at priority 1 (locality zone-2, weight = instances), a cluster whose transport socket
//! for zone-2 carries the SNI naming backend in zone-2, and over SDS a certificate for
//! `spiffe://default/web` issued by the mesh CA made at the global.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, data_source, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

mod common;
use common::{start_global, Global};

const DEADLINE: Duration = Duration::from_secs(60);
const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const SECRETS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 2h\n";

/// A zone control plane running in-process.
struct Zone {
    api: String,
    xds: String,
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_zone(dir: &Path, global: &Global, zone: &str) -> Zone {
    let config = global.zone_config(dir, zone).await;
    let data = dir.join(zone);
    let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
    let api = format!("http://{}", listeners.api.local_addr().unwrap());
    let xds = format!("http://{}", listeners.xds.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(zone_cp::run(config, listeners, async {
        let _ = stopped.await;
    }));
    let token = test_support::eventually("the zone's admin token", DEADLINE, || {
        let path = data.join("admin-token");
        async move { std::fs::read_to_string(path).ok() }
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
    async fn put(&self, path: &str, yaml: &str) {
        let status = reqwest::Client::new()
            .put(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "PUT {path} at {}: {status}", self.api);
    }

    async fn has(&self, path: &str) -> bool {
        reqwest::Client::new()
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    async fn dataplane_token(&self, mesh: &str, name: &str) -> String {
        let body: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/tokens/dataplane", self.api))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "mesh": mesh, "name": name }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A state-of-the-world ADS stream that ACKs everything and keeps the last response per type.
struct Proxy {
    tx: tokio::sync::mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: Node,
    last: std::collections::HashMap<String, DiscoveryResponse>,
}

impl Proxy {
    async fn connect(url: &str, node_id: &str, token: &str) -> Proxy {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_owned())
            .await
            .unwrap();
        let (tx, requests) = tokio::sync::mpsc::channel(16);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let node = Node {
            id: node_id.to_owned(),
            ..Node::default()
        };
        tx.send(DiscoveryRequest {
            node: Some(node.clone()),
            type_url: CLUSTERS.to_owned(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
        let rx = client
            .stream_aggregated_resources(request)
            .await
            .unwrap()
            .into_inner();
        Proxy {
            tx,
            rx,
            node,
            last: Default::default(),
        }
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.tx
            .send(DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.to_owned(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
    }

    /// Reads responses (ACKing each) until `done` holds for the last ones, or the deadline.
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(self) {
            let response = tokio::time::timeout_at(deadline, self.rx.message())
                .await
                .unwrap_or_else(|_| {
                    let held: Vec<(&String, &String)> = self
                        .last
                        .iter()
                        .map(|(t, r)| (t, &r.version_info))
                        .collect();
                    panic!("timed out waiting for {what}; last responses (type, version): {held:?}")
                })
                .unwrap()
                .expect("the stream ended");
            let ack = DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: response.type_url.clone(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                resource_names: self.names(&response.type_url),
                ..DiscoveryRequest::default()
            };
            self.tx.send(ack).await.unwrap();
            self.last.insert(response.type_url.clone(), response);
        }
    }

    fn names(&self, type_url: &str) -> Vec<String> {
        match type_url {
            ENDPOINTS => vec!["backend".to_owned()],
            SECRETS => vec![
                "identity_cert:default".to_owned(),
                "mesh_ca:default".to_owned(),
            ],
            _ => Vec::new(),
        }
    }

    fn decoded<M: prost::Message + Default>(&self, type_url: &str) -> Vec<M> {
        self.last
            .get(type_url)
            .map(|r| {
                r.resources
                    .iter()
                    .map(|any| M::decode(any.value.as_slice()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn remote_backend(proxy: &Proxy) -> Option<(u32, String, u32, String, u32)> {
    let cla = proxy
        .decoded::<ClusterLoadAssignment>(ENDPOINTS)
        .into_iter()
        .find(|c| c.cluster_name == "backend")?;
    let group = cla
        .endpoints
        .iter()
        .find(|g| g.locality.as_ref().is_some_and(|l| l.zone == "zone-2"))?;
    let endpoint = group.lb_endpoints.first()?;
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
        return None;
    };
    let Some(address::Address::SocketAddress(socket)) =
        e.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return None;
    };
    let port = match socket.port_specifier {
        Some(
            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p),
        ) => p,
        _ => 0,
    };
    Some((
        group.priority,
        socket.address.clone(),
        port,
        group.locality.as_ref().unwrap().zone.clone(),
        endpoint
            .load_balancing_weight
            .as_ref()
            .map_or(0, |w| w.value),
    ))
}

fn secret_pem(proxy: &Proxy, name: &str) -> Option<String> {
    let secret = proxy
        .decoded::<Secret>(SECRETS)
        .into_iter()
        .find(|s| s.name == name)?;
    let source = match secret.r#type? {
        secret::Type::TlsCertificate(cert) => cert.certificate_chain?,
        secret::Type::ValidationContext(ca) => ca.trusted_ca?,
        _ => return None,
    };
    match source.specifier? {
        data_source::Specifier::InlineString(pem) => Some(pem),
        data_source::Specifier::InlineBytes(bytes) => String::from_utf8(bytes).ok(),
        _ => None,
    }
}

#[tokio::test]

async fn a_sidecar_reaches_another_zone_through_its_ingress_with_a_mesh_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(&dir.path().join("global")).await;
    let status = global
        .send(
            global
                .client
                .put(format!("{}/meshes/default", global.api))
                .body(MESH.to_owned()),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "PUT /meshes/default: {status}"
    );
    let zone1 = start_zone(dir.path(), &global, "zone-1").await;
    let zone2 = start_zone(dir.path(), &global, "zone-2").await;
    for zone in [&zone1, &zone2] {
        test_support::eventually("the mesh CA in the zone", DEADLINE, || async {
            zone.has("/meshes/default/secrets/default.ca-builtin-cert-ca-1")
                .await
                .then_some(())
        })
        .await
        .unwrap();
    }

    zone2
        .put(
            "/meshes/default/dataplanes/backend-1",
            "type: Dataplane\nname: backend-1\nmesh: default\nnetworking:\n  address: 10.2.0.1\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: backend\n        kuma.io/protocol: http\n",
        )
        .await;
    zone2
        .put(
            "/meshes/default/dataplanes/backend-2",
            "type: Dataplane\nname: backend-2\nmesh: default\nnetworking:\n  address: 10.2.0.2\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: backend\n        kuma.io/protocol: http\n",
        )
        .await;
    zone2
        .put(
            "/zoneingresses/ingress-2",
            "type: ZoneIngress\nname: ingress-2\nnetworking:\n  address: 10.2.0.10\n  port: 10001\n  advertisedAddress: 192.0.2.2\n  advertisedPort: 20001\n",
        )
        .await;
    zone1
        .put(
            "/meshes/default/dataplanes/web-1",
            "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.1.0.1\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: web\n  outbound:\n    - port: 10001\n      tags:\n        kuma.io/service: backend\n",
        )
        .await;

    let token = zone1.dataplane_token("default", "web-1").await;
    let mut proxy = Proxy::connect(&zone1.xds, "default/web-1", &token).await;
    proxy.subscribe(ENDPOINTS, &["backend"]).await;
    proxy
        .subscribe(SECRETS, &["identity_cert:default", "mesh_ca:default"])
        .await;
    proxy
        .until(
            "backend's cluster, its zone-2 endpoints and the proxy's certificate",
            // Each type arrives in its own response: wait for all three.
            |p| {
                remote_backend(p).is_some()
                    && secret_pem(p, "identity_cert:default").is_some()
                    && p.decoded::<Cluster>(CLUSTERS)
                        .iter()
                        .any(|c| c.name == "backend" && !c.transport_socket_matches.is_empty())
            },
        )
        .await;

    // Through zone-2's ingress, at priority 1 (no local instance: the only priority, so 0 after
    // making priorities contiguous), weighted by the two instances behind it.
    let (priority, address, port, zone, weight) = remote_backend(&proxy).unwrap();
    assert_eq!(
        (address.as_str(), port, zone.as_str(), weight),
        ("192.0.2.2", 20001, "zone-2", 2)
    );
    assert_eq!(
        priority, 0,
        "zone-2 is the only locality of backend seen from zone-1"
    );
    let cluster = proxy
        .decoded::<Cluster>(CLUSTERS)
        .into_iter()
        .find(|c| c.name == "backend")
        .expect("the backend cluster");
    let zone2_socket = cluster
        .transport_socket_matches
        .iter()
        .find(|m| m.name == "zone-2")
        .expect("a transport socket for zone-2");
    let tls = envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::decode(
        match zone2_socket.transport_socket.as_ref().unwrap().config_type.as_ref().unwrap() {
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any) => any.value.as_slice(),
        },
    )
    .unwrap();
    assert_eq!(tls.sni, "backend.0.zone-2.default.mesh");

    // The certificate is the mesh CA's, for web's SPIFFE identity.
    let cert_pem = secret_pem(&proxy, "identity_cert:default").unwrap();
    let ca_pem = secret_pem(&proxy, "mesh_ca:default").unwrap();
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
    let leaf_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::since_unix_epoch(now),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("the proxy certificate chains to the mesh CA");
    let spiffe = b"spiffe://default/web";
    assert!(
        leaf_der.windows(spiffe.len()).any(|w| w == spiffe),
        "the certificate names spiffe://default/web"
    );

    drop(proxy);
    zone1.stop().await;
    zone2.stop().await;
    global.stop().await;
}
