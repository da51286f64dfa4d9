//! End-to-end tests of meshctl against the real control planes: `meshctl up` starts `global-cp`
//! and `zone-cp` from this workspace's target directory (build them first with
//! `cargo build --workspace --bins`), then `apply`, `get` and `delete` go through their REST API.

#[path = "common/federation.rs"]
mod federation;

use std::path::PathBuf;

/// meshctl, after checking that the control planes it starts have been built.
fn meshctl() -> PathBuf {
    test_support::workspace_bin("global-cp");
    test_support::workspace_bin("zone-cp");
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

#[test]
fn up_apply_get_delete_stop_and_restart_keeps_data() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    federation::apply_get_delete_restart(&meshctl, tmp.path());
}

#[test]
fn every_seed_example_applies_and_reads_back() {
    let meshctl = meshctl();
    let seeds = test_support::workspace_root().join("../shared/seeds");
    let tmp = tempfile::tempdir().expect("tempdir");
    federation::apply_seeds(&meshctl, tmp.path(), &seeds);
}
