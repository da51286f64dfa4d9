//! The shared, per-mesh view the generators read: built once per mesh per burst of changes and
//! shared by every proxy of the mesh, so that rebuilding N proxies costs one pass over the store
//! plus N small per-proxy steps (never N listings of the mesh).
//!
//! [`MeshContext`] holds the mesh's Dataplanes, policies, external services and CA, and its
//! services with their endpoints: the zone's own ready inbounds, and every other zone's instances
//! as advertised by that zone's ingress (relayed by the global). [`ContextCache`] keeps one
//! context per mesh and drops it when the mesh changes; a per-mesh generation counter makes sure
//! a context built from state older than the last invalidation is never kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use mesh_api::core::dataplane::InboundState;
use mesh_api::core::mesh::MeshSpec;
use mesh_api::{
    Resource, ResourceKey, ResourceType, Spec, ORIGIN_LABEL, PROTOCOL_TAG, SERVICE_TAG, ZONE_LABEL,
};
use mesh_store::{ListQuery, ResourceStore, StoreError};

use crate::reachable::Reachable;
use crate::snapshot::Snapshot;

/// One local instance of a service: a ready inbound of a Dataplane of this zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalEndpoint {
    pub address: String,
    pub port: u32,
    pub tags: BTreeMap<String, String>,
}

/// A service's instances in another zone, reached through that zone's ingress.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteEndpoint {
    pub zone: String,
    /// The ingress's advertised address and port.
    pub address: String,
    pub port: u32,
    /// Ready instances behind the ingress with these tags (the endpoint's weight).
    pub instances: u32,
    pub tags: BTreeMap<String, String>,
}

/// What the mesh knows of one `kuma.io/service`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceInfo {
    /// `kuma.io/protocol` of its inbounds (the first one seen, local before remote); `tcp` when
    /// none says.
    pub protocol: String,
    pub local: Vec<LocalEndpoint>,
    pub remote: Vec<RemoteEndpoint>,
}

/// What proxies sharing an outbound bundle have in common: a fingerprint of the policies that
/// select them (`generator::sidecar::policy_fingerprint`) and the services they reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BundleKey {
    pub policies: u64,
    pub reachable: Reachable,
}

/// A zone ingress of the zone store: this zone's own, or another zone's (relayed by the global).
#[derive(Debug, Clone)]
pub struct IngressInfo {
    pub name: String,
    pub zone: String,
    pub local: bool,
    pub resource: Resource,
}

/// Everything about one mesh the generators need.
#[derive(Debug)]
pub struct MeshContext {
    pub name: String,
    /// `None` when the Mesh resource does not exist (its proxies get no mesh-wide features).
    pub mesh: Option<MeshSpec>,
    /// The zone this control plane runs (`None` for a standalone control plane).
    pub local_zone: Option<String>,
    pub dataplanes: Vec<Resource>,
    /// Every policy-like resource of the mesh (targetRef policies, TrafficRoute,
    /// TrafficPermission), for `mesh_api::matching`.
    pub policies: Vec<Resource>,
    pub external_services: Vec<Resource>,
    /// Secrets of the mesh (CA material, external service certificates).
    pub secrets: BTreeMap<String, Resource>,
    pub services: BTreeMap<String, ServiceInfo>,
    pub ingresses: Vec<IngressInfo>,
    pub egresses: Vec<Resource>,
    /// The mesh's builtin CA when mTLS is on and its Secrets are in the store (`Err` says why it
    /// cannot be used: missing or damaged Secrets, a `provided` backend).
    pub ca: Result<Arc<mesh_ca::MeshCa>, String>,
    /// Outbound resources shared by the proxies that the same policies apply to and that reach
    /// the same services (see `generator::sidecar`).
    pub bundles: Mutex<HashMap<BundleKey, Arc<Snapshot>>>,
}

impl MeshContext {
    /// Whether the mesh has mTLS enabled (an enabled CA backend).
    pub fn mtls_enabled(&self) -> bool {
        self.mesh
            .as_ref()
            .is_some_and(|m| m.enabled_mtls_backend().is_some())
    }

    /// Whether cross-zone traffic leaves through the zone's egress (`routing.zoneEgress`).
    pub fn routes_through_egress(&self) -> bool {
        self.mesh
            .as_ref()
            .and_then(|m| m.routing.as_ref())
            .is_some_and(|r| r.zone_egress)
    }

    /// Reads the mesh's state from `store`. `ingresses` and `egresses` are the zone store's
    /// (global-scoped) ZoneIngresses and ZoneEgresses, read once for all meshes.
    pub async fn load(
        store: &dyn ResourceStore,
        mesh: &str,
        local_zone: Option<&str>,
        ingresses: &[IngressInfo],
        egresses: &[Resource],
    ) -> Result<MeshContext, StoreError> {
        let mut resources = Vec::new();
        if let Some(mesh) = store
            .get(&ResourceKey::new(ResourceType::Mesh, None, mesh))
            .await?
        {
            resources.push(mesh);
        }
        for rtype in ResourceType::ALL {
            let wanted = matches!(
                rtype,
                ResourceType::Dataplane
                    | ResourceType::ExternalService
                    | ResourceType::Secret
                    | ResourceType::TrafficRoute
                    | ResourceType::TrafficPermission
            ) || rtype.is_policy();
            if wanted && rtype.scope() == mesh_api::Scope::Mesh {
                resources.extend(store.list(&ListQuery::in_mesh(*rtype, mesh)).await?.items);
            }
        }
        Ok(MeshContext::from_resources(
            mesh, local_zone, resources, ingresses, egresses,
        ))
    }

    /// The context of `mesh` from its resources (the Mesh, and any of its Dataplanes, policies,
    /// ExternalServices and Secrets; others are ignored).
    pub fn from_resources(
        mesh: &str,
        local_zone: Option<&str>,
        resources: Vec<Resource>,
        ingresses: &[IngressInfo],
        egresses: &[Resource],
    ) -> MeshContext {
        let mut mesh_spec = None;
        let mut dataplanes = Vec::new();
        let mut policies = Vec::new();
        let mut external_services = Vec::new();
        let mut secrets = BTreeMap::new();
        for resource in resources {
            match resource.resource_type() {
                ResourceType::Mesh => {
                    if let Spec::Mesh(spec) = resource.spec {
                        mesh_spec = Some(spec);
                    }
                }
                ResourceType::Dataplane => dataplanes.push(resource),
                ResourceType::ExternalService => external_services.push(resource),
                ResourceType::Secret => {
                    secrets.insert(resource.meta.name.clone(), resource);
                }
                ResourceType::TrafficRoute | ResourceType::TrafficPermission => {
                    policies.push(resource)
                }
                t if t.is_policy() => policies.push(resource),
                _ => {}
            }
        }
        let services = services_of(mesh, &dataplanes, ingresses, local_zone);
        let ca = mesh_ca_of(mesh, mesh_spec.as_ref(), &secrets);
        MeshContext {
            name: mesh.to_string(),
            mesh: mesh_spec,
            local_zone: local_zone.map(str::to_string),
            dataplanes,
            policies,
            external_services,
            secrets,
            services,
            ingresses: ingresses.to_vec(),
            egresses: egresses.to_vec(),
            ca,
            bundles: Mutex::new(HashMap::new()),
        }
    }

    /// The mesh's Dataplane called `name`.
    pub fn dataplane(&self, name: &str) -> Option<&Resource> {
        self.dataplanes.iter().find(|d| d.meta.name == name)
    }
}

/// The mesh's CA from its Secrets (synced from the global, or made by a standalone control plane).
fn mesh_ca_of(
    mesh: &str,
    spec: Option<&MeshSpec>,
    secrets: &BTreeMap<String, Resource>,
) -> Result<Arc<mesh_ca::MeshCa>, String> {
    let backend = spec
        .and_then(|m| m.enabled_mtls_backend())
        .ok_or_else(|| format!("mesh {mesh} has no enabled mTLS backend"))?;
    if backend.backend_type != mesh_ca::BUILTIN {
        return Err(format!(
            "mesh {mesh}: CA backend {:?} of type {:?} is not supported yet (only builtin)",
            backend.name, backend.backend_type
        ));
    }
    let pem = |name: String| -> Result<String, String> {
        let resource = secrets
            .get(&name)
            .ok_or_else(|| format!("mesh {mesh}: Secret {name} is not in this zone yet"))?;
        let Spec::Secret(secret) = &resource.spec else {
            return Err(format!("mesh {mesh}: {name} is not a Secret"));
        };
        let bytes = secret
            .bytes()
            .ok_or_else(|| format!("mesh {mesh}: Secret {name}: data is not base64"))?;
        String::from_utf8(bytes).map_err(|_| format!("mesh {mesh}: Secret {name} is not PEM"))
    };
    let cert = pem(mesh_ca::cert_secret_name(mesh, &backend.name))?;
    let key = pem(mesh_ca::key_secret_name(mesh, &backend.name))?;
    mesh_ca::MeshCa::from_pem(mesh, &backend.name, &cert, &key)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The zone an ingress serves: `spec.zone`, else the `kuma.io/zone` label, else this zone.
pub fn ingresses_of(resources: Vec<Resource>, local_zone: Option<&str>) -> Vec<IngressInfo> {
    resources
        .into_iter()
        .filter_map(|resource| {
            let Spec::ZoneIngress(spec) = &resource.spec else {
                return None;
            };
            let relayed = resource
                .meta
                .labels
                .get(ORIGIN_LABEL)
                .is_some_and(|o| o == "global");
            let zone = if !spec.zone.is_empty() {
                spec.zone.clone()
            } else if let Some(zone) = resource.meta.labels.get(ZONE_LABEL) {
                zone.clone()
            } else {
                local_zone.unwrap_or_default().to_string()
            };
            let local = !relayed && local_zone.is_none_or(|z| z == zone || zone.is_empty());
            Some(IngressInfo {
                name: resource.meta.name.clone(),
                zone,
                local,
                resource,
            })
        })
        .collect()
}

/// The services of the mesh: local ready inbounds, and the other zones' instances from their
/// ingresses' `availableServices`.
fn services_of(
    mesh: &str,
    dataplanes: &[Resource],
    ingresses: &[IngressInfo],
    local_zone: Option<&str>,
) -> BTreeMap<String, ServiceInfo> {
    let mut services: BTreeMap<String, ServiceInfo> = BTreeMap::new();
    for dataplane in dataplanes {
        let Spec::Dataplane(spec) = &dataplane.spec else {
            continue;
        };
        let address = spec
            .networking
            .as_ref()
            .map(|n| n.address.as_str())
            .unwrap_or_default();
        for inbound in spec.inbounds() {
            let Some(service) = inbound.tags.get(SERVICE_TAG) else {
                continue;
            };
            let info = services.entry(service.clone()).or_default();
            if info.protocol.is_empty() {
                if let Some(p) = inbound.tags.get(PROTOCOL_TAG) {
                    info.protocol = p.clone();
                }
            }
            if inbound.state == InboundState::Ready {
                let ip = if inbound.address.is_empty() {
                    address
                } else {
                    &inbound.address
                };
                info.local.push(LocalEndpoint {
                    address: ip.to_string(),
                    port: inbound.port,
                    tags: inbound.tags.clone(),
                });
            }
        }
    }
    for ingress in ingresses.iter().filter(|i| !i.local) {
        if local_zone.is_some_and(|z| z == ingress.zone) {
            continue;
        }
        let Spec::ZoneIngress(spec) = &ingress.resource.spec else {
            continue;
        };
        let Some(networking) = spec.networking.as_ref() else {
            continue;
        };
        let (address, port) = if networking.advertised_address.is_empty() {
            (networking.address.clone(), networking.port)
        } else {
            (
                networking.advertised_address.clone(),
                if networking.advertised_port == 0 {
                    networking.port
                } else {
                    networking.advertised_port
                },
            )
        };
        if address.is_empty() || port == 0 {
            continue;
        }
        for available in &spec.available_services {
            if available.mesh != mesh || available.instances == 0 || available.external_service {
                continue;
            }
            let Some(service) = available.tags.get(SERVICE_TAG) else {
                continue;
            };
            let info = services.entry(service.clone()).or_default();
            if info.protocol.is_empty() {
                if let Some(p) = available.tags.get(PROTOCOL_TAG) {
                    info.protocol = p.clone();
                }
            }
            info.remote.push(RemoteEndpoint {
                zone: ingress.zone.clone(),
                address: address.clone(),
                port,
                instances: available.instances,
                tags: available.tags.clone(),
            });
        }
    }
    for info in services.values_mut() {
        info.local.sort();
        info.local.dedup();
        info.remote.sort();
        if info.protocol.is_empty() {
            info.protocol = "tcp".to_string();
        }
    }
    services
}

/// Shared per-mesh contexts plus the zone-wide ingress/egress lists, dropped on change.
#[derive(Debug, Default)]
pub struct ContextCache {
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Bumped by every invalidation of the mesh (and of everything, for `None`).
    generations: HashMap<String, u64>,
    global_generation: u64,
    /// Bumped when only the zone view changes (a Mesh created or deleted).
    zone_generation: u64,
    meshes: HashMap<String, (u64, Arc<MeshContext>)>,
    zone: Option<(u64, Arc<ZoneView>)>,
}

/// The zone-wide resources every mesh context and the ingress/egress generators share.
#[derive(Debug, Default)]
pub struct ZoneView {
    pub ingresses: Vec<IngressInfo>,
    pub egresses: Vec<Resource>,
    /// Every mesh of the zone store.
    pub meshes: Vec<String>,
}

impl CacheState {
    fn generation(&self, mesh: &str) -> u64 {
        self.global_generation + self.generations.get(mesh).copied().unwrap_or(0)
    }
}

impl ContextCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // Only map inserts/removes happen under the lock: a poisoned state is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the contexts of `meshes` (every context, and the zone view, when `None`), and
    /// the zone view when `zone_view` (a Mesh was created or deleted).
    pub fn invalidate(&self, meshes: Option<&BTreeSet<String>>, zone_view: bool) {
        let mut state = self.lock();
        match meshes {
            None => {
                state.global_generation += 1;
                state.meshes.clear();
                state.zone = None;
            }
            Some(meshes) => {
                for mesh in meshes {
                    *state.generations.entry(mesh.clone()).or_default() += 1;
                    state.meshes.remove(mesh);
                }
                if zone_view {
                    state.zone_generation += 1;
                    state.zone = None;
                }
            }
        }
    }

    /// The zone-wide view, loading it if needed.
    pub async fn zone(
        &self,
        store: &dyn ResourceStore,
        local_zone: Option<&str>,
    ) -> Result<Arc<ZoneView>, StoreError> {
        let generation = {
            let state = self.lock();
            let generation = state.global_generation + state.zone_generation;
            if let Some((g, view)) = &state.zone {
                if *g == generation {
                    return Ok(view.clone());
                }
            }
            generation
        };
        let ingresses = store
            .list(&ListQuery::all(ResourceType::ZoneIngress))
            .await?
            .items;
        let egresses = store
            .list(&ListQuery::all(ResourceType::ZoneEgress))
            .await?
            .items;
        let meshes = store
            .list(&ListQuery::all(ResourceType::Mesh))
            .await?
            .items
            .into_iter()
            .map(|m| m.meta.name)
            .collect();
        let view = Arc::new(ZoneView {
            ingresses: ingresses_of(ingresses, local_zone),
            egresses,
            meshes,
        });
        let mut state = self.lock();
        if state.global_generation + state.zone_generation == generation {
            state.zone = Some((generation, view.clone()));
        }
        Ok(view)
    }

    /// The context of `mesh`, loading it if needed.
    pub async fn mesh(
        &self,
        store: &dyn ResourceStore,
        mesh: &str,
        local_zone: Option<&str>,
    ) -> Result<Arc<MeshContext>, StoreError> {
        let generation = {
            let state = self.lock();
            let generation = state.generation(mesh);
            if let Some((g, context)) = state.meshes.get(mesh) {
                if *g == generation {
                    return Ok(context.clone());
                }
            }
            generation
        };
        let zone = self.zone(store, local_zone).await?;
        let context = Arc::new(
            MeshContext::load(store, mesh, local_zone, &zone.ingresses, &zone.egresses).await?,
        );
        let mut state = self.lock();
        if state.generation(mesh) == generation {
            state
                .meshes
                .insert(mesh.to_string(), (generation, context.clone()));
        }
        Ok(context)
    }
}
