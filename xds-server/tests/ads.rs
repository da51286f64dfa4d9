//! ADS end to end: a real sled store, the real server on a loopback port, and envoy-types'
//! generated ADS client standing in for Envoy.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use mesh_store::ResourceStore;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds_server::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};
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
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> =
        Arc::new(mesh_store::SledStore::open(dir.path().join("store")).unwrap());
    let auth = DataplaneAuthenticator::open(dir.path().join("keys")).unwrap();
    let cache = Arc::new(SnapshotCache::new(Arc::new(
        xds_server::generator::Generator::new(store.clone(), Some("zone-1".to_string())),
    )));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(cache.clone().run(store.clone(), stop_rx.clone()));
    let server = XdsServer::new(cache, auth.clone());
    let status = server.status();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut rx = stop_rx;
    tokio::spawn(xds_server::serve(listener, server, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Zone {
        _dir: dir,
        store,
        auth,
        status,
        url,
        _stop: stop,
    }
}

async fn add_dataplane(
    store: &Arc<dyn ResourceStore>,
    mesh: &str,
    name: &str,
    ip: &str,
    service: &str,
) {
    let text = format!(
        "type: Dataplane\nname: {name}\nmesh: {mesh}\nnetworking:\n  address: {ip}\n  inbound:\n    - port: 15000\n      servicePort: 8080\n      tags:\n        kuma.io/service: {service}\n"
    );
    let resource = mesh_api::parse_documents(&text).remove(0).unwrap().resource;
    store.create(resource).await.unwrap();
}

fn token(zone: &Zone, mesh: &str, name: &str) -> String {
    let id = ProxyId::dataplane(mesh, name);
    zone.auth.issue(&id, Duration::from_secs(3600)).unwrap()
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
}

async fn open_sotw(url: &str, node_id: &str, token: Option<&str>) -> Result<Sotw, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(DiscoveryRequest {
        node: node(node_id),
        type_url: LISTENER_TYPE.into(),
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
    let stream = Sotw {
        tx,
        rx,
        node: node_id.to_string(),
    };
    if let Some(first) = first {
        assert_eq!(first.type_url, LISTENER_TYPE);
        stream.ack(&first).await;
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

    async fn reply(&self, response: &DiscoveryResponse, error: Option<&str>) {
        self.tx
            .send(DiscoveryRequest {
                node: node(&self.node),
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
                resource_names: names.iter().map(|n| n.to_string()).collect(),
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
        Some(&token(&zone, "default", "web-1")),
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
        Some(&token(&zone, "other", "db-1")),
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
async fn a_nack_is_recorded() {
    let zone = zone().await;
    add_dataplane(&zone.store, "default", "web-1", "10.0.0.1", "web").await;
    let mut web = open_sotw(
        &zone.url,
        "default/web-1",
        Some(&token(&zone, "default", "web-1")),
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
    let other = token(&zone, "default", "web-2");
    let status = refused(open_sotw(&zone.url, "default/web-1", Some(&other)).await);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("default/web-2"), "{status:?}");

    // A valid token, but no such Dataplane.
    let ghost = token(&zone, "default", "ghost");
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
    let bearer = format!("Bearer {}", token(&zone, "default", "web-1"));
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
        Some(&token(&zone, "default", "web-1")),
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
