//! Three Raft nodes in one process over the real gRPC network (mutual TLS, 127.0.0.1:0): writes
//! through the leader reach every node with identical state; the leader is shut down, another
//! is elected and takes writes (the time is measured); a new member catches up from a snapshot
//! streamed in chunks, and a watcher from before the snapshot gets `Compacted`.

mod raft_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mesh_api::ResourceType;
use mesh_store::raft::openraft::{BasicNode, SnapshotPolicy};
use mesh_store::raft::{RaftNode, RaftNodeConfig, RaftStore};
use mesh_store::testing::{resource, DEADLINE};
use mesh_store::{ListQuery, ResourceStore, StoreError};
use raft_common::{peer_tls, start_node, start_node_at, wait_for_leader};
use test_support::eventually;

async fn cluster(dir: &std::path::Path, tune: impl Fn(&mut RaftNodeConfig)) -> Vec<RaftNode> {
    let tls = peer_tls();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node(id, dir, &tls, &tune).await);
    }
    let members = nodes
        .iter()
        .map(|n| (n.id(), n.addr().to_string()))
        .collect::<BTreeMap<_, _>>();
    nodes[0].initialize(members).await.expect("initialize");
    for node in &nodes {
        wait_for_leader(node, DEADLINE).await;
    }
    nodes
}

/// The node that is leader, by its own metrics.
fn leader(nodes: &[RaftNode]) -> Option<&RaftNode> {
    nodes.iter().find(|n| {
        let metrics = n.raft().metrics().borrow().clone();
        metrics.current_leader == Some(n.id())
    })
}

/// Every resource a node holds, with its revision.
async fn state(store: &RaftStore) -> (u64, Vec<mesh_api::Resource>) {
    let page = store
        .list(&ListQuery::all(ResourceType::MeshTimeout))
        .await
        .expect("list");
    (store.revision(), page.items)
}

/// Waits until every store holds what `reference` holds.
async fn converged(reference: &RaftStore, stores: &[RaftStore]) {
    let expected = state(reference).await;
    for (i, store) in stores.iter().enumerate() {
        let expected = expected.clone();
        eventually(&format!("store {i} to converge"), DEADLINE, || {
            let store = store.clone();
            let expected = expected.clone();
            async move { (state(&store).await == expected).then_some(()) }
        })
        .await
        .expect("converged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_replicate_and_a_new_leader_takes_writes_after_the_leader_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = cluster(dir.path(), |_| {}).await;
    let stores: Vec<RaftStore> = nodes.iter().map(RaftNode::store).collect();
    let leader_id = leader(&nodes).expect("a leader").id();
    let leader_store = stores[(leader_id - 1) as usize].clone();

    for i in 0..20 {
        leader_store
            .create(resource(
                &format!("r{i}"),
                "default",
                &[("i", &i.to_string())],
            ))
            .await
            .expect("create through the leader");
    }
    // Same resources, versions, times and revision everywhere: the state machine is
    // deterministic (the time comes from the command).
    converged(&leader_store, &stores).await;
    assert_eq!(leader_store.revision(), 20);

    // A follower forwards writes to the leader and answers once the write is applied on it too
    // (read-your-writes through the node written to).
    let follower = stores
        .iter()
        .zip(&nodes)
        .find(|(_, n)| n.id() != leader_id)
        .map(|(s, _)| s.clone())
        .expect("a follower");
    let forwarded = follower
        .create(resource("via-follower", "default", &[]))
        .await
        .expect("a write through a follower");
    assert_eq!(forwarded.meta.version, 1);
    assert_eq!(
        follower.get(&forwarded.key()).await.expect("get"),
        Some(forwarded.clone())
    );
    // A forwarded refusal keeps its type.
    match follower.create(resource("r1", "default", &[])).await {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key.name, "r1"),
        other => panic!("expected AlreadyExists through the follower, got {other:?}"),
    }
    follower
        .delete(&forwarded.key(), None)
        .await
        .expect("a delete through a follower");
    // Linearizable reads: confirmed by the leader, on the follower after it applied that far.
    leader_store
        .linearizable()
        .await
        .expect("linearizable on the leader");
    follower
        .linearizable()
        .await
        .expect("linearizable on a follower");
    assert_eq!(follower.revision(), leader_store.revision());
    let status = follower.status();
    assert_eq!(status.leader_id, Some(leader_id));
    assert_eq!(status.role, "follower");
    assert_eq!(status.members.len(), 3);
    // A refused command is a committed no-op: the writer gets the typed error, no revision.
    match leader_store.create(resource("r0", "default", &[])).await {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key.name, "r0"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(leader_store.revision(), 22);

    // Stop the leader; measure until a write succeeds through whichever node leads next.
    let stopped = nodes.remove((leader_id - 1) as usize);
    drop(leader_store);
    let remaining: Vec<RaftStore> = nodes.iter().map(RaftNode::store).collect();
    let started = Instant::now();
    stopped.shutdown().await.expect("stop the leader");
    let mut attempt = 0u32;
    let written = eventually("a write after the leader stopped", DEADLINE, || {
        attempt += 1;
        let name = format!("after-failover-{attempt}");
        let remaining = remaining.clone();
        async move {
            for store in &remaining {
                if let Ok(written) = store.create(resource(&name, "default", &[])).await {
                    return Some(written);
                }
            }
            None
        }
    })
    .await
    .expect("a new leader takes writes");
    let failover = started.elapsed();
    println!("leader fail-over (stop to first successful write): {failover:?}");
    // openraft elects after 150-300 ms of silence; the margin is for a loaded test machine.
    assert!(
        failover < Duration::from_secs(5),
        "fail-over took {failover:?}"
    );

    let new_leader = leader(&nodes).expect("a new leader");
    assert_ne!(new_leader.id(), leader_id);
    let new_leader_store = new_leader.store();
    assert!(new_leader_store
        .get(&written.key())
        .await
        .expect("get")
        .is_some());
    converged(&new_leader_store, &remaining).await;

    drop((stores, remaining, new_leader_store, follower));
    for node in nodes {
        node.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_member_catches_up_from_a_snapshot_streamed_in_chunks() {
    let dir = tempfile::tempdir().expect("temp dir");
    const CHUNK: usize = 512;
    let tune = |config: &mut RaftNodeConfig| {
        config.raft.snapshot_policy = SnapshotPolicy::LogsSinceLast(20);
        config.raft.max_in_snapshot_log_to_keep = 0;
        config.raft.purge_batch_size = 1;
        config.snapshot_chunk_bytes = CHUNK;
    };
    let nodes = cluster(dir.path(), tune).await;
    let leader = leader(&nodes).expect("a leader");
    let store = leader.store();
    for i in 0..60 {
        store
            .create(resource(&format!("r{i}"), "default", &[]))
            .await
            .expect("create");
    }
    // The leader snapshots and purges its log, so a new member can only start from a snapshot.
    let mut metrics = leader.raft().metrics();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = metrics.borrow().clone();
        if m.snapshot.is_some() && m.purged.is_some() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no snapshot and purge: {m:?}");
        let _ = tokio::time::timeout(left, metrics.changed()).await;
    }

    let tls = peer_tls_of(&nodes);
    let newcomer = start_node(4, dir.path(), &tls, tune).await;
    let newcomer_store = newcomer.store();
    // Watching from the empty state, before the snapshot arrives.
    let mut watch = newcomer_store.watch(0).expect("watch");
    leader
        .raft()
        .add_learner(
            4,
            BasicNode {
                addr: newcomer.addr().to_string(),
            },
            true,
        )
        .await
        .expect("add learner");
    converged(&store, std::slice::from_ref(&newcomer_store)).await;
    let snapshot = newcomer
        .raft()
        .metrics()
        .borrow()
        .snapshot
        .expect("the newcomer installed a snapshot");
    assert!(snapshot.index >= 20, "snapshot at {snapshot:?}");
    let size = store_snapshot_size(leader).await;
    assert!(
        size > 4 * CHUNK,
        "snapshot of {size} bytes spans several chunks"
    );
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(Err(StoreError::Compacted { requested, oldest }))) => {
            assert_eq!(requested, 0);
            assert!(oldest > 1);
        }
        other => panic!("expected Compacted after the snapshot, got {other:?}"),
    }

    drop((store, newcomer_store));
    newcomer.shutdown().await.expect("shutdown");
    for node in nodes {
        node.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_cannot_be_reached_is_refused_naming_it_and_removed_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = cluster(dir.path(), |config| {
        config.catch_up_timeout = Duration::from_millis(500);
    })
    .await;
    // Through a follower: forwarded to the leader, which waits for the learner to catch up.
    let leader_id = leader(&nodes).expect("a leader").id();
    let follower = nodes.iter().find(|n| n.id() != leader_id).unwrap();
    let started = Instant::now();
    let error = follower
        .store()
        .add_member(4, "127.0.0.1:1".into())
        .await
        .expect_err("nothing listens at 127.0.0.1:1");
    let text = error.to_string();
    assert!(
        matches!(error, mesh_store::raft::RaftNodeError::NotCaughtUp { .. }),
        "{error:?}"
    );
    assert!(
        text.contains("node 4 at 127.0.0.1:1 did not catch up within 500ms")
            && text.contains("removed again"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    eventually(
        "node 4 gone from every node's membership",
        DEADLINE,
        || async {
            nodes
                .iter()
                .all(|n| n.store().status().members.len() == 3)
                .then_some(())
        },
    )
    .await
    .expect("removed");
    let status = nodes[0].store().status();
    assert!(status.members.iter().all(|m| m.voter), "{status:?}");
    for node in nodes {
        node.shutdown().await.expect("shutdown");
    }
}

/// The TLS material of a running cluster (all nodes share it in these tests).
fn peer_tls_of(nodes: &[RaftNode]) -> mesh_store::raft::PeerTls {
    nodes[0].tls().clone()
}

async fn store_snapshot_size(node: &RaftNode) -> usize {
    node.raft()
        .get_snapshot()
        .await
        .expect("get snapshot")
        .map(|s| s.snapshot.len())
        .expect("a snapshot")
}

/// Peers authenticate each other: a client whose certificate comes from another CA gets no
/// answer from a node, and neither does one that does not trust the node's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_the_cluster_ca_is_refused() {
    use mesh_store::raft::openraft::network::RPCOption;
    use mesh_store::raft::openraft::raft::VoteRequest;
    use mesh_store::raft::openraft::{RaftNetwork, RaftNetworkFactory, Vote};
    use mesh_store::raft::NetworkFactory;

    let dir = tempfile::tempdir().expect("temp dir");
    let tls = peer_tls();
    let node = start_node(1, dir.path(), &tls, |_| {}).await;
    let peer = BasicNode {
        addr: node.addr().to_string(),
    };
    let vote = || VoteRequest::new(Vote::new(1, 2), None);
    let option = RPCOption::new(Duration::from_secs(5));

    // The cluster's own certificate is answered (an uninitialised node still answers a vote).
    let mut member = NetworkFactory::new(tls.clone()).new_client(1, &peer).await;
    member
        .vote(vote(), option.clone())
        .await
        .expect("a member's vote request is answered");

    // Another CA's certificate: the node refuses the handshake.
    let stranger = peer_tls();
    let mut client = NetworkFactory::new(stranger.clone())
        .new_client(1, &peer)
        .await;
    let refused = client.vote(vote(), option.clone()).await;
    assert!(
        refused.is_err(),
        "a stranger's vote was answered: {refused:?}"
    );

    // Trusting another CA: the client refuses the node.
    let mut distrustful = NetworkFactory::new(mesh_store::raft::PeerTls {
        ca_pem: stranger.ca_pem,
        ..tls
    })
    .new_client(1, &peer)
    .await;
    let refused = distrustful.vote(vote(), option).await;
    assert!(
        refused.is_err(),
        "a node with an untrusted certificate answered: {refused:?}"
    );

    node.shutdown().await.expect("shutdown");
}

/// A follower stopped while the others take writes is restarted on its data directory and the
/// same address: it resumes from its own log (no snapshot: none was taken) and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_follower_catches_up_from_its_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = cluster(dir.path(), |_| {}).await;
    let leader_id = leader(&nodes).expect("a leader").id();
    let leader_store = nodes[(leader_id - 1) as usize].store();
    for i in 0..10 {
        leader_store
            .create(resource(&format!("before-{i}"), "default", &[]))
            .await
            .expect("create");
    }
    let position = nodes
        .iter()
        .position(|n| n.id() != leader_id)
        .expect("a follower");
    let follower = nodes.remove(position);
    converged(&leader_store, &[follower.store()]).await;
    let (id, addr, tls) = (follower.id(), follower.addr(), follower.tls().clone());
    follower.shutdown().await.expect("stop the follower");

    // A majority remains: writes go on without it.
    for i in 0..10 {
        leader_store
            .create(resource(&format!("while-down-{i}"), "default", &[]))
            .await
            .expect("create while a follower is down");
    }
    let restarted = start_node_at(id, dir.path(), &tls, &addr.to_string(), |_| {}).await;
    let store = restarted.store();
    // Its own state is back at once (no snapshot was ever taken), then the rest arrives.
    assert!(
        store.revision() >= 10,
        "revision {} after restart",
        store.revision()
    );
    assert!(restarted.raft().metrics().borrow().snapshot.is_none());
    converged(&leader_store, std::slice::from_ref(&store)).await;
    assert_eq!(store.revision(), 20);

    drop((leader_store, store));
    restarted.shutdown().await.expect("shutdown");
    for node in nodes {
        node.shutdown().await.expect("shutdown");
    }
}
