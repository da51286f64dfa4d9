//! Cross-zone traffic end to end (issue [4]), on the real control planes and proxies in one
//! process: a global, zones federated over KDS, zone proxies configured over ADS, demo services
//! behind sidecars, and each zone's ingress reached by other zones through a fault relay (its
//! advertised address), so a test can cut the link between zones. Policies are applied at the
//! global and take effect in running proxies.

use std::time::{Duration, Instant};

use chaos_tests::federation::{http_get, Federation, ProxyProcess};
use chaos_tests::topology::{
    answered_from, answered_with, inbound_port, load, wait_for_ca, Client, Ingress, Instance,
    DEADLINE, MTLS_MESH, RESILIENCE,
};
use test_support::relay::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_from_zone_1_is_answered_by_zone_2_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let federation = Federation::start(dir.path(), &["zone-1", "zone-2"])
        .await
        .unwrap();
    federation.global.apply(MTLS_MESH).await.unwrap();
    let (zone1, zone2) = (federation.zone("zone-1"), federation.zone("zone-2"));
    wait_for_ca(zone2).await.unwrap();
    let backend = Instance::start(zone2, "backend-1", "backend", "http", None)
        .await
        .unwrap();
    let ingress2 = Ingress::start(zone2).await.unwrap();
    let frontend = Client::start(zone1, "frontend-1", "backend").await.unwrap();
    let url = frontend.url();

    answered_from(&url, "zone-2").await.unwrap();
    let report = load(&url, 100.0, Duration::from_secs(2)).await.unwrap();
    assert_eq!(report.failed, 0, "{}", report.to_text());
    assert_eq!(report.zones.get("zone-2"), Some(&report.ok));
    assert!(
        ingress2.link.bytes() > 0,
        "the traffic did not cross zone-2's ingress link"
    );

    // The backend's inbound only speaks mTLS: a plaintext request is not answered.
    let inbound_port = inbound_port(zone2, "backend-1").await.unwrap();
    let plain = http_get(&format!("http://127.0.0.1:{inbound_port}/")).await;
    assert!(
        plain.is_err(),
        "plaintext reached the backend's inbound: {plain:?}"
    );

    // MeshTrafficPermission applied at the global reaches zone-2's backend sidecar without a
    // restart: denied, frontend's requests get 403 from the backend's inbound; deleted, allowed.
    federation
        .global
        .apply("type: MeshTrafficPermission\nname: deny-frontend\nmesh: default\nspec:\n  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n  - targetRef:\n      kind: MeshService\n      name: frontend\n    default:\n      action: Deny\n")
        .await
        .unwrap();
    answered_with(&url, 403).await.unwrap();
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
    answered_from(&url, "zone-2").await.unwrap();

    // The server end first: its HTTP inbound closes the idle connections on drain, which ends the
    // TLS passthrough at the ingress (it would wait for it until its drain deadline).
    backend.stop().await.unwrap();
    ingress2.proxy.stop().await.unwrap();
    frontend.sidecar.stop().await.unwrap();
    federation.stop().await.unwrap();
}

/// The proxy's non-zero statistics of cluster `backend`, for failure messages.
async fn backend_stats(proxy: &ProxyProcess) -> String {
    let Ok((_, text)) = http_get(&format!("http://{}/stats/prometheus", proxy.admin)).await else {
        return "(stats unavailable)".to_string();
    };
    text.lines()
        .filter(|l| l.contains("\"backend\"") && !l.ends_with(" 0") && !l.contains("_bucket"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutting_a_zone_link_fails_over_to_the_next_zone_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let federation = Federation::start(dir.path(), &["zone-1", "zone-2", "zone-3"])
        .await
        .unwrap();
    federation.global.apply(MTLS_MESH).await.unwrap();
    federation.global.apply(RESILIENCE).await.unwrap();
    let zone1 = federation.zone("zone-1");
    let mut backends = Vec::new();
    let mut ingresses = Vec::new();
    for zone in ["zone-2", "zone-3"] {
        let zone = federation.zone(zone);
        wait_for_ca(zone).await.unwrap();
        // HTTP/2: one multiplexed connection per peer, so failing over does not need a
        // connection (and a TLS handshake) per request in flight.
        let name = format!("backend-{}", zone.name);
        backends.push(
            Instance::start(zone, &name, "backend", "http2", None)
                .await
                .unwrap(),
        );
        ingresses.push(Ingress::start(zone).await.unwrap());
    }
    let client = Client::start(zone1, "frontend-1", "backend").await.unwrap();
    let (frontend, url) = (&client.sidecar, client.url());
    // zone-2 is preferred; zone-3 must be known too before the cut.
    answered_from(&url, "zone-2").await.unwrap();
    test_support::eventually("zone-3 in frontend's endpoints", DEADLINE, || async {
        let dump = http_get(&format!("http://{}/config_dump", frontend.admin))
            .await
            .ok()?
            .1;
        let port = ingresses[1].link.addr().port();
        dump.contains(&format!("\"portValue\": {port}"))
            .then_some(())
            .or_else(|| {
                dump.contains(&format!("\"portValue\":{port}"))
                    .then_some(())
            })
    })
    .await
    .unwrap();

    // Steady load through the whole scenario, 200 requests a second.
    let steady = tokio::spawn({
        let url = url.clone();
        async move { load(&url, 200.0, Duration::from_secs(9)).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Cut zone-2's link: first a blackhole (requests hang), then resets.
    ingresses[0].link.set(Fault::Blackhole);
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_cut = load(&url, 100.0, Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(
        (after_cut.zones.get("zone-2"), after_cut.zones.get("zone-3")),
        (None, Some(&after_cut.ok)),
        "1 s after the cut: {}\nfrontend's backend stats:\n{}",
        after_cut.to_text(),
        backend_stats(frontend).await
    );
    ingresses[0].link.set(Fault::Reset);
    tokio::time::sleep(Duration::from_secs(1)).await;
    ingresses[0].link.set(Fault::Pass);
    let healed = Instant::now();
    eprintln!("cut for {:?}", healed - cut);

    let steady = steady.await.unwrap();
    eprintln!("steady load: {}", steady.to_text());
    let failed_share = steady.failed as f64 / steady.sent.max(1) as f64;
    assert!(
        failed_share < 0.001,
        "{} of {} requests failed with retries on: {}\nfrontend's backend stats:\n{}",
        steady.failed,
        steady.sent,
        steady.to_text(),
        backend_stats(frontend).await
    );
    assert!(steady.zones.get("zone-3").is_some_and(|n| *n > 0));

    // The link is back: traffic returns to the preferred zone.
    answered_from(&url, "zone-2").await.unwrap();

    // Servers first, then the ingresses, as in the test above.
    for backend in backends {
        backend.stop().await.unwrap();
    }
    for ingress in ingresses {
        ingress.proxy.stop().await.unwrap();
    }
    client.sidecar.stop().await.unwrap();
    federation.stop().await.unwrap();
}
