//! Policies applied at the global taking effect in running proxies (issue [4]): a
//! MeshTrafficPermission on a TCP service closes denied connections at the service's inbound
//! (cross-zone), and a MeshHTTPRoute splits a service's traffic between versions by weight.

use std::time::Duration;

use chaos_tests::federation::{EchoService, Federation};
use chaos_tests::topology::{
    load, sidecar, wait_for_ca, Client, Ingress, Instance, DEADLINE, MTLS_MESH,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Writes `ping` on a new connection to `port` and reads what comes back within 5 s (at most 4
/// bytes): the echo, or nothing when the connection is closed (or reset) first.
async fn ping(port: u16) -> Vec<u8> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"ping").await?;
        let mut back = Vec::new();
        let mut chunk = [0u8; 4];
        while back.len() < 4 {
            match stream.read(&mut chunk[..4 - back.len()]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => back.extend_from_slice(&chunk[..n]),
            }
        }
        std::io::Result::Ok(back)
    };
    match tokio::time::timeout(Duration::from_secs(5), exchange).await {
        Ok(Ok(back)) => back,
        // Not even connected, or no answer and no close within 5 s: nothing echoed either way.
        Ok(Err(_)) | Err(_) => Vec::new(),
    }
}

/// Waits until a connection to `port` is echoed (`true`) or closed with nothing echoed (`false`).
async fn wait_echo(port: u16, echoed: bool) {
    test_support::eventually(
        &format!(
            "127.0.0.1:{port} {}",
            if echoed {
                "echoing"
            } else {
                "closing unechoed"
            }
        ),
        DEADLINE,
        || async {
            let back = ping(port).await;
            let ok = if echoed {
                back == b"ping"
            } else {
                back.is_empty()
            };
            ok.then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_traffic_permission_on_a_tcp_service_closes_denied_connections_at_its_inbound() {
    let dir = tempfile::tempdir().unwrap();
    let federation = Federation::start(dir.path(), &["zone-1", "zone-2"])
        .await
        .unwrap();
    federation.global.apply(MTLS_MESH).await.unwrap();
    let (zone1, zone2) = (federation.zone("zone-1"), federation.zone("zone-2"));
    wait_for_ca(zone2).await.unwrap();
    let app = EchoService::start().await.unwrap();
    let echo = sidecar(
        zone2,
        "echo-1",
        app.addr.port(),
        &[("kuma.io/service", "echo"), ("kuma.io/protocol", "tcp")],
    )
    .await
    .unwrap();
    let ingress2 = Ingress::start(zone2).await.unwrap();
    let frontend = Client::start(zone1, "frontend-1", "echo").await.unwrap();

    wait_echo(frontend.outbound, true).await;
    let inbound = "envoy_listener_downstream_cx_rbac_denied";
    let denied_before = echo.stats().await.unwrap();

    federation
        .global
        .apply("type: MeshTrafficPermission\nname: deny-frontend\nmesh: default\nspec:\n  targetRef:\n    kind: MeshService\n    name: echo\n  from:\n  - targetRef:\n      kind: MeshService\n      name: frontend\n    default:\n      action: Deny\n")
        .await
        .unwrap();
    wait_echo(frontend.outbound, false).await;
    // Several denied connections in a row, none echoed: the deny is steady, not a blip.
    for _ in 0..5 {
        assert_eq!(
            ping(frontend.outbound).await,
            b"",
            "a denied connection echoed"
        );
    }
    let denied_after = echo.stats().await.unwrap();
    let denied = |text: &str| -> i64 {
        text.lines()
            .filter(|l| l.starts_with(inbound))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum()
    };
    eprintln!(
        "echo's inbound RBAC denials: {} before the deny, {} after",
        denied(&denied_before),
        denied(&denied_after)
    );
    assert!(
        denied(&denied_after) >= denied(&denied_before) + 5,
        "the denied connections were not closed by echo's inbound RBAC:\n{denied_after}"
    );

    federation
        .global
        .api
        .delete(
            &[
                "meshes",
                "default",
                "meshtrafficpermissions",
                "deny-frontend",
            ]
            .map(String::from),
        )
        .await
        .unwrap();
    wait_echo(frontend.outbound, true).await;

    // The server end first (its connections close), then the ingress, which otherwise waits
    // for the TCP passthrough until its drain deadline.
    app.stop();
    echo.stop().await.unwrap();
    ingress2.proxy.stop().await.unwrap();
    frontend.sidecar.stop().await.unwrap();
    federation.stop().await.unwrap();
}

/// 90% of backend's traffic to version v1, 10% to v2 (Kuma's MeshServiceSubset backendRefs).
const SPLIT: &str = "type: MeshHTTPRoute\nname: canary\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: backend\n    rules:\n    - matches:\n      - path:\n          type: PathPrefix\n          value: /\n      default:\n        backendRefs:\n        - kind: MeshServiceSubset\n          name: backend\n          tags:\n            version: v1\n          weight: 90\n        - kind: MeshServiceSubset\n          name: backend\n          tags:\n            version: v2\n          weight: 10\n";

/// Applies [`SPLIT`], waits until `frontend` routes by it, then measures over 1,000 requests
/// that the share answered by v2 is within 5 points of 10%.
async fn assert_split(what: &str, federation: &Federation, frontend: &Client) {
    let url = frontend.url();
    federation.global.apply(SPLIT).await.unwrap();
    // The route is in place once frontend's sidecar has the subset clusters (`backend_<hash>`).
    test_support::eventually(
        "the split in frontend's configuration",
        DEADLINE,
        || async {
            let dump = frontend.sidecar.config_dump().await.ok()?;
            (dump.matches("\"backend_").count() >= 2).then_some(())
        },
    )
    .await
    .unwrap();
    test_support::eventually("an answer from v2", DEADLINE, || async {
        let (status, body) = chaos_tests::federation::http_get(&url).await.ok()?;
        (status == 200 && body.contains("\"version\":\"v2\"")).then_some(())
    })
    .await
    .unwrap();

    let report = load(&url, 500.0, Duration::from_secs(2)).await.unwrap();
    let (n1, n2) = (
        report.versions.get("v1").copied().unwrap_or(0),
        report.versions.get("v2").copied().unwrap_or(0),
    );
    let v2_share = 100.0 * n2 as f64 / (n1 + n2).max(1) as f64;
    eprintln!(
        "{what}: split over {} requests: v1 {n1}, v2 {n2} ({v2_share:.1}% to v2)",
        report.sent
    );
    assert_eq!(report.failed, 0, "{}", report.to_text());
    assert!(n1 + n2 >= 1000, "{}", report.to_text());
    assert!(
        (v2_share - 10.0).abs() <= 5.0,
        "v2 got {v2_share:.1}% (10 +- 5 expected): {}",
        report.to_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_route_splits_traffic_90_10_between_versions() {
    let dir = tempfile::tempdir().unwrap();
    let federation = Federation::start(dir.path(), &["zone-1"]).await.unwrap();
    federation.global.apply(MTLS_MESH).await.unwrap();
    let zone1 = federation.zone("zone-1");
    wait_for_ca(zone1).await.unwrap();
    let v1 = Instance::start(zone1, "backend-v1", "backend", "http", Some("v1"))
        .await
        .unwrap();
    let v2 = Instance::start(zone1, "backend-v2", "backend", "http", Some("v2"))
        .await
        .unwrap();
    let frontend = Client::start(zone1, "frontend-1", "backend").await.unwrap();

    assert_split("in zone-1", &federation, &frontend).await;

    frontend.sidecar.stop().await.unwrap();
    v1.stop().await.unwrap();
    v2.stop().await.unwrap();
    federation.stop().await.unwrap();
}

/// The same split with both versions in zone-2 behind its ingress: the subset clusters of
/// zone-1's sidecar name their tags in the SNI (`backend.version.v1.0.t1.zone-2.default.mesh`),
/// and zone-2's ingress has a chain per subset holding only that version's instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_route_splits_cross_zone_traffic_90_10_between_versions() {
    let dir = tempfile::tempdir().unwrap();
    let federation = Federation::start(dir.path(), &["zone-1", "zone-2"])
        .await
        .unwrap();
    federation.global.apply(MTLS_MESH).await.unwrap();
    let zone1 = federation.zone("zone-1");
    let zone2 = federation.zone("zone-2");
    wait_for_ca(zone1).await.unwrap();
    wait_for_ca(zone2).await.unwrap();
    let ingress = Ingress::start(zone2).await.unwrap();
    let v1 = Instance::start(zone2, "backend-v1", "backend", "http", Some("v1"))
        .await
        .unwrap();
    let v2 = Instance::start(zone2, "backend-v2", "backend", "http", Some("v2"))
        .await
        .unwrap();
    let frontend = Client::start(zone1, "frontend-1", "backend").await.unwrap();

    assert_split("zone-1 to zone-2", &federation, &frontend).await;

    frontend.sidecar.stop().await.unwrap();
    v1.stop().await.unwrap();
    v2.stop().await.unwrap();
    ingress.proxy.stop().await.unwrap();
    federation.stop().await.unwrap();
}
