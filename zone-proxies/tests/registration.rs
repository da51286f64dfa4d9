//! Proxy self-registration against a real zone CP (`zone_cp::run` in-process): `zone-proxy run`'s
//! definition flags or `--dataplane-file` become the Dataplane in the zone store (and in
//! `GET /meshes/default/dataplanes`); a zone CP shutdown leaves it, a changed definition updates
//! it, the proxy stopping deletes it; a Dataplane made through the REST API stays when its proxy
//! leaves; a definition the zone CP finds invalid stops the proxy with the field path; a
//! definition for another name than the token's is refused. (The lifecycle's ordering rules, a
//! newer stream winning over an older one's end, are unit-tested in `xds_server::registration`.)

mod zone_cp;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue};
use serde_json::Value;
use test_support::relay::{Fault, FaultRelay};
use tokio::sync::oneshot;
use zone_cp::{ZoneCp, WAIT};
use zone_proxies::run::{run_proxy, ConfigSource, RunArgs, RunError};
use zone_proxies::workers::Workers;
use zone_proxies::xds::client::ClientOptions;

/// `zone-proxy run`'s flags.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// A proxy running in-process as `zone-proxy run` runs it.
struct Proxy {
    admin: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Proxy {
    async fn start(source: ConfigSource) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // Served on worker threads of its own, as `zone-proxy run` does.
        let workers = Arc::new(Workers::start(2).unwrap());
        let task = tokio::spawn(run_proxy(source, listener, Some(workers), async {
            let _ = stopped.await;
        }));
        Proxy { admin, stop, task }
    }

    /// From `zone-proxy run` flags.
    async fn from_flags(args: &[&str]) -> Proxy {
        let mut argv = vec!["zone-proxy"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        Proxy::start(cli.run.source().unwrap()).await
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/ready", self.admin);
        test_support::eventually("the proxy ready", WAIT, || async {
            let status = reqwest::get(&url).await.ok()?.status();
            status.is_success().then_some(())
        })
        .await
        .unwrap();
    }

    async fn stop(self) -> Result<(), RunError> {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

async fn token_file(cp: &ZoneCp, dir: &Path, kind: &str, mesh: &str, name: &str) -> String {
    let path = dir.join(format!("{kind}-{name}.token"));
    std::fs::write(&path, cp.proxy_token(kind, mesh, name).await).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `zone-proxy run` flags for sidecar `name` of service `web` with its inbound on `port`.
fn sidecar_flags(cp: &ZoneCp, token: &str, name: &str, port: u16) -> Vec<String> {
    [
        "--mode",
        "sidecar",
        "--cp",
        &format!("http://{}", cp.xds),
        "--token-file",
        token,
        "--name",
        name,
        "--address",
        "127.0.0.1",
        "--service",
        "web",
        "--inbound-port",
        &port.to_string(),
        "--service-port",
        "8080",
        "--tag",
        "kuma.io/protocol=http",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Waits until `GET path` answers `status` and `check` holds for the body; returns the body.
async fn wait_get(cp: &ZoneCp, path: &str, status: u16, check: impl Fn(&Value) -> bool) -> Value {
    test_support::eventually(&format!("GET {path} -> {status}"), WAIT, || async {
        let (got, body) = cp.get(path).await;
        (got == status && check(&body)).then_some(body)
    })
    .await
    .unwrap()
}

fn inbound_port(dataplane: &Value) -> u64 {
    dataplane["networking"]["inbound"][0]["port"]
        .as_u64()
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_registers_is_updated_and_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let cp = ZoneCp::start(&data).await;
    let token = token_file(&cp, dir.path(), "dataplane", "default", "web-1").await;
    let first_port = free_port();
    // Through a relay: in-process, a stopped zone CP's connections live on until reset.
    let relay = FaultRelay::start(cp.xds).await.unwrap();
    let mut flags = sidecar_flags(&cp, &token, "web-1", first_port);
    flags[3] = format!("http://{}", relay.addr());
    let proxy = Proxy::from_flags(&strs(&flags)).await;
    let path = "/meshes/default/dataplanes/web-1";
    let registered = wait_get(&cp, path, 200, |_| true).await;
    assert_eq!(registered["labels"]["meridian.io/registered-by"], "xds");
    assert_eq!(inbound_port(&registered), u64::from(first_port));
    let (_, list) = cp.get("/meshes/default/dataplanes").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "web-1"),
        "{list}"
    );
    proxy.wait_ready().await;

    // The zone CP shuts down (then the connection drops): the registration stays, in the store
    // it restarts on.
    cp.stop().await;
    relay.set(Fault::Reset);
    proxy.stop().await.unwrap();
    test_support::eventually("the old zone CP's store released", WAIT, || async {
        mesh_store::SledStore::open(data.join("store"))
            .ok()
            .map(drop)
    })
    .await
    .unwrap();
    let cp = ZoneCp::start(&data).await;
    let (status, kept) = cp.get(path).await;
    assert_eq!(
        status, 200,
        "the registration was deleted at shutdown: {kept}"
    );

    // The proxy comes back with another definition: updated.
    let second_port = free_port();
    let proxy = Proxy::from_flags(&strs(&sidecar_flags(&cp, &token, "web-1", second_port))).await;
    let updated = wait_get(&cp, path, 200, |d| {
        inbound_port(d) == u64::from(second_port)
    })
    .await;
    assert_eq!(updated["labels"]["meridian.io/registered-by"], "xds");
    proxy.wait_ready().await;

    // The proxy stops: deregistered.
    proxy.stop().await.unwrap();
    wait_get(&cp, path, 404, |_| true).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_resource_stays_and_bad_definitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ZoneCp::start(&dir.path().join("cp")).await;

    // Made through the REST API, then run by a proxy with a definition file (Kubernetes form).
    let port = free_port();
    cp.put(
        "/meshes/default/dataplanes/api-1",
        serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "api-1",
            "networking": {"address": "127.0.0.1", "inbound": [{"port": port, "servicePort": 9090,
            "tags": {"kuma.io/service": "api"}}]}}),
    )
    .await;
    let file = dir.path().join("api-1.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: kuma.io/v1alpha1\nkind: Dataplane\nmetadata:\n  name: api-1\n  labels:\n    kuma.io/mesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound:\n    - port: {port}\n      servicePort: 9090\n      tags:\n        kuma.io/service: api\n"
        ),
    )
    .unwrap();
    let token = token_file(&cp, dir.path(), "dataplane", "default", "api-1").await;
    let xds = format!("http://{}", cp.xds);
    let file_arg = file.to_str().unwrap();
    let args = [
        "--mode",
        "sidecar",
        "--cp",
        &xds,
        "--token-file",
        &token,
        "--dataplane-file",
        file_arg,
    ];
    let proxy = Proxy::from_flags(&args).await;
    proxy.wait_ready().await;
    let (_, stored) = cp.get("/meshes/default/dataplanes/api-1").await;
    assert!(
        stored["labels"].get("meridian.io/registered-by").is_none(),
        "{stored}"
    );
    proxy.stop().await.unwrap();
    cp.insight_until("api-1", "api-1 offline", |i| i["online"] == false)
        .await;
    let (status, _) = cp.get("/meshes/default/dataplanes/api-1").await;
    assert_eq!(status, 200, "a Dataplane made through the API was deleted");

    // A definition file that does not validate: refused before connecting, naming file and field.
    std::fs::write(
        &file,
        "type: Dataplane\nname: api-1\nmesh: default\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 70000\n    tags:\n      kuma.io/service: api\n",
    )
    .unwrap();
    let mut argv = vec!["zone-proxy"];
    argv.extend_from_slice(&args);
    let err = Cli::try_parse_from(argv).unwrap().run.source().unwrap_err();
    let message = err.to_string();
    assert!(message.contains(file_arg), "{message}");
    assert!(message.contains("networking.inbound[0].port"), "{message}");

    // One that only the zone CP checks (sent as is): the proxy stops with the zone CP's reason.
    let mut options = ClientOptions::new(&xds, "default/api-1");
    options.token_file = Some(token.clone().into());
    options.definition = Some(
        r#"{"type":"Dataplane","mesh":"default","name":"api-1","networking":{"address":"127.0.0.1","inbound":[{"port":70000,"tags":{"kuma.io/service":"api"}}]}}"#.to_owned(),
    );
    let proxy = Proxy::start(ConfigSource::Ads(options)).await;
    let ended = tokio::time::timeout(WAIT, proxy.task)
        .await
        .expect("the refused proxy stops")
        .unwrap();
    let err = ended.expect_err("a refused definition is an error");
    assert!(matches!(err, RunError::Refused(_)), "{err}");
    assert!(
        err.to_string().contains("networking.inbound[0].port"),
        "{err}"
    );

    // A token for api-1 does not register web-2, nor does api-1's stream define web-2.
    let web2 = r#"{"type":"Dataplane","mesh":"default","name":"web-2","networking":{"address":"127.0.0.1","inbound":[{"port":15000,"tags":{"kuma.io/service":"web"}}]}}"#;
    let api_token = std::fs::read_to_string(&token).unwrap();
    for node_id in ["default/web-2", "default/api-1"] {
        let status = first_response(&xds, node_id, web2, &api_token).await;
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{node_id}: {status:?}"
        );
    }
    let (status, _) = cp.get("/meshes/default/dataplanes/web-2").await;
    assert_eq!(status, 404);
    cp.stop().await;
}

/// Opens an ADS stream as `node_id` with `definition` in its node metadata and `token`; the
/// status the zone CP refuses it with.
async fn first_response(xds: &str, node_id: &str, definition: &str, token: &str) -> tonic::Status {
    let mut client = AggregatedDiscoveryServiceClient::connect(xds.to_owned())
        .await
        .unwrap();
    let node = Node {
        id: node_id.to_owned(),
        metadata: Some(Struct {
            fields: [(
                zone_proxies::registration::RESOURCE_METADATA_FIELD.to_owned(),
                PbValue {
                    kind: Some(Kind::StringValue(definition.to_owned())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Node::default()
    };
    let first = DiscoveryRequest {
        node: Some(node),
        type_url: zone_proxies::xds::CLUSTER_TYPE.to_owned(),
        ..DiscoveryRequest::default()
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![first]));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.stream_aggregated_resources(request),
    )
    .await
    .expect("the zone CP answers")
    {
        Ok(_) => panic!("{node_id}: the stream was admitted"),
        Err(status) => status,
    }
}
