//! The Raft storage on sled passes openraft's own storage conformance suite.

use mesh_store::raft::openraft::testing::{StoreBuilder, Suite};
use mesh_store::raft::openraft::StorageError;
use mesh_store::raft::{open_storage, LogStore, StateMachine, TypeConfig};
use mesh_store::SledStoreOptions;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) =
            open_storage(dir.path(), SledStoreOptions::default()).expect("open storage");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("openraft storage suite");
}
