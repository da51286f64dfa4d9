//! The conformance suite of the [`ResourceStore`] contract. Every implementation (the sled store,
//! the Raft-replicated store) runs it: call each check with a fresh, empty store, or [`run_all`]
//! with a factory. Checks panic (like `assert!`) on a violation and wait on conditions with
//! deadlines, never for a fixed time. Enabled by the `testing` feature.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_api::{Resource, ResourceKey, ResourceType, Spec};

use crate::{ChangeEvent, ChangeKind, ListQuery, ResourceStore, StoreError, Watch};

/// How long any single awaited condition may take before the check fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The sled database of a store's directory, opened directly (a test that damages it). Waits
/// as [`crate::SledStore::open`] does for the lock that a store just closed still holds for a
/// moment from sled's background threads, which a plain `sled::open` would fail on.
pub fn open_sled_db(path: &std::path::Path) -> sled::Db {
    let capacity = crate::SledStoreOptions::default().cache_capacity;
    crate::sled_store::open_sled(path, capacity, "a test's sled database")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A mesh-scoped test resource (a MeshTimeout) with labels.
pub fn resource(name: &str, mesh: &str, labels: &[(&str, &str)]) -> Resource {
    let mut r = Resource::new(name, Some(mesh), Spec::empty(ResourceType::MeshTimeout));
    r.meta.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    r
}

/// The key of a [`resource`].
pub fn key(name: &str, mesh: &str) -> ResourceKey {
    ResourceKey::new(ResourceType::MeshTimeout, Some(mesh), name)
}

/// Waits for the next event of a watch, failing the check after [`DEADLINE`].
pub async fn next_event(watch: &mut Watch) -> Result<ChangeEvent, StoreError> {
    match tokio::time::timeout(DEADLINE, watch.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {DEADLINE:?}"),
    }
}

/// Runs every check, each against a fresh store from `factory`.
pub async fn run_all<S, F, Fut>(factory: F)
where
    S: ResourceStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    create_assigns_version_and_times(&factory().await).await;
    create_existing_fails(&factory().await).await;
    update_bumps_version_and_keeps_creation_time(&factory().await).await;
    update_with_stale_version_conflicts(&factory().await).await;
    update_and_delete_of_missing_are_not_found(&factory().await).await;
    delete_checks_the_expected_version(&factory().await).await;
    global_scoped_keys_ignore_the_mesh(&factory().await).await;
    invalid_keys_are_rejected(&factory().await).await;
    list_filters(&factory().await).await;
    list_pagination(&factory().await).await;
    revisions_are_gap_free_and_watch_replays(&factory().await).await;
    watch_delivers_kinds_and_live_events(&factory().await).await;
    watch_has_no_gap_between_replay_and_live(Arc::new(factory().await)).await;
    concurrent_updates_are_never_lost(Arc::new(factory().await)).await;
}

/// `create` assigns version 1 and both times, and `get` returns exactly what `create` returned.
pub async fn create_assigns_version_and_times<S: ResourceStore>(store: &S) {
    let mut input = resource("a", "default", &[("team", "x")]);
    input.meta.version = 42; // ignored
    let created = store.create(input).await.expect("create");
    assert_eq!(created.meta.version, 1);
    assert_eq!(created.meta.name, "a");
    assert_eq!(created.meta.mesh.as_deref(), Some("default"));
    assert_eq!(
        created.meta.labels.get("team").map(String::as_str),
        Some("x")
    );
    assert!(created.meta.creation_time.is_some(), "creation time set");
    assert_eq!(created.meta.creation_time, created.meta.modification_time);
    let got = store.get(&key("a", "default")).await.expect("get");
    assert_eq!(got.as_ref(), Some(&created));
    assert_eq!(store.get(&key("a", "other")).await.expect("get"), None);
    assert_eq!(store.get(&key("b", "default")).await.expect("get"), None);
}

/// `create` of an existing key fails with `AlreadyExists` and changes nothing.
pub async fn create_existing_fails<S: ResourceStore>(store: &S) {
    let created = store
        .create(resource("a", "default", &[]))
        .await
        .expect("create");
    let revision = store.revision();
    let err = store
        .create(resource("a", "default", &[("new", "1")]))
        .await
        .expect_err("second create");
    assert!(
        matches!(err, StoreError::AlreadyExists(ref k) if *k == key("a", "default")),
        "{err}"
    );
    assert_eq!(
        store.revision(),
        revision,
        "a failed write adds no revision"
    );
    let got = store.get(&key("a", "default")).await.expect("get");
    assert_eq!(got, Some(created));
    // The same name in another mesh is another resource.
    store
        .create(resource("a", "other", &[]))
        .await
        .expect("create in other mesh");
}

/// `update` bumps the version by one, keeps the creation time, sets the modification time.
pub async fn update_bumps_version_and_keeps_creation_time<S: ResourceStore>(store: &S) {
    let created = store
        .create(resource("a", "default", &[]))
        .await
        .expect("create");
    let mut next = created.clone();
    next.meta.labels.insert("step".into(), "1".into());
    let updated = store.update(next).await.expect("update");
    assert_eq!(updated.meta.version, 2);
    assert_eq!(updated.meta.creation_time, created.meta.creation_time);
    assert!(updated.meta.modification_time >= created.meta.modification_time);
    assert_eq!(
        updated.meta.labels.get("step").map(String::as_str),
        Some("1")
    );
    let mut again = updated.clone();
    again.meta.labels.insert("step".into(), "2".into());
    let again = store.update(again).await.expect("second update");
    assert_eq!(again.meta.version, 3);
    assert_eq!(again.meta.creation_time, created.meta.creation_time);
    let got = store.get(&key("a", "default")).await.expect("get");
    assert_eq!(got, Some(again));
}

/// Of two updates from the same version, the second fails with `Conflict` naming both versions.
pub async fn update_with_stale_version_conflicts<S: ResourceStore>(store: &S) {
    let created = store
        .create(resource("a", "default", &[]))
        .await
        .expect("create");
    let mut first = created.clone();
    first.meta.labels.insert("writer".into(), "first".into());
    let mut second = created.clone();
    second.meta.labels.insert("writer".into(), "second".into());
    store.update(first).await.expect("first update");
    let err = store.update(second).await.expect_err("stale update");
    match err {
        StoreError::Conflict {
            key: k,
            expected,
            actual,
        } => {
            assert_eq!(k, key("a", "default"));
            assert_eq!((expected, actual), (1, 2));
        }
        other => panic!("expected Conflict, got {other}"),
    }
    let got = store
        .get(&key("a", "default"))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        got.meta.labels.get("writer").map(String::as_str),
        Some("first")
    );
    assert_eq!(got.meta.version, 2);
}

/// `update` and `delete` of a missing key fail with `NotFound`.
pub async fn update_and_delete_of_missing_are_not_found<S: ResourceStore>(store: &S) {
    let mut r = resource("ghost", "default", &[]);
    r.meta.version = 1;
    let err = store.update(r).await.expect_err("update of missing");
    assert!(
        matches!(err, StoreError::NotFound(ref k) if *k == key("ghost", "default")),
        "{err}"
    );
    let err = store
        .delete(&key("ghost", "default"), None)
        .await
        .expect_err("delete of missing");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.revision(), 0, "failed writes add no revision");
}

/// `delete` with a wrong expected version conflicts; with the right one (or none) it returns the
/// deleted resource, after which the key is free again.
pub async fn delete_checks_the_expected_version<S: ResourceStore>(store: &S) {
    let created = store
        .create(resource("a", "default", &[]))
        .await
        .expect("create");
    let err = store
        .delete(&key("a", "default"), Some(7))
        .await
        .expect_err("delete with wrong version");
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 7,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );
    let deleted = store
        .delete(&key("a", "default"), Some(1))
        .await
        .expect("delete");
    assert_eq!(deleted, created);
    assert_eq!(store.get(&key("a", "default")).await.expect("get"), None);
    let recreated = store
        .create(resource("a", "default", &[]))
        .await
        .expect("recreate");
    assert_eq!(recreated.meta.version, 1);
    store
        .delete(&key("a", "default"), None)
        .await
        .expect("delete without version");
    assert_eq!(store.get(&key("a", "default")).await.expect("get"), None);
}

/// Global-scoped types are keyed by name alone: a mesh given with them is dropped.
pub async fn global_scoped_keys_ignore_the_mesh<S: ResourceStore>(store: &S) {
    let mesh = Resource::new("m1", Some("stray"), Spec::empty(ResourceType::Mesh));
    let created = store.create(mesh).await.expect("create Mesh");
    assert_eq!(created.meta.mesh, None);
    let by_plain_key = ResourceKey::new(ResourceType::Mesh, None, "m1");
    let by_meshed_key = ResourceKey {
        rtype: ResourceType::Mesh,
        mesh: Some("whatever".into()),
        name: "m1".into(),
    };
    assert_eq!(
        store.get(&by_plain_key).await.expect("get").as_ref(),
        Some(&created)
    );
    assert_eq!(
        store.get(&by_meshed_key).await.expect("get").as_ref(),
        Some(&created)
    );
    let page = store
        .list(&ListQuery::in_mesh(ResourceType::Mesh, "ignored"))
        .await
        .expect("list");
    assert_eq!(
        page.total, 1,
        "the mesh filter is ignored for global-scoped types"
    );
    // A mesh-scoped resource of the same name does not collide.
    store
        .create(resource("m1", "default", &[]))
        .await
        .expect("create MeshTimeout");
}

/// Keys that cannot be stored are rejected with `InvalidKey`.
pub async fn invalid_keys_are_rejected<S: ResourceStore>(store: &S) {
    let no_mesh = Resource::new("a", None, Spec::empty(ResourceType::MeshTimeout));
    let err = store
        .create(no_mesh)
        .await
        .expect_err("mesh-scoped without mesh");
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    let err = store
        .create(resource("", "default", &[]))
        .await
        .expect_err("empty name");
    assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    assert_eq!(store.revision(), 0);
}

async fn names(store: &impl ResourceStore, query: &ListQuery) -> Vec<String> {
    store
        .list(query)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|r| format!("{}/{}", r.meta.mesh.unwrap_or_default(), r.meta.name))
        .collect()
}

/// Filters by type, mesh, name prefix and labels; results are ordered by mesh, then name.
pub async fn list_filters<S: ResourceStore>(store: &S) {
    for (name, mesh, labels) in [
        ("web-2", "default", &[("team", "a"), ("env", "prod")][..]),
        ("web-1", "default", &[("team", "a"), ("env", "dev")][..]),
        ("api", "default", &[("team", "b"), ("env", "prod")][..]),
        ("web-1", "other", &[("team", "a")][..]),
        ("webb", "other", &[][..]),
        ("web", "a-mesh", &[("env", "prod")][..]),
    ] {
        store
            .create(resource(name, mesh, labels))
            .await
            .expect("create");
    }
    // Another type with the same names stays out of MeshTimeout lists.
    store
        .create(Resource::new(
            "web-1",
            Some("default"),
            Spec::empty(ResourceType::MeshRetry),
        ))
        .await
        .expect("create MeshRetry");

    let all = ListQuery::all(ResourceType::MeshTimeout);
    assert_eq!(
        names(store, &all).await,
        [
            "a-mesh/web",
            "default/api",
            "default/web-1",
            "default/web-2",
            "other/web-1",
            "other/webb"
        ]
    );
    assert_eq!(store.list(&all).await.expect("list").total, 6);
    assert_eq!(
        names(
            store,
            &ListQuery::in_mesh(ResourceType::MeshTimeout, "default")
        )
        .await,
        ["default/api", "default/web-1", "default/web-2"]
    );
    assert_eq!(
        names(
            store,
            &ListQuery::in_mesh(ResourceType::MeshTimeout, "nope")
        )
        .await,
        Vec::<String>::new()
    );
    let prefix = |mesh: Option<&str>, p: &str| ListQuery {
        mesh: mesh.map(str::to_owned),
        name_prefix: Some(p.to_owned()),
        ..ListQuery::all(ResourceType::MeshTimeout)
    };
    assert_eq!(
        names(store, &prefix(None, "web-")).await,
        ["default/web-1", "default/web-2", "other/web-1"]
    );
    assert_eq!(
        names(store, &prefix(Some("other"), "web")).await,
        ["other/web-1", "other/webb"]
    );
    assert_eq!(
        names(store, &prefix(Some("default"), "x")).await,
        Vec::<String>::new()
    );
    let labelled = |mesh: Option<&str>, labels: &[(&str, &str)]| ListQuery {
        mesh: mesh.map(str::to_owned),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..ListQuery::all(ResourceType::MeshTimeout)
    };
    assert_eq!(
        names(store, &labelled(None, &[("env", "prod")])).await,
        ["a-mesh/web", "default/api", "default/web-2"]
    );
    assert_eq!(
        names(
            store,
            &labelled(Some("default"), &[("team", "a"), ("env", "prod")])
        )
        .await,
        ["default/web-2"]
    );
    assert_eq!(
        names(store, &labelled(None, &[("team", "c")])).await,
        Vec::<String>::new()
    );
    let combined = ListQuery {
        name_prefix: Some("web".into()),
        ..labelled(None, &[("team", "a")])
    };
    let page = store.list(&combined).await.expect("list");
    assert_eq!(page.total, 3);
    assert_eq!(
        names(store, &combined).await,
        ["default/web-1", "default/web-2", "other/web-1"]
    );
    assert_eq!(
        names(store, &ListQuery::all(ResourceType::MeshRetry)).await,
        ["default/web-1"]
    );
}

/// offset/limit pages walk every item exactly once, with `total` counting all matches.
pub async fn list_pagination<S: ResourceStore>(store: &S) {
    let mut expected = Vec::new();
    for mesh in ["m1", "m2"] {
        for i in 0..13 {
            let name = format!("r{i:02}");
            let labels: &[(&str, &str)] = if i % 2 == 0 { &[("even", "yes")] } else { &[] };
            store
                .create(resource(&name, mesh, labels))
                .await
                .expect("create");
            expected.push(format!("{mesh}/{name}"));
        }
    }
    expected.sort();
    for limit in [1, 5, 13, 26, 100] {
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            let query = ListQuery {
                offset,
                limit: Some(limit),
                ..ListQuery::all(ResourceType::MeshTimeout)
            };
            let page = store.list(&query).await.expect("list");
            assert_eq!(page.total, 26);
            assert!(page.items.len() <= limit);
            seen.extend(page.items.iter().map(|r| {
                format!(
                    "{}/{}",
                    r.meta.mesh.clone().unwrap_or_default(),
                    r.meta.name
                )
            }));
            match page.next_offset {
                Some(next) => {
                    assert_eq!(next, offset + page.items.len());
                    offset = next;
                }
                None => break,
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    // Past the end: empty, total still counted.
    let page = store
        .list(&ListQuery {
            offset: 100,
            ..ListQuery::all(ResourceType::MeshTimeout)
        })
        .await
        .expect("list");
    assert!(page.items.is_empty());
    assert_eq!((page.total, page.next_offset), (26, None));
    // Pagination combined with filters: the total counts only matches.
    let query = ListQuery {
        mesh: Some("m2".into()),
        labels: [("even".to_owned(), "yes".to_owned())].into(),
        offset: 2,
        limit: Some(3),
        ..ListQuery::all(ResourceType::MeshTimeout)
    };
    let page = store.list(&query).await.expect("list");
    assert_eq!(page.total, 7);
    assert_eq!(page.next_offset, Some(5));
    let got: Vec<_> = page.items.iter().map(|r| r.meta.name.as_str()).collect();
    assert_eq!(got, ["r04", "r06", "r08"]);
}

/// Every successful write adds exactly one revision; `watch(r)` replays every change after `r`.
pub async fn revisions_are_gap_free_and_watch_replays<S: ResourceStore>(store: &S) {
    assert_eq!(store.revision(), 0);
    for i in 0..10 {
        store
            .create(resource(&format!("r{i}"), "default", &[]))
            .await
            .expect("create");
        assert_eq!(store.revision(), i + 1);
    }
    let mut watches = Vec::new();
    for from in [0, 3, 9, 10] {
        let mut watch = store.watch(from).expect("watch");
        for expected in from + 1..=10 {
            let event = next_event(&mut watch).await.expect("event");
            assert_eq!(event.revision, expected);
            assert_eq!(event.kind, ChangeKind::Created);
            assert_eq!(event.resource.meta.name, format!("r{}", expected - 1));
        }
        watches.push(watch);
    }
    // Nothing more until the next write, which then arrives live on every watch.
    let created = store
        .create(resource("live", "default", &[]))
        .await
        .expect("create");
    for watch in &mut watches {
        let event = next_event(watch).await.expect("live event");
        assert_eq!(event.revision, 11);
        assert_eq!(event.resource, created);
    }
}

/// Events carry the kind and the resource after the change (before it, for deletes).
pub async fn watch_delivers_kinds_and_live_events<S: ResourceStore>(store: &S) {
    let mut watch = store.watch(store.revision()).expect("watch");
    let created = store
        .create(resource("a", "default", &[]))
        .await
        .expect("create");
    let mut next = created.clone();
    next.meta.labels.insert("k".into(), "v".into());
    let updated = store.update(next).await.expect("update");
    let deleted = store
        .delete(&key("a", "default"), Some(2))
        .await
        .expect("delete");
    let events = [
        next_event(&mut watch).await.expect("event"),
        next_event(&mut watch).await.expect("event"),
        next_event(&mut watch).await.expect("event"),
    ];
    assert_eq!(events[0].kind, ChangeKind::Created);
    assert_eq!(events[0].resource, created);
    assert_eq!(events[1].kind, ChangeKind::Updated);
    assert_eq!(events[1].resource, updated);
    assert_eq!(events[2].kind, ChangeKind::Deleted);
    assert_eq!(events[2].resource, deleted);
    assert_eq!(events[2].resource.meta.version, 2);
    assert_eq!(events[1].revision, events[0].revision + 1);
    assert_eq!(events[2].revision, events[1].revision + 1);
}

/// A watch started while writers are busy, from a past revision, sees every revision exactly
/// once and in order, across the switch from replay to live events.
pub async fn watch_has_no_gap_between_replay_and_live<S: ResourceStore>(store: Arc<S>) {
    const WRITERS: u64 = 4;
    const PER_WRITER: u64 = 50;
    for i in 0..20 {
        store
            .create(resource(&format!("before-{i}"), "default", &[]))
            .await
            .expect("create");
    }
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                store
                    .create(resource(&format!("w{w}-{i}"), "default", &[]))
                    .await
                    .expect("create");
            }
        }));
    }
    // Start watches at different points while the writers run.
    let mut watches = Vec::new();
    for from in [0, 5, 20] {
        watches.push((from, store.watch(from).expect("watch")));
        tokio::task::yield_now().await;
    }
    let mid = store.revision();
    watches.push((mid, store.watch(mid).expect("watch")));
    for handle in handles {
        handle.await.expect("writer task");
    }
    let last = 20 + WRITERS * PER_WRITER;
    assert_eq!(store.revision(), last);
    for (from, mut watch) in watches {
        let mut names = BTreeSet::new();
        for expected in from + 1..=last {
            let event = next_event(&mut watch).await.expect("event");
            assert_eq!(event.revision, expected, "watch from {from}");
            assert!(names.insert(event.resource.meta.name.clone()), "duplicate");
        }
    }
}

/// Many tasks doing read-modify-write with version checks, retrying on `Conflict`: the final
/// counter equals the number of successful increments.
pub async fn concurrent_updates_are_never_lost<S: ResourceStore>(store: Arc<S>) {
    const TASKS: u64 = 16;
    const INCREMENTS: u64 = 20;
    store
        .create(resource("counter", "default", &[("count", "0")]))
        .await
        .expect("create");
    let successes = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        let successes = successes.clone();
        let conflicts = conflicts.clone();
        handles.push(tokio::spawn(async move {
            let mut done = 0;
            while done < INCREMENTS {
                let mut current = store
                    .get(&key("counter", "default"))
                    .await
                    .expect("get")
                    .expect("counter exists");
                let count: u64 = current.meta.labels["count"].parse().expect("a number");
                current
                    .meta
                    .labels
                    .insert("count".into(), (count + 1).to_string());
                match store.update(current).await {
                    Ok(_) => {
                        done += 1;
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(StoreError::Conflict { .. }) => {
                        conflicts.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                    Err(other) => panic!("update failed: {other}"),
                }
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    let successes = successes.load(Ordering::SeqCst);
    assert_eq!(successes, TASKS * INCREMENTS);
    let counter = store
        .get(&key("counter", "default"))
        .await
        .expect("get")
        .expect("counter exists");
    assert_eq!(counter.meta.labels["count"], successes.to_string());
    assert_eq!(counter.meta.version, 1 + successes);
    assert_eq!(store.revision(), 1 + successes);
}
