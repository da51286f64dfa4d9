//! Runs the `mesh_store::testing` conformance suite against [`SledStore`], one test per check.

use std::sync::Arc;

use mesh_store::{testing, SledStore};

fn fresh() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path().join("store")).expect("open");
    (dir, store)
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let (_dir, store) = fresh();
            testing::$check(&store).await;
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
    let (_dir, store) = fresh();
    testing::watch_has_no_gap_between_replay_and_live(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_never_lost() {
    let (_dir, store) = fresh();
    testing::concurrent_updates_are_never_lost(Arc::new(store)).await;
}

/// The whole suite through its single entry point, as other implementations will call it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes() {
    let dirs = std::sync::Mutex::new(Vec::new());
    testing::run_all(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path()).expect("open");
        dirs.lock().expect("lock").push(dir);
        async move { store }
    })
    .await;
}
