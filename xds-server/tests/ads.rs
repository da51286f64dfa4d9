//! ADS end to end: a real sled store, the real server on a loopback port, and envoy-types'
//! generated ADS client standing in for Envoy (and, with a token in node metadata and everything
//! asked for by name, for gRPC's proxyless xDS client).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value as prost_types_value;
use envoy_types::pb::google::rpc;
use mesh_store::ResourceStore;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_server::snapshot::{
    Snapshot, SnapshotSource, SourceError, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE,
    SECRET_TYPE,
};
use xds_server::status::ProxyStatusRegistry;
use xds_server::{DataplaneAuthenticator, ProxyId, SnapshotCache, XdsServer};

const WAIT: Duration = Duration::from_secs(20);

struct Zone {
    _dir: tempfile::TempDir,
    store: Arc<dyn ResourceStore>,
    auth: DataplaneAuthenticator,
    status: ProxyStatusRegistry,
    url: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn zone() -> Zone {
    zone_with(|store| {
        Arc::new(xds_server::generator::Generator::new(
            store,
            Some("zone-1".to_string()),
        ))
    })
    .await
    .0
}

/// A zone whose snapshots come from `source` (given the zone's store); also returns its cache.
async fn zone_with(
    source: impl FnOnce(Arc<dyn ResourceStore>) -> Arc<dyn SnapshotSource>,
) -> (Zone, Arc<SnapshotCache>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> =
        Arc::new(mesh_store::SledStore::open(dir.path().join("store")).unwrap());
    let auth = DataplaneAuthenticator::new(kds::token_keys::StoreKeys::new(
        store.clone(),
        kds::token_keys::KeyOwnership::Owned,
    ));
    let cache = Arc::new(SnapshotCache::new(source(store.clone())));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(cache.clone().run(store.clone(), stop_rx.clone()));
    let server = XdsServer::new(cache.clone(), auth.clone());
    let status = server.status();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut rx = stop_rx;
    tokio::spawn(xds_server::serve(listener, server, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    let zone = Zone {
        _dir: dir,
        store,
        auth,
        status,
        url,
        _stop: stop,
    };
    (zone, cache)
}

/// A Dataplane with transparent proxying and no reachable list: it reaches every service of its
/// mesh, so a new service anywhere in the mesh changes its configuration.
async fn add_dataplane(
    store: &Arc<dyn ResourceStore>,
    mesh: &str,
    name: &str,
    ip: &str,
    service: &str,
) {
    add_dataplane_with(
        store,
        mesh,
        name,
        ip,
        service,
        "  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n",
    )
    .await;
}

/// A Dataplane whose `networking` ends with `more` (YAML at the indentation of `inbound`).
async fn add_dataplane_with(
    store: &Arc<dyn ResourceStore>,
    mesh: &str,
    name: &str,
    ip: &str,
    service: &str,
    more: &str,
) {
    let text = format!(
        "type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: {ip}\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: {service}\n{more}"
    );
    let resource = mesh_api::parse_documents(&text).remove(0).unwrap().resource;
    store.create(resource).await.unwrap();
}

async fn token(zone: &Zone, mesh: &str, name: &str) -> String {
    let id = ProxyId::dataplane(mesh, name);
    zone.auth
        .issue(&id, Duration::from_secs(3600))
        .await
        .unwrap()
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        ..Node::default()
    })
}

/// A state-of-the-world stream as a proxy sees it.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: String,
    /// The answer to the first (LDS) request, already ACKed.
    first: Option<DiscoveryResponse>,
    /// The names last asked for, per type: repeated in every ACK, as SotW clients do.
    names: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
}

async fn open_sotw(url: &str, node_id: &str, token: Option<&str>) -> Result<Sotw, tonic::Status> {
    open_sotw_as(url, node(node_id).unwrap(), token, &[]).await
}

/// Opens a stream as `node`, its first request for LDS `names` (none: wildcard).
async fn open_sotw_as(
    url: &str,
    node: Node,
    token: Option<&str>,
    names: &[&str],
) -> Result<Sotw, tonic::Status> {
    let node_id = node.id.clone();
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: LISTENER_TYPE.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut rx = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    // Refusals may also arrive as the first message's status.
    let first = rx.message().await?;
    let mut stream = Sotw {
        tx,
        rx,
        node: node_id,
        first: None,
        names: Default::default(),
    };
    stream.subscribed(LISTENER_TYPE, names);
    if let Some(first) = first {
        assert_eq!(first.type_url, LISTENER_TYPE);
        stream.ack(&first).await;
        stream.first = Some(first);
    }
    Ok(stream)
}

impl Sotw {
    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    async fn ack(&self, response: &DiscoveryResponse) {
        self.reply(response, None).await;
    }

    fn subscribed(&self, type_url: &str, names: &[&str]) -> Vec<String> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.names
            .lock()
            .unwrap()
            .insert(type_url.to_string(), names.clone());
        names
    }

    async fn reply(&self, response: &DiscoveryResponse, error: Option<&str>) {
        let names = self.names.lock().unwrap().get(&response.type_url).cloned();
        self.tx
            .send(DiscoveryRequest {
                node: node(&self.node),
                resource_names: names.unwrap_or_default(),
                type_url: response.type_url.clone(),
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: error.map(|m| rpc::Status {
                    code: 3,
                    message: m.into(),
                    ..Default::default()
                }),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
    }

    async fn request(&self, type_url: &str, names: &[&str]) {
        self.tx
            .send(DiscoveryRequest {
                node: node(&self.node),
                type_url: type_url.into(),
                resource_names: self.subscribed(type_url, names),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
    }

    /// Changes the subscription of `previous`'s type as clients do: the new names, ACKing it.
    async fn resubscribe(&self, previous: &DiscoveryResponse, names: &[&str]) {
        self.tx
            .send(DiscoveryRequest {
                type_url: previous.type_url.clone(),
                version_info: previous.version_info.clone(),
                response_nonce: previous.nonce.clone(),
                resource_names: self.subscribed(&previous.type_url, names),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
    }
}

fn clusters(response: &DiscoveryResponse) -> Vec<String> {
    assert_eq!(response.type_url, CLUSTER_TYPE);
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|any| Cluster::decode(any.value.as_slice()).unwrap().name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_proxy_gets_its_config_and_follows_its_mesh_only() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "web-1", "10.0.0.1", "web").await;
    add_dataplane(&zone.store, "other", "db-1", "10.0.1.1", "db").await;

    // LDS arrives (and is ACKed) inside open_sotw; check it through CDS/EDS and the status.
    let mut web = open_sotw(
        &zone.url,
        "default/web-1",
        Some(&token(&zone, "default", "web-1").await),
    )
    .await
    .unwrap();
    web.request(CLUSTER_TYPE, &[]).await;
    let cds = web.next().await;
    assert_eq!(clusters(&cds), ["localhost:8080", "web"]);
    web.ack(&cds).await;
    web.request(ENDPOINT_TYPE, &["web"]).await;
    let eds = web.next().await;
    let cla = ClusterLoadAssignment::decode(eds.resources[0].value.as_slice()).unwrap();
    assert_eq!(cla.cluster_name, "web");
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    assert_eq!(cla.endpoints[0].priority, 0);
    web.ack(&eds).await;
    let id = ProxyId::dataplane("default", "web-1");
    test_support::eventually("LDS, CDS and EDS ACKed", WAIT, || async {
        let s = zone.status.get(&id)?;
        let acked = [LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE]
            .iter()
            .all(|t| s.types.get(*t).and_then(|t| t.acked.as_ref()).is_some());
        (s.online && acked).then_some(())
    })
    .await
    .unwrap();

    // Kuma's node id form, in another mesh.
    let mut db = open_sotw(
        &zone.url,
        "other.db-1",
        Some(&token(&zone, "other", "db-1").await),
    )
    .await
    .unwrap();
    db.request(CLUSTER_TYPE, &[]).await;
    let db_cds = db.next().await;
    assert_eq!(clusters(&db_cds), ["db", "localhost:8080"]);
    db.ack(&db_cds).await;

    // A new service in `default`: web's CDS and EDS update.
    add_dataplane(&zone.store, "default", "api-1", "10.0.0.2", "api").await;
    let mut saw_cds = false;
    while !saw_cds {
        let push = web.next().await;
        if push.type_url == CLUSTER_TYPE {
            assert_eq!(clusters(&push), ["api", "localhost:8080", "web"]);
            saw_cds = true;
        }
        web.ack(&push).await;
    }
    // db got nothing for it: the next thing it sees is the answer to a change in its own mesh.
    add_dataplane(&zone.store, "other", "cache-1", "10.0.1.2", "cache").await;
    let push = db.next().await;
    assert_eq!(clusters(&push), ["cache", "db", "localhost:8080"]);
}

#[tokio::test]
async fn a_proxy_gets_and_is_pushed_only_the_services_it_reaches() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "api-1", "10.0.0.2", "api").await;
    add_dataplane(&zone.store, "default", "db-1", "10.0.0.3", "db").await;
    // web declares one outbound and no transparent proxying: it reaches api only.
    add_dataplane_with(
        &zone.store,
        "default",
        "web-1",
        "10.0.0.1",
        "web",
        "  outbound:\n    - port: 10001\n      tags:\n        kuma.io/service: api\n",
    )
    .await;
    let mut web = open_sotw(
        &zone.url,
        "default/web-1",
        Some(&token(&zone, "default", "web-1").await),
    )
    .await
    .unwrap();
    web.request(CLUSTER_TYPE, &[]).await;
    let cds = web.next().await;
    assert_eq!(clusters(&cds), ["api", "localhost:8080"]);
    web.ack(&cds).await;
    web.request(ENDPOINT_TYPE, &["api"]).await;
    let eds = web.next().await;
    web.ack(&eds).await;
    let endpoints = |r: &DiscoveryResponse| -> usize {
        assert_eq!(r.type_url, ENDPOINT_TYPE);
        let cla = ClusterLoadAssignment::decode(r.resources[0].value.as_slice()).unwrap();
        cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum()
    };
    assert_eq!(endpoints(&eds), 1);

    // A service web does not reach appears, then a second api instance: the first push web
    // gets is api's endpoints (no CDS push for the new service).
    add_dataplane(&zone.store, "default", "queue-1", "10.0.0.4", "queue").await;
    add_dataplane(&zone.store, "default", "api-2", "10.0.0.5", "api").await;
    let push = web.next().await;
    assert_eq!(push.type_url, ENDPOINT_TYPE, "{push:?}");
    assert_eq!(endpoints(&push), 2);
}

#[tokio::test]
async fn a_nack_is_recorded() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "web-1", "10.0.0.1", "web").await;
    let mut web = open_sotw(
        &zone.url,
        "default/web-1",
        Some(&token(&zone, "default", "web-1").await),
    )
    .await
    .unwrap();
    web.request(CLUSTER_TYPE, &[]).await;
    let cds = web.next().await;
    web.reply(&cds, Some("cluster web: bad config")).await;
    let id = ProxyId::dataplane("default", "web-1");
    let nack = test_support::eventually("the NACK recorded", WAIT, || async {
        zone.status
            .get(&id)?
            .types
            .get(CLUSTER_TYPE)?
            .last_nack
            .clone()
    })
    .await
    .unwrap();
    assert_eq!(nack.message, "cluster web: bad config");
    assert_eq!(nack.nonce, cds.nonce);
}

#[tokio::test]
async fn proxies_without_a_valid_token_are_refused() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "web-1", "10.0.0.1", "web").await;
    add_dataplane(&zone.store, "default", "web-2", "10.0.0.2", "web").await;
    let refused = |r: Result<Sotw, tonic::Status>| match r {
        Ok(_) => panic!("the stream was admitted"),
        Err(status) => status,
    };
    let status = refused(open_sotw(&zone.url, "default/web-1", None).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("authorization"), "{status:?}");

    let status = refused(open_sotw(&zone.url, "default/web-1", Some("garbage")).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // A token for another dataplane.
    let other = token(&zone, "default", "web-2").await;
    let status = refused(open_sotw(&zone.url, "default/web-1", Some(&other)).await);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("default/web-2"), "{status:?}");

    // A valid token, but no such Dataplane.
    let ghost = token(&zone, "default", "ghost").await;
    let status = refused(open_sotw(&zone.url, "default/ghost", Some(&ghost)).await);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("does not exist"), "{status:?}");

    // A node id that names no dataplane.
    let status = refused(open_sotw(&zone.url, "nomesh", Some(&ghost)).await);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

async fn next_delta(
    stream: &mut tonic::Streaming<DeltaDiscoveryResponse>,
) -> DeltaDiscoveryResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a delta response in time")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "web-1", "10.0.0.1", "web").await;
    let mut client = AggregatedDiscoveryServiceClient::connect(zone.url.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: node("default/web-1"),
        type_url: CLUSTER_TYPE.into(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", token(&zone, "default", "web-1").await);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let mut stream = client
        .delta_aggregated_resources(request)
        .await
        .unwrap()
        .into_inner();
    let names = |r: &DeltaDiscoveryResponse| {
        let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
        n.sort();
        n
    };
    let first = next_delta(&mut stream).await;
    assert_eq!(names(&first), ["localhost:8080", "web"]);
    tx.send(DeltaDiscoveryRequest {
        type_url: CLUSTER_TYPE.into(),
        response_nonce: first.nonce.clone(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();

    add_dataplane(&zone.store, "default", "api-1", "10.0.0.2", "api").await;
    let second = next_delta(&mut stream).await;
    assert_eq!(names(&second), ["api"]);
    assert!(second.removed_resources.is_empty());
    let cluster = Cluster::decode(
        second.resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(cluster.name, "api");

    // Removing it sends only the removal.
    let key =
        mesh_api::ResourceKey::new(mesh_api::ResourceType::Dataplane, Some("default"), "api-1");
    zone.store.delete(&key, None).await.unwrap();
    let third = next_delta(&mut stream).await;
    assert!(third.resources.is_empty());
    assert_eq!(third.removed_resources, ["api"]);
    drop(tx);
}

#[tokio::test]
async fn deleting_the_dataplane_ends_its_stream() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "web-1", "10.0.0.1", "web").await;
    let mut web = open_sotw(
        &zone.url,
        "default/web-1",
        Some(&token(&zone, "default", "web-1").await),
    )
    .await
    .unwrap();
    let key =
        mesh_api::ResourceKey::new(mesh_api::ResourceType::Dataplane, Some("default"), "web-1");
    zone.store.delete(&key, None).await.unwrap();
    let ended = tokio::time::timeout(WAIT, web.rx.message())
        .await
        .expect("the stream ends in time");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let id = ProxyId::dataplane("default", "web-1");
    test_support::eventually("web-1 offline", WAIT, || async {
        (!zone.status.get(&id)?.online).then_some(())
    })
    .await
    .unwrap();
}

/// The names of the resources of a SotW response (sorted); every one has the response's type.
fn names_of(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, response.type_url);
            match any.type_url.as_str() {
                LISTENER_TYPE => Listener::decode(any.value.as_slice()).unwrap().name,
                CLUSTER_TYPE => Cluster::decode(any.value.as_slice()).unwrap().name,
                ENDPOINT_TYPE => {
                    ClusterLoadAssignment::decode(any.value.as_slice())
                        .unwrap()
                        .cluster_name
                }
                ROUTE_TYPE => {
                    RouteConfiguration::decode(any.value.as_slice())
                        .unwrap()
                        .name
                }
                SECRET_TYPE => Secret::decode(any.value.as_slice()).unwrap().name,
                other => panic!("unexpected type {other}"),
            }
        })
        .collect();
    names.sort();
    names
}

/// A snapshot of every type: a sidecar listener, a named-only api listener (`greeter`), routes,
/// another named-only listener (`tagged`), routes, clusters (one named-only), endpoints and a
/// secret. `tag` goes into `tagged` only, so changing it changes only that resource.
fn five_types(tag: &str) -> Snapshot {
    let mut s = Snapshot::default();
    let named = |name: &str, tag: &str| Listener {
        name: name.to_string(),
        stat_prefix: tag.to_string(),
        ..Listener::default()
    };
    s.insert(
        LISTENER_TYPE,
        "inbound:10.0.0.1:15000",
        &named("inbound:10.0.0.1:15000", ""),
    );
    s.insert_named_only(
        LISTENER_TYPE,
        "greeter",
        &xds_server::proxyless::api_listener("greeter", "outbound:greeter"),
    );
    s.insert_named_only(LISTENER_TYPE, "tagged", &named("tagged", tag));
    for route in ["outbound:greeter", "outbound:web"] {
        let r = RouteConfiguration {
            name: route.into(),
            ..RouteConfiguration::default()
        };
        s.insert(ROUTE_TYPE, route, &r);
    }
    for cluster in ["greeter", "web"] {
        let c = Cluster {
            name: cluster.into(),
            ..Cluster::default()
        };
        s.insert(CLUSTER_TYPE, cluster, &c);
        let cla = ClusterLoadAssignment {
            cluster_name: cluster.into(),
            ..ClusterLoadAssignment::default()
        };
        s.insert(ENDPOINT_TYPE, cluster, &cla);
    }
    let hidden = Cluster {
        name: "hidden".into(),
        ..Cluster::default()
    };
    s.insert_named_only(CLUSTER_TYPE, "hidden", &hidden);
    let secret = Secret {
        name: "identity".into(),
        ..Secret::default()
    };
    s.insert(SECRET_TYPE, "identity", &secret);
    s.seal()
}

/// Serves [`five_types`] to any proxy; `set` swaps the snapshot (then rebuild the cache).
#[derive(Clone)]
struct Fixed(Arc<std::sync::Mutex<Snapshot>>);

impl Fixed {
    fn new() -> Self {
        Fixed(Arc::new(std::sync::Mutex::new(five_types("v1"))))
    }

    fn set(&self, snapshot: Snapshot) {
        *self.0.lock().unwrap() = snapshot;
    }
}

#[async_trait::async_trait]
impl SnapshotSource for Fixed {
    async fn snapshot(&self, _proxy: &ProxyId) -> Result<Snapshot, SourceError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

#[tokio::test]
async fn sotw_serves_five_types_and_named_only_resources_only_by_name() {
    let fixed = Fixed::new();
    let source = fixed.clone();
    let (zone, cache) = zone_with(move |_| Arc::new(source)).await;
    let t = token(&zone, "default", "web-1").await;

    // A sidecar: LDS and CDS by wildcard get neither the api listener nor the named-only cluster.
    let mut sidecar = open_sotw(&zone.url, "default/web-1", Some(&t))
        .await
        .unwrap();
    let lds = sidecar.first.clone().unwrap();
    assert_eq!(names_of(&lds), ["inbound:10.0.0.1:15000"]);
    sidecar.request(CLUSTER_TYPE, &[]).await;
    let cds = sidecar.next().await;
    assert_eq!(names_of(&cds), ["greeter", "web"]);
    sidecar.ack(&cds).await;
    // `*` plus a name: the wildcard's resources and the named one.
    sidecar.resubscribe(&cds, &["*", "hidden"]).await;
    let cds = sidecar.next().await;
    assert_eq!(names_of(&cds), ["greeter", "hidden", "web"]);
    sidecar.ack(&cds).await;
    // RDS, EDS and SDS are never wildcard: no names, no resources.
    for type_url in [ROUTE_TYPE, ENDPOINT_TYPE, SECRET_TYPE] {
        sidecar.request(type_url, &[]).await;
        let empty = sidecar.next().await;
        assert_eq!(empty.type_url, type_url);
        assert!(
            empty.resources.is_empty(),
            "{type_url}: {:?}",
            names_of(&empty)
        );
        sidecar.ack(&empty).await;
    }

    // A proxyless client names everything, and gets exactly what it names (absent names: none).
    let mut grpc = open_sotw_as(
        &zone.url,
        node("default/web-1").unwrap(),
        Some(&t),
        &["greeter", "tagged", "nonexistent"],
    )
    .await
    .unwrap();
    let lds = grpc.first.clone().unwrap();
    assert_eq!(names_of(&lds), ["greeter", "tagged"]);
    for (type_url, name) in [
        (ROUTE_TYPE, "outbound:greeter"),
        (CLUSTER_TYPE, "greeter"),
        (ENDPOINT_TYPE, "greeter"),
        (SECRET_TYPE, "identity"),
    ] {
        grpc.request(type_url, &[name]).await;
        let response = grpc.next().await;
        assert_eq!(response.type_url, type_url);
        assert_eq!(names_of(&response), [name]);
        grpc.ack(&response).await;
    }
    // Naming one more route replaces the list.
    grpc.request(ROUTE_TYPE, &["outbound:greeter", "outbound:web"])
        .await;
    let routes = grpc.next().await;
    assert_eq!(names_of(&routes), ["outbound:greeter", "outbound:web"]);
    grpc.ack(&routes).await;

    // A change to the named-only listener reaches the client that named it, and not the
    // wildcard subscriber: the sidecar's next message is about the change that concerns it.
    fixed.set(five_types("v2"));
    cache.rebuild(None).await;
    let push = grpc.next().await;
    assert_eq!(push.type_url, LISTENER_TYPE);
    assert_ne!(push.version_info, lds.version_info);
    grpc.ack(&push).await;
    let mut v3 = five_types("v2");
    let extra = Cluster {
        name: "extra".into(),
        ..Cluster::default()
    };
    v3.insert(CLUSTER_TYPE, "extra", &extra);
    fixed.set(v3.seal());
    cache.rebuild(None).await;
    let push = sidecar.next().await;
    assert_eq!(
        push.type_url, CLUSTER_TYPE,
        "the sidecar was pushed {push:?}"
    );
    assert_eq!(names_of(&push), ["extra", "greeter", "hidden", "web"]);
}

#[tokio::test]
async fn delta_serves_named_only_resources_only_by_name() {
    let source = Fixed::new();
    let (zone, _cache) = zone_with(move |_| Arc::new(source)).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(zone.url.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: node("default/web-1"),
        type_url: LISTENER_TYPE.into(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", token(&zone, "default", "web-1").await);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let mut stream = client
        .delta_aggregated_resources(request)
        .await
        .unwrap()
        .into_inner();
    let names = |r: &DeltaDiscoveryResponse| {
        let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
        n.sort();
        n
    };
    let ack = |r: &DeltaDiscoveryResponse, subscribe: &[&str]| DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        ..DeltaDiscoveryRequest::default()
    };
    // Wildcard LDS: not the named-only listeners.
    let lds = next_delta(&mut stream).await;
    assert_eq!(names(&lds), ["inbound:10.0.0.1:15000"]);
    // Naming one adds it, and only it.
    tx.send(ack(&lds, &["greeter"])).await.unwrap();
    let lds = next_delta(&mut stream).await;
    assert_eq!(names(&lds), ["greeter"]);
    tx.send(ack(&lds, &[])).await.unwrap();
    // RDS subscribed with no names is not a wildcard: an empty first answer.
    tx.send(DeltaDiscoveryRequest {
        type_url: ROUTE_TYPE.into(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let rds = next_delta(&mut stream).await;
    assert_eq!(rds.type_url, ROUTE_TYPE);
    assert!(rds.resources.is_empty(), "{:?}", names(&rds));
    tx.send(ack(&rds, &["outbound:greeter"])).await.unwrap();
    let rds = next_delta(&mut stream).await;
    assert_eq!(names(&rds), ["outbound:greeter"]);
    tx.send(ack(&rds, &[])).await.unwrap();
    // SDS by name.
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: vec!["identity".into()],
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let sds = next_delta(&mut stream).await;
    assert_eq!(names(&sds), ["identity"]);
    drop(tx);
}

#[tokio::test]
async fn delta_reconnect_learns_named_only_resources_it_no_longer_gets() {
    let source = Fixed::new();
    let (zone, _cache) = zone_with(move |_| Arc::new(source)).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(zone.url.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    // A wildcard subscriber claiming to hold the api listener (e.g. from an older server).
    tx.send(DeltaDiscoveryRequest {
        node: node("default/web-1"),
        type_url: LISTENER_TYPE.into(),
        initial_resource_versions: [("greeter".to_string(), "old".to_string())].into(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", token(&zone, "default", "web-1").await);
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let mut stream = client
        .delta_aggregated_resources(request)
        .await
        .unwrap()
        .into_inner();
    let lds = next_delta(&mut stream).await;
    assert_eq!(lds.resources.len(), 1);
    assert_eq!(lds.resources[0].name, "inbound:10.0.0.1:15000");
    assert_eq!(lds.removed_resources, ["greeter"]);
    drop(tx);
}

fn node_with_token(id: &str, token: prost_types_value::Kind) -> Node {
    let mut metadata = envoy_types::pb::google::protobuf::Struct::default();
    metadata.fields.insert(
        xds_server::server::TOKEN_METADATA_FIELD.to_string(),
        envoy_types::pb::google::protobuf::Value { kind: Some(token) },
    );
    Node {
        id: id.to_string(),
        metadata: Some(metadata),
        ..Node::default()
    }
}

#[tokio::test]
async fn the_token_may_come_in_node_metadata() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "web-1", "10.0.0.1", "web").await;
    add_dataplane(&zone.store, "default", "web-2", "10.0.0.2", "web").await;
    let string = |s: &str| prost_types_value::Kind::StringValue(s.to_string());
    let refused = |r: Result<Sotw, tonic::Status>| match r {
        Ok(_) => panic!("the stream was admitted"),
        Err(status) => status,
    };

    // Admitted on the node metadata token, without any authorization header.
    let t = token(&zone, "default", "web-1").await;
    let web = open_sotw_as(
        &zone.url,
        node_with_token("default/web-1", string(&t)),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        names_of(web.first.as_ref().unwrap()),
        ["inbound:10.0.0.1:15000"]
    );

    // The same refusals as the header's.
    let other = token(&zone, "default", "web-2").await;
    let status = refused(
        open_sotw_as(
            &zone.url,
            node_with_token("default/web-1", string(&other)),
            None,
            &[],
        )
        .await,
    );
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("default/web-2"), "{status:?}");
    let status = refused(
        open_sotw_as(
            &zone.url,
            node_with_token("default/web-1", string("garbage")),
            None,
            &[],
        )
        .await,
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = refused(
        open_sotw_as(
            &zone.url,
            node_with_token("default/web-1", string("tok\nen")),
            None,
            &[],
        )
        .await,
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = refused(
        open_sotw_as(
            &zone.url,
            node_with_token("default/web-1", prost_types_value::Kind::NumberValue(1.0)),
            None,
            &[],
        )
        .await,
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("must be a string"), "{status:?}");
    let ghost = token(&zone, "default", "ghost").await;
    let status = refused(
        open_sotw_as(
            &zone.url,
            node_with_token("default/ghost", string(&ghost)),
            None,
            &[],
        )
        .await,
    );
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("does not exist"), "{status:?}");

    // With neither, the refusal says where a token may go.
    let status = refused(open_sotw(&zone.url, "default/web-1", None).await);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("meridian.io/dataplane-token"),
        "{status:?}"
    );

    // The header, when present, is what counts.
    let status = refused(
        open_sotw_as(
            &zone.url,
            node_with_token("default/web-1", string(&t)),
            Some("garbage"),
            &[],
        )
        .await,
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    open_sotw_as(
        &zone.url,
        node_with_token("default/web-1", string("garbage")),
        Some(&t),
        &[],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_generated_snapshot_serves_grpc_clients() {
    // The generator's output for a proxyless client, checked against gRPC's rules
    // (xds_server::proxyless); zone-cp's grpc_proxyless test runs a real gRPC client on it.
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "greeter-1", "10.0.0.1", "greeter").await;
    add_dataplane(&zone.store, "default", "greeter-2", "10.0.0.2", "greeter").await;
    add_dataplane(&zone.store, "default", "client", "10.0.0.3", "client").await;
    let generator =
        xds_server::generator::Generator::new(zone.store.clone(), Some("zone-1".into()));
    let snapshot = generator
        .snapshot(&ProxyId::dataplane("default", "client"))
        .await
        .unwrap();
    xds_server::proxyless::check_serves(&snapshot, "greeter").unwrap();
    xds_server::proxyless::check_serves(&snapshot, "client").unwrap();
}
