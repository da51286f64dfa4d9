//! Watch behaviour specific to the sled store: resuming across a restart, compaction of the change
//! log, slow watchers, and the end of the stream when the store closes.

use mesh_store::{
    testing, ChangeKind, ResourceStore, SledStore, SledStoreOptions, StoreError, Watch,
};

async fn create_n(store: &SledStore, prefix: &str, n: usize) {
    for i in 0..n {
        store
            .create(testing::resource(&format!("{prefix}{i}"), "default", &[]))
            .await
            .expect("create");
    }
}

/// Reads events `from + 1 ..= to` and checks they are contiguous.
async fn expect_revisions(watch: &mut Watch, from: u64, to: u64) {
    for expected in from + 1..=to {
        let event = testing::next_event(watch).await.expect("event");
        assert_eq!(event.revision, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_revision_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let last_seen = {
        let store = SledStore::open(dir.path()).expect("open");
        create_n(&store, "a", 40).await;
        let mut watch = store.watch(0).expect("watch");
        expect_revisions(&mut watch, 0, 25).await;
        25
    };
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(store.revision(), 40);
    // Writes after the restart continue the revision sequence.
    let mut first = store
        .get(&testing::key("a0", "default"))
        .await
        .expect("get")
        .expect("a0");
    first.meta.labels.insert("changed".into(), "yes".into());
    store.update(first).await.expect("update");
    store
        .delete(&testing::key("a1", "default"), None)
        .await
        .expect("delete");
    let mut watch = store.watch(last_seen).expect("resume");
    expect_revisions(&mut watch, last_seen, 40).await;
    let updated = testing::next_event(&mut watch).await.expect("event");
    assert_eq!((updated.revision, updated.kind), (41, ChangeKind::Updated));
    assert_eq!(updated.resource.meta.version, 2);
    let deleted = testing::next_event(&mut watch).await.expect("event");
    assert_eq!((deleted.revision, deleted.kind), (42, ChangeKind::Deleted));
    assert_eq!(deleted.resource.meta.name, "a1");
    // Then live events, with no gap.
    create_n(&store, "b", 5).await;
    expect_revisions(&mut watch, 42, 47).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_is_bounded_and_old_revisions_are_compacted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = |retention| SledStoreOptions {
        log_retention: retention,
        ..SledStoreOptions::default()
    };
    {
        let store = SledStore::open_with(dir.path(), options(10)).expect("open");
        create_n(&store, "r", 30).await;
        assert_eq!(store.oldest_retained().expect("oldest"), 21);
        match store.watch(0) {
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (0, 21));
            }
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(matches!(store.watch(19), Err(StoreError::Compacted { .. })));
        let mut watch = store.watch(20).expect("watch from the oldest retained");
        expect_revisions(&mut watch, 20, 30).await;
    }
    // Reopening with a smaller retention trims the log at once.
    let store = SledStore::open_with(dir.path(), options(4)).expect("reopen");
    assert_eq!(store.oldest_retained().expect("oldest"), 27);
    assert!(matches!(store.watch(25), Err(StoreError::Compacted { .. })));
    let mut watch = store.watch(26).expect("watch");
    expect_revisions(&mut watch, 26, 30).await;
    // The resources themselves are all still there.
    let page = store
        .list(&mesh_store::ListQuery::all(
            mesh_api::ResourceType::MeshTimeout,
        ))
        .await
        .expect("list");
    assert_eq!(page.total, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_gets_lagged_and_can_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open_with(
        dir.path(),
        SledStoreOptions {
            broadcast_capacity: 4,
            watch_buffer: 1,
            ..SledStoreOptions::default()
        },
    )
    .expect("open");
    let mut slow = store.watch(0).expect("watch");
    // Not reading while 50 changes are committed.
    create_n(&store, "r", 50).await;
    let mut last = 0;
    let lagged_at = loop {
        match testing::next_event(&mut slow).await {
            Ok(event) => {
                assert_eq!(
                    event.revision,
                    last + 1,
                    "no event skipped before the error"
                );
                last = event.revision;
            }
            Err(StoreError::Lagged { last_delivered }) => break last_delivered,
            Err(other) => panic!("expected Lagged, got {other}"),
        }
    };
    assert_eq!(lagged_at, last);
    assert!(lagged_at < 50, "the watcher did fall behind");
    // The error ends the stream.
    let end = tokio::time::timeout(testing::DEADLINE, slow.next())
        .await
        .expect("stream ends");
    assert!(end.is_none());
    // Resuming from the last delivered revision replays the rest from the log.
    let mut resumed = store.watch(lagged_at).expect("resume");
    expect_revisions(&mut resumed, lagged_at, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_when_the_store_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open");
    create_n(&store, "r", 3).await;
    let mut watch = store.watch(0).expect("watch");
    expect_revisions(&mut watch, 0, 3).await;
    drop(store);
    let end = tokio::time::timeout(testing::DEADLINE, watch.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none());
    // And the database was released: it can be opened again.
    let store = SledStore::open(dir.path()).expect("reopen");
    assert_eq!(store.revision(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_the_current_revision_sees_only_new_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open");
    create_n(&store, "old", 5).await;
    let mut watch = store.watch(store.revision()).expect("watch");
    let created = store
        .create(testing::resource("new", "default", &[]))
        .await
        .expect("create");
    let event = testing::next_event(&mut watch).await.expect("event");
    assert_eq!(event.revision, 6);
    assert_eq!(event.resource, created);
}
