//! The `mesh_store::testing` conformance suite against a single-node [`RaftStore`]: every write
//! goes through the Raft log (append, commit, apply) over real storage and a real peer listener.

mod raft_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_store::raft::{RaftNode, RaftStore};
use mesh_store::testing;
use raft_common::{peer_tls, start_node, wait_for_leader};

async fn single_node() -> (tempfile::TempDir, RaftNode, RaftStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_node(1, dir.path(), &peer_tls(), |_| {}).await;
    node.initialize(BTreeMap::from([(1, node.addr().to_string())]))
        .await
        .expect("initialize");
    assert_eq!(wait_for_leader(&node, Duration::from_secs(10)).await, 1);
    let store = node.store();
    (dir, node, store)
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (_dir, node, store) = single_node().await;
            testing::$check(&store).await;
            node.shutdown().await.expect("shutdown");
        }
    )*};
}

conformance!(
    create_assigns_version_and_times,
    create_existing_fails,
    update_bumps_version_and_keeps_creation_time,
    update_with_stale_version_conflicts,
    update_and_delete_of_missing_are_not_found,
    delete_checks_the_expected_version,
    global_scoped_keys_ignore_the_mesh,
    invalid_keys_are_rejected,
    list_filters,
    list_pagination,
    revisions_are_gap_free_and_watch_replays,
    watch_delivers_kinds_and_live_events,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_has_no_gap_between_replay_and_live() {
    let (_dir, node, store) = single_node().await;
    testing::watch_has_no_gap_between_replay_and_live(Arc::new(store)).await;
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_never_lost() {
    let (_dir, node, store) = single_node().await;
    testing::concurrent_updates_are_never_lost(Arc::new(store)).await;
    node.shutdown().await.expect("shutdown");
}

/// A node restarted on its data directory resumes as leader of its one-node cluster with every
/// acknowledged write (from its log and state), and takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = peer_tls();
    let node = start_node(1, dir.path(), &tls, |_| {}).await;
    node.initialize(BTreeMap::from([(1, node.addr().to_string())]))
        .await
        .expect("initialize");
    wait_for_leader(&node, Duration::from_secs(10)).await;
    let store = node.store();
    use mesh_store::ResourceStore;
    for i in 0..5 {
        store
            .create(testing::resource(&format!("r{i}"), "default", &[]))
            .await
            .expect("create");
    }
    let revision = store.revision();
    drop(store);
    node.shutdown().await.expect("shutdown");

    // The same address is not needed: a one-node cluster talks to nobody.
    let node = start_node(1, dir.path(), &tls, |_| {}).await;
    wait_for_leader(&node, Duration::from_secs(10)).await;
    let store = node.store();
    assert_eq!(store.revision(), revision);
    let got = store
        .get(&testing::key("r4", "default"))
        .await
        .expect("get");
    assert_eq!(got.map(|r| r.meta.version), Some(1));
    store
        .create(testing::resource("after-restart", "default", &[]))
        .await
        .expect("create after restart");
    assert_eq!(store.revision(), revision + 1);
    drop(store);
    node.shutdown().await.expect("shutdown");
}
