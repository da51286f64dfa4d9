//! The real [`SnapshotSource`]: Envoy configuration for every proxy of the zone, from the zone
//! store. [`Generator`] keeps the per-mesh [`crate::context::MeshContext`]s (built once per burst
//! of changes, shared by the mesh's proxies) and dispatches on the proxy's kind: a Dataplane's
//! sidecar ([`sidecar`]), the zone ingress or the zone egress ([`gateways`]). Endpoints with
//! their cross-zone priorities are [`endpoints`]; small Envoy builders are [`envoy`].

pub mod endpoints;
pub mod envoy;
pub mod gateways;
pub mod sidecar;

use std::collections::BTreeSet;
use std::sync::Arc;

use mesh_api::Spec;
use mesh_store::ResourceStore;

use crate::auth::{ProxyId, ProxyKind};
use crate::context::{ContextCache, MeshContext};
use crate::snapshot::{Snapshot, SnapshotSource, SourceError};

pub use sidecar::sidecar_snapshot;

/// Builds every proxy's snapshot from a zone store.
pub struct Generator {
    store: Arc<dyn ResourceStore>,
    local_zone: Option<String>,
    contexts: ContextCache,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("local_zone", &self.local_zone)
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// A generator for the proxies of zone `local_zone` (`None`: a standalone control plane).
    pub fn new(store: Arc<dyn ResourceStore>, local_zone: Option<String>) -> Self {
        Generator {
            store,
            local_zone,
            contexts: ContextCache::default(),
        }
    }

    /// The shared view of `mesh`.
    pub async fn mesh_context(&self, mesh: &str) -> Result<Arc<MeshContext>, SourceError> {
        Ok(self
            .contexts
            .mesh(self.store.as_ref(), mesh, self.local_zone.as_deref())
            .await?)
    }

    async fn every_mesh(&self) -> Result<Vec<Arc<MeshContext>>, SourceError> {
        let zone = self
            .contexts
            .zone(self.store.as_ref(), self.local_zone.as_deref())
            .await?;
        let mut meshes = Vec::with_capacity(zone.meshes.len());
        for mesh in &zone.meshes {
            meshes.push(self.mesh_context(mesh).await?);
        }
        Ok(meshes)
    }
}

#[async_trait::async_trait]
impl SnapshotSource for Generator {
    async fn snapshot(&self, proxy: &ProxyId) -> Result<Snapshot, SourceError> {
        let unknown = || SourceError::UnknownDataplane(proxy.clone());
        match proxy.kind {
            ProxyKind::Dataplane => {
                let ctx = self.mesh_context(&proxy.mesh).await?;
                let dataplane = ctx.dataplane(&proxy.name).ok_or_else(unknown)?;
                Ok(sidecar_snapshot(&ctx, dataplane))
            }
            ProxyKind::ZoneIngress | ProxyKind::ZoneEgress => {
                let zone = self
                    .contexts
                    .zone(self.store.as_ref(), self.local_zone.as_deref())
                    .await?;
                let meshes = self.every_mesh().await?;
                if proxy.kind == ProxyKind::ZoneIngress {
                    let ingress = zone
                        .ingresses
                        .iter()
                        .find(|i| i.local && i.name == proxy.name)
                        .ok_or_else(unknown)?;
                    Ok(gateways::ingress_snapshot(&ingress.resource, &meshes))
                } else {
                    let egress = zone
                        .egresses
                        .iter()
                        .find(|e| {
                            e.meta.name == proxy.name && matches!(e.spec, Spec::ZoneEgress(_))
                        })
                        .ok_or_else(unknown)?;
                    Ok(gateways::egress_snapshot(egress, &meshes))
                }
            }
        }
    }

    fn invalidate(&self, meshes: Option<&BTreeSet<String>>, mesh_list: bool) {
        self.contexts.invalidate(meshes, mesh_list);
    }
}
