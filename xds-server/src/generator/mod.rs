//! The real [`SnapshotSource`]: Envoy configuration for every proxy of the zone, from the zone
//! store. [`Generator`] keeps the per-mesh [`crate::context::MeshContext`]s (built once per burst
//! of changes, shared by the mesh's proxies) and dispatches on the proxy's kind: a Dataplane's
//! sidecar ([`sidecar`]), the zone ingress or the zone egress ([`gateways`]). Endpoints with
//! their cross-zone priorities are [`endpoints`]; small Envoy builders are [`envoy`].

pub mod endpoints;
pub mod envoy;
pub mod gateways;
pub mod sidecar;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mesh_api::Spec;
use mesh_ca::WorkloadIdentity;
use mesh_store::ResourceStore;

use crate::auth::{ProxyId, ProxyKind};
use crate::context::{ContextCache, MeshContext};
use crate::snapshot::{Snapshot, SnapshotSource, SourceError};

pub use sidecar::{sidecar_snapshot, ProxyIdentity};

/// A certificate issued to a proxy for one mesh, kept until it is due for renewal.
struct Issued {
    ca_pem: String,
    identity: WorkloadIdentity,
    cert: ProxyIdentity,
}

/// Builds every proxy's snapshot from a zone store.
pub struct Generator {
    store: Arc<dyn ResourceStore>,
    local_zone: Option<String>,
    contexts: ContextCache,
    /// Certificates by proxy and mesh, re-issued only when due, when the proxy's identity
    /// changes or when the mesh's CA does.
    identities: Mutex<HashMap<(ProxyId, String), Issued>>,
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
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// `proxy`'s certificate in `ctx`'s mesh for `wanted`, issued now or reused; `None` when the
    /// mesh has no mTLS or its CA is not usable (logged).
    fn identity(
        &self,
        proxy: &ProxyId,
        ctx: &MeshContext,
        wanted: WorkloadIdentity,
    ) -> Option<ProxyIdentity> {
        let backend = ctx.mesh.as_ref()?.enabled_mtls_backend()?;
        let ca = match &ctx.ca {
            Ok(ca) => ca,
            Err(reason) => {
                tracing::warn!(%proxy, %reason, "no certificate for the proxy yet");
                return None;
            }
        };
        let key = (proxy.clone(), ctx.name.clone());
        let now = SystemTime::now();
        {
            let issued = self.identities.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = issued.get(&key) {
                if i.ca_pem == ca.cert_pem() && i.identity == wanted && now < i.cert.renew_at {
                    return Some(i.cert.clone());
                }
            }
        }
        let cert = match ca.issue(&wanted, mesh_ca::workload_validity(backend), now) {
            Ok(cert) => cert,
            Err(e) => {
                tracing::error!(%proxy, mesh = %ctx.name, error = %e, "cannot issue the proxy's certificate");
                return None;
            }
        };
        let identity = ProxyIdentity {
            renew_at: mesh_ca::renew_at(&cert),
            cert_chain_pem: cert.cert_chain_pem,
            key_pem: cert.key_pem,
            ca_pem: ca.cert_pem().to_string(),
        };
        tracing::debug!(%proxy, mesh = %ctx.name, "issued the proxy's certificate");
        self.identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key,
                Issued {
                    ca_pem: identity.ca_pem.clone(),
                    identity: wanted,
                    cert: identity.clone(),
                },
            );
        Some(identity)
    }

    fn forget(&self, proxy: &ProxyId) {
        self.identities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _), _| p != proxy);
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
        let result = self.build(proxy).await;
        if let Err(SourceError::UnknownDataplane(_)) = &result {
            self.forget(proxy);
        }
        result
    }

    fn invalidate(&self, meshes: Option<&BTreeSet<String>>, mesh_list: bool) {
        self.contexts.invalidate(meshes, mesh_list);
    }
}

impl Generator {
    async fn build(&self, proxy: &ProxyId) -> Result<Snapshot, SourceError> {
        let unknown = || SourceError::UnknownDataplane(proxy.clone());
        match proxy.kind {
            ProxyKind::Dataplane => {
                let ctx = self.mesh_context(&proxy.mesh).await?;
                let dataplane = ctx.dataplane(&proxy.name).ok_or_else(unknown)?;
                let Spec::Dataplane(spec) = &dataplane.spec else {
                    return Err(unknown());
                };
                let identity = ctx
                    .mtls_enabled()
                    .then(|| self.identity(proxy, &ctx, WorkloadIdentity::from_dataplane(spec)))
                    .flatten();
                Ok(sidecar_snapshot(&ctx, dataplane, identity.as_ref()))
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
                    let mut identities = BTreeMap::new();
                    for ctx in meshes
                        .iter()
                        .filter(|c| c.mtls_enabled() && c.routes_through_egress())
                    {
                        let wanted = WorkloadIdentity {
                            services: vec![sidecar::EGRESS_SERVICE.to_string()],
                            ..WorkloadIdentity::default()
                        };
                        if let Some(identity) = self.identity(proxy, ctx, wanted) {
                            identities.insert(ctx.name.clone(), identity);
                        }
                    }
                    Ok(gateways::egress_snapshot(egress, &meshes, &identities))
                }
            }
        }
    }
}
