//! The global as a three-node Raft cluster: real nodes (`global_cp::run`) in one process on
//! 127.0.0.1:0, peers over mutual TLS. A write through a follower is forwarded and read back at
//! once; `?consistent=true` reads; `GET /` shows role, term and leader; membership over REST;
//! the leader stopped: a new one takes writes (measured); writers through every node while the
//! leader is stopped and restarted again and again: every acknowledged write is on every node
//! afterwards; a zone given two nodes' KDS addresses follows when its node stops.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use global_cp::{Config, GlobalListeners};
use mesh_api::{ResourceKey, ResourceType};
use mesh_store::{ResourceStore, SledStore};
use serde_json::{json, Value};
use test_support::eventually;

mod inproc_cluster;
mod kds_zone;

use inproc_cluster::{Cluster, DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_forwards_writes_reads_are_consistent_and_a_new_leader_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // GET / shows each node's role, term and leader.
    let index = cluster.index(followers[0]).await;
    assert_eq!(index["cluster"]["role"], "follower", "{index}");
    assert_eq!(
        index["cluster"]["leaderId"], cluster.nodes[leader].id,
        "{index}"
    );
    assert!(index["cluster"]["term"].as_u64().unwrap() >= 1, "{index}");
    assert_eq!(index["cluster"]["members"].as_array().unwrap().len(), 3);
    assert_eq!(cluster.index(leader).await["cluster"]["role"], "leader");
    // The diagnostics port shows the same view.
    let diagnostics: Value = cluster
        .client
        .get(format!("{}/cluster", cluster.nodes[leader].diagnostics))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(diagnostics["role"], "leader", "{diagnostics}");

    // A write through a follower: one answer, and read back at once on that follower.
    assert_eq!(
        cluster.put(followers[0], "via-follower", "1").await,
        Ok(201)
    );
    assert_eq!(cluster.get(followers[0], "via-follower", false).await, 200);
    // The other follower, asked for a linearizable read, has it too.
    assert_eq!(cluster.get(followers[1], "via-follower", true).await, 200);
    // Updating through the other follower.
    assert_eq!(
        cluster.put(followers[1], "via-follower", "2").await,
        Ok(200)
    );
    let bad = cluster
        .client
        .get(format!(
            "{}/meshes/default/meshtimeouts?consistent=maybe",
            cluster.nodes[leader].api
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(bad, 400);

    // Membership over REST needs the admin token; a member cannot be added twice.
    let members_url = format!("{}/global/members", cluster.nodes[followers[0]].api);
    let status = cluster
        .client
        .get(&members_url)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let listed: Value = cluster
        .client
        .get(&members_url)
        .bearer_auth(&cluster.nodes[followers[0]].token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["members"].as_array().unwrap().len(), 3, "{listed}");
    let again = cluster
        .client
        .post(&members_url)
        .bearer_auth(&cluster.nodes[followers[0]].token)
        .json(&json!({"id": 2, "address": cluster.nodes[1].raft_addr}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // A fourth node joins at runtime: started with --join, added through a follower's API,
    // caught up, then removed.
    global_cp::cluster::ensure_certs(&cluster.dir.join("raft-certs"), &[4]).unwrap();
    let fourth = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fourth_addr = fourth.local_addr().unwrap().to_string();
    let mut config = cluster.config(4);
    config.peers.clear();
    config.join = true;
    let data4 = config.data_dir.clone();
    let mut listeners = GlobalListeners::bind(&config).await.unwrap();
    listeners.raft = fourth;
    let (stop4, stopped4) = tokio::sync::oneshot::channel::<()>();
    let task4 = tokio::spawn(global_cp::run(config, listeners, async {
        let _ = stopped4.await;
    }));
    let added = cluster
        .client
        .post(&members_url)
        .bearer_auth(&cluster.nodes[followers[0]].token)
        .json(&json!({"id": 4, "address": fourth_addr}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    let view: Value = added.json().await.unwrap();
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{view}");
    assert!(members.iter().all(|m| m["voter"] == true), "{view}");
    let ready4: Value = eventually("the new member's ready file", DEADLINE, || {
        let ready = data4.join("ready.json");
        async move {
            std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        }
    })
    .await
    .unwrap();
    let api4 = ready4["api"].as_str().unwrap().to_owned();
    eventually(
        "the new member has the earlier writes",
        DEADLINE,
        || async {
            let url = format!("{api4}/meshes/default/meshtimeouts/via-follower");
            let response = cluster.client.get(url).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await
    .unwrap();
    let removed = cluster
        .client
        .delete(format!("{members_url}/4"))
        .bearer_auth(&cluster.nodes[followers[0]].token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let view: Value = removed.json().await.unwrap();
    assert_eq!(view["members"].as_array().unwrap().len(), 3, "{view}");
    let _ = stop4.send(());
    task4.await.unwrap().unwrap();

    // Stop the leader (as it is now: the membership changes may have moved it): measure until a
    // write through a remaining node succeeds.
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let term = cluster.index(leader).await["cluster"]["term"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    cluster.stop(leader).await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let through = followers[attempt % 2];
        if cluster.put(through, &format!("after-{attempt}"), "x").await == Ok(201) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no write after the leader stopped"
        );
    }
    let failover = started.elapsed();
    // Whoever took the write leads a later term than the stopped leader's (the remaining nodes
    // may take a moment to agree on it).
    let new_leader = cluster.leader().await;
    let after = cluster.index(new_leader).await;
    println!(
        "global fail-over (leader stopped to first acknowledged REST write): {failover:?}; \
         node {} led term {term}, node {} leads term {}",
        cluster.nodes[leader].id, cluster.nodes[new_leader].id, after["cluster"]["term"]
    );
    assert!(after["cluster"]["term"].as_u64().unwrap() > term, "{after}");
    // Elections take 150-300 ms of silence; the margin is for a loaded 2-core test machine.
    assert!(
        failover < Duration::from_secs(3),
        "fail-over took {failover:?}"
    );

    // The stopped node comes back from its log and catches up.
    cluster.restart(leader).await;
    eventually(
        "the restarted node has the later write",
        DEADLINE,
        || async {
            (cluster
                .get(leader, &format!("after-{attempt}"), false)
                .await
                == 200)
                .then_some(())
        },
    )
    .await
    .unwrap();
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_repeated_leader_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(tokio::sync::RwLock::new(Cluster::start(dir.path()).await));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let attempted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for writer in 0..4usize {
        let (cluster, acknowledged, attempted) =
            (cluster.clone(), acknowledged.clone(), attempted.clone());
        let stop = stop_rx.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !*stop.borrow() {
                n += 1;
                let name = format!("w{writer}-{n}");
                // Through every node in turn; a stopped node's API is refused (not acknowledged).
                let through = (writer + n) % 3;
                attempted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let result = {
                    let cluster = cluster.read().await;
                    if cluster.nodes[through].task.is_none() {
                        continue;
                    }
                    let put = cluster.put(through, &name, "v");
                    tokio::time::timeout(Duration::from_secs(20), put).await
                };
                if let Ok(Ok(201)) = result {
                    acknowledged.lock().unwrap().insert(name);
                }
            }
        }));
    }
    // Stop the leader three times, each time letting writes succeed without it, then restart it.
    for round in 0..3 {
        let before = acknowledged.lock().unwrap().len();
        let leader = cluster.read().await.leader().await;
        let stopping = {
            let mut cluster = cluster.write().await;
            let node = &mut cluster.nodes[leader];
            (node.stop.take(), node.task.take())
        };
        if let Some(tx) = stopping.0 {
            let _ = tx.send(());
        }
        stopping.1.unwrap().await.unwrap().unwrap();
        eventually("writes without the stopped leader", DEADLINE, || async {
            (acknowledged.lock().unwrap().len() > before + 10).then_some(())
        })
        .await
        .unwrap();
        cluster.write().await.restart(leader).await;
        println!(
            "round {round}: leader node {} stopped and restarted",
            leader + 1
        );
    }
    let _ = stop_tx.send(true);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "{} writes acknowledged of {} attempted",
        acknowledged.len(),
        attempted.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(acknowledged.len() > 30);
    let cluster = Arc::try_unwrap(cluster).ok().unwrap().into_inner();
    for i in 0..3 {
        let missing = eventually("every acknowledged write on the node", DEADLINE, || async {
            let names = cluster.names(i).await?;
            names.is_superset(&acknowledged).then_some(())
        })
        .await;
        if missing.is_err() {
            let names = cluster.names(i).await.unwrap_or_default();
            let lost: Vec<_> = acknowledged.difference(&names).collect();
            panic!("node {} lacks acknowledged writes: {lost:?}", i + 1);
        }
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zone_with_two_global_addresses_follows_when_its_node_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    // A zone token from one node is good at every node (shared signing keys).
    let token = kds_zone::zone_token(
        &cluster.client,
        &cluster.nodes[0].api,
        &cluster.nodes[0].token,
        "zone-1",
    )
    .await;
    let ca = std::fs::read(dir.path().join("kds").join(kds::tls::CA_CERT_FILE)).unwrap();

    let zone_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ResourceStore> = Arc::new(SledStore::open(zone_dir.path()).unwrap());
    let mut config =
        kds::client::KdsClientConfig::new("zone-1", cluster.nodes[0].kds.clone(), store.clone());
    config.global_addresses = vec![cluster.nodes[0].kds.clone(), cluster.nodes[1].kds.clone()];
    config.tls = Some(kds::tls::client_tls_config(&ca, "127.0.0.1"));
    config.token = kds::client::TokenSource::Static(token);
    config.backoff.initial = Duration::from_millis(50);
    config.backoff.max = Duration::from_millis(500);
    let status = config.status.clone();
    let (zone_stop, zone_stopped) = tokio::sync::oneshot::channel::<()>();
    let zone = tokio::spawn(kds::client::run(config, async {
        let _ = zone_stopped.await;
    }));

    let in_zone = |name: &'static str| {
        let store = store.clone();
        async move {
            let key = ResourceKey::new(ResourceType::MeshTimeout, Some("default"), name);
            eventually(&format!("{name} in the zone"), DEADLINE, || {
                let (store, key) = (store.clone(), key.clone());
                async move { store.get(&key).await.unwrap() }
            })
            .await
            .unwrap();
        }
    };
    assert_eq!(cluster.put(2, "before", "1").await, Ok(201));
    in_zone("before").await;
    assert!(status.snapshot().connected);

    // Its node stops: the zone moves to the other address and keeps receiving policy.
    cluster.stop(0).await;
    assert_eq!(cluster.put(2, "after", "1").await, Ok(201));
    in_zone("after").await;
    // Zone inventory goes up through the node it is now on (written through the leader).
    store.create(kds_zone::web_dataplane()).await.unwrap();
    eventually("the zone's dataplane at the global", DEADLINE, || async {
        let url = format!(
            "{}/meshes/default/dataplanes/web.zone-1",
            cluster.nodes[2].api
        );
        let response = cluster.client.get(url).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await
    .unwrap();

    let _ = zone_stop.send(());
    zone.await.unwrap().unwrap();
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_quorum_names_the_members_it_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    global_cp::cluster::ensure_certs(&certs, &[1]).unwrap();
    // Nodes 2 and 3 are addresses nothing listens on: bound, not listening, and held until the
    // end, so that no other test's listener can take the port meanwhile (a connect is refused).
    let mut members = std::collections::BTreeMap::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    members.insert(1, listener.local_addr().unwrap().to_string());
    let mut held = Vec::new();
    for id in [2u64, 3] {
        let gone = tokio::net::TcpSocket::new_v4().unwrap();
        gone.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        members.insert(id, gone.local_addr().unwrap().to_string());
        held.push(gone);
    }
    let node = global_cp::cluster::start(
        global_cp::cluster::NodeSetup {
            id: 1,
            raft_dir: dir.path().join("raft"),
            legacy_store: dir.path().join("store"),
            tls: global_cp::cluster::load_peer_tls(&certs, 1).unwrap(),
            members: Some(members.clone()),
            join: false,
            allow_membership_mismatch: false,
            catch_up_timeout: Duration::from_secs(60),
            snapshot_every: 5000,
            routes: Default::default(),
        },
        listener,
    )
    .await
    .unwrap();
    let error = global_cp::cluster::wait_for_leader(&node.store(), Duration::from_millis(500))
        .await
        .unwrap_err()
        .to_string();
    for id in [2u64, 3] {
        let named = format!("node {id} at {}", members[&id]);
        assert!(error.contains(&named), "{error}");
    }
    drop(held);
    node.shutdown().await.unwrap();

    // A data dir of the single-node store before Raft is refused, and left alone.
    let old = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(old.path().join("store")).unwrap();
    let config = Config::parse_from([
        "global-cp",
        "--data-dir",
        old.path().to_str().unwrap(),
        "--api-addr",
        "127.0.0.1:0",
        "--diagnostics-addr",
        "127.0.0.1:0",
        "--kds-addr",
        "127.0.0.1:0",
    ]);
    let listeners = GlobalListeners::bind(&config).await.unwrap();
    let error = global_cp::run(config, listeners, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("single-node global"), "{error}");
    assert!(!old.path().join("raft").exists());
}
