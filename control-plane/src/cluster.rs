//! The seam between the REST API and a replicated store: a control plane whose store is one node
//! of a cluster (the global on Raft) shows the node's view in `GET /` and makes reads asked for
//! with `?consistent=true` linearizable. A control plane on a single store has none: its reads
//! are linearizable anyway.

use async_trait::async_trait;
use mesh_store::StoreError;

#[async_trait]
pub trait Cluster: Send + Sync {
    /// This node's view (node id, role, term, leader, members), shown under `cluster` in `GET /`.
    fn status(&self) -> serde_json::Value;

    /// Returns once a read of the local store started now is linearizable (the leader confirmed
    /// it still leads, and this node applied everything committed before the call).
    async fn linearizable(&self) -> Result<(), StoreError>;
}
