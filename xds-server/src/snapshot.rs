//! A proxy's configuration as xDS serves it: per type URL, resources by name with a content
//! version, plus one version for the whole snapshot. [`SnapshotSource`] is the seam between the
//! protocol and whatever builds configuration.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest as _, Sha256};

use crate::auth::ProxyId;

/// `Any.type_url` of a Listener (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `Any.type_url` of a Cluster (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `Any.type_url` of a RouteConfiguration (RDS).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `Any.type_url` of an SDS Secret.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// `Any.type_url` of a ClusterLoadAssignment (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// One resource of a snapshot: its content version and the encoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedResource {
    pub version: String,
    pub resource: Any,
}

/// The configuration of one proxy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Type URL -> resource name -> resource.
    pub resources: BTreeMap<String, BTreeMap<String, VersionedResource>>,
    /// Changes whenever any resource changes (a hash of all of them).
    pub version: String,
    /// When the snapshot must be rebuilt even if nothing in the store changes (a certificate in
    /// it is due for re-issue).
    pub refresh_at: Option<std::time::SystemTime>,
}

impl Snapshot {
    /// Adds a message under `name`, versioned by the hash of its encoding.
    pub fn insert(&mut self, type_url: &str, name: &str, message: &impl prost::Message) {
        let value = message.encode_to_vec();
        let version = hex::encode(&Sha256::digest(&value)[..8]);
        self.resources
            .entry(type_url.to_string())
            .or_default()
            .insert(
                name.to_string(),
                VersionedResource {
                    version,
                    resource: Any {
                        type_url: type_url.to_string(),
                        value,
                    },
                },
            );
    }

    /// Adds every resource of `other` (shared resources built once for many proxies).
    pub fn extend_from(&mut self, other: &Snapshot) {
        for (type_url, resources) in &other.resources {
            let mine = self.resources.entry(type_url.clone()).or_default();
            for (name, resource) in resources {
                mine.insert(name.clone(), resource.clone());
            }
        }
    }

    /// Computes [`Snapshot::version`] from the resources; call once after the last insert.
    pub fn seal(mut self) -> Snapshot {
        let mut hash = Sha256::new();
        for (type_url, resources) in &self.resources {
            hash.update(type_url.as_bytes());
            for (name, r) in resources {
                hash.update(name.as_bytes());
                hash.update(r.version.as_bytes());
            }
        }
        self.version = hex::encode(&hash.finalize()[..8]);
        self
    }

    /// The resources of one type (empty when none).
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = (&String, &VersionedResource)> {
        self.resources.get(type_url).into_iter().flatten()
    }

    /// The version of one type's resources as a whole (state-of-the-world `version_info`).
    pub fn type_version(&self, type_url: &str) -> String {
        let mut hash = Sha256::new();
        for (name, r) in self.of_type(type_url) {
            hash.update(name.as_bytes());
            hash.update(r.version.as_bytes());
        }
        hex::encode(&hash.finalize()[..8])
    }
}

/// Why a snapshot could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The proxy's Dataplane is not in the store.
    #[error("dataplane {0} does not exist in this zone (create it through the API first)")]
    UnknownDataplane(ProxyId),
    #[error("store: {0}")]
    Store(#[from] mesh_store::StoreError),
}

/// Builds a proxy's snapshot. Implementations read current state; pushing and coalescing belong
/// to [`crate::cache::SnapshotCache`].
///
/// Contract: the result depends only on the proxy and the store's state (the same state gives
/// the same [`Snapshot::version`], so an unchanged rebuild pushes nothing); a proxy's snapshot
/// depends only on resources of its own mesh and global-scoped ones (the cache rebuilds by mesh);
/// `UnknownDataplane` when the proxy's Dataplane does not exist, which refuses a new stream.
#[async_trait::async_trait]
pub trait SnapshotSource: Send + Sync + 'static {
    /// The snapshot of `proxy` now.
    async fn snapshot(&self, proxy: &ProxyId) -> Result<Snapshot, SourceError>;

    /// Tells the source that resources of `meshes` (of every mesh when `None`) changed, and the
    /// list of meshes too when `mesh_list`; called before the proxies are rebuilt, so a source
    /// that shares state between proxies drops what is stale.
    fn invalidate(&self, meshes: Option<&std::collections::BTreeSet<String>>, mesh_list: bool) {
        let _ = (meshes, mesh_list);
    }
}
