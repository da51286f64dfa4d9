//! Proxy self-registration, Kuma's "dataplane lifecycle": a proxy may carry the resource it runs
//! for (Dataplane, ZoneIngress or ZoneEgress, as JSON in either YAML form) in its first request's
//! `node.metadata[`[`RESOURCE_METADATA_FIELD`]`]`. Once the stream's token is verified for the node
//! id, the definition must name that same resource and pass `mesh_api`'s validation; the server
//! then creates it in the zone store (labelled [`REGISTERED_LABEL`]) or updates it when it differs.
//! When the stream ends because the proxy went away, the resource is deleted, but only if this
//! lifecycle created it (the label is still there: a resource made or replaced through the REST
//! API is never deleted), only if no newer stream registered the same name since (a restarted proxy
//! racing its old stream's end), and never while the zone CP itself is shutting down (the zone keeps
//! reporting it to the global; the proxy registers again when it reconnects).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use mesh_api::{Resource, ResourceKey, ResourceType, Spec};
use mesh_store::{ResourceStore, StoreError};

use crate::auth::ProxyId;

/// The `node.metadata` field (a string holding the resource as JSON) a proxy registers with;
/// Kuma's `kuma-dp` uses the same name.
pub const RESOURCE_METADATA_FIELD: &str = "dataplane.resource";

/// The label on resources this lifecycle created: only those are deleted when their proxy leaves.
pub const REGISTERED_LABEL: &str = "meridian.io/registered-by";
/// [`REGISTERED_LABEL`]'s value.
pub const REGISTERED_BY_XDS: &str = "xds";

/// How often an update that lost to a concurrent writer is tried again.
const UPDATE_ATTEMPTS: usize = 3;

/// Why a registration was refused; each maps to the gRPC status the stream ends with.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("node.metadata[{RESOURCE_METADATA_FIELD:?}]: {0}")]
    Malformed(String),
    #[error("node.metadata[{RESOURCE_METADATA_FIELD:?}]: {0}")]
    Invalid(mesh_api::ValidationError),
    #[error(
        "node.metadata[{RESOURCE_METADATA_FIELD:?}] defines {defined}, but the node id and the \
         dataplane token are for {proxy}"
    )]
    OtherResource { defined: String, proxy: ProxyId },
    #[error("{resource}: mesh {mesh:?} does not exist in this zone (yet)")]
    NoMesh { resource: String, mesh: String },
    #[error("registering {resource}: {source}")]
    Store {
        resource: String,
        source: StoreError,
    },
}

impl From<RegistrationError> for tonic::Status {
    fn from(err: RegistrationError) -> Self {
        let message = err.to_string();
        match err {
            RegistrationError::Malformed(_) | RegistrationError::Invalid(_) => {
                tonic::Status::invalid_argument(message)
            }
            RegistrationError::OtherResource { .. } => tonic::Status::permission_denied(message),
            // Both may clear up by themselves (the mesh arriving from the global, a store
            // conflict): the proxy retries.
            RegistrationError::NoMesh { .. } | RegistrationError::Store { .. } => {
                tonic::Status::unavailable(message)
            }
        }
    }
}

/// The resource a first request's node metadata defines, if any: parsed (universal or Kubernetes
/// form), validated, and checked to be `proxy`'s own.
pub fn definition(
    node: Option<&Node>,
    proxy: &ProxyId,
) -> Result<Option<Resource>, RegistrationError> {
    let Some(value) = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(RESOURCE_METADATA_FIELD))
    else {
        return Ok(None);
    };
    let Some(Kind::StringValue(text)) = &value.kind else {
        return Err(RegistrationError::Malformed(
            "must be a string holding the resource as JSON".to_owned(),
        ));
    };
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| RegistrationError::Malformed(format!("not JSON: {e}")))?;
    let resource = mesh_api::parse_resource(json)
        .map_err(|e| RegistrationError::Malformed(e.message))?
        .resource;
    let expected = proxy.resource_key();
    if resource.key() != expected {
        return Err(RegistrationError::OtherResource {
            defined: describe(&resource.key()),
            proxy: proxy.clone(),
        });
    }
    mesh_api::validate_resource(&resource).map_err(RegistrationError::Invalid)?;
    Ok(Some(resource))
}

fn describe(key: &ResourceKey) -> String {
    match &key.mesh {
        Some(mesh) => format!("{} {mesh}/{}", key.rtype, key.name),
        None => format!("{} {}", key.rtype, key.name),
    }
}

/// Which registration of a name is the current one.
#[derive(Debug, Default)]
struct Slot {
    /// The stream generation that registered last, while it lasts.
    current: Option<u64>,
}

/// Registers and deregisters self-registering proxies in a zone store. Cheap to clone.
#[derive(Clone)]
pub struct Registrar {
    /// Let go of at shutdown: streams outliving the zone CP must not keep its store open (a
    /// zone CP restarted in the same process opens it again).
    store: Arc<std::sync::RwLock<Option<Arc<dyn ResourceStore>>>>,
    /// One slot per name ever registered (a few dozen bytes each; never removed, so a waiter on
    /// a slot can never end up with one the map no longer holds). The slot's lock orders the
    /// store writes of one name.
    slots: Arc<std::sync::Mutex<HashMap<ProxyId, Arc<tokio::sync::Mutex<Slot>>>>>,
    generations: Arc<AtomicU64>,
    shutting_down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("shutting_down", &self.shutting_down.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// One stream's registration, handed back to [`Registrar::deregister`] when the stream ends.
#[derive(Debug)]
pub struct Registration {
    proxy: ProxyId,
    generation: u64,
    /// Whether registering wrote to the store (created or updated the resource).
    pub wrote: bool,
}

impl Registrar {
    pub fn new(store: Arc<dyn ResourceStore>) -> Registrar {
        Registrar {
            store: Arc::new(std::sync::RwLock::new(Some(store))),
            slots: Arc::default(),
            generations: Arc::new(AtomicU64::new(0)),
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on, streams that end leave their resources in place (the zone CP is stopping).
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.store.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn store(&self) -> Option<Arc<dyn ResourceStore>> {
        self.store.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn slot(&self, proxy: &ProxyId) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(proxy.clone()).or_default().clone()
    }

    /// Creates `resource` (the already checked [`definition`] of `proxy`), or updates the stored
    /// one when it differs; the stream registering it becomes the name's current one.
    pub async fn register(
        &self,
        proxy: &ProxyId,
        resource: Resource,
    ) -> Result<Registration, RegistrationError> {
        let slot = self.slot(proxy);
        let mut slot = slot.lock().await;
        let key = resource.key();
        let named = describe(&key);
        let store_error = |source| RegistrationError::Store {
            resource: named.clone(),
            source,
        };
        let store = self.store().ok_or_else(|| {
            store_error(StoreError::Io("the zone CP is shutting down".to_owned()))
        })?;
        if let Some(mesh) = &key.mesh {
            let mesh_key = ResourceKey::new(ResourceType::Mesh, None, mesh);
            if store.get(&mesh_key).await.map_err(store_error)?.is_none() {
                return Err(RegistrationError::NoMesh {
                    resource: named.clone(),
                    mesh: mesh.clone(),
                });
            }
        }
        let mut attempt = 0;
        let wrote = loop {
            attempt += 1;
            let written = match store.get(&key).await.map_err(store_error)? {
                None => {
                    let mut created = resource.clone();
                    created
                        .meta
                        .labels
                        .insert(REGISTERED_LABEL.to_owned(), REGISTERED_BY_XDS.to_owned());
                    store.create(created).await.map(|_| "created")
                }
                Some(existing) => match updated(&existing, &resource) {
                    None => Ok("unchanged"),
                    Some(update) => store.update(update).await.map(|_| "updated"),
                },
            };
            match written {
                Ok(what) => {
                    tracing::info!(%proxy, outcome = what, "proxy registered");
                    break what != "unchanged";
                }
                // Another writer got there between the read and the write: read again.
                Err(StoreError::AlreadyExists(_) | StoreError::Conflict { .. })
                    if attempt < UPDATE_ATTEMPTS => {}
                Err(e) => return Err(store_error(e)),
            }
        };
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        slot.current = Some(generation);
        Ok(Registration {
            proxy: proxy.clone(),
            generation,
            wrote,
        })
    }

    /// The stream of `registration` ended: deletes the resource if this lifecycle created it, the
    /// stream is still the name's current registration and the zone CP is not shutting down.
    pub async fn deregister(&self, registration: Registration) {
        let Registration {
            proxy, generation, ..
        } = registration;
        if self.shutting_down.load(Ordering::SeqCst) {
            tracing::debug!(%proxy, "zone CP shutting down: registration kept");
            return;
        }
        let slot = self.slot(&proxy);
        let mut slot = slot.lock().await;
        if slot.current != Some(generation) {
            tracing::debug!(%proxy, "a newer stream registered it: registration kept");
            return;
        }
        slot.current = None;
        // Checked again under the lock: shutdown may have begun while waiting for it.
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let Some(store) = self.store() else {
            return;
        };
        let key = proxy.resource_key();
        let stored = match store.get(&key).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%proxy, error = %e, "deregistration: cannot read the resource; kept");
                return;
            }
        };
        if stored.meta.labels.get(REGISTERED_LABEL).map(String::as_str) != Some(REGISTERED_BY_XDS) {
            tracing::info!(%proxy, "proxy left; its resource was not created by registration: kept");
            return;
        }
        // Conditional on the version read: a concurrent REST write wins.
        match store.delete(&key, Some(stored.meta.version)).await {
            Ok(_) => tracing::info!(%proxy, "proxy left: deregistered"),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::warn!(%proxy, error = %e, "deregistration failed; resource kept"),
        }
    }
}

/// What `existing` becomes for `wanted`, or `None` when it already says the same. The
/// registration label stays as it was (a REST-created resource does not become deletable); a
/// ZoneIngress keeps the `availableServices` the zone CP maintains.
fn updated(existing: &Resource, wanted: &Resource) -> Option<Resource> {
    let mut next = wanted.clone();
    next.meta.labels.remove(REGISTERED_LABEL);
    if let Some(value) = existing.meta.labels.get(REGISTERED_LABEL) {
        next.meta
            .labels
            .insert(REGISTERED_LABEL.to_owned(), value.clone());
    }
    if let (Spec::ZoneIngress(old), Spec::ZoneIngress(new)) = (&existing.spec, &mut next.spec) {
        new.available_services = old.available_services.clone();
    }
    if next.spec == existing.spec && next.meta.labels == existing.meta.labels {
        return None;
    }
    next.meta.version = existing.meta.version;
    next.meta.creation_time = existing.meta.creation_time;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(resource: &str) -> Node {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            RESOURCE_METADATA_FIELD.to_owned(),
            Value {
                kind: Some(Kind::StringValue(resource.to_owned())),
            },
        );
        Node {
            id: "default/web-1".to_owned(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Node::default()
        }
    }

    #[test]
    fn a_definition_must_be_the_proxys_own_and_valid() {
        let proxy = ProxyId::dataplane("default", "web-1");
        let good = r#"{"type":"Dataplane","mesh":"default","name":"web-1","networking":{"address":"127.0.0.1","inbound":[{"port":15000,"servicePort":8080,"tags":{"kuma.io/service":"web"}}]}}"#;
        assert!(definition(Some(&node(good)), &proxy).unwrap().is_some());
        assert!(definition(Some(&Node::default()), &proxy)
            .unwrap()
            .is_none());
        let other = good.replace("web-1", "web-2");
        let err = definition(Some(&node(&other)), &proxy).unwrap_err();
        assert!(
            matches!(err, RegistrationError::OtherResource { .. }),
            "{err}"
        );
        let bad = good.replace("15000", "70000");
        let err = definition(Some(&node(&bad)), &proxy).unwrap_err();
        assert!(
            err.to_string().contains("networking.inbound[0].port"),
            "{err}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }
    fn web(port: u32) -> Resource {
        let text = format!(
            r#"{{"type":"Dataplane","mesh":"default","name":"web-1","networking":{{"address":"127.0.0.1","inbound":[{{"port":{port},"servicePort":8080,"tags":{{"kuma.io/service":"web"}}}}]}}}}"#
        );
        mesh_api::parse_resource(serde_json::from_str(&text).unwrap())
            .unwrap()
            .resource
    }

    async fn store(with_mesh: bool) -> (tempfile::TempDir, Arc<dyn ResourceStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ResourceStore> =
            Arc::new(mesh_store::SledStore::open(dir.path()).unwrap());
        if with_mesh {
            let mesh = r#"{"type":"Mesh","name":"default"}"#;
            let mesh = mesh_api::parse_resource(serde_json::from_str(mesh).unwrap()).unwrap();
            store.create(mesh.resource).await.unwrap();
        }
        (dir, store)
    }

    async fn stored(store: &Arc<dyn ResourceStore>) -> Option<Resource> {
        let key = ProxyId::dataplane("default", "web-1").resource_key();
        store.get(&key).await.unwrap()
    }

    #[tokio::test]
    async fn created_updated_and_deleted_by_its_own_stream() {
        let (_dir, store) = store(true).await;
        let registrar = Registrar::new(store.clone());
        let proxy = ProxyId::dataplane("default", "web-1");
        let first = registrar.register(&proxy, web(15000)).await.unwrap();
        assert!(first.wrote);
        let created = stored(&store).await.unwrap();
        assert_eq!(created.meta.labels[REGISTERED_LABEL], REGISTERED_BY_XDS);
        // Unchanged: no write. Changed: updated, still deletable.
        let same = registrar.register(&proxy, web(15000)).await.unwrap();
        assert!(!same.wrote);
        let changed = registrar.register(&proxy, web(15001)).await.unwrap();
        assert!(changed.wrote);
        let updated = stored(&store).await.unwrap();
        assert_ne!(updated.spec, created.spec);
        assert_eq!(updated.meta.labels[REGISTERED_LABEL], REGISTERED_BY_XDS);
        // Older streams ending after the newest registered delete nothing.
        registrar.deregister(first).await;
        registrar.deregister(same).await;
        assert!(stored(&store).await.is_some());
        // The newest ending deletes it.
        registrar.deregister(changed).await;
        assert!(stored(&store).await.is_none());
    }

    #[tokio::test]
    async fn a_resource_made_through_the_api_is_kept() {
        let (_dir, store) = store(true).await;
        store.create(web(15000)).await.unwrap();
        let registrar = Registrar::new(store.clone());
        let proxy = ProxyId::dataplane("default", "web-1");
        let registration = registrar.register(&proxy, web(15002)).await.unwrap();
        assert!(registration.wrote);
        let updated = stored(&store).await.unwrap();
        assert!(!updated.meta.labels.contains_key(REGISTERED_LABEL));
        registrar.deregister(registration).await;
        assert_eq!(stored(&store).await.unwrap().spec, web(15002).spec);
    }

    #[tokio::test]
    async fn kept_when_the_zone_cp_shuts_down() {
        let (_dir, store) = store(true).await;
        let registrar = Registrar::new(store.clone());
        let proxy = ProxyId::dataplane("default", "web-1");
        let registration = registrar.register(&proxy, web(15000)).await.unwrap();
        registrar.shutting_down();
        registrar.deregister(registration).await;
        assert!(stored(&store).await.is_some());
    }

    #[tokio::test]
    async fn a_missing_mesh_is_retried_later() {
        let (_dir, store) = store(false).await;
        let registrar = Registrar::new(store);
        let err = registrar
            .register(&ProxyId::dataplane("default", "web-1"), web(15000))
            .await
            .unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
    }
}
