//! Storage for Meridian resources. [`ResourceStore`] is the seam every control plane writes
//! through: get, list (label and name-prefix filters, pagination), create, update with optimistic
//! concurrency on the resource version, delete, and [`ResourceStore::watch`], an ordered stream of
//! change events from a revision. [`SledStore`] implements it on an embedded sled database whose
//! writes are durable when acknowledged (concurrent writers share flushes). The replicated (Raft)
//! store of the global control plane, `raft::RaftStore` (feature `raft`), implements the same
//! trait; every implementation must pass the
//! conformance suite in `testing` (enabled by the `testing` feature).

#[cfg(feature = "raft")]
pub mod raft;
mod sled_store;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use sled_store::{SledStore, SledStoreOptions, FORMAT_VERSION};
pub use store::{ChangeEvent, ChangeKind, ListPage, ListQuery, ResourceStore, StoreError, Watch};
