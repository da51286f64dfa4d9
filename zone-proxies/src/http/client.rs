//! Upstream HTTP: one pooled hyper client per cluster (connections pooled per endpoint, since
//! the pool key is the endpoint's address), over the cluster's own connector: TCP + TLS from
//! [`crate::upstream`], HTTP/2 when the cluster says so or the TLS peer chose `h2`. The client
//! outlives configuration versions while the cluster's TLS and protocol settings stay.
//!
//! While a new connection is being made the request is pending: over the cluster's
//! `max_pending_requests` the connect is refused (503, `upstream_rq_pending_overflow`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::{EndpointAddress, UpstreamProtocol};
use crate::upstream::cluster::ClusterShared;
use crate::upstream::{ConnectError, UpstreamCluster, UpstreamConn};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type HttpClient = Client<ClusterConnector, Body>;

/// The authority under which an endpoint's connections are pooled.
pub fn authority(address: &EndpointAddress) -> String {
    match address {
        EndpointAddress::Socket(a) => a.to_string(),
        EndpointAddress::Host(name, port) => format!("{name}:{port}"),
    }
}

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.alpn.as_deref() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

/// Connects a cluster's pooled client to the endpoint named by the request URI's authority.
/// It reaches the cluster's current version through a weak reference: the cluster owns the
/// client, so a strong one would be a cycle.
#[derive(Clone)]
pub struct ClusterConnector {
    name: Arc<str>,
    cluster: Weak<ClusterShared>,
}

impl tower::Service<Uri> for ClusterConnector {
    type Response = TokioIo<UpstreamConn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let cluster = self.cluster.upgrade().and_then(|shared| shared.current());
        let name = self.name.clone();
        Box::pin(async move {
            let cluster =
                cluster.ok_or_else(|| ConnectError::NoHealthyUpstream(name.to_string()))?;
            let wanted = uri.authority().map(|a| a.as_str()).unwrap_or("");
            let host = cluster
                .hosts
                .iter()
                .find(|h| authority(&h.address) == wanted)
                .cloned()
                .ok_or_else(|| ConnectError::NoHealthyUpstream(name.to_string()))?;
            let shared = &cluster.shared;
            let max_pending = cluster.config.circuit_breakers.max_pending_requests;
            if shared.pending.fetch_add(1, Ordering::Relaxed) >= max_pending {
                shared.pending.fetch_sub(1, Ordering::Relaxed);
                shared
                    .stats
                    .upstream_rq_pending_overflow
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::Overflow(name.to_string()));
            }
            shared
                .stats
                .upstream_rq_pending_active
                .fetch_add(1, Ordering::Relaxed);
            let result = cluster.connect_host(&host).await;
            shared.pending.fetch_sub(1, Ordering::Relaxed);
            shared
                .stats
                .upstream_rq_pending_active
                .fetch_sub(1, Ordering::Relaxed);
            result.map(TokioIo::new)
        })
    }
}

/// The cluster's pooled client, made on first use and rebuilt when its settings change.
pub fn client_for(cluster: &UpstreamCluster) -> HttpClient {
    let cached = cluster
        .http_client
        .get_or_init(|| Arc::new(shared_client(cluster)));
    match cached.downcast_ref::<HttpClient>() {
        Some(client) => client.clone(),
        None => shared_client(cluster),
    }
}

fn shared_client(cluster: &UpstreamCluster) -> HttpClient {
    let mut slot = cluster
        .shared
        .http_clients
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((version, client)) = slot.as_ref() {
        if *version == cluster.settings_version {
            if let Some(client) = client.downcast_ref::<HttpClient>() {
                return client.clone();
            }
        }
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_timer(TokioTimer::new());
    builder.pool_idle_timeout(
        cluster
            .config
            .idle_timeout
            .unwrap_or(std::time::Duration::from_secs(3600)),
    );
    builder.http2_only(cluster.config.protocol == UpstreamProtocol::Http2);
    let client: HttpClient = builder.build(ClusterConnector {
        name: cluster.name().into(),
        cluster: Arc::downgrade(&cluster.shared),
    });
    *slot = Some((cluster.settings_version, Arc::new(client.clone())));
    client
}
