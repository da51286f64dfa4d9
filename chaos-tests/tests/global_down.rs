//! The global killed during traffic (issue [4], DESIGN.md section 8): zones keep serving the
//! last configuration they hold, traffic (cross-zone included) continues, a zone still
//! configures a proxy that starts during the outage, and when the global comes back on the same
//! data the zones reconnect: what changed in a zone meanwhile goes up, new policy comes down.

use std::time::{Duration, Instant};

use chaos_tests::federation::{http_get, Federation};
use chaos_tests::topology::{
    answered_from, load, wait_for_ca, Client, Ingress, Instance, DEADLINE, MTLS_MESH,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_global_during_traffic_stops_neither_traffic_nor_the_zones() {
    let dir = tempfile::tempdir().unwrap();
    let mut federation = Federation::start_with_global_process(dir.path(), &["zone-1", "zone-2"])
        .await
        .unwrap();
    federation.global.apply(MTLS_MESH).await.unwrap();
    // The zones by field, not `Federation::zone`, so the global can be killed while they are
    // borrowed.
    let (zone1, zone2) = (&federation.zones[0], &federation.zones[1]);
    wait_for_ca(zone1).await.unwrap();
    wait_for_ca(zone2).await.unwrap();
    let backend = Instance::start(zone2, "backend-1", "backend", "http", None)
        .await
        .unwrap();
    let ingress2 = Ingress::start(zone2).await.unwrap();
    let frontend = Client::start(zone1, "frontend-1", "backend").await.unwrap();
    let url = frontend.url();
    answered_from(&url, "zone-2").await.unwrap();

    // Steady cross-zone load; the global is killed (SIGKILL) once it is flowing.
    const LOAD: Duration = Duration::from_secs(6);
    let started = Instant::now();
    let steady = tokio::spawn({
        let url = url.clone();
        async move { load(&url, 100.0, LOAD).await.unwrap() }
    });
    let crossed = ingress2.link.bytes();
    test_support::eventually("the load crossing zone-2's link", DEADLINE, || async {
        (ingress2.link.bytes() > crossed).then_some(())
    })
    .await
    .unwrap();
    federation.global.kill().await.unwrap();
    let killed = started.elapsed();
    assert!(
        http_get(&format!("{}/", federation.global.api_url))
            .await
            .is_err(),
        "the global still answers after SIGKILL"
    );

    // zone-1's control plane still configures a proxy that starts now, from what it holds:
    // a second client, whose requests cross to zone-2 as well.
    let latecomer = Client::start(zone1, "frontend-2", "backend").await.unwrap();
    answered_from(&latecomer.url(), "zone-2").await.unwrap();
    let latecomer_ready = started.elapsed();

    let steady = steady.await.unwrap();
    let outage_under_load = LOAD.saturating_sub(killed);
    eprintln!(
        "global killed {killed:?} into {LOAD:?} of load ({outage_under_load:?} of load with the \
         global down); a new sidecar in zone-1 configured and answered from zone-2 \
         {:?} after the kill; load: {}",
        latecomer_ready - killed,
        steady.to_text()
    );
    assert_eq!(steady.failed, 0, "{}", steady.to_text());
    assert_eq!(steady.zones.get("zone-2"), Some(&steady.ok));
    assert!(
        outage_under_load >= Duration::from_secs(4),
        "the load ran only {outage_under_load:?} with the global down"
    );

    // The global comes back on the same data and addresses; the zones reconnect: zone-1's new
    // Dataplane reaches the global, and a policy applied at the global reaches both zones.
    let down_at = Instant::now();
    federation.global.restart().await.unwrap();
    federation
        .global
        .wait_online(&["zone-1", "zone-2"])
        .await
        .unwrap();
    test_support::eventually("frontend-2 of zone-1 at the global", DEADLINE, || async {
        let path = ["meshes", "default", "dataplanes", "frontend-2.zone-1"].map(String::from);
        federation.global.api.get(&path).await.ok()
    })
    .await
    .unwrap();
    federation
        .global
        .apply("type: MeshTimeout\nname: after-restart\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        connectionTimeout: 7s\n")
        .await
        .unwrap();
    for zone in &federation.zones {
        zone.wait_for(
            "the MeshTimeout applied after the restart",
            &["meshes", "default", "meshtimeouts", "after-restart"],
        )
        .await
        .unwrap();
    }
    eprintln!(
        "after the restart, both zones synced both ways within {:?}",
        down_at.elapsed()
    );
    answered_from(&url, "zone-2").await.unwrap();

    // The server end first: its HTTP inbound closes the idle connections on drain, which ends the
    // TLS passthrough at the ingress (it would wait for it until its drain deadline).
    backend.stop().await.unwrap();
    ingress2.proxy.stop().await.unwrap();
    latecomer.sidecar.stop().await.unwrap();
    frontend.sidecar.stop().await.unwrap();
    federation.stop().await.unwrap();
}
