//! One configuration version made ready to serve: listeners with their TLS contexts and RBAC
//! engines built, route tables compiled, clusters with their endpoint sets. Built off the hot
//! path on every update and published to connections through a `watch` channel; each
//! connection (or request, for routes and clusters) reads the current version.

use std::collections::HashMap;
use std::sync::Arc;

use crate::access_log::{AccessLogSink, AccessLogs};
use crate::config::{ChainHandler, FilterChain, Listener, ProxyConfig, TcpProxy};
use crate::downstream::rbac::RbacEngine;
use crate::http::filters::TokenBucket;
use crate::http::{HttpHandler, RouteTableRuntime};
use crate::stats::{ListenerStats, Stats};
use crate::tls::{server_tls, ServerTls};
use crate::upstream::Clusters;

/// A TCP proxy chain's settings.
#[derive(Debug)]
pub struct TcpRuntime {
    pub config: TcpProxy,
    pub access_logs: Vec<AccessLogSink>,
}

#[derive(Debug)]
pub enum Handler {
    Tcp(TcpRuntime),
    Http(Arc<HttpHandler>),
}

/// A filter chain ready to take connections.
#[derive(Debug)]
pub struct ChainRuntime {
    pub name: String,
    pub server_names: Vec<String>,
    /// `Some(Err)`: the chain's TLS could not be built (missing SDS secret); its connections
    /// are closed until an update fixes it.
    pub tls: Option<Result<ServerTls, String>>,
    pub rbac: Option<RbacEngine>,
    /// Taken per new connection; kept while the listener's configuration is unchanged.
    pub connection_rate_limit: Option<TokenBucket>,
    pub handler: Handler,
}

/// A listener's chains as of one version.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub config: Arc<Listener>,
    pub stats: Arc<ListenerStats>,
    pub chains: Vec<ChainRuntime>,
    pub default_chain: Option<ChainRuntime>,
}

impl ListenerRuntime {
    /// The HTTP handler of the chain named `chain` in this version, if it is one.
    pub fn http_handler(&self, chain: &str) -> Option<Arc<HttpHandler>> {
        self.chains
            .iter()
            .chain(self.default_chain.iter())
            .find(|c| c.name == chain)
            .and_then(|c| match &c.handler {
                Handler::Http(h) => Some(h.clone()),
                Handler::Tcp(_) => None,
            })
    }
}

/// Everything connections and requests read, as of one configuration version.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<ProxyConfig>,
    pub clusters: Clusters,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
    pub routes: HashMap<String, Arc<RouteTableRuntime>>,
    pub stats: Arc<Stats>,
}

/// Why a chain is left out of a version (Envoy would have NACKed it).
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?} chain {chain:?}: {reason}")]
pub struct ChainError {
    pub listener: String,
    pub chain: String,
    pub reason: String,
}

fn build_chain(
    listener: &str,
    chain: &FilterChain,
    config: &ProxyConfig,
    stats: &Stats,
    logs: &AccessLogs,
) -> Result<ChainRuntime, ChainError> {
    let err = |reason: String| ChainError {
        listener: listener.to_string(),
        chain: chain.name.clone(),
        reason,
    };
    let handler = match &chain.handler {
        ChainHandler::Tcp(tcp) => Handler::Tcp(TcpRuntime {
            config: tcp.clone(),
            access_logs: tcp.access_logs.iter().map(|l| logs.sink(&l.path)).collect(),
        }),
        ChainHandler::Http(http) => Handler::Http(Arc::new(
            HttpHandler::build(http, stats, logs).map_err(|e| err(e.to_string()))?,
        )),
    };
    let alpn: &[&[u8]] = match &chain.handler {
        ChainHandler::Http(_) => &[b"h2", b"http/1.1"],
        ChainHandler::Tcp(_) => &[],
    };
    Ok(ChainRuntime {
        name: chain.name.clone(),
        server_names: chain.server_names.clone(),
        tls: chain.tls.as_ref().map(|t| {
            server_tls(t, &config.secrets, alpn).map_err(|e| err(format!("TLS: {e}")).to_string())
        }),
        rbac: chain
            .rbac
            .as_ref()
            .map(RbacEngine::compile)
            .transpose()
            .map_err(|e| err(format!("rbac: {e}")))?,
        connection_rate_limit: chain.connection_rate_limit.as_ref().map(TokenBucket::new),
        handler,
    })
}

impl Runtime {
    /// Builds a version from `config`, reusing from `previous` what did not change (listeners
    /// whose configuration and secrets are the same keep their TLS contexts; clusters keep their
    /// endpoint state).
    pub fn build(
        config: Arc<ProxyConfig>,
        previous: Option<&Runtime>,
        stats: &Arc<Stats>,
        logs: &AccessLogs,
    ) -> Runtime {
        let empty = Clusters::default();
        let clusters = Clusters::build(
            &config,
            previous.map(|p| &p.clusters).unwrap_or(&empty),
            stats,
        );
        let secrets_same = previous.is_some_and(|p| p.config.secrets == config.secrets);
        let mut listeners = HashMap::new();
        for (name, listener) in &config.listeners {
            if let Some(old) = previous.and_then(|p| p.listeners.get(name)) {
                if secrets_same && old.config == *listener {
                    listeners.insert(name.clone(), old.clone());
                    continue;
                }
            }
            let mut chains = Vec::new();
            for chain in &listener.filter_chains {
                match build_chain(name, chain, &config, stats, logs) {
                    Ok(c) => chains.push(c),
                    Err(e) => tracing::error!(error = %e, "filter chain left out"),
                }
            }
            let default_chain = listener.default_chain.as_ref().and_then(|chain| {
                build_chain(name, chain, &config, stats, logs)
                    .map_err(|e| tracing::error!(error = %e, "default filter chain left out"))
                    .ok()
            });
            listeners.insert(
                name.clone(),
                Arc::new(ListenerRuntime {
                    config: listener.clone(),
                    stats: stats.listener(name),
                    chains,
                    default_chain,
                }),
            );
        }
        let mut routes = HashMap::new();
        for (name, table) in &config.routes {
            if let Some(old) = previous
                .and_then(|p| p.routes.get(name))
                .filter(|old| old.config == *table)
            {
                routes.insert(name.clone(), old.clone());
                continue;
            }
            match RouteTableRuntime::compile(table.clone()) {
                Ok(compiled) => {
                    routes.insert(name.clone(), Arc::new(compiled));
                }
                Err(e) => tracing::error!(route = %name, error = %e, "route table left out"),
            }
        }
        Runtime {
            config,
            clusters,
            listeners,
            routes,
            stats: stats.clone(),
        }
    }
}
