//! A proxy's configuration as xDS serves it: per type URL, resources by name with a content
//! version, plus one version for the whole snapshot. [`SnapshotSource`] is the seam between the
//! protocol and whatever builds configuration.
//!
//! A resource may be *named-only* ([`Snapshot::insert_named_only`]): served only to a
//! subscription that names it, never under a wildcard LDS/CDS subscription. gRPC's proxyless
//! api_listeners are such: Envoy sidecars subscribe to LDS by wildcard and must not get them.

use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;
use std::sync::Arc;

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

/// Whether a type may be subscribed to by wildcard. Only LDS and CDS may (xDS protocol); RDS, EDS
/// and SDS resources are always asked for by name.
pub fn wildcard_capable(type_url: &str) -> bool {
    type_url == LISTENER_TYPE || type_url == CLUSTER_TYPE
}

/// What one stream subscribed to for one type: a wildcard (only meaningful for
/// [`wildcard_capable`] types) and/or explicit names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    /// Whether the resource `name` belongs in this subscription's answers.
    pub fn wants(&self, name: &str, resource: &VersionedResource) -> bool {
        self.names.contains(name) || (self.wildcard && !resource.named_only)
    }
}

/// One resource of a snapshot: its content version and the encoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedResource {
    pub version: String,
    pub resource: Any,
    /// Served only to subscriptions that name it (never under a wildcard).
    pub named_only: bool,
}

/// The configuration of one proxy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Type URL -> resource name -> resource: this proxy's own resources.
    pub resources: BTreeMap<String, BTreeMap<String, VersionedResource>>,
    /// Resources shared with other proxies (an outbound bundle), referenced rather than copied:
    /// a bundle holds every service of the mesh, so a copy per proxy would cost more than the rest
    /// of the snapshot. Served as if inserted after `resources` (on a name in both, the shared
    /// one wins). Read through [`Snapshot::of_type`], never directly.
    pub shared: Option<Arc<Snapshot>>,
    /// Changes whenever any resource changes (a hash of all of them).
    pub version: String,
    /// When the snapshot must be rebuilt even if nothing in the store changes (a certificate in
    /// it is due for re-issue).
    pub refresh_at: Option<std::time::SystemTime>,
}

impl Snapshot {
    /// Adds a message under `name`, versioned by the hash of its encoding.
    pub fn insert(&mut self, type_url: &str, name: &str, message: &impl prost::Message) {
        self.insert_with(type_url, name, message, false);
    }

    /// Adds a message that is served only to subscriptions naming it (never under a wildcard
    /// subscription): for example a gRPC proxyless api_listener, which Envoy sidecars, subscribed
    /// to LDS by wildcard, must not receive.
    pub fn insert_named_only(&mut self, type_url: &str, name: &str, message: &impl prost::Message) {
        self.insert_with(type_url, name, message, true);
    }

    fn insert_with(
        &mut self,
        type_url: &str,
        name: &str,
        message: &impl prost::Message,
        named_only: bool,
    ) {
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
                    named_only,
                },
            );
    }

    /// Adds every resource of `other` (shared resources built once for many proxies) by
    /// reference; on a name in both, `other`'s resource is served. One level only: what was
    /// shared before, or what `other` itself shares, is copied.
    pub fn share(&mut self, other: Arc<Snapshot>) {
        if let Some(previous) = self.shared.take() {
            self.copy_from(&previous);
        }
        if other.shared.is_none() {
            self.shared = Some(other);
        } else {
            self.copy_from(&other);
        }
    }

    fn copy_from(&mut self, other: &Snapshot) {
        for type_url in other.type_urls() {
            let copied: Vec<(String, VersionedResource)> = other
                .of_type(&type_url)
                .map(|(name, r)| (name.clone(), r.clone()))
                .collect();
            self.resources.entry(type_url).or_default().extend(copied);
        }
    }

    /// Every type URL with resources, own or shared, in order.
    pub fn type_urls(&self) -> BTreeSet<String> {
        let mut types: BTreeSet<String> = self.resources.keys().cloned().collect();
        if let Some(shared) = &self.shared {
            types.extend(shared.type_urls());
        }
        types
    }

    /// Computes [`Snapshot::version`] from the resources; call once after the last insert.
    pub fn seal(mut self) -> Snapshot {
        let mut hash = Sha256::new();
        for type_url in self.type_urls() {
            hash.update(type_url.as_bytes());
            for (name, r) in self.of_type(&type_url) {
                hash.update(name.as_bytes());
                hash.update(r.version.as_bytes());
                // Who is served a resource is part of the configuration too.
                hash.update([u8::from(r.named_only)]);
            }
        }
        self.version = hex::encode(&hash.finalize()[..8]);
        self
    }

    /// The resources of one type (empty when none), own and shared, in name order.
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = (&String, &VersionedResource)> {
        let own = self.resources.get(type_url).into_iter().flatten();
        let shared = self
            .shared
            .as_ref()
            .and_then(|s| s.resources.get(type_url))
            .into_iter()
            .flatten();
        ByName {
            own: own.peekable(),
            shared: shared.peekable(),
        }
    }

    /// The resources of one type that `subscription` selects.
    pub fn selected<'a>(
        &'a self,
        type_url: &str,
        subscription: &'a Subscription,
    ) -> impl Iterator<Item = (&'a String, &'a VersionedResource)> {
        self.of_type(type_url)
            .filter(move |(name, r)| subscription.wants(name, r))
    }

    /// The version of what `subscription` selects of one type (state-of-the-world
    /// `version_info`): it changes exactly when that selection changes, so a stream is pushed
    /// only what concerns it.
    pub fn selection_version(&self, type_url: &str, subscription: &Subscription) -> String {
        let mut hash = Sha256::new();
        for (name, r) in self.selected(type_url, subscription) {
            hash.update(name.as_bytes());
            hash.update(r.version.as_bytes());
        }
        hex::encode(&hash.finalize()[..8])
    }
}

/// Two iterators in name order merged in name order; on a name in both, `shared`'s item.
struct ByName<A: Iterator, B: Iterator> {
    own: Peekable<A>,
    shared: Peekable<B>,
}

impl<'a, A, B> Iterator for ByName<A, B>
where
    A: Iterator<Item = (&'a String, &'a VersionedResource)>,
    B: Iterator<Item = (&'a String, &'a VersionedResource)>,
{
    type Item = (&'a String, &'a VersionedResource);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.own.peek(), self.shared.peek()) {
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Less => self.own.next(),
                std::cmp::Ordering::Greater => self.shared.next(),
                std::cmp::Ordering::Equal => {
                    self.own.next();
                    self.shared.next()
                }
            },
            (Some(_), None) => self.own.next(),
            (None, _) => self.shared.next(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use prost::Message as _;

    fn listener(name: &str) -> Listener {
        Listener {
            name: name.to_string(),
            ..Listener::default()
        }
    }

    fn names<'a>(it: impl Iterator<Item = (&'a String, &'a VersionedResource)>) -> Vec<&'a str> {
        it.map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn named_only_resources_need_a_name() {
        let mut s = Snapshot::default();
        s.insert(
            LISTENER_TYPE,
            "inbound:10.0.0.1:15000",
            &listener("inbound"),
        );
        s.insert_named_only(LISTENER_TYPE, "greeter", &listener("greeter"));
        let s = s.seal();
        let wildcard = Subscription {
            wildcard: true,
            names: BTreeSet::new(),
        };
        assert_eq!(
            names(s.selected(LISTENER_TYPE, &wildcard)),
            ["inbound:10.0.0.1:15000"]
        );
        let named = Subscription {
            wildcard: false,
            names: ["greeter".to_string(), "absent".to_string()].into(),
        };
        assert_eq!(names(s.selected(LISTENER_TYPE, &named)), ["greeter"]);
        let both = Subscription {
            wildcard: true,
            ..named.clone()
        };
        assert_eq!(
            names(s.selected(LISTENER_TYPE, &both)),
            ["greeter", "inbound:10.0.0.1:15000"]
        );
        // Each selection has its own version; a change outside it leaves it unchanged.
        assert_ne!(
            s.selection_version(LISTENER_TYPE, &wildcard),
            s.selection_version(LISTENER_TYPE, &named)
        );
        let mut changed = s.clone();
        changed.insert_named_only(LISTENER_TYPE, "greeter", &listener("greeter-v2"));
        let changed = changed.seal();
        assert_ne!(changed.version, s.version);
        assert_eq!(
            changed.selection_version(LISTENER_TYPE, &wildcard),
            s.selection_version(LISTENER_TYPE, &wildcard)
        );
        assert_ne!(
            changed.selection_version(LISTENER_TYPE, &named),
            s.selection_version(LISTENER_TYPE, &named)
        );
    }

    #[test]
    fn named_only_is_part_of_the_snapshot_version() {
        let mut a = Snapshot::default();
        a.insert(LISTENER_TYPE, "greeter", &listener("greeter"));
        let mut b = Snapshot::default();
        b.insert_named_only(LISTENER_TYPE, "greeter", &listener("greeter"));
        assert_ne!(a.seal().version, b.seal().version);
    }

    #[test]
    fn shared_resources_are_served_as_if_copied() {
        let mut bundle = Snapshot::default();
        bundle.insert(CLUSTER_TYPE, "b", &listener("shared-b"));
        bundle.insert(CLUSTER_TYPE, "d", &listener("d"));
        bundle.insert(ROUTE_TYPE, "r", &listener("r"));
        let bundle = Arc::new(bundle);
        let own = || {
            let mut s = Snapshot::default();
            s.insert(CLUSTER_TYPE, "a", &listener("a"));
            s.insert(CLUSTER_TYPE, "b", &listener("own-b"));
            s.insert(CLUSTER_TYPE, "c", &listener("c"));
            s
        };
        let mut shared = own();
        shared.share(bundle.clone());
        let shared = shared.seal();
        let mut copied = own();
        copied.copy_from(&bundle);
        let copied = copied.seal();
        assert!(Arc::ptr_eq(shared.shared.as_ref().unwrap(), &bundle));
        assert!(copied.shared.is_none());
        assert_eq!(names(shared.of_type(CLUSTER_TYPE)), ["a", "b", "c", "d"]);
        assert_eq!(names(shared.of_type(ROUTE_TYPE)), ["r"]);
        // On a name in both, the shared resource is served.
        let b = shared
            .of_type(CLUSTER_TYPE)
            .find(|(n, _)| *n == "b")
            .unwrap()
            .1;
        assert_eq!(b.resource.value, listener("shared-b").encode_to_vec());
        for t in [CLUSTER_TYPE, ROUTE_TYPE] {
            let versions = |s: &Snapshot| -> Vec<(String, String)> {
                s.of_type(t)
                    .map(|(n, r)| (n.clone(), r.version.clone()))
                    .collect()
            };
            assert_eq!(versions(&shared), versions(&copied), "{t}");
        }
        assert_eq!(shared.version, copied.version);
        // Sharing a second bundle copies the first, so neither is lost.
        let mut other = Snapshot::default();
        other.insert(ROUTE_TYPE, "r2", &listener("r2"));
        let mut twice = own();
        twice.share(bundle.clone());
        twice.share(Arc::new(other));
        assert_eq!(names(twice.of_type(ROUTE_TYPE)), ["r", "r2"]);
        assert_eq!(names(twice.of_type(CLUSTER_TYPE)), ["a", "b", "c", "d"]);
    }

    #[test]
    fn only_lds_and_cds_are_wildcard_capable() {
        assert!(wildcard_capable(LISTENER_TYPE));
        assert!(wildcard_capable(CLUSTER_TYPE));
        for t in [ROUTE_TYPE, ENDPOINT_TYPE, SECRET_TYPE] {
            assert!(!wildcard_capable(t), "{t}");
        }
    }
}
