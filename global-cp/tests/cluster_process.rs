//! The global as a three-node cluster of real `global-cp` processes, crashed with SIGKILL: the
//! leader killed, writes succeed again within a second (measured); writers through every node
//! while leaders are killed and a minority is cut off by `FaultRelay`s on the Raft links, then
//! every acknowledged write is on every node (an oracle of acknowledged names); a wiped node
//! rejoins and catches up from a snapshot; a member that cannot be reached is refused, naming
//! its address; a data dir is not switched between a single node and a cluster by mistake;
//! a backup restored into a new single node holds every policy; a SIGKILLed node's zone is
//! offline on the other nodes once its lease runs out, and loses its inventory after the grace.

mod kds_zone;
mod process_cluster;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process_cluster::{put, ProcCluster, DEADLINE};
use serde_json::{json, Value};
use test_support::eventually;

/// Each node's API address and admin token while it runs (the API moves when a node restarts).
type Endpoints = Arc<Mutex<Vec<Option<(String, String)>>>>;

/// Issue [5]: writes succeed again within 1 s of the leader's death; asserted with a margin
/// for a loaded CI machine.
const FAIL_OVER_LIMIT: Duration = Duration::from_secs(3);

/// Kills the leader and writes through the other nodes in turn until one succeeds: the time
/// from the kill to the first acknowledged write, and the node that took it.
async fn kill_leader_and_time_fail_over(cluster: &mut ProcCluster, tag: &str) -> (Duration, usize) {
    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&i| i != leader && cluster.running(i))
        .collect();
    let killed = Instant::now();
    cluster.kill(leader);
    let mut attempt = 0usize;
    loop {
        let through = others[attempt % others.len()];
        attempt += 1;
        let name = format!("{tag}-{attempt}");
        // A node waits through the election itself; a short timeout keeps the other node in play.
        if let Ok(200 | 201) = cluster
            .put(through, &name, "x", Duration::from_millis(1500))
            .await
        {
            return (killed.elapsed(), leader);
        }
        assert!(
            killed.elapsed() < DEADLINE,
            "no write succeeded {DEADLINE:?} after killing the leader"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_leader_is_replaced_within_a_second_and_catches_up_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(dir.path(), 3, false, &[]).await;
    let leader = cluster.leader().await;
    assert_eq!(
        cluster.put(leader, "before", "1", DEADLINE).await,
        Ok(201),
        "{}",
        cluster.log(leader)
    );

    let (elapsed, killed) = kill_leader_and_time_fail_over(&mut cluster, "after").await;
    println!(
        "leader (node {}) SIGKILLed: first write acknowledged after {elapsed:?}",
        killed + 1
    );
    assert!(
        elapsed < FAIL_OVER_LIMIT,
        "fail-over took {elapsed:?} (issue [5]: within 1 s; asserted under {FAIL_OVER_LIMIT:?})"
    );

    // Written while it was dead; it restarts from its log and catches up.
    let new_leader = cluster.leader().await;
    assert_eq!(
        cluster.put(new_leader, "while-down", "1", DEADLINE).await,
        Ok(201)
    );
    cluster.restart(killed).await;
    let want = cluster.consistent_names(new_leader).await;
    assert!(
        want.contains("before") && want.contains("while-down"),
        "{want:?}"
    );
    eventually("the restarted node to catch up", DEADLINE, || async {
        (cluster.names(killed, false).await? == want).then_some(())
    })
    .await
    .unwrap();
}

// Each node dials its peers through relays of its own (`--raft-route`), so cutting the leader's
// relays isolates it whichever node's bootstrap wrote the membership (docs/raft.md, "Tests").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_leader_kills_and_a_partitioned_minority() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(dir.path(), 3, true, &[]).await;
    let endpoints: Endpoints = Arc::new(Mutex::new(
        cluster
            .nodes
            .iter()
            .map(|n| Some((n.api.clone(), n.token.clone())))
            .collect(),
    ));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (endpoints, acknowledged, stop) =
            (endpoints.clone(), acknowledged.clone(), stop.clone());
        let client = cluster.client.clone();
        writers.push(tokio::spawn(async move {
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let target = endpoints.lock().unwrap()[(w + seq) % 3].clone();
                let Some((api, token)) = target else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let name = format!("w{w}-{seq}");
                if let Ok(200 | 201) =
                    put(&client, &api, &token, &name, "v", Duration::from_secs(15)).await
                {
                    acknowledged.lock().unwrap().insert(name);
                }
            }
        }));
    }
    let acked = || acknowledged.lock().unwrap().len();
    // Repeated leader kills (SIGKILL), each node restarted on its data.
    for round in 0..2 {
        let before = acked();
        eventually("writes before the kill", DEADLINE, || async {
            (acked() >= before + 10).then_some(())
        })
        .await
        .unwrap();
        let leader = cluster.leader().await;
        endpoints.lock().unwrap()[leader] = None;
        cluster.kill(leader);
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        cluster.leader_among(&survivors).await;
        let after = acked();
        eventually("writes after the kill", DEADLINE, || async {
            (acked() >= after + 10).then_some(())
        })
        .await
        .unwrap();
        cluster.restart(leader).await;
        let node = &cluster.nodes[leader];
        endpoints.lock().unwrap()[leader] = Some((node.api.clone(), node.token.clone()));
        println!(
            "round {round}: node {} killed and restarted, {} acknowledged",
            leader + 1,
            acked()
        );
    }
    // A minority cut off: the leader, so the majority must elect another and go on.
    let cut = cluster.leader().await;
    let cut_id = cluster.nodes[cut].id;
    // Clients on the majority side: the writers stop sending to it (a write already sent
    // waits, and is acknowledged only if it commits after the heal).
    endpoints.lock().unwrap()[cut] = None;
    cluster.partition(cut_id, true);
    let majority: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
    let new_leader = cluster.leader_among(&majority).await;
    assert_ne!(new_leader, cut);
    let during = acked();
    eventually("writes on the majority side", DEADLINE, || async {
        (acked() >= during + 20).then_some(())
    })
    .await
    .unwrap();
    // The cut node heard none of that (its links are really cut, whichever way it dials).
    let applied =
        |view: Option<Value>| view.and_then(|v| v["cluster"]["lastAppliedIndex"].as_u64());
    let (on_cut, on_leader) = (
        applied(cluster.index(cut).await),
        applied(cluster.index(new_leader).await),
    );
    assert!(
        on_cut.unwrap_or(0) < on_leader.unwrap_or(0),
        "the cut node applied {on_cut:?}, the majority's leader {on_leader:?}:\n{}",
        cluster.views().await
    );
    // The cut node led: it still says so (openraft 0.9 has no step-down) but shows that no
    // quorum acknowledges it, and refuses a write it could not commit rather than holding it.
    let lost = eventually(
        "the cut leader reports its lost quorum",
        DEADLINE,
        || async {
            let view = cluster.index(cut).await?;
            (view["cluster"]["quorumLost"] == true).then_some(view)
        },
    )
    .await;
    let view = match lost {
        Ok(view) => view,
        Err(e) => panic!("{e}:\n{}", cluster.views().await),
    };
    assert_eq!(view["cluster"]["role"], "leader", "{view}");
    let asked = std::time::Instant::now();
    let refused = cluster
        .put(cut, "on-the-cut-leader", "v", Duration::from_secs(20))
        .await;
    println!(
        "a write to the cut leader: {refused:?} after {:?}",
        asked.elapsed()
    );
    assert!(
        matches!(refused, Ok(503)),
        "a write to the cut leader: {refused:?}"
    );
    cluster.partition(cut_id, false);
    let node = &cluster.nodes[cut];
    endpoints.lock().unwrap()[cut] = Some((node.api.clone(), node.token.clone()));
    let healed = acked();
    eventually("writes after the heal", DEADLINE, || async {
        (acked() >= healed + 10).then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    println!("{} writes acknowledged", acknowledged.len());
    for i in 0..3 {
        let consistent = cluster.consistent_names(i).await;
        let missing: Vec<_> = acknowledged.difference(&consistent).collect();
        assert!(
            missing.is_empty(),
            "node {}: acknowledged but missing: {missing:?}",
            i + 1
        );
    }
    // The healed node converges on its own (local reads), to exactly the leader's state.
    let leader = cluster.leader().await;
    let all = cluster.consistent_names(leader).await;
    eventually("the healed node to converge", DEADLINE, || async {
        (cluster.names(cut, false).await? == all).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_from_a_snapshot_and_an_unreachable_member_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(
        dir.path(),
        3,
        false,
        &[
            "--raft-snapshot-every",
            "20",
            "--member-catch-up-timeout",
            "2s",
        ],
    )
    .await;
    let leader = cluster.leader().await;
    let members_url = format!("{}/global/members", cluster.nodes[leader].api);
    let token = cluster.nodes[leader].token.clone();

    // Nothing listens at 127.0.0.1:1: refused after the catch-up timeout, naming the address,
    // and not left in the membership.
    let started = Instant::now();
    let refused = cluster
        .client
        .post(&members_url)
        .bearer_auth(&token)
        .json(&json!({"id": 9, "address": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    let status = refused.status();
    let body = refused.text().await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("127.0.0.1:1") && body.contains("did not catch up"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let view: Value = cluster
        .client
        .get(&members_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let members = view["members"].as_array().unwrap();
    assert_eq!(
        members.len(),
        3,
        "the unreachable node was removed again: {view}"
    );
    assert!(members.iter().all(|m| m["voter"] == true), "{view}");

    // Enough writes that the leader snapshots and purges its log.
    let wiped = (leader + 1) % 3;
    for i in 0..60 {
        assert_eq!(
            cluster.put(leader, &format!("p{i}"), "1", DEADLINE).await,
            Ok(201)
        );
    }
    cluster.kill(wiped);
    std::fs::remove_dir_all(cluster.nodes[wiped].data.join("raft")).unwrap();
    for i in 60..80 {
        assert_eq!(
            cluster.put(leader, &format!("p{i}"), "1", DEADLINE).await,
            Ok(201)
        );
    }
    let purged = eventually("the leader to purge its log", DEADLINE, || async {
        let view = cluster.index(leader).await?;
        view["cluster"]["purgedIndex"].as_u64().filter(|&i| i > 0)
    })
    .await
    .unwrap();

    // As docs/raft.md says: removed, started with --join (never bootstraps), added again.
    let wiped_id = cluster.nodes[wiped].id;
    let removed = cluster
        .client
        .delete(format!("{members_url}/{wiped_id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200, "{}", removed.text().await.unwrap());
    cluster.spawn(wiped, &["--join"]);
    cluster.ready(wiped).await;
    let added = cluster
        .client
        .post(&members_url)
        .bearer_auth(&token)
        .json(&json!({"id": wiped_id, "address": cluster.nodes[wiped].raft_addr}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200, "{}", added.text().await.unwrap());
    let want = cluster.consistent_names(leader).await;
    assert_eq!(want.len(), 80);
    eventually("the wiped node to catch up", DEADLINE, || async {
        (cluster.names(wiped, false).await? == want).then_some(())
    })
    .await
    .unwrap();
    // The entries it lacked were purged at the leader: it got them in a snapshot.
    let view = cluster.index(wiped).await.unwrap();
    let snapshot = view["cluster"]["snapshotIndex"].as_u64();
    assert!(
        snapshot >= Some(purged),
        "purged {purged}, wiped node: {view}"
    );

    // A cluster member's data dir started as a single node is refused, naming it.
    let other = (wiped + 1) % 3;
    cluster.kill(other);
    let data = cluster.nodes[other].data.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_global-cp"))
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
        ])
        .args(["--kds-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&data.join("raft").display().to_string())
            && stderr.contains("3-member cluster")
            && stderr.contains("--allow-membership-mismatch"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_data_dir_is_not_started_as_a_cluster_member_by_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let mut single = ProcCluster::start(dir.path(), 1, false, &[]).await;
    assert_eq!(single.put(0, "kept", "1", DEADLINE).await, Ok(201));
    single.kill(0);
    // The same data dir with --peers naming three nodes.
    let three = format!(
        "1={},2=127.0.0.1:1,3=127.0.0.1:2",
        single.nodes[0].raft_addr
    );
    single.nodes[0].peers = three;
    let out = single.command(0, &[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let raft_dir = single.nodes[0].data.join("raft").display().to_string();
    assert!(
        stderr.contains(&raft_dir)
            && stderr.contains("single-node global")
            && stderr.contains(&format!(
                "stored membership: 1={}",
                single.nodes[0].raft_addr
            )),
        "{stderr}"
    );
    // Said explicitly, it starts (with the stored membership: still one node, its writes kept).
    single.spawn(0, &["--allow-membership-mismatch"]);
    single.ready(0).await;
    eventually("the kept write", DEADLINE, || async {
        single.names(0, true).await?.contains("kept").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_new_node_holds_every_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ProcCluster::start(&dir.path().join("cluster"), 3, false, &[]).await;
    let leader = cluster.leader().await;
    for i in 0..30 {
        assert_eq!(
            cluster
                .put(leader, &format!("b{i}"), &i.to_string(), DEADLINE)
                .await,
            Ok(201)
        );
    }
    // From a follower: the backup is linearizable wherever it is asked.
    let follower = (leader + 1) % 3;
    let response = cluster
        .client
        .get(format!("{}/global/backup", cluster.nodes[follower].api))
        .bearer_auth(&cluster.nodes[follower].token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let backup = response.bytes().await.unwrap();
    let unauthorised = cluster
        .client
        .get(format!("{}/global/backup", cluster.nodes[follower].api))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    let file = dir.path().join("backup.json");
    std::fs::write(&file, &backup).unwrap();

    let restored = dir.path().join("restored");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_global-cp"))
        .args(["restore", "--input"])
        .arg(&file)
        .arg("--data-dir")
        .arg(restored.join("node-1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not twice into the same dir.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_global-cp"))
        .args(["restore", "--input"])
        .arg(&file)
        .arg("--data-dir")
        .arg(restored.join("node-1"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a Raft state"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let mut single = ProcCluster::start(&restored, 1, false, &[]).await;
    let names = single.consistent_names(0).await;
    let want: BTreeSet<String> = (0..30).map(|i| format!("b{i}")).collect();
    assert_eq!(names, want);
    let original: Value = cluster
        .client
        .get(format!(
            "{}/meshes/default/meshtimeouts/b7",
            cluster.nodes[leader].api
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let copy: Value = single
        .client
        .get(format!(
            "{}/meshes/default/meshtimeouts/b7",
            single.nodes[0].api
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(original, copy, "versions, times and labels kept");
    // It takes writes as a one-node cluster.
    assert_eq!(single.put(0, "after-restore", "1", DEADLINE).await, Ok(201));
    single.kill(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_nodes_zone_goes_offline_when_its_lease_runs_out_then_loses_its_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(1500);
    let mut cluster = ProcCluster::start(
        dir.path(),
        3,
        false,
        &["--zone-lease", "1500ms", "--zone-grace-period", "1500ms"],
    )
    .await;
    // The leader holds the zone: its death also moves the janitor to another node.
    let killed = cluster.leader().await;
    let killed_id = cluster.nodes[killed].id;
    let rest: Vec<usize> = (0..3).filter(|&i| i != killed).collect();
    let token = kds_zone::zone_token(
        &cluster.client,
        &cluster.nodes[rest[0]].api,
        &cluster.nodes[rest[0]].token,
        "zone-1",
    )
    .await;
    let ca = std::fs::read(dir.path().join("kds").join(kds::tls::CA_CERT_FILE)).unwrap();
    let mut zone =
        kds_zone::TestZone::start("zone-1", vec![cluster.nodes[killed].kds.clone()], ca, token)
            .await;
    let apis: Vec<String> = cluster.nodes.iter().map(|n| n.api.clone()).collect();
    let client = cluster.client.clone();
    let item = |i: usize| {
        let (client, api) = (client.clone(), apis[i].clone());
        async move { kds_zone::overview_item(&client, &api, "zone-1").await }
    };
    let inventory = |i: usize| {
        let (client, api) = (client.clone(), apis[i].clone());
        async move {
            let url = format!("{api}/meshes/default/dataplanes/web.zone-1");
            client
                .get(url)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }
    };
    for &i in &rest {
        eventually("zone-1 online at the leader", DEADLINE, || async {
            item(i)
                .await
                .filter(|it| it["status"] == "online" && it["globalNode"] == killed_id)
        })
        .await
        .unwrap();
        eventually("zone-1's inventory", DEADLINE, || async {
            (inventory(i).await == Some(200)).then_some(())
        })
        .await
        .unwrap();
    }

    cluster.kill(killed);
    let lease: Value = cluster
        .client
        .get(format!("{}/zone-leases/zone-1", cluster.nodes[rest[0]].api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        lease["connected"], true,
        "released by a killed node? {lease}"
    );
    let expires = chrono::DateTime::parse_from_rfc3339(lease["leaseExpires"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    for &i in &rest {
        eventually("zone-1 offline", DEADLINE, || async {
            item(i).await.filter(|it| it["status"] == "offline")
        })
        .await
        .unwrap();
    }
    assert!(chrono::Utc::now() >= expires);
    for &i in &rest {
        let gone = eventually("zone-1's inventory removed", DEADLINE, || async {
            (inventory(i).await == Some(404)).then_some(())
        })
        .await;
        assert!(gone.is_ok(), "{gone:?}\n{}", cluster.log(rest[0]));
    }
    assert!(chrono::Utc::now() >= expires + chrono::TimeDelta::from_std(grace).unwrap());
    zone.disconnect().await;
    cluster.stop_all();
}
