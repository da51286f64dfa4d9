//! Cross-zone traffic through the zone egress (issue [4]): when the Mesh sets
//! `routing.zoneEgress: true`, frontend's sidecar in zone-1 reaches backend in zone-2 through
//! zone-1's egress, which forwards the TLS it does not terminate to zone-2's ingress by SNI; the
//! mTLS session runs from sidecar to sidecar, and each end checks the other.

use std::time::Duration;

use chaos_tests::federation::{stat, Federation};
use chaos_tests::mtls;
use chaos_tests::topology::{
    answered_from, egress, inbound_port, load, wait_for_ca, Client, Ingress, Instance, MTLS_MESH,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_from_zone_1_leaves_through_its_egress_with_mtls_on_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let federation = Federation::start(dir.path(), &["zone-1", "zone-2"])
        .await
        .unwrap();
    let mesh = MTLS_MESH.replacen("mtls:\n", "routing:\n  zoneEgress: true\nmtls:\n", 1);
    federation.global.apply(&mesh).await.unwrap();
    let (zone1, zone2) = (federation.zone("zone-1"), federation.zone("zone-2"));
    wait_for_ca(zone1).await.unwrap();
    wait_for_ca(zone2).await.unwrap();
    let backend = Instance::start(zone2, "backend-1", "backend", "http", None)
        .await
        .unwrap();
    let ingress2 = Ingress::start(zone2).await.unwrap();
    let egress1 = egress(zone1).await.unwrap();
    let frontend = Client::start(zone1, "frontend-1", "backend").await.unwrap();
    let url = frontend.url();

    answered_from(&url, "zone-2").await.unwrap();
    let report = load(&url, 100.0, Duration::from_secs(1)).await.unwrap();
    eprintln!("through the egress: {}", report.to_text());
    assert_eq!(report.failed, 0, "{}", report.to_text());
    assert_eq!(report.zones.get("zone-2"), Some(&report.ok));

    // The egress carried it: its listener accepted frontend's connections and its cluster for
    // backend in zone-2 opened connections to zone-2's ingress (through the relay).
    let stats = egress1.stats().await.unwrap();
    let egress_listener = stats
        .lines()
        .find(|l| l.starts_with("envoy_listener_downstream_cx_total{") && l.contains("egress"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .unwrap_or(0);
    let to_zone_2 = stat(
        &stats,
        "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"default:backend:zone-2\"}",
    )
    .unwrap_or(0);
    eprintln!(
        "egress: {egress_listener} connections accepted, {to_zone_2} opened to zone-2's ingress; \
         zone-2's ingress link accepted {} connections, {} bytes",
        ingress2.link.accepted(),
        ingress2.link.bytes()
    );
    assert!(egress_listener > 0, "the egress accepted nothing:\n{stats}");
    assert!(
        to_zone_2 > 0,
        "the egress opened nothing to zone-2:\n{stats}"
    );
    assert!(ingress2.link.bytes() > 0);
    // frontend's sidecar has no route to zone-2 but the egress: the ingress link only sees the
    // egress's connections.
    assert!(
        ingress2.link.accepted() <= to_zone_2 as u64,
        "{} connections reached zone-2's ingress, the egress opened {to_zone_2}",
        ingress2.link.accepted()
    );

    // The client end: frontend's sidecar requires backend's SPIFFE identity from the mesh CA.
    let dump = frontend.sidecar.config_dump().await.unwrap();
    assert!(
        dump.contains("spiffe://default/backend"),
        "frontend's configuration does not check backend's identity:\n{dump}"
    );
    // The server end: backend's inbound answers a client certificate of the mesh's CA, and
    // refuses one of another CA (and plaintext).
    let inbound: std::net::SocketAddr = (
        [127, 0, 0, 1],
        inbound_port(zone2, "backend-1").await.unwrap(),
    )
        .into();
    let mesh_ca = mtls::mesh_ca(zone2, "default", "ca-1").await.unwrap();
    let accepted =
        mtls::get_over_mtls(inbound, mtls::workload(&mesh_ca, "frontend").unwrap()).await;
    assert!(
        accepted.as_deref().is_ok_and(|s| s.contains(" 200")),
        "a certificate of the mesh CA: {accepted:?}"
    );
    let foreign = mtls::foreign_ca("default").unwrap();
    let refused = mtls::get_over_mtls(inbound, mtls::workload(&foreign, "frontend").unwrap()).await;
    assert!(
        refused.is_err(),
        "a certificate of another CA was answered: {refused:?}"
    );
    let plain = chaos_tests::federation::http_get(&format!("http://{inbound}/")).await;
    assert!(
        plain.is_err(),
        "plaintext reached the backend's inbound: {plain:?}"
    );
    eprintln!(
        "backend's inbound: mesh CA -> {accepted:?}; another CA -> {:?}",
        refused.as_ref().map_err(|e| format!("{e:#}"))
    );

    // The server end first: its HTTP inbound closes the idle connections on drain, which ends the
    // TCP passthrough at the edge proxies (they would wait for it until their drain deadline).
    backend.stop().await.unwrap();
    egress1.stop().await.unwrap();
    ingress2.proxy.stop().await.unwrap();
    frontend.sidecar.stop().await.unwrap();
    federation.stop().await.unwrap();
}
