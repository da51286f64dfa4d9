//! Zone leases in a three-node global (`tests/inproc_cluster`: real nodes in one process, real
//! KDS clients as zones): every node's `/zones/_overview` shows a zone connected to any node,
//! with the node holding it (the record is not synced to the zone, not writable over REST, and
//! in backups); the leader's janitor removes a departed zone's inventory after the grace period
//! whichever node the zone was connected to, and keeps it for a zone back within the grace; a node stopped while holding zones releases nothing, so its zones count as
//! offline everywhere once their leases run out (then lose their inventory after the grace), or
//! are claimed by the node they redial.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mesh_api::ResourceType;
use mesh_store::ListQuery;
use serde_json::{json, Value};
use test_support::eventually;

mod inproc_cluster;
mod kds_zone;

use inproc_cluster::{Cluster, DEADLINE};
use kds_zone::TestZone;

/// A zone (a Dataplane `web` in its store) connected to the given nodes, dialled in turn.
async fn zone(cluster: &Cluster, name: &'static str, nodes: &[usize]) -> TestZone {
    let token = kds_zone::zone_token(
        &cluster.client,
        &cluster.nodes[0].api,
        &cluster.nodes[0].token,
        name,
    )
    .await;
    TestZone::start(name, kds_addresses(cluster, nodes), kds_ca(cluster), token).await
}

fn kds_addresses(cluster: &Cluster, nodes: &[usize]) -> Vec<String> {
    nodes
        .iter()
        .map(|&i| cluster.nodes[i].kds.clone())
        .collect()
}

fn kds_ca(cluster: &Cluster) -> Vec<u8> {
    std::fs::read(cluster.dir.join("kds").join(kds::tls::CA_CERT_FILE)).unwrap()
}

/// Node `i`'s overview item of `zone`.
async fn overview(cluster: &Cluster, i: usize, zone: &str) -> Option<Value> {
    kds_zone::overview_item(&cluster.client, &cluster.nodes[i].api, zone).await
}

/// Waits until node `i`'s overview item of `zone` satisfies `check`.
async fn overview_becomes(
    cluster: &Cluster,
    i: usize,
    zone: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let what = format!("{what} (node {}, {zone})", cluster.nodes[i].id);
    match eventually(&what, DEADLINE, || async {
        overview(cluster, i, zone).await.filter(|item| check(item))
    })
    .await
    {
        Ok(item) => item,
        Err(e) => panic!("{e}; last: {:?}", overview(cluster, i, zone).await),
    }
}

fn online_at(node: u64) -> impl Fn(&Value) -> bool {
    move |item| item["status"] == "online" && item["globalNode"] == node
}

/// Node `i`'s lease record of `zone` (REST, read-only).
async fn lease(cluster: &Cluster, i: usize, zone: &str) -> Value {
    let url = format!("{}/zone-leases/{zone}", cluster.nodes[i].api);
    let response = cluster.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .unwrap()
        .with_timezone(&Utc)
}

/// Whether node `i` holds the zone's Dataplane.
async fn has_inventory(cluster: &Cluster, i: usize, zone: &str) -> bool {
    let url = format!(
        "{}/meshes/default/dataplanes/web.{zone}",
        cluster.nodes[i].api
    );
    let response = cluster.client.get(url).send().await.unwrap();
    response.status().is_success()
}

async fn inventory_becomes(cluster: &Cluster, i: usize, zone: &str, present: bool) {
    let what = format!("{zone}'s inventory present: {present}");
    eventually(&what, DEADLINE, || async {
        (has_inventory(cluster, i, zone).await == present).then_some(())
    })
    .await
    .unwrap();
}

fn others(cluster: &Cluster, but: usize) -> Vec<usize> {
    (0..cluster.nodes.len()).filter(|&i| i != but).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zone_connected_to_one_node_is_online_at_that_node_in_every_nodes_overview() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with(dir.path(), &["--zone-lease", "3s"]).await;
    let mut zone1 = zone(&cluster, "zone-1", &[0]).await;
    let node_a = cluster.nodes[0].id;
    for i in 0..3 {
        overview_becomes(&cluster, i, "zone-1", "online at node A", online_at(node_a)).await;
    }
    // Node B knows the zone only from its lease record: no counters of its own.
    let on_b = overview(&cluster, 1, "zone-1").await.unwrap();
    assert!(on_b["connectedSince"].is_string(), "{on_b}");
    assert!(on_b["leaseExpires"].is_string(), "{on_b}");
    assert!(on_b.get("resourcesSent").is_none(), "{on_b}");
    let record = lease(&cluster, 2, "zone-1").await;
    assert_eq!(
        (&record["type"], &record["globalNode"], &record["connected"]),
        (&json!("ZoneLease"), &json!(node_a), &json!(true)),
        "{record}"
    );
    // The record stays at the global: the zone has policy (the default mesh) but no lease.
    let mesh = mesh_api::ResourceKey::new(ResourceType::Mesh, None, "default");
    eventually("the default mesh in the zone", DEADLINE, || async {
        zone1.store.get(&mesh).await.unwrap()
    })
    .await
    .unwrap();
    let on_a = overview(&cluster, 0, "zone-1").await.unwrap();
    assert!(on_a["resourcesSent"].as_u64().unwrap() > 0, "{on_a}");
    let leases = zone1
        .store
        .list(&ListQuery::all(ResourceType::ZoneLease))
        .await
        .unwrap();
    assert_eq!(leases.total, 0);
    // And users cannot write it.
    let refused = cluster
        .client
        .put(format!("{}/zone-leases/zone-1", cluster.nodes[1].api))
        .bearer_auth(&cluster.nodes[1].token)
        .json(&json!({"type": "ZoneLease", "name": "zone-1", "globalNode": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    // A backup holds it, and restores.
    let backup = cluster
        .client
        .get(format!("{}/global/backup", cluster.nodes[2].api))
        .bearer_auth(&cluster.nodes[2].token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let held: Value = serde_json::from_slice(&backup).unwrap();
    let in_backup = held["resources"].as_array().unwrap();
    assert!(
        in_backup
            .iter()
            .any(|r| r["resource"]["type"] == "ZoneLease"),
        "{held}"
    );
    let restored = tempfile::tempdir().unwrap();
    let r = mesh_store::raft::restore(restored.path(), &backup, 1, "127.0.0.1:1").unwrap();
    assert_eq!(r.resources, in_backup.len());

    // A clean disconnect: offline on every node, with the time it left.
    zone1.disconnect().await;
    for i in 0..3 {
        let item = overview_becomes(&cluster, i, "zone-1", "offline", |item| {
            item["status"] == "offline"
        })
        .await;
        assert!(item["globalNode"].is_null(), "{item}");
        assert!(item["lastDisconnected"].is_string(), "{item}");
        assert!(item["connectedSince"].is_null(), "{item}");
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leaders_janitor_removes_a_departed_zones_inventory_whichever_node_held_it() {
    let grace = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with(
        dir.path(),
        &["--zone-lease", "3s", "--zone-grace-period", "2s"],
    )
    .await;
    let leader = cluster.leader().await;
    let follower = others(&cluster, leader)[0];
    // zone-1 on a follower, zone-2 on the leader.
    let mut zone1 = zone(&cluster, "zone-1", &[follower]).await;
    let mut zone2 = zone(&cluster, "zone-2", &[leader]).await;
    for zone in ["zone-1", "zone-2"] {
        inventory_becomes(&cluster, leader, zone, true).await;
    }

    // zone-2 leaves and is back at once; zone-1 leaves for good, after it.
    zone2.disconnect().await;
    overview_becomes(&cluster, leader, "zone-2", "offline", |i| {
        i["status"] == "offline"
    })
    .await;
    zone2.connect(kds_addresses(&cluster, &[leader]));
    let leader_id = cluster.nodes[leader].id;
    overview_becomes(&cluster, follower, "zone-2", "back", online_at(leader_id)).await;
    let left = Instant::now();
    zone1.disconnect().await;

    // Removed by the leader's janitor (the follower held the zone), not before the grace; seen
    // on every node.
    for i in 0..3 {
        inventory_becomes(&cluster, i, "zone-1", false).await;
    }
    assert!(
        left.elapsed() >= grace,
        "removed {:?} after the zone left",
        left.elapsed()
    );
    // zone-2's grace (had it not been cancelled) ended before zone-1's: it keeps everything.
    for i in 0..3 {
        assert!(has_inventory(&cluster, i, "zone-2").await);
    }
    zone2.disconnect().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_nodes_zones_go_offline_when_their_leases_run_out_or_move_to_another_node() {
    let (lease_for, grace) = (Duration::from_millis(1500), Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with(
        dir.path(),
        &["--zone-lease", "1500ms", "--zone-grace-period", "1500ms"],
    )
    .await;
    // The node that goes is the leader, so the janitor moves too.
    let gone = cluster.leader().await;
    let [other, third] = others(&cluster, gone)[..] else {
        unreachable!()
    };
    let gone_id = cluster.nodes[gone].id;
    // zone-1 knows only that node; zone-2 can redial another.
    let mut zone1 = zone(&cluster, "zone-1", &[gone]).await;
    let mut zone2 = zone(&cluster, "zone-2", &[gone, other]).await;
    for zone in ["zone-1", "zone-2"] {
        overview_becomes(&cluster, third, zone, "online", online_at(gone_id)).await;
        inventory_becomes(&cluster, third, zone, true).await;
    }

    // The node stops (its streams end, but it releases nothing, as if it had died).
    cluster.stop(gone).await;
    let record = lease(&cluster, third, "zone-1").await;
    assert_eq!(record["connected"], true, "{record}");
    assert_eq!(record["globalNode"], gone_id, "{record}");
    let expires = time(&record["leaseExpires"]);
    assert!(expires - time(&record["renewed"]) == chrono::TimeDelta::from_std(lease_for).unwrap());

    // zone-1: offline on the remaining nodes once its lease ran out.
    for i in [other, third] {
        let item = overview_becomes(&cluster, i, "zone-1", "offline", |item| {
            item["status"] == "offline"
        })
        .await;
        assert!(item["globalNode"].is_null(), "{item}");
        assert!(Utc::now() >= expires, "offline before the lease ran out");
    }
    // zone-2 redialled the other node, which holds it now.
    let other_id = cluster.nodes[other].id;
    for i in [other, third] {
        overview_becomes(&cluster, i, "zone-2", "moved", online_at(other_id)).await;
    }
    // The new leader's janitor removes zone-1's inventory after the grace; zone-2 keeps its.
    inventory_becomes(&cluster, third, "zone-1", false).await;
    let grace_ended = expires + chrono::TimeDelta::from_std(grace).unwrap();
    assert!(Utc::now() >= grace_ended, "removed before the grace ended");
    for i in [other, third] {
        assert!(has_inventory(&cluster, i, "zone-2").await);
        inventory_becomes(&cluster, i, "zone-1", false).await;
    }
    zone1.disconnect().await;
    zone2.disconnect().await;
    cluster.stop_all().await;
}
