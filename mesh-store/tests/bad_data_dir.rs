//! Opening something that is not a healthy Meridian store gives `BadDataDir` naming the path and
//! the reason, never a panic and never a silently emptied store.

use std::path::Path;

use mesh_store::{testing, ResourceStore, SledStore, StoreError, FORMAT_VERSION};

fn expect_bad(path: &Path, reason_part: &str) {
    match SledStore::open(path) {
        Err(StoreError::BadDataDir { path: p, reason }) => {
            assert_eq!(p, path.display().to_string());
            assert!(
                reason.contains(reason_part),
                "reason {reason:?} should mention {reason_part:?}"
            );
        }
        Err(other) => panic!("expected BadDataDir, got {other}"),
        Ok(_) => panic!("{} opened as a store", path.display()),
    }
}

/// Makes a store with `n` resources and closes it.
async fn populated(path: &Path, n: usize) {
    let store = SledStore::open(path).expect("open");
    for i in 0..n {
        store
            .create(testing::resource(&format!("r{i}"), "default", &[]))
            .await
            .expect("create");
    }
}

#[tokio::test]
async fn fresh_and_reopened_stores_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A missing directory is created; an existing empty one is initialised.
    let missing = dir.path().join("a/b/store");
    populated(&missing, 3).await;
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    populated(&empty, 1).await;
    let store = SledStore::open(&missing).expect("reopen");
    assert_eq!(store.revision(), 3);
    let got = store
        .get(&testing::key("r2", "default"))
        .await
        .expect("get");
    assert_eq!(got.map(|r| r.meta.version), Some(1));
}

#[test]
fn a_file_is_not_a_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("store");
    std::fs::write(&file, "hello").expect("write");
    expect_bad(&file, "not a directory");
}

#[test]
fn a_directory_with_foreign_files_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("notes.txt"), "mine").expect("write");
    expect_bad(dir.path(), "foreign file \"notes.txt\"");
    // And it was left alone.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);
}

#[test]
fn another_sled_database_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let db = testing::open_sled_db(dir.path());
        db.insert("someone", "else").expect("insert");
        db.flush().expect("flush");
    }
    expect_bad(dir.path(), "without the Meridian format marker");
}

#[tokio::test]
async fn a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    populated(dir.path(), 2).await;
    {
        let db = testing::open_sled_db(dir.path());
        let meta = db.open_tree("meta").expect("meta tree");
        meta.insert("format_version", &(FORMAT_VERSION + 1).to_be_bytes())
            .expect("insert");
        db.flush().expect("flush");
    }
    expect_bad(
        dir.path(),
        &format!("format version {}", FORMAT_VERSION + 1),
    );
}

#[tokio::test]
async fn a_garbage_database_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    populated(dir.path(), 20).await;
    let db = dir.path().join("db");
    let len = std::fs::metadata(&db).expect("db file").len() as usize;
    // Deterministic garbage.
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, garbage).expect("overwrite");
    expect_bad(dir.path(), "damaged");
}

#[tokio::test]
async fn damage_inside_the_database_that_loses_acknowledged_writes_is_refused() {
    for (offset, len) in [(5_000, 20_000), (40_000, 100)] {
        let dir = tempfile::tempdir().expect("temp dir");
        populated(dir.path(), 200).await;
        let db = dir.path().join("db");
        let mut bytes = std::fs::read(&db).expect("read db");
        assert!(
            bytes.len() > offset + len,
            "db file is {} bytes",
            bytes.len()
        );
        for (i, b) in bytes[offset..offset + len].iter_mut().enumerate() {
            *b = (i * 31 % 256) as u8 ^ 0x5A;
        }
        std::fs::write(&db, bytes).expect("write db");
        expect_bad(dir.path(), "damaged");
    }
}

#[tokio::test]
async fn a_truncated_database_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    populated(dir.path(), 50).await;
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("db"))
        .expect("open db");
    db.set_len(1000).expect("truncate");
    drop(db);
    expect_bad(dir.path(), "damaged");
}

#[tokio::test]
async fn a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _store = SledStore::open(dir.path()).expect("open");
    match SledStore::open(dir.path()) {
        Err(StoreError::BadDataDir { .. }) => {}
        other => panic!("expected BadDataDir, got {other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_record_is_reported_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    populated(dir.path(), 3).await;
    {
        let db = testing::open_sled_db(dir.path());
        let resources = db.open_tree("resources").expect("resources tree");
        let (key, _) = resources
            .iter()
            .nth(1)
            .expect("a second record")
            .expect("readable");
        resources.insert(key, &b"{not json"[..]).expect("insert");
        db.flush().expect("flush");
    }
    let store = SledStore::open(dir.path()).expect("the store itself opens");
    let err = store
        .get(&testing::key("r1", "default"))
        .await
        .expect_err("corrupt record");
    match err {
        StoreError::Corrupt { key, .. } => assert!(key.contains("r1"), "{key}"),
        other => panic!("expected Corrupt, got {other}"),
    }
    let err = store
        .list(&mesh_store::ListQuery::all(
            mesh_api::ResourceType::MeshTimeout,
        ))
        .await
        .expect_err("list over a corrupt record");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // Intact records still read.
    let r0 = store
        .get(&testing::key("r0", "default"))
        .await
        .expect("get r0");
    assert!(r0.is_some());
}
