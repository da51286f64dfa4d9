//! The zone CP end to end: a Dataplane created through the REST API, its token from
//! `POST /tokens/dataplane`, and a proxy (envoy-types' generated ADS client) on the xDS listener
//! getting its listener; without the token it is refused. Shutdown returns with a stream open.

use std::time::Duration;

use clap::Parser as _;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

async fn open(
    xds: &str,
    token: Option<&str>,
) -> Result<
    (
        tokio::sync::mpsc::Sender<DiscoveryRequest>,
        tonic::Streaming<DiscoveryResponse>,
        DiscoveryResponse,
    ),
    tonic::Status,
> {
    let mut client = AggregatedDiscoveryServiceClient::connect(xds.to_string())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "default/web-1".into(),
            ..Node::default()
        }),
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
    let mut stream = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a response in time")?
        .expect("stream open");
    Ok((tx, stream, first))
}

#[tokio::test]
async fn a_proxy_registers_with_a_dataplane_token() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let config = zone_cp::Config::try_parse_from([
        "zone-cp",
        "--zone",
        "zone-1",
        "--data-dir",
        data_dir,
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
    let cp = tokio::spawn(zone_cp::run(config, listeners, async {
        let _ = stopped.await;
    }));
    let token_file = dir.path().join(control_plane::auth::ADMIN_TOKEN_FILE);
    let admin = test_support::eventually("the admin token", Duration::from_secs(20), || {
        let file = token_file.clone();
        async move {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| !t.trim().is_empty())
        }
    })
    .await
    .unwrap();
    let admin = admin.trim().to_string();
    let http = reqwest::Client::new();
    let put = |path: &str, body: serde_json::Value| {
        http.put(format!("{api}{path}"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let mesh = put(
        "/meshes/default",
        json!({"type": "Mesh", "name": "default"}),
    )
    .await
    .unwrap();
    assert!(mesh.status().is_success(), "{:?}", mesh.text().await);
    let dataplane = put(
        "/meshes/default/dataplanes/web-1",
        json!({"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": 15000, "servicePort": 8080, "tags": {"kuma.io/service": "web"}}]
        }}),
    )
    .await
    .unwrap();
    assert!(
        dataplane.status().is_success(),
        "{:?}",
        dataplane.text().await
    );

    let unauthorized = http
        .post(format!("{api}/tokens/dataplane"))
        .json(&json!({"mesh": "default", "name": "web-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let reply: serde_json::Value = http
        .post(format!("{api}/tokens/dataplane"))
        .bearer_auth(&admin)
        .json(&json!({"mesh": "default", "name": "web-1", "validFor": "1h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reply["token"].as_str().expect("a token").to_string();

    let refused = open(&xds, None).await.expect_err("refused without a token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let (tx, stream, listeners) = open(&xds, Some(&token)).await.unwrap();
    assert_eq!(listeners.type_url, LISTENER_TYPE);
    assert_eq!(listeners.resources.len(), 1);
    drop((tx, stream));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), cp)
        .await
        .expect("the zone CP stops")
        .unwrap()
        .unwrap();
}
