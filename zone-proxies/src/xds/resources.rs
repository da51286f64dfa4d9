//! The resources the proxy holds, per xDS type, each as received and as translated; the
//! [`ProxyConfig`] they make, and the names they refer to (what RDS, EDS and SDS must deliver).
//! A state-of-the-world update replaces one type's resources all at once, or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use super::translate::cluster::ClusterHandler;
use super::translate::endpoint::EndpointHandler;
use super::translate::listener::ListenerHandler;
use super::translate::route::RouteHandler;
use super::translate::secret::SecretHandler;
use super::translate::{ResourceHandler, TranslateError};
use super::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE};
use crate::config::{
    ChainHandler, Cluster, Discovery, FilterChain, Listener, LoadAssignment, ProxyConfig,
    RouteSource, RouteTable, Secret,
};

/// One resource: as received, and what it translated to (`None`: nothing to run, such as an
/// api_listener), with the secrets it carried inline.
#[derive(Debug, Clone)]
struct Entry<T> {
    raw: Any,
    model: Option<Arc<T>>,
    inline_secrets: Vec<(String, Arc<Secret>)>,
}

type Entries<T> = BTreeMap<String, Entry<T>>;

/// Every resource the proxy accepted.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    listeners: Entries<Listener>,
    routes: Entries<RouteTable>,
    clusters: Entries<Cluster>,
    endpoints: Entries<LoadAssignment>,
    secrets: Entries<Secret>,
}

/// The names a configuration refers to and other types must deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    pub routes: BTreeSet<String>,
    pub endpoints: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

impl References {
    /// The names of `type_url` (RDS, EDS or SDS); `None` for the wildcard types.
    pub fn of(&self, type_url: &str) -> Option<&BTreeSet<String>> {
        match type_url {
            ROUTE_TYPE => Some(&self.routes),
            ENDPOINT_TYPE => Some(&self.endpoints),
            SECRET_TYPE => Some(&self.secrets),
            _ => None,
        }
    }
}

/// Why an update was refused: the first resource that does not translate, or a response that
/// is not a consistent set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error("two resources named {name:?} of type {type_url}")]
    Duplicate { type_url: String, name: String },
    #[error("unsupported resource type {0}")]
    UnknownType(String),
}

fn translate_all<H: ResourceHandler>(resources: &[Any]) -> Result<Entries<H::Model>, UpdateError> {
    let mut entries = BTreeMap::new();
    for any in resources {
        let (name, translated) = H::handle(any)?;
        let entry = Entry {
            raw: any.clone(),
            model: translated.value.map(Arc::new),
            inline_secrets: translated.secrets,
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(UpdateError::Duplicate {
                type_url: H::TYPE_URL.to_owned(),
                name,
            });
        }
    }
    Ok(entries)
}

impl Resources {
    /// The xDS types the proxy understands, in the order it subscribes to them.
    pub const TYPES: [&'static str; 5] = [
        CLUSTER_TYPE,
        ENDPOINT_TYPE,
        LISTENER_TYPE,
        ROUTE_TYPE,
        SECRET_TYPE,
    ];

    /// Replaces all resources of `type_url` with `resources` (a state-of-the-world response),
    /// or changes nothing if any of them is refused.
    pub fn replace(&mut self, type_url: &str, resources: &[Any]) -> Result<(), UpdateError> {
        match type_url {
            LISTENER_TYPE => self.listeners = translate_all::<ListenerHandler>(resources)?,
            ROUTE_TYPE => self.routes = translate_all::<RouteHandler>(resources)?,
            CLUSTER_TYPE => self.clusters = translate_all::<ClusterHandler>(resources)?,
            ENDPOINT_TYPE => self.endpoints = translate_all::<EndpointHandler>(resources)?,
            SECRET_TYPE => self.secrets = translate_all::<SecretHandler>(resources)?,
            other => return Err(UpdateError::UnknownType(other.to_owned())),
        }
        Ok(())
    }

    /// Whether any resource of `type_url` is held.
    pub fn holds(&self, type_url: &str, name: &str) -> bool {
        match type_url {
            LISTENER_TYPE => self.listeners.contains_key(name),
            ROUTE_TYPE => self.routes.contains_key(name),
            CLUSTER_TYPE => self.clusters.contains_key(name),
            ENDPOINT_TYPE => self.endpoints.contains_key(name),
            SECRET_TYPE => self.secrets.contains_key(name),
            _ => false,
        }
    }

    /// The resources as received: type URL -> name -> resource.
    pub fn raw(&self) -> BTreeMap<String, BTreeMap<String, Any>> {
        fn raw_of<T>(entries: &Entries<T>) -> BTreeMap<String, Any> {
            entries
                .iter()
                .map(|(name, e)| (name.clone(), e.raw.clone()))
                .collect()
        }
        [
            (LISTENER_TYPE, raw_of(&self.listeners)),
            (ROUTE_TYPE, raw_of(&self.routes)),
            (CLUSTER_TYPE, raw_of(&self.clusters)),
            (ENDPOINT_TYPE, raw_of(&self.endpoints)),
            (SECRET_TYPE, raw_of(&self.secrets)),
        ]
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(t, m)| (t.to_owned(), m))
        .collect()
    }

    /// The configuration these resources make.
    pub fn config(&self) -> ProxyConfig {
        fn models<T>(entries: &Entries<T>) -> BTreeMap<String, Arc<T>> {
            entries
                .iter()
                .filter_map(|(name, e)| e.model.clone().map(|m| (name.clone(), m)))
                .collect()
        }
        let mut secrets = models(&self.secrets);
        for (name, secret) in self
            .listeners
            .values()
            .flat_map(|e| e.inline_secrets.iter())
            .chain(self.clusters.values().flat_map(|e| e.inline_secrets.iter()))
        {
            secrets
                .entry(name.clone())
                .or_insert_with(|| secret.clone());
        }
        ProxyConfig {
            listeners: models(&self.listeners),
            routes: models(&self.routes),
            clusters: models(&self.clusters),
            endpoints: models(&self.endpoints),
            secrets,
        }
    }

    /// What the listeners and clusters refer to by name. Inline secrets are not among them:
    /// they came with their resource.
    pub fn references(&self) -> References {
        let mut refs = References::default();
        let inline: BTreeSet<&String> = self
            .listeners
            .values()
            .flat_map(|e| e.inline_secrets.iter().map(|(n, _)| n))
            .chain(
                self.clusters
                    .values()
                    .flat_map(|e| e.inline_secrets.iter().map(|(n, _)| n)),
            )
            .collect();
        let mut secret = |name: &Option<String>| {
            if let Some(name) = name.as_ref().filter(|n| !inline.contains(n)) {
                refs.secrets.insert(name.clone());
            }
        };
        let mut routes = BTreeSet::new();
        for listener in self.listeners.values().filter_map(|e| e.model.as_ref()) {
            for chain in listener
                .filter_chains
                .iter()
                .chain(listener.default_chain.iter())
            {
                chain_references(chain, &mut routes, &mut secret);
            }
        }
        let mut endpoints = BTreeSet::new();
        for cluster in self.clusters.values().filter_map(|e| e.model.as_ref()) {
            if let Discovery::Eds(service) = &cluster.discovery {
                endpoints.insert(service.clone());
            }
            for tls in cluster.tls.iter().chain(
                cluster
                    .tls_by_metadata
                    .iter()
                    .filter_map(|(_, t)| t.as_ref()),
            ) {
                secret(&tls.certificate);
                secret(&tls.trusted_ca);
            }
        }
        refs.routes = routes;
        refs.endpoints = endpoints;
        refs
    }
}

fn chain_references(
    chain: &FilterChain,
    routes: &mut BTreeSet<String>,
    secret: &mut impl FnMut(&Option<String>),
) {
    if let Some(tls) = &chain.tls {
        secret(&Some(tls.certificate.clone()));
        secret(&tls.trusted_ca);
    }
    if let ChainHandler::Http(http) = &chain.handler {
        if let RouteSource::Rds(name) = &http.routes {
            routes.insert(name.clone());
        }
    }
}
