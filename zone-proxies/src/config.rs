//! The proxy's configuration as plain Rust: what the data path runs on. The xDS client
//! ([`crate::xds`]) translates Envoy v3 resources into these types (a resource it cannot
//! translate is NACKed with the reason); a static file is read into the same types. Nothing here
//! knows about protobuf, and the data path knows nothing else.
//!
//! Resources refer to each other by name as in xDS (a listener's routes by RDS name, a cluster's
//! endpoints by EDS name, TLS material by SDS name) and are resolved when used, so each type can
//! be updated on its own, as xDS delivers them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything the proxy currently runs with. Cheap to clone: every resource is shared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// ClusterLoadAssignments by cluster (EDS service) name.
    pub endpoints: BTreeMap<String, Arc<LoadAssignment>>,
    pub secrets: BTreeMap<String, Arc<Secret>>,
}

/// A socket the proxy accepts connections on, and what it does with them.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Read the TLS ClientHello (without consuming it) so chains can match on SNI.
    pub inspect_tls: bool,
    /// Tried in order; the first whose match holds takes the connection.
    pub filter_chains: Vec<FilterChain>,
    /// Used when no chain matches; without it such a connection is closed.
    pub default_chain: Option<FilterChain>,
}

/// One way of handling a listener's connections.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    pub name: String,
    /// SNI names this chain matches (`*.example.com` wildcards allowed); empty matches any.
    pub server_names: Vec<String>,
    /// Terminate TLS with this context (inbound mTLS); `None` passes bytes through as they are.
    pub tls: Option<DownstreamTls>,
    /// Connection-level authorization (TCP services), checked on the verified peer identity.
    pub rbac: Option<Rbac>,
    /// Envoy's network local rate limit: a token per new connection (the chain's connections
    /// share the bucket); without one the connection is closed at once (`status` unused).
    pub connection_rate_limit: Option<LocalRateLimit>,
    pub handler: ChainHandler,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChainHandler {
    Tcp(TcpProxy),
    Http(HttpManager),
}

/// Proxies bytes to one cluster picked by weight (Envoy's tcp_proxy).
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub clusters: Vec<WeightedCluster>,
    pub idle_timeout: Option<Duration>,
    pub access_logs: Vec<AccessLog>,
}

/// Terminates HTTP/1.1 and HTTP/2 and routes each request (Envoy's http_connection_manager).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpManager {
    pub stat_prefix: String,
    pub routes: RouteSource,
    /// Request-level authorization on the verified peer identity: a denial is HTTP 403.
    pub rbac: Option<Rbac>,
    /// Fault filters in order; each applies to the requests its conditions select.
    pub faults: Vec<FaultInjection>,
    pub local_rate_limit: Option<LocalRateLimit>,
    pub access_logs: Vec<AccessLog>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// By RDS name, looked up in [`ProxyConfig::routes`] per request.
    Rds(String),
    Inline(Arc<RouteTable>),
}

/// A RouteConfiguration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Header changes for every route of the table.
    pub headers: HeaderRules,
    /// Apply the header changes of the route configuration, then the virtual host's, then the
    /// route's (the most specific last, so it wins) instead of the other way round.
    pub most_specific_header_mutations_wins: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct VirtualHost {
    pub name: String,
    /// Host names (`*` for any, `*.suffix` and `prefix.*` wildcards) this host serves.
    pub domains: Vec<String>,
    /// The first route whose match holds handles the request.
    pub routes: Vec<Route>,
    /// Header changes for every route of the virtual host.
    pub headers: HeaderRules,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    /// Header changes of this route's requests and responses.
    pub headers: HeaderRules,
}

/// Header changes one level of a route table makes (Envoy's `request_headers_to_add` and
/// `request_headers_to_remove`, or their `response_` pair): the removals first, then the
/// additions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderMutations {
    /// Lower-case names of headers removed.
    pub remove: Vec<String>,
    /// Headers added, in order.
    pub add: Vec<HeaderAdd>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

/// One header added (Envoy's `HeaderValueOption`).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderAdd {
    /// Lower-case, valid header name (not `:`-prefixed, not `host`).
    pub name: String,
    /// A valid header value, literal.
    pub value: String,
    pub action: HeaderAction,
    /// Add it even when the value is empty (else an empty value adds nothing).
    pub keep_empty: bool,
}

/// Envoy's `HeaderValueOption.append_action`. Within one level, whether a header exists is
/// judged on the headers before that level's additions; overwrites are applied before appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderAction {
    /// Another value after any existing ones.
    #[default]
    Append,
    /// Only when the header is absent.
    AddIfAbsent,
    /// Replaces any existing values.
    Overwrite,
    /// Replaces the existing values; nothing when the header is absent.
    OverwriteIfExists,
}

/// The header changes of one level, for requests and responses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderRules {
    pub request: HeaderMutations,
    pub response: HeaderMutations,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// A regular expression matching the whole path (RE2 syntax, as Envoy's safe_regex).
    Regex(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".to_string())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Lower-case header name (`:method`, `:authority` and `:path` included).
    pub name: String,
    pub value: ValueMatch,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
    Present,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    Forward(Forward),
    DirectResponse {
        status: u16,
        body: String,
    },
    /// Answers with `status` and a `Location` built from the request's URL with these parts
    /// replaced (MeshHTTPRoute's RequestRedirect filter).
    Redirect(Redirect),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub status: u16,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: RedirectPath,
    /// Drop the request's query string.
    pub strip_query: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RedirectPath {
    /// The request's path.
    Keep,
    /// This path (with its own query, if it has one, replacing the request's).
    Whole(String),
    /// The prefix the route matched replaced by this one.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// One or more clusters, picked per request by weight.
    pub clusters: Vec<WeightedCluster>,
    /// Whole-request timeout (retries included); `None` disables it.
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub prefix_rewrite: Option<String>,
    /// Envoy's `regex_rewrite`: every match of the pattern in the path (not the query) replaced
    /// by the substitution (`\N` for capture group N). The zone CP expresses MeshHTTPRoute's
    /// `ReplaceFullPath` as `^.*$` -> the new path.
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Status codes retried when `retry_on.retriable_status_codes` is set.
    pub retriable_status_codes: Vec<u16>,
}

/// Envoy's `retry_on` conditions that Meridian's policies produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub retriable_status_codes: bool,
    pub refused_stream: bool,
}

/// Per-connection or per-request allow/deny on the peer's verified identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Rbac {
    pub action: RbacAction,
    /// Named policies; the action applies when any policy matches.
    pub policies: BTreeMap<String, Vec<Principal>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Allowed only when a policy matches.
    Allow,
    /// Denied when a policy matches.
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Any,
    /// The peer certificate's URI SAN equals this (`spiffe://mesh/service`).
    UriSan(ValueMatch),
    Not(Box<Principal>),
    AnyOf(Vec<Principal>),
    AllOf(Vec<Principal>),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultInjection {
    pub abort: Option<FaultAbort>,
    pub delay: Option<FaultDelay>,
    /// Responses sent no faster than this (MeshFaultInjection `responseBandwidth`).
    pub response_bandwidth: Option<FaultBandwidth>,
    /// Request headers that must all match (the zone CP restricts a MeshFaultInjection `from`
    /// source to its callers by their `x-kuma-tags` header).
    pub headers: Vec<HeaderMatch>,
    /// When not empty, the fault applies only to callers matching one of these (a `rules`
    /// entry's `matches`, by SPIFFE ID and/or SNI); others skip it.
    pub callers: Vec<CallerMatch>,
}

/// A caller by the URI SAN of its verified certificate and/or the SNI it requested; every
/// given part must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallerMatch {
    pub uri_san: Option<ValueMatch>,
    pub sni: Option<ValueMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    pub status: u16,
    /// Share of requests, 0.0 to 100.0.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultBandwidth {
    /// KiB per second, as Envoy's `limit_kbps`.
    pub kbps: u64,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub delay: Duration,
    pub percent: f64,
}

/// A token bucket per connection manager.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub status: u16,
}

/// Structured access logs (one JSON object per connection or request).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// A file path; `/dev/stdout` for standard output.
    pub path: String,
}

/// Terminating TLS for inbound traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamTls {
    /// SDS name of the proxy's certificate and key.
    pub certificate: String,
    /// SDS name of the CA bundle client certificates must chain to; `None` asks for none.
    pub trusted_ca: Option<String>,
    pub require_client_certificate: bool,
    /// Client certificates must carry a URI SAN matching one of these (any when empty).
    pub match_san: Vec<ValueMatch>,
}

/// Originating TLS towards a cluster's endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub sni: String,
    /// SDS name of the client certificate presented (mTLS); `None` presents none.
    pub certificate: Option<String>,
    /// SDS name of the CA bundle the server certificate must chain to.
    pub trusted_ca: Option<String>,
    /// The server certificate must carry a SAN (URI or DNS) matching one of these.
    pub match_san: Vec<ValueMatch>,
    pub alpn: Vec<String>,
}

/// TLS material delivered over SDS.
#[derive(Debug, Clone, PartialEq)]
pub enum Secret {
    Certificate { chain_pem: String, key_pem: String },
    TrustedCa { ca_pem: String },
}

/// An upstream: how to pick an endpoint, and how to talk to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub circuit_breakers: CircuitBreakers,
    pub outlier_detection: Option<OutlierDetection>,
    pub health_checks: Vec<HealthCheck>,
    /// TLS towards endpoints no `tls_by_metadata` entry matches.
    pub tls: Option<UpstreamTls>,
    /// Per-endpoint TLS chosen by endpoint metadata (Envoy's transport_socket_matches: the
    /// first entry whose every key/value is in the endpoint's metadata wins; cross-zone
    /// endpoints carry their zone, and get that zone's SNI).
    pub tls_by_metadata: Vec<(BTreeMap<String, String>, Option<UpstreamTls>)>,
    pub protocol: UpstreamProtocol,
    /// How long an idle pooled upstream connection is kept.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// Endpoints from EDS under this service name.
    Eds(String),
    /// Endpoints given inline (static and strict-DNS clusters).
    Static(Arc<LoadAssignment>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 for HTTP, raw bytes for TCP: whatever the downstream spoke.
    #[default]
    Downstream,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choice_count: u32 },
    Random,
    RingHash { minimum_ring_size: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    /// Envoy's defaults.
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Eject after this many consecutive 5xx (and, as Envoy does without split external/local
    /// origin, connect failures and resets count as 5xx); `None` disables.
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub kind: HealthCheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    /// Connecting is enough.
    Tcp,
    /// Connect, write `send`, then read until every `receive` block has been seen, in order
    /// but not necessarily contiguous (Envoy's fuzzy match); the connection closing first
    /// fails the check.
    TcpPayload {
        send: Vec<u8>,
        receive: Vec<Vec<u8>>,
    },
    Http {
        path: String,
        /// The request's `Host` (`:authority`); empty: the cluster's name, as Envoy does.
        host: String,
        /// Headers added to the request (Envoy's `request_headers_to_add`), in order.
        request_headers: Vec<(String, String)>,
        /// HTTP/2 with prior knowledge (Envoy's `codec_client_type: HTTP2`, which the zone CP
        /// sets for `http2` services) instead of HTTP/1.1.
        http2: bool,
        /// Half-open ranges `[start, end)` of healthy statuses.
        expected_statuses: Vec<(u16, u16)>,
    },
    /// `grpc.health.v1.Health/Check` over HTTP/2 (cleartext): healthy when it answers
    /// `grpc-status: 0` with the status SERVING.
    Grpc {
        /// The `service` asked about (empty: the server as a whole).
        service_name: String,
        /// The request's `:authority`; empty: the cluster's name, as Envoy does.
        authority: String,
    },
}

/// A ClusterLoadAssignment.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadAssignment {
    pub cluster_name: String,
    pub localities: Vec<LocalityEndpoints>,
    /// Percent; Envoy's default 140: a priority keeps all traffic while at least 100/140 of its
    /// weight is healthy, and spills the rest to the next priority below that.
    pub overprovisioning_factor: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalityEndpoints {
    pub zone: String,
    pub priority: u32,
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    pub health: EndpointHealth,
    /// Flattened `envoy.transport_socket_match` metadata (e.g. `zone`).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// A host name resolved when connecting (external services).
    Host(String, u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointHealth {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
}
