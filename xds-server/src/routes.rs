//! Outbound routing (issue [3] point 3): what a sidecar does with traffic to one of its outbound
//! services, computed from MeshHTTPRoute, MeshTCPRoute and the legacy TrafficRoute with Kuma's
//! semantics, and expressed as an Envoy `RouteConfiguration` (HTTP) or a TCP proxy cluster
//! specifier. The result also names every [`ClusterTarget`] it routes to, so that the generator
//! can create one EDS cluster per target (endpoints of `service` filtered by `tags`).
//!
//! Which policy decides, per outbound (Kuma's rules):
//! - An HTTP outbound (protocol http, http2, grpc) is routed by MeshHTTPRoute when a MeshHTTPRoute
//!   has rules for its service; otherwise, when a MeshTCPRoute has rules for it, the outbound is
//!   plain TCP with the MeshTCPRoute's backends; otherwise HTTP. A TCP outbound ignores
//!   MeshHTTPRoute ([`outbound_mode`]).
//! - TrafficRoute is the fallback: it is used only when no policy of the new kind (MeshHTTPRoute
//!   for HTTP, MeshTCPRoute for TCP) has any `to` entry for this proxy, for any service. Among the
//!   TrafficRoutes whose `sources` select the proxy and whose `destinations` select the service,
//!   the most specific pair of selectors wins (more tags, then more exact tags), then the most
//!   recently created, then the first name.
//! - Otherwise the service itself: one route, prefix `/`, to the service's own cluster.
//!
//! MeshHTTPRoute rules are ordered as Kuma orders them (Gateway API precedence): every
//! `(rule, match)` pair is sorted by path (exact, then longer prefix, then longer regex, then
//! none), then method present, then more headers, then more query parameters, stably, so that on a
//! tie the more specific policy's rule stays first. A `PathPrefix` other than `/` becomes two Envoy
//! routes (the exact path and the path followed by `/`), because Gateway API prefixes match whole
//! path segments. A catch-all route to the service is added last unless a rule already matches
//! everything.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    weighted_cluster, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use mesh_api::core::traffic_route::{self as tr, Selector, TrafficRouteSpec};
use mesh_api::matching::MatchedPolicies;
use mesh_api::policies::common::{BackendRef, HeaderModifier, TargetRef, TargetRefKind};
use mesh_api::policies::mesh_http_route as http;
use mesh_api::policies::mesh_retry::HeaderMatchType;
use mesh_api::policies::mesh_tcp_route as tcp;
use mesh_api::{Resource, Spec, SERVICE_TAG};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A destination cluster: the endpoints of `service` whose tags include all of `tags`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterTarget {
    pub service: String,
    /// Endpoint filter; never contains `kuma.io/service`.
    pub tags: BTreeMap<String, String>,
}

impl ClusterTarget {
    /// Every endpoint of `service`.
    pub fn service(service: impl Into<String>) -> ClusterTarget {
        ClusterTarget {
            service: service.into(),
            tags: BTreeMap::new(),
        }
    }

    /// The endpoints of `service` carrying `tags` (a `kuma.io/service` entry is dropped: the
    /// service is `service`).
    pub fn new(service: impl Into<String>, mut tags: BTreeMap<String, String>) -> ClusterTarget {
        tags.remove(SERVICE_TAG);
        ClusterTarget {
            service: service.into(),
            tags,
        }
    }

    /// The Envoy cluster name: the service name when there is no tag filter (the cluster every
    /// sidecar already has), else `<service>_<8 hex digits>`, a hash of the tags, so the name is
    /// stable across rebuilds and proxies and distinct per subset.
    pub fn cluster_name(&self) -> String {
        if self.tags.is_empty() {
            return self.service.clone();
        }
        let mut hash = Sha256::new();
        for (key, value) in &self.tags {
            // Length prefixes keep {"a": "bc"} and {"ab": "c"} apart.
            for part in [key, value] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part.as_bytes());
            }
        }
        format!("{}_{}", self.service, hex::encode(&hash.finalize()[..4]))
    }
}

/// Which policy decided an outbound's routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSource {
    /// MeshHTTPRoute or MeshTCPRoute rules for the service.
    MeshRoute,
    /// The named TrafficRoute.
    TrafficRoute(String),
    /// Nothing: all traffic goes to the service itself.
    Default,
}

/// Whether an outbound gets an HTTP connection manager with routes or a TCP proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundMode {
    Http,
    Tcp,
}

/// The routing of an HTTP outbound.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundHttp {
    pub route_config: RouteConfiguration,
    /// Every cluster the routes (and mirrors) send to.
    pub targets: BTreeSet<ClusterTarget>,
    pub source: RouteSource,
    /// What was left out and why (unsupported backend kinds, unknown filter types, routes left
    /// without a backend), each naming where it was; for the caller to log.
    pub warnings: Vec<String>,
}

/// The routing of a TCP outbound.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundTcp {
    /// Weighted destinations, weights above 0, no duplicates. Empty only when a MeshTCPRoute
    /// names nothing Meridian can route to (see `warnings`): the caller should then not forward.
    pub targets: Vec<(ClusterTarget, u32)>,
    pub source: RouteSource,
    pub warnings: Vec<String>,
}

/// Kuma's choice between HTTP and TCP for an outbound to `service`: `http_protocol` says whether
/// the service speaks http, http2 or grpc. MeshHTTPRoute takes priority over MeshTCPRoute when
/// both have rules for the service; an HTTP service with only a MeshTCPRoute is proxied as TCP to
/// that route's backends; a TCP service is always TCP.
pub fn outbound_mode(
    service: &str,
    http_protocol: bool,
    mesh_http_routes: &MatchedPolicies,
    mesh_tcp_routes: &MatchedPolicies,
) -> OutboundMode {
    if !http_protocol {
        return OutboundMode::Tcp;
    }
    if has_rules(&mesh_http_routes.to, service) || !has_rules(&mesh_tcp_routes.to, service) {
        OutboundMode::Http
    } else {
        OutboundMode::Tcp
    }
}

/// The route configuration `route_name` for an HTTP outbound to `service` of `dataplane`:
/// one virtual host (`service`, domains `*`) with the MeshHTTPRoute routes for the service (or
/// the chosen TrafficRoute's), then the catch-all route to the service. Every forwarding route's
/// action is a clone of `template` (timeouts, retries) with the cluster specifier set here.
/// `mesh_http_routes` is `matched_policies(dataplane, <the mesh's MeshHTTPRoutes>)`;
/// `traffic_routes` are the mesh's TrafficRoutes.
pub fn http_route_configuration(
    route_name: &str,
    service: &str,
    mesh_http_routes: &MatchedPolicies,
    traffic_routes: &[Resource],
    dataplane: &Resource,
    template: &RouteAction,
) -> OutboundHttp {
    let mut builder = HttpBuilder {
        service,
        template,
        routes: Vec::new(),
        targets: BTreeSet::new(),
        warnings: Vec::new(),
    };
    let source = if !mesh_http_routes.to.is_empty() {
        match rules_for::<http::Rule>(&mesh_http_routes.to, service) {
            Ok(Some(rules)) => {
                builder.mesh_http_routes(&rules);
                RouteSource::MeshRoute
            }
            Ok(None) => {
                builder.default_route();
                RouteSource::Default
            }
            Err(e) => {
                builder.warnings.push(format!(
                    "MeshHTTPRoute rules for {service} cannot be read ({e}); routing to {service} only"
                ));
                builder.default_route();
                RouteSource::Default
            }
        }
    } else if let Some((name, spec)) = select_traffic_route(dataplane, service, traffic_routes) {
        builder.traffic_route(name, spec);
        RouteSource::TrafficRoute(name.to_owned())
    } else {
        builder.default_route();
        RouteSource::Default
    };
    let route_config = RouteConfiguration {
        name: route_name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_owned(),
            domains: vec!["*".to_owned()],
            routes: builder.routes,
            ..VirtualHost::default()
        }],
        // Clusters arrive over CDS; an inline route table must not be rejected for naming one
        // Envoy has not seen yet.
        validate_clusters: Some(BoolValue { value: false }),
        ..RouteConfiguration::default()
    };
    OutboundHttp {
        route_config,
        targets: builder.targets,
        source,
        warnings: builder.warnings,
    }
}

/// The weighted destinations of a TCP outbound to `service` of `dataplane`: the MeshTCPRoute's
/// `backendRefs` for the service (its first rule with backends), or the chosen TrafficRoute's
/// `conf.split` / `conf.destination`, or the service itself with weight 1.
/// `mesh_tcp_routes` is `matched_policies(dataplane, <the mesh's MeshTCPRoutes>)`.
pub fn tcp_route_targets(
    service: &str,
    mesh_tcp_routes: &MatchedPolicies,
    traffic_routes: &[Resource],
    dataplane: &Resource,
) -> OutboundTcp {
    let own = || vec![(ClusterTarget::service(service), 1)];
    let mut warnings = Vec::new();
    if !mesh_tcp_routes.to.is_empty() {
        let rules = match rules_for::<tcp::Rule>(&mesh_tcp_routes.to, service) {
            Ok(rules) => rules.unwrap_or_default(),
            Err(e) => {
                warnings.push(format!(
                    "MeshTCPRoute rules for {service} cannot be read ({e}); routing to {service} only"
                ));
                Vec::new()
            }
        };
        let Some(backends) = rules
            .iter()
            .find_map(|r| r.default.backend_refs.as_ref().filter(|b| !b.is_empty()))
        else {
            return OutboundTcp {
                targets: own(),
                source: RouteSource::Default,
                warnings,
            };
        };
        let split = backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let at = format!("MeshTCPRoute to {service}: backendRefs[{i}]");
                resolve_backend(b, &at, &mut warnings)
            })
            .collect();
        let targets = normalize(split);
        if targets.is_empty() {
            warnings.push(format!(
                "MeshTCPRoute to {service}: no backend Meridian can route to"
            ));
        }
        return OutboundTcp {
            targets,
            source: RouteSource::MeshRoute,
            warnings,
        };
    }
    if let Some((name, spec)) = select_traffic_route(dataplane, service, traffic_routes) {
        let conf = spec.conf.clone().unwrap_or_default();
        let targets =
            traffic_route_split(conf.split.as_deref(), conf.destination.as_ref(), service);
        if !targets.is_empty() {
            return OutboundTcp {
                targets,
                source: RouteSource::TrafficRoute(name.to_owned()),
                warnings,
            };
        }
    }
    OutboundTcp {
        targets: own(),
        source: RouteSource::Default,
        warnings,
    }
}

/// A TCP proxy's cluster specifier for `targets`: the cluster itself when there is one, weighted
/// clusters when there are more, `None` when there are none.
pub fn tcp_cluster_specifier(
    targets: &[(ClusterTarget, u32)],
) -> Option<tcp_proxy::ClusterSpecifier> {
    match targets {
        [] => None,
        [(target, _)] => Some(tcp_proxy::ClusterSpecifier::Cluster(target.cluster_name())),
        many => Some(tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp_proxy::WeightedCluster {
                clusters: many
                    .iter()
                    .map(
                        |(target, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                            name: target.cluster_name(),
                            weight: *weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            },
        )),
    }
}

/// Every tag subset of a service that `policies` (a mesh's policies) may route to, whichever
/// proxies they select: MeshHTTPRoute and MeshTCPRoute `MeshServiceSubset` backends (mirrors
/// included) and TrafficRoute split or destination tags. A zone ingress needs these ahead of any
/// request, since a sidecar in another zone names the subset in its SNI. A TrafficRoute
/// destination without a concrete `kuma.io/service` stands for each of `services` its
/// `destinations` select. Targets without tags are left out (the plain service covers them).
pub fn subset_targets<'a>(
    policies: &[Resource],
    services: impl IntoIterator<Item = &'a str> + Clone,
) -> BTreeSet<ClusterTarget> {
    let mut out = BTreeSet::new();
    let mut warnings = Vec::new();
    let mut backend = |b: &BackendRef, out: &mut BTreeSet<ClusterTarget>| {
        if b.kind == TargetRefKind::MeshServiceSubset {
            if let Some((target, _)) = resolve_backend(b, "", &mut warnings) {
                out.insert(target);
            }
        }
    };
    for policy in policies {
        match &policy.spec {
            Spec::MeshHTTPRoute(spec) => {
                for rule in spec.to.iter().flatten().flat_map(|to| &to.rules) {
                    for b in rule.default.backend_refs.iter().flatten() {
                        backend(b, &mut out);
                    }
                    for filter in rule.default.filters.iter().flatten() {
                        if let Some(mirror) = &filter.request_mirror {
                            backend(&mirror.backend_ref, &mut out);
                        }
                    }
                }
            }
            Spec::MeshTCPRoute(spec) => {
                for rule in spec.to.iter().flatten().flat_map(|to| &to.rules) {
                    for b in rule.default.backend_refs.iter().flatten() {
                        backend(b, &mut out);
                    }
                }
            }
            Spec::TrafficRoute(spec) => {
                let Some(conf) = &spec.conf else { continue };
                let mut selectors: Vec<&BTreeMap<String, String>> = Vec::new();
                for (split, destination) in std::iter::once((&conf.split, &conf.destination))
                    .chain(conf.http.iter().map(|h| (&h.split, &h.destination)))
                {
                    selectors.extend(split.iter().flatten().map(|s| &s.destination));
                    selectors.extend(destination.iter());
                }
                for selector in selectors {
                    let concrete = selector
                        .get(SERVICE_TAG)
                        .filter(|s| *s != "*")
                        .map(|s| vec![s.as_str()]);
                    let for_services = concrete.unwrap_or_else(|| {
                        services
                            .clone()
                            .into_iter()
                            .filter(|s| {
                                let tags =
                                    BTreeMap::from([(SERVICE_TAG.to_owned(), s.to_string())]);
                                spec.destinations.iter().any(|d| d.matches(&tags))
                            })
                            .collect()
                    });
                    for service in for_services {
                        out.insert(traffic_route_target(selector, service));
                    }
                }
            }
            _ => {}
        }
    }
    out.retain(|t| !t.tags.is_empty());
    out
}

// ---------------------------------------------------------------------------------------------
// Selecting the rules for a service

/// The merged `to` configuration that applies to traffic for `service`: the `MeshService`
/// entry naming it, else a `Mesh` entry.
fn to_conf_for<'a>(to: &'a [(TargetRef, Value)], service: &str) -> Option<&'a Value> {
    let exact = to.iter().find(|(t, _)| {
        t.kind == TargetRefKind::MeshService
            && t.name_str() == service
            && t.section_name.as_deref().is_none_or(str::is_empty)
    });
    exact
        .or_else(|| to.iter().find(|(t, _)| t.kind == TargetRefKind::Mesh))
        .map(|(_, conf)| conf)
}

fn has_rules(to: &[(TargetRef, Value)], service: &str) -> bool {
    to_conf_for(to, service)
        .and_then(|conf| conf.get("rules"))
        .and_then(Value::as_array)
        .is_some_and(|rules| !rules.is_empty())
}

/// The route rules for `service`, `None` when there are none.
fn rules_for<R: serde::de::DeserializeOwned>(
    to: &[(TargetRef, Value)],
    service: &str,
) -> Result<Option<Vec<R>>, serde_json::Error> {
    let Some(rules) = to_conf_for(to, service).and_then(|conf| conf.get("rules")) else {
        return Ok(None);
    };
    let rules: Vec<R> = serde_json::from_value(rules.clone())?;
    Ok((!rules.is_empty()).then_some(rules))
}

// ---------------------------------------------------------------------------------------------
// TrafficRoute selection

/// Kuma's specificity of a tag selector: more tags first, then more exact (non-`*`) tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Rank {
    exact: usize,
    wildcard: usize,
}

impl Rank {
    fn of(selector: &Selector) -> Rank {
        let wildcard = selector.match_tags.values().filter(|v| *v == "*").count();
        Rank {
            exact: selector.match_tags.len() - wildcard,
            wildcard,
        }
    }

    fn plus(self, other: Rank) -> Rank {
        Rank {
            exact: self.exact + other.exact,
            wildcard: self.wildcard + other.wildcard,
        }
    }

    fn compare(self, other: Rank) -> Ordering {
        (self.exact + self.wildcard)
            .cmp(&(other.exact + other.wildcard))
            .then(self.exact.cmp(&other.exact))
    }
}

/// The TrafficRoute that routes `dataplane`'s traffic to `service`, with its name.
fn select_traffic_route<'a>(
    dataplane: &Resource,
    service: &str,
    traffic_routes: &'a [Resource],
) -> Option<(&'a str, &'a TrafficRouteSpec)> {
    let Spec::Dataplane(dp) = &dataplane.spec else {
        return None;
    };
    let mut tag_sets: Vec<&BTreeMap<String, String>> =
        dp.inbounds().iter().map(|i| &i.tags).collect();
    if let Some(gateway) = dp.gateway() {
        tag_sets.push(&gateway.tags);
    }
    let outbound = BTreeMap::from([(SERVICE_TAG.to_owned(), service.to_owned())]);

    let mut candidates: Vec<(&Resource, &TrafficRouteSpec)> = traffic_routes
        .iter()
        .filter(|r| r.meta.mesh == dataplane.meta.mesh)
        .filter_map(|r| match &r.spec {
            Spec::TrafficRoute(spec) => Some((r, spec)),
            _ => None,
        })
        .collect();
    // By name, so that a full tie is won by the first name.
    candidates.sort_by(|a, b| a.0.meta.name.cmp(&b.0.meta.name));

    let mut best: Option<(&Resource, &TrafficRouteSpec, Rank)> = None;
    for (resource, spec) in candidates {
        let Some(source_rank) = spec
            .sources
            .iter()
            .filter(|s| tag_sets.iter().any(|tags| s.matches(tags)))
            .map(Rank::of)
            .max_by(|a, b| a.compare(*b))
        else {
            continue;
        };
        for destination in spec.destinations.iter().filter(|d| d.matches(&outbound)) {
            let rank = Rank::of(destination).plus(source_rank);
            let better = match &best {
                None => true,
                Some((current, _, current_rank)) => match rank.compare(*current_rank) {
                    Ordering::Greater => true,
                    // The newer policy wins a tie; on equal times the first name stays.
                    Ordering::Equal => resource.meta.creation_time > current.meta.creation_time,
                    Ordering::Less => false,
                },
            };
            if better {
                best = Some((resource, spec, rank));
            }
        }
    }
    best.map(|(resource, spec, _)| (resource.meta.name.as_str(), spec))
}

/// A TrafficRoute destination selector as a cluster target: `kuma.io/service: *` (or none) is the
/// outbound's own service; other `*` tags match any value, so they filter nothing.
fn traffic_route_target(destination: &BTreeMap<String, String>, service: &str) -> ClusterTarget {
    let target_service = match destination.get(SERVICE_TAG).map(String::as_str) {
        None | Some("*") => service,
        Some(other) => other,
    };
    let tags = destination
        .iter()
        .filter(|(_, v)| *v != "*")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ClusterTarget::new(target_service, tags)
}

/// A TrafficRoute `split` or `destination` as weighted targets (a weight of 0 takes no traffic).
fn traffic_route_split(
    split: Option<&[tr::Split]>,
    destination: Option<&BTreeMap<String, String>>,
    service: &str,
) -> Vec<(ClusterTarget, u32)> {
    let weighted: Vec<(ClusterTarget, u32)> = match (split, destination) {
        (Some(split), _) => split
            .iter()
            .map(|s| {
                (
                    traffic_route_target(&s.destination, service),
                    s.weight.unwrap_or(0),
                )
            })
            .collect(),
        (None, Some(destination)) => vec![(traffic_route_target(destination, service), 1)],
        (None, None) => Vec::new(),
    };
    normalize(weighted)
}

// ---------------------------------------------------------------------------------------------
// Building routes

/// Drops zero weights and merges repeated targets (keeping first-appearance order).
fn normalize(split: Vec<(ClusterTarget, u32)>) -> Vec<(ClusterTarget, u32)> {
    let mut out: Vec<(ClusterTarget, u32)> = Vec::new();
    for (target, weight) in split.into_iter().filter(|(_, w)| *w > 0) {
        match out.iter_mut().find(|(t, _)| *t == target) {
            Some((_, total)) => *total = total.saturating_add(weight),
            None => out.push((target, weight)),
        }
    }
    out
}

/// A route backend as a weighted target; `None` (with a warning naming `at`) for kinds Meridian
/// does not route to yet, and silently for a weight of 0.
fn resolve_backend(
    backend: &BackendRef,
    at: &str,
    warnings: &mut Vec<String>,
) -> Option<(ClusterTarget, u32)> {
    let name = backend.name.as_deref().unwrap_or_default();
    let target = match backend.kind {
        TargetRefKind::MeshService if !name.is_empty() => ClusterTarget::service(name),
        TargetRefKind::MeshServiceSubset if !name.is_empty() => {
            ClusterTarget::new(name, backend.tags.clone().unwrap_or_default())
        }
        TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset => {
            warnings.push(format!("{at}: no name, skipped"));
            return None;
        }
        ref other => {
            warnings.push(format!(
                "{at}: backends of kind {other} are not supported yet, skipped"
            ));
            return None;
        }
    };
    let weight = u32::try_from(backend.weight.unwrap_or(1).max(0)).unwrap_or(u32::MAX);
    (weight > 0).then_some((target, weight))
}

fn http_cluster_specifier(split: &[(ClusterTarget, u32)]) -> ClusterSpecifier {
    match split {
        [(target, _)] => ClusterSpecifier::Cluster(target.cluster_name()),
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(target, weight)| weighted_cluster::ClusterWeight {
                    name: target.cluster_name(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    }
}

fn regex(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_owned(),
        // Envoy's default engine (RE2).
        engine_type: None,
    }
}

fn string_matcher(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..StringMatcher::default()
    }
}

fn header_string_match(name: &str, pattern: MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(pattern))),
        ..HeaderMatcher::default()
    }
}

fn header_option(name: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            ..HeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

/// Kuma's header modifier: a comma-separated value is several values; `set` replaces the
/// header with the first and appends the rest, `add` appends them all.
fn header_modifier_options(m: &HeaderModifier) -> (Vec<HeaderValueOption>, Vec<String>) {
    let mut options = Vec::new();
    for set in m.set.as_deref().unwrap_or_default() {
        for (i, value) in set.value.split(',').enumerate() {
            let action = if i == 0 {
                HeaderAppendAction::OverwriteIfExistsOrAdd
            } else {
                HeaderAppendAction::AppendIfExistsOrAdd
            };
            options.push(header_option(&set.name, value, action));
        }
    }
    for add in m.add.as_deref().unwrap_or_default() {
        for value in add.value.split(',') {
            options.push(header_option(
                &add.name,
                value,
                HeaderAppendAction::AppendIfExistsOrAdd,
            ));
        }
    }
    (options, m.remove.clone().unwrap_or_default())
}

/// A percentage in [0, 100] with the coarsest denominator that keeps it exact (to a millionth).
fn fractional_percent(percent: f64) -> FractionalPercent {
    let percent = percent.clamp(0.0, 100.0);
    let (numerator, denominator) = if percent.fract() == 0.0 {
        (percent, DenominatorType::Hundred)
    } else if (percent * 100.0).fract() == 0.0 {
        (percent * 100.0, DenominatorType::TenThousand)
    } else {
        ((percent * 10_000.0).round(), DenominatorType::Million)
    };
    FractionalPercent {
        numerator: numerator as u32,
        denominator: denominator as i32,
    }
}

/// With a trailing slash: the replacement for a `<prefix>/` match must keep the separator.
fn with_trailing_slash(path: &str) -> String {
    if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    }
}

fn replace_whole_path(path: &str) -> RegexMatchAndSubstitute {
    RegexMatchAndSubstitute {
        pattern: Some(regex("^.*$")),
        substitution: path.to_owned(),
    }
}

/// How an Envoy route's path match relates to the MeshHTTPRoute match it came from, which
/// decides how `ReplacePrefixMatch` is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathOrigin {
    /// Not a prefix match (exact, regex, none).
    Other,
    /// The exact path of a `PathPrefix` (`/api` for prefix `/api`): the whole path is replaced.
    PrefixItself,
    /// `<prefix>/` (or `/`): the prefix is replaced.
    UnderPrefix,
}

/// Kuma's precedence between two MeshHTTPRoute matches (`Less` comes first).
fn compare_match(a: &http::Match, b: &http::Match) -> Ordering {
    fn type_rank(t: &http::PathMatchType) -> u8 {
        match t {
            http::PathMatchType::Exact => 0,
            http::PathMatchType::PathPrefix => 1,
            http::PathMatchType::RegularExpression => 2,
            http::PathMatchType::Other(_) => 3,
        }
    }
    let path = match (&a.path, &b.path) {
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
        (Some(pa), Some(pb)) => {
            type_rank(&pa.match_type)
                .cmp(&type_rank(&pb.match_type))
                .then_with(|| match pa.match_type {
                    // A longer prefix or regex is more specific.
                    http::PathMatchType::PathPrefix | http::PathMatchType::RegularExpression => {
                        pb.value.len().cmp(&pa.value.len())
                    }
                    _ => Ordering::Equal,
                })
        }
    };
    // More header or query conditions are more specific, so they come first.
    fn count<T>(v: &Option<Vec<T>>) -> usize {
        v.as_ref().map_or(0, Vec::len)
    }
    path.then_with(|| b.method.is_some().cmp(&a.method.is_some()))
        .then_with(|| count(&b.headers).cmp(&count(&a.headers)))
        .then_with(|| count(&b.query_params).cmp(&count(&a.query_params)))
}

/// Whether a match has no condition but the root prefix, so it takes every request.
fn is_catch_all(m: &http::Match) -> bool {
    let root = m.path.as_ref().is_none_or(|p| {
        p.match_type == http::PathMatchType::PathPrefix && p.value.trim_end_matches('/').is_empty()
    });
    root && m.method.is_none()
        && m.headers.as_ref().is_none_or(Vec::is_empty)
        && m.query_params.as_ref().is_none_or(Vec::is_empty)
}

struct HttpBuilder<'a> {
    service: &'a str,
    template: &'a RouteAction,
    routes: Vec<Route>,
    targets: BTreeSet<ClusterTarget>,
    warnings: Vec<String>,
}

impl HttpBuilder<'_> {
    /// A forwarding action to `split` (non-empty), recording its targets.
    fn forward(&mut self, split: &[(ClusterTarget, u32)]) -> RouteAction {
        self.targets
            .extend(split.iter().map(|(target, _)| target.clone()));
        RouteAction {
            cluster_specifier: Some(http_cluster_specifier(split)),
            ..self.template.clone()
        }
    }

    fn default_route(&mut self) {
        let action = self.forward(&[(ClusterTarget::service(self.service), 1)]);
        self.routes.push(Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                ..RouteMatch::default()
            }),
            action: Some(Action::Route(action)),
            ..Route::default()
        });
    }

    fn mesh_http_routes(&mut self, rules: &[http::Rule]) {
        // A rule without matches takes every request (Kuma requires at least one match).
        let every_request = [http::Match::default()];
        let mut keyed: Vec<(usize, &http::Match, &http::RuleConf)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let matches = if rule.matches.is_empty() {
                &every_request[..]
            } else {
                &rule.matches[..]
            };
            keyed.extend(matches.iter().map(|m| (i, m, &rule.default)));
        }
        keyed.sort_by(|a, b| compare_match(a.1, b.1));
        let mut catch_all = false;
        for (i, m, conf) in keyed {
            let added = self.mesh_http_route(&format!("rules[{i}]"), m, conf);
            catch_all |= added && is_catch_all(m);
        }
        if !catch_all {
            self.default_route();
        }
    }

    /// Adds the routes of one match; `false` (warned) when it could not.
    fn mesh_http_route(&mut self, at: &str, m: &http::Match, conf: &http::RuleConf) -> bool {
        let at = format!("MeshHTTPRoute to {}: {at}", self.service);
        let filters = conf.filters.as_deref().unwrap_or_default();
        let backends = conf.backend_refs.as_deref().unwrap_or_default();
        let split = if backends.is_empty() {
            vec![(ClusterTarget::service(self.service), 1)]
        } else {
            let resolved = backends
                .iter()
                .enumerate()
                .filter_map(|(j, b)| {
                    resolve_backend(b, &format!("{at}.backendRefs[{j}]"), &mut self.warnings)
                })
                .collect();
            normalize(resolved)
        };
        let redirects = filters.iter().any(|f| {
            f.filter_type == http::FilterType::RequestRedirect && f.request_redirect.is_some()
        });
        if split.is_empty() && !redirects {
            self.warnings.push(format!(
                "{at}: no backend Meridian can route to, route skipped"
            ));
            return false;
        }
        let Some(paths) = self.paths(&at, m.path.as_ref()) else {
            return false;
        };
        let mut conditions = RouteMatch::default();
        if let Some(method) = &m.method {
            conditions.headers.push(header_string_match(
                ":method",
                MatchPattern::Exact(method.clone()),
            ));
        }
        self.query_matchers(&at, m, &mut conditions);
        self.header_matchers(&at, m, &mut conditions);
        for (path, origin) in paths {
            let route = Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(path),
                    ..conditions.clone()
                }),
                ..Route::default()
            };
            self.push_with_filters(&at, route, origin, &split, filters);
        }
        true
    }

    /// The Envoy path matches of a MeshHTTPRoute path match; `None` (warned) when unusable.
    fn paths(
        &mut self,
        at: &str,
        path: Option<&http::PathMatch>,
    ) -> Option<Vec<(PathSpecifier, PathOrigin)>> {
        let Some(path) = path else {
            return Some(vec![(
                PathSpecifier::Prefix("/".to_owned()),
                PathOrigin::UnderPrefix,
            )]);
        };
        Some(match &path.match_type {
            http::PathMatchType::Exact => {
                vec![(PathSpecifier::Path(path.value.clone()), PathOrigin::Other)]
            }
            http::PathMatchType::RegularExpression => vec![(
                PathSpecifier::SafeRegex(regex(&path.value)),
                PathOrigin::Other,
            )],
            http::PathMatchType::PathPrefix => {
                let trimmed = path.value.trim_end_matches('/');
                if trimmed.is_empty() {
                    vec![(
                        PathSpecifier::Prefix("/".to_owned()),
                        PathOrigin::UnderPrefix,
                    )]
                } else {
                    vec![
                        (
                            PathSpecifier::Path(trimmed.to_owned()),
                            PathOrigin::PrefixItself,
                        ),
                        (
                            PathSpecifier::Prefix(format!("{trimmed}/")),
                            PathOrigin::UnderPrefix,
                        ),
                    ]
                }
            }
            http::PathMatchType::Other(t) => {
                self.warnings.push(format!(
                    "{at}: path match type {t:?} is not supported, match skipped"
                ));
                return None;
            }
        })
    }

    fn query_matchers(&mut self, at: &str, m: &http::Match, conditions: &mut RouteMatch) {
        let mut seen = BTreeSet::new();
        for q in m.query_params.as_deref().unwrap_or_default() {
            // One condition per name (the validator rejects repeats).
            if !seen.insert(q.name.as_str()) {
                continue;
            }
            let pattern = match &q.match_type {
                http::QueryParamMatchType::Exact => MatchPattern::Exact(q.value.clone()),
                http::QueryParamMatchType::RegularExpression => {
                    MatchPattern::SafeRegex(regex(&q.value))
                }
                http::QueryParamMatchType::Other(t) => {
                    self.warnings.push(format!(
                        "{at}: query parameter {} match type {t:?} is not supported, ignored",
                        q.name
                    ));
                    continue;
                }
            };
            conditions.query_parameters.push(QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    string_matcher(pattern),
                )),
            });
        }
    }

    fn header_matchers(&mut self, at: &str, m: &http::Match, conditions: &mut RouteMatch) {
        let mut seen = BTreeSet::new();
        for h in m.headers.as_deref().unwrap_or_default() {
            // Header names are case-insensitive; the first condition on a name counts.
            if !seen.insert(h.name.to_ascii_lowercase()) {
                continue;
            }
            let value = h.value.clone().unwrap_or_default();
            let present = |present: bool| HeaderMatcher {
                name: h.name.clone(),
                header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(present)),
                ..HeaderMatcher::default()
            };
            let matcher = match h.match_type.as_ref().unwrap_or(&HeaderMatchType::Exact) {
                HeaderMatchType::Exact => header_string_match(&h.name, MatchPattern::Exact(value)),
                HeaderMatchType::Present => present(true),
                // `present_match: false` matches requests without the header.
                HeaderMatchType::Absent => present(false),
                HeaderMatchType::RegularExpression => {
                    header_string_match(&h.name, MatchPattern::SafeRegex(regex(&value)))
                }
                // Envoy refuses an empty prefix; every value has it, so it means "present".
                HeaderMatchType::Prefix if value.is_empty() => present(true),
                HeaderMatchType::Prefix => {
                    header_string_match(&h.name, MatchPattern::Prefix(value))
                }
                HeaderMatchType::Other(t) => {
                    self.warnings.push(format!(
                        "{at}: header {} match type {t:?} is not supported, ignored",
                        h.name
                    ));
                    continue;
                }
            };
            conditions.headers.push(matcher);
        }
    }

    /// Applies the rule's filters in order to `route` (whose match is set) and adds it.
    fn push_with_filters(
        &mut self,
        at: &str,
        mut route: Route,
        origin: PathOrigin,
        split: &[(ClusterTarget, u32)],
        filters: &[http::Filter],
    ) {
        let mut action = if split.is_empty() {
            // Only reachable with a redirect, which replaces the action below.
            Action::Route(self.template.clone())
        } else {
            Action::Route(RouteAction {
                cluster_specifier: Some(http_cluster_specifier(split)),
                ..self.template.clone()
            })
        };
        let mut mirrors: Vec<ClusterTarget> = Vec::new();
        for (k, filter) in filters.iter().enumerate() {
            let at = format!("{at}.filters[{k}]");
            let missing = |what: &str| format!("{at}: {what} is not set, filter ignored");
            match &filter.filter_type {
                http::FilterType::RequestHeaderModifier => match &filter.request_header_modifier {
                    Some(m) => {
                        let (add, remove) = header_modifier_options(m);
                        route.request_headers_to_add.extend(add);
                        route.request_headers_to_remove.extend(remove);
                    }
                    None => self.warnings.push(missing("requestHeaderModifier")),
                },
                http::FilterType::ResponseHeaderModifier => {
                    match &filter.response_header_modifier {
                        Some(m) => {
                            let (add, remove) = header_modifier_options(m);
                            route.response_headers_to_add.extend(add);
                            route.response_headers_to_remove.extend(remove);
                        }
                        None => self.warnings.push(missing("responseHeaderModifier")),
                    }
                }
                http::FilterType::RequestRedirect => match &filter.request_redirect {
                    Some(r) => action = Action::Redirect(self.redirect(&at, r, origin)),
                    None => self.warnings.push(missing("requestRedirect")),
                },
                http::FilterType::URLRewrite => match (&filter.url_rewrite, &mut action) {
                    (Some(r), Action::Route(forward)) => self.rewrite(&at, r, origin, forward),
                    (Some(_), _) => self.warnings.push(format!(
                        "{at}: a URLRewrite after a RequestRedirect has no effect"
                    )),
                    (None, _) => self.warnings.push(missing("urlRewrite")),
                },
                http::FilterType::RequestMirror => match (&filter.request_mirror, &mut action) {
                    (Some(m), Action::Route(forward)) => {
                        let backend = BackendRef {
                            weight: None,
                            ..m.backend_ref.clone()
                        };
                        let Some((target, _)) = resolve_backend(
                            &backend,
                            &format!("{at}.requestMirror.backendRef"),
                            &mut self.warnings,
                        ) else {
                            continue;
                        };
                        let runtime_fraction = m.percentage.as_ref().and_then(|p| {
                            let Some(percent) = p.decimal() else {
                                self.warnings.push(format!(
                                    "{at}: requestMirror.percentage is not a number, mirroring everything"
                                ));
                                return None;
                            };
                            Some(RuntimeFractionalPercent {
                                default_value: Some(fractional_percent(percent)),
                                ..RuntimeFractionalPercent::default()
                            })
                        });
                        forward.request_mirror_policies.push(RequestMirrorPolicy {
                            cluster: target.cluster_name(),
                            runtime_fraction,
                            ..RequestMirrorPolicy::default()
                        });
                        mirrors.push(target);
                    }
                    (Some(_), _) => self.warnings.push(format!(
                        "{at}: a RequestMirror on a redirected route has no effect"
                    )),
                    (None, _) => self.warnings.push(missing("requestMirror")),
                },
                http::FilterType::Other(t) => self
                    .warnings
                    .push(format!("{at}: filter type {t:?} is not supported, ignored")),
            }
        }
        if matches!(action, Action::Route(_)) {
            self.targets.extend(split.iter().map(|(t, _)| t.clone()));
            self.targets.extend(mirrors);
        }
        route.action = Some(action);
        self.routes.push(route);
    }

    fn redirect(
        &mut self,
        at: &str,
        r: &http::RequestRedirect,
        origin: PathOrigin,
    ) -> RedirectAction {
        let response_code = match r.status_code.unwrap_or(301) {
            301 => RedirectResponseCode::MovedPermanently,
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            other => {
                self.warnings.push(format!(
                    "{at}: requestRedirect.statusCode {other} is not one of 301, 302, 303, 307, 308; using 301"
                ));
                RedirectResponseCode::MovedPermanently
            }
        };
        let path_rewrite_specifier = r
            .path
            .as_ref()
            .and_then(|p| self.path_change(at, p, origin))
            .map(|change| match change {
                PathChange::Whole(path) => PathRewriteSpecifier::PathRedirect(path),
                PathChange::Prefix(prefix) => PathRewriteSpecifier::PrefixRewrite(prefix),
            });
        RedirectAction {
            host_redirect: r.hostname.clone().unwrap_or_default(),
            port_redirect: r
                .port
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or_default(),
            response_code: response_code as i32,
            scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier,
            ..RedirectAction::default()
        }
    }

    fn rewrite(
        &mut self,
        at: &str,
        r: &http::UrlRewrite,
        origin: PathOrigin,
        action: &mut RouteAction,
    ) {
        if let Some(hostname) = &r.hostname {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(hostname.clone()));
        }
        match r
            .path
            .as_ref()
            .and_then(|p| self.path_change(at, p, origin))
        {
            Some(PathChange::Whole(path)) => action.regex_rewrite = Some(replace_whole_path(&path)),
            Some(PathChange::Prefix(prefix)) => action.prefix_rewrite = prefix,
            None => {}
        }
    }

    /// What a path modifier does on a route whose path match has `origin`.
    fn path_change(
        &mut self,
        at: &str,
        p: &http::PathModifier,
        origin: PathOrigin,
    ) -> Option<PathChange> {
        match (&p.modifier_type, origin) {
            (http::PathModifierType::ReplaceFullPath, _) => match &p.replace_full_path {
                Some(path) => Some(PathChange::Whole(path.clone())),
                None => {
                    self.warnings.push(format!(
                        "{at}: path.replaceFullPath is not set, path unchanged"
                    ));
                    None
                }
            },
            (http::PathModifierType::ReplacePrefixMatch, PathOrigin::Other) => {
                self.warnings.push(format!(
                    "{at}: ReplacePrefixMatch needs a PathPrefix match, path unchanged"
                ));
                None
            }
            (http::PathModifierType::ReplacePrefixMatch, _) => {
                let Some(prefix) = &p.replace_prefix_match else {
                    self.warnings.push(format!(
                        "{at}: path.replacePrefixMatch is not set, path unchanged"
                    ));
                    return None;
                };
                Some(if origin == PathOrigin::PrefixItself {
                    PathChange::Whole(prefix.clone())
                } else {
                    PathChange::Prefix(with_trailing_slash(prefix))
                })
            }
            (http::PathModifierType::Other(t), _) => {
                self.warnings.push(format!(
                    "{at}: path modifier type {t:?} is not supported, path unchanged"
                ));
                None
            }
        }
    }

    fn traffic_route(&mut self, name: &str, spec: &TrafficRouteSpec) {
        let conf = spec.conf.clone().unwrap_or_default();
        for (i, entry) in conf.http.iter().enumerate() {
            let split = traffic_route_split(
                entry.split.as_deref(),
                entry.destination.as_ref(),
                self.service,
            );
            if split.is_empty() {
                self.warnings.push(format!(
                    "TrafficRoute {name}: conf.http[{i}] has no destination with a weight above 0, skipped"
                ));
                continue;
            }
            let mut route = Route {
                r#match: Some(traffic_route_match(entry.http_match.as_ref())),
                ..Route::default()
            };
            let mut action = self.forward(&split);
            if let Some(modify) = &entry.modify {
                apply_modify(modify, &mut route, &mut action);
            }
            route.action = Some(Action::Route(action));
            self.routes.push(route);
        }
        let split = traffic_route_split(
            conf.split.as_deref(),
            conf.destination.as_ref(),
            self.service,
        );
        if split.is_empty() {
            self.warnings.push(format!(
                "TrafficRoute {name}: conf has no destination with a weight above 0; the rest goes to {}",
                self.service
            ));
            self.default_route();
            return;
        }
        let action = self.forward(&split);
        self.routes.push(Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".to_owned())),
                ..RouteMatch::default()
            }),
            action: Some(Action::Route(action)),
            ..Route::default()
        });
    }
}

/// A whole new path, or a new prefix in place of the matched one.
enum PathChange {
    Whole(String),
    Prefix(String),
}

fn traffic_route_pattern(m: &tr::StringMatcher) -> Option<MatchPattern> {
    if let Some(exact) = &m.exact {
        Some(MatchPattern::Exact(exact.clone()))
    } else if let Some(prefix) = &m.prefix {
        Some(MatchPattern::Prefix(prefix.clone()))
    } else {
        m.regex.as_ref().map(|r| MatchPattern::SafeRegex(regex(r)))
    }
}

/// A TrafficRoute `http[].match` as an Envoy match (no path condition means every path).
fn traffic_route_match(m: Option<&tr::HttpMatch>) -> RouteMatch {
    let path = m
        .and_then(|m| m.path.as_ref())
        .and_then(traffic_route_pattern)
        .map(|p| match p {
            MatchPattern::Exact(path) => PathSpecifier::Path(path),
            MatchPattern::SafeRegex(r) => PathSpecifier::SafeRegex(r),
            MatchPattern::Prefix(prefix) => PathSpecifier::Prefix(prefix),
            _ => PathSpecifier::Prefix("/".to_owned()),
        })
        .unwrap_or_else(|| PathSpecifier::Prefix("/".to_owned()));
    let mut headers: Vec<HeaderMatcher> = Vec::new();
    if let Some(m) = m {
        // A BTreeMap: sorted by name, so the configuration is stable.
        for (name, matcher) in m.headers.iter().flatten() {
            if let Some(pattern) = traffic_route_pattern(matcher) {
                headers.push(header_string_match(name, pattern));
            }
        }
        if let Some(pattern) = m.method.as_ref().and_then(traffic_route_pattern) {
            headers.push(header_string_match(":method", pattern));
        }
    }
    RouteMatch {
        path_specifier: Some(path),
        headers,
        ..RouteMatch::default()
    }
}

/// A TrafficRoute `http[].modify` on a route and its forwarding action.
fn apply_modify(modify: &tr::Modify, route: &mut Route, action: &mut RouteAction) {
    if let Some(path) = &modify.path {
        if let Some(prefix) = &path.rewrite_prefix {
            action.prefix_rewrite = prefix.clone();
        } else if let Some(r) = &path.regex {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&r.pattern)),
                substitution: r.substitution.clone(),
            });
        }
    }
    if let Some(host) = &modify.host {
        if let Some(value) = &host.value {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(value.clone()));
        } else if let Some(r) = &host.from_path {
            action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewritePathRegex(
                RegexMatchAndSubstitute {
                    pattern: Some(regex(&r.pattern)),
                    substitution: r.substitution.clone(),
                },
            ));
        }
    }
    let options = |headers: &tr::ModifyHeaders| -> (Vec<HeaderValueOption>, Vec<String>) {
        let add = headers
            .add
            .iter()
            .map(|h| {
                let action = if h.append {
                    HeaderAppendAction::AppendIfExistsOrAdd
                } else {
                    HeaderAppendAction::OverwriteIfExistsOrAdd
                };
                header_option(&h.name, &h.value, action)
            })
            .collect();
        let remove = headers.remove.iter().map(|h| h.name.clone()).collect();
        (add, remove)
    };
    if let Some(headers) = &modify.request_headers {
        let (add, remove) = options(headers);
        route.request_headers_to_add.extend(add);
        route.request_headers_to_remove.extend(remove);
    }
    if let Some(headers) = &modify.response_headers {
        let (add, remove) = options(headers);
        route.response_headers_to_add.extend(add);
        route.response_headers_to_remove.extend(remove);
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    use mesh_api::matching::matched_policies;
    use mesh_api::{parse_documents, ResourceType};

    use super::*;

    const DATAPLANE: &str = r#"
type: Dataplane
name: web-1
mesh: default
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      tags: {kuma.io/service: web, kuma.io/protocol: http, version: v1}
  outbound:
    - port: 10001
      tags: {kuma.io/service: backend}
"#;

    fn resources(yaml: &str) -> Vec<Resource> {
        parse_documents(yaml)
            .into_iter()
            .map(|r| r.expect("fixture parses").resource)
            .collect()
    }

    fn dataplane() -> Resource {
        resources(DATAPLANE).remove(0)
    }

    fn of_type(all: &[Resource], rtype: ResourceType) -> Vec<Resource> {
        all.iter()
            .filter(|r| r.resource_type() == rtype)
            .cloned()
            .collect()
    }

    /// What the caller would fill from MeshTimeout; it must survive on every forwarding route.
    fn template() -> RouteAction {
        RouteAction {
            timeout: Some(PbDuration {
                seconds: 15,
                nanos: 0,
            }),
            ..RouteAction::default()
        }
    }

    /// The HTTP routing of the outbound `backend` given the policies in `yaml`.
    fn http_routing(yaml: &str) -> OutboundHttp {
        let all = resources(yaml);
        let dp = dataplane();
        let matched = matched_policies(&dp, &of_type(&all, ResourceType::MeshHTTPRoute));
        let traffic_routes = of_type(&all, ResourceType::TrafficRoute);
        http_route_configuration(
            "outbound:backend",
            "backend",
            &matched,
            &traffic_routes,
            &dp,
            &template(),
        )
    }

    fn tcp_routing(yaml: &str) -> OutboundTcp {
        let all = resources(yaml);
        let dp = dataplane();
        let matched = matched_policies(&dp, &of_type(&all, ResourceType::MeshTCPRoute));
        tcp_route_targets(
            "backend",
            &matched,
            &of_type(&all, ResourceType::TrafficRoute),
            &dp,
        )
    }

    fn routes(out: &OutboundHttp) -> &[Route] {
        &out.route_config.virtual_hosts[0].routes
    }

    /// `exact:/x`, `prefix:/x/` or `regex:...`.
    fn path(route: &Route) -> String {
        match route
            .r#match
            .as_ref()
            .and_then(|m| m.path_specifier.as_ref())
        {
            Some(PathSpecifier::Path(p)) => format!("exact:{p}"),
            Some(PathSpecifier::Prefix(p)) => format!("prefix:{p}"),
            Some(PathSpecifier::SafeRegex(r)) => format!("regex:{}", r.regex),
            other => format!("{other:?}"),
        }
    }

    fn forward(route: &Route) -> &RouteAction {
        match &route.action {
            Some(Action::Route(action)) => action,
            other => panic!("not a forwarding route: {other:?}"),
        }
    }

    /// The (cluster, weight) pairs a route forwards to; weight 1 for a single cluster.
    fn clusters(route: &Route) -> Vec<(String, u32)> {
        match &forward(route).cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => vec![(name.clone(), 1)],
            Some(ClusterSpecifier::WeightedClusters(w)) => w
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight.map_or(0, |w| w.value)))
                .collect(),
            other => panic!("unexpected cluster specifier {other:?}"),
        }
    }

    fn subset(service: &str, tags: &[(&str, &str)]) -> ClusterTarget {
        ClusterTarget::new(
            service,
            tags.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn http_route(name: &str, top: &str, rules: &str) -> String {
        format!(
            "---\ntype: MeshHTTPRoute\nname: {name}\nmesh: default\nspec:\n  targetRef: {top}\n  to:\n    - targetRef: {{kind: MeshService, name: backend}}\n      rules: {rules}\n"
        )
    }

    #[test]
    fn cluster_names_are_stable_readable_and_distinct_per_subset() {
        assert_eq!(ClusterTarget::service("backend").cluster_name(), "backend");
        let v1 = subset("backend", &[("version", "v1"), ("zone", "east")]);
        let name = v1.cluster_name();
        let (service, hash) = name.split_at(name.len() - 9);
        assert_eq!(service, "backend");
        assert!(hash.starts_with('_') && hash[1..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            name,
            subset("backend", &[("zone", "east"), ("version", "v1")]).cluster_name()
        );
        assert_ne!(
            name,
            subset("backend", &[("version", "v2"), ("zone", "east")]).cluster_name()
        );
        assert_ne!(
            subset("backend", &[("a", "bc")]).cluster_name(),
            subset("backend", &[("ab", "c")]).cluster_name()
        );
        // The service tag is the service, not a filter.
        assert_eq!(
            subset("backend", &[(SERVICE_TAG, "backend")]),
            ClusterTarget::service("backend")
        );
    }

    #[test]
    fn without_policies_everything_goes_to_the_service() {
        let out = http_routing("");
        assert_eq!(out.source, RouteSource::Default);
        assert_eq!(out.route_config.name, "outbound:backend");
        assert_eq!(
            out.route_config.validate_clusters,
            Some(BoolValue { value: false })
        );
        let vhost = &out.route_config.virtual_hosts[0];
        assert_eq!(vhost.name, "backend");
        assert_eq!(vhost.domains, ["*"]);
        assert_eq!(vhost.routes.len(), 1);
        assert_eq!(path(&vhost.routes[0]), "prefix:/");
        assert_eq!(clusters(&vhost.routes[0]), [("backend".to_owned(), 1)]);
        assert_eq!(forward(&vhost.routes[0]).timeout, template().timeout);
        assert_eq!(
            out.targets,
            BTreeSet::from([ClusterTarget::service("backend")])
        );
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn path_method_header_and_query_matching() {
        let out = http_routing(&http_route(
            "match",
            "{kind: Mesh}",
            r#"
        - matches:
            - path: {type: RegularExpression, value: "/re/[0-9]+"}
          default: {backendRefs: [{kind: MeshService, name: regex}]}
        - matches:
            - path: {type: PathPrefix, value: /api}
              method: GET
              headers:
                - {type: Exact, name: x-exact, value: one}
                - {type: Present, name: x-present}
                - {type: RegularExpression, name: x-regex, value: "a.*"}
                - {type: Absent, name: x-absent}
                - {type: Prefix, name: x-prefix, value: pre}
                - {type: Prefix, name: x-any, value: ""}
                - {name: x-default, value: plain}
                - {type: Exact, name: X-EXACT, value: repeated}
              queryParams:
                - {type: Exact, name: q, value: "1"}
                - {type: RegularExpression, name: r, value: "[a-z]+"}
          default: {backendRefs: [{kind: MeshService, name: api}]}
        - matches:
            - path: {type: Exact, value: /health}
          default: {backendRefs: [{kind: MeshService, name: health}]}
"#,
        ));
        assert_eq!(out.source, RouteSource::MeshRoute);
        let r = routes(&out);
        let paths: Vec<String> = r.iter().map(path).collect();
        assert_eq!(
            paths,
            [
                "exact:/health",
                "exact:/api",
                "prefix:/api/",
                "regex:/re/[0-9]+",
                "prefix:/"
            ]
        );
        let cluster_of = |i: usize| clusters(&r[i])[0].0.clone();
        assert_eq!(
            (0..5).map(cluster_of).collect::<Vec<_>>(),
            ["health", "api", "api", "regex", "backend"]
        );

        // Both halves of the prefix carry the same conditions.
        let m = r[1].r#match.as_ref().unwrap();
        let under = r[2].r#match.as_ref().unwrap();
        assert_eq!(
            (&m.headers, &m.query_parameters),
            (&under.headers, &under.query_parameters)
        );
        let header = |name: &str| {
            m.headers
                .iter()
                .filter(|h| h.name == name)
                .map(|h| h.header_match_specifier.clone())
                .collect::<Vec<_>>()
        };
        let string =
            |p: MatchPattern| vec![Some(HeaderMatchSpecifier::StringMatch(string_matcher(p)))];
        assert_eq!(header(":method"), string(MatchPattern::Exact("GET".into())));
        assert_eq!(header("x-exact"), string(MatchPattern::Exact("one".into())));
        assert_eq!(
            header("X-EXACT"),
            vec![],
            "a repeated header name is ignored"
        );
        assert_eq!(
            header("x-present"),
            vec![Some(HeaderMatchSpecifier::PresentMatch(true))]
        );
        assert_eq!(
            header("x-absent"),
            vec![Some(HeaderMatchSpecifier::PresentMatch(false))]
        );
        assert_eq!(
            header("x-regex"),
            string(MatchPattern::SafeRegex(regex("a.*")))
        );
        assert_eq!(
            header("x-prefix"),
            string(MatchPattern::Prefix("pre".into()))
        );
        assert_eq!(
            header("x-any"),
            vec![Some(HeaderMatchSpecifier::PresentMatch(true))]
        );
        assert_eq!(
            header("x-default"),
            string(MatchPattern::Exact("plain".into()))
        );
        let query: Vec<(String, Option<QueryParameterMatchSpecifier>)> = m
            .query_parameters
            .iter()
            .map(|q| (q.name.clone(), q.query_parameter_match_specifier.clone()))
            .collect();
        assert_eq!(
            query,
            [
                (
                    "q".to_owned(),
                    Some(QueryParameterMatchSpecifier::StringMatch(string_matcher(
                        MatchPattern::Exact("1".into())
                    )))
                ),
                (
                    "r".to_owned(),
                    Some(QueryParameterMatchSpecifier::StringMatch(string_matcher(
                        MatchPattern::SafeRegex(regex("[a-z]+"))
                    )))
                ),
            ]
        );
        for route in r {
            assert_eq!(forward(route).timeout, template().timeout);
        }
        let names: BTreeSet<&str> = out.targets.iter().map(|t| t.service.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["api", "backend", "health", "regex"]));
    }

    #[test]
    fn weighted_split_between_two_subsets() {
        let out = http_routing(&http_route(
            "canary",
            "{kind: Mesh}",
            r#"
        - matches: [{path: {type: PathPrefix, value: /}}]
          default:
            backendRefs:
              - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 90}
              - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 10}
"#,
        ));
        let r = routes(&out);
        // The rule matches everything, so no extra catch-all follows it.
        assert_eq!(r.len(), 1);
        assert_eq!(path(&r[0]), "prefix:/");
        let v1 = subset("backend", &[("version", "v1")]);
        let v2 = subset("backend", &[("version", "v2")]);
        assert_eq!(
            clusters(&r[0]),
            [(v1.cluster_name(), 90), (v2.cluster_name(), 10)]
        );
        assert_eq!(out.targets, BTreeSet::from([v1, v2]));
        assert_eq!(forward(&r[0]).timeout, template().timeout);
    }

    #[test]
    fn redirect_replaces_the_action() {
        let out = http_routing(&http_route(
            "redirect",
            "{kind: Mesh}",
            r#"
        - matches: [{path: {type: PathPrefix, value: /old}}]
          default:
            filters:
              - type: RequestRedirect
                requestRedirect:
                  scheme: https
                  hostname: new.example.com
                  port: 8443
                  statusCode: 302
                  path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        - matches: [{path: {type: Exact, value: /gone}}]
          default:
            filters:
              - type: RequestRedirect
                requestRedirect:
                  path: {type: ReplaceFullPath, replaceFullPath: /here}
"#,
        ));
        let r = routes(&out);
        let paths: Vec<String> = r.iter().map(path).collect();
        assert_eq!(
            paths,
            ["exact:/gone", "exact:/old", "prefix:/old/", "prefix:/"]
        );
        let redirect = |route: &Route| match &route.action {
            Some(Action::Redirect(redirect)) => redirect.clone(),
            other => panic!("not a redirect: {other:?}"),
        };
        let gone = redirect(&r[0]);
        assert_eq!(
            gone.response_code,
            RedirectResponseCode::MovedPermanently as i32
        );
        assert_eq!(
            gone.path_rewrite_specifier,
            Some(PathRewriteSpecifier::PathRedirect("/here".into()))
        );
        for (route, rewrite) in [
            (&r[1], PathRewriteSpecifier::PathRedirect("/new".into())),
            (&r[2], PathRewriteSpecifier::PrefixRewrite("/new/".into())),
        ] {
            let redirect = redirect(route);
            assert_eq!(redirect.response_code, RedirectResponseCode::Found as i32);
            assert_eq!(redirect.host_redirect, "new.example.com");
            assert_eq!(redirect.port_redirect, 8443);
            assert_eq!(
                redirect.scheme_rewrite_specifier,
                Some(SchemeRewriteSpecifier::SchemeRedirect("https".into()))
            );
            assert_eq!(redirect.path_rewrite_specifier, Some(rewrite));
        }
        // Redirected routes send nothing upstream: only the catch-all's cluster is needed.
        assert_eq!(
            out.targets,
            BTreeSet::from([ClusterTarget::service("backend")])
        );
    }

    #[test]
    fn url_rewrite_header_modifiers_and_mirror() {
        let out = http_routing(&http_route(
            "rewrite",
            "{kind: Mesh}",
            r#"
        - matches: [{path: {type: PathPrefix, value: /v1}}]
          default:
            filters:
              - type: URLRewrite
                urlRewrite:
                  hostname: internal.backend
                  path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
              - type: RequestHeaderModifier
                requestHeaderModifier:
                  set: [{name: x-set, value: "a,b"}]
                  add: [{name: x-add, value: c}]
                  remove: [x-drop]
              - type: ResponseHeaderModifier
                responseHeaderModifier:
                  set: [{name: x-served-by, value: v2}]
              - type: RequestMirror
                requestMirror:
                  backendRef: {kind: MeshServiceSubset, name: backend, tags: {version: shadow}}
                  percentage: "12.5"
        - matches: [{path: {type: Exact, value: /legacy}}]
          default:
            filters:
              - type: URLRewrite
                urlRewrite:
                  path: {type: ReplaceFullPath, replaceFullPath: /modern}
"#,
        ));
        let r = routes(&out);
        let paths: Vec<String> = r.iter().map(path).collect();
        assert_eq!(
            paths,
            ["exact:/legacy", "exact:/v1", "prefix:/v1/", "prefix:/"]
        );

        assert_eq!(
            forward(&r[0]).regex_rewrite,
            Some(replace_whole_path("/modern"))
        );
        // The exact `/v1` becomes `/v2`; `/v1/x` becomes `/v2/x`.
        assert_eq!(
            forward(&r[1]).regex_rewrite,
            Some(replace_whole_path("/v2"))
        );
        assert_eq!(forward(&r[1]).prefix_rewrite, "");
        assert_eq!(forward(&r[2]).prefix_rewrite, "/v2/");
        assert_eq!(forward(&r[2]).regex_rewrite, None);

        let shadow = subset("backend", &[("version", "shadow")]);
        for route in &r[1..3] {
            let action = forward(route);
            assert_eq!(
                action.host_rewrite_specifier,
                Some(HostRewriteSpecifier::HostRewriteLiteral(
                    "internal.backend".into()
                ))
            );
            assert_eq!(action.timeout, template().timeout);
            assert_eq!(clusters(route), [("backend".to_owned(), 1)]);
            let headers: Vec<(String, String, i32)> = route
                .request_headers_to_add
                .iter()
                .map(|o| {
                    let h = o.header.clone().unwrap();
                    (h.key, h.value, o.append_action)
                })
                .collect();
            let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
            let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
            assert_eq!(
                headers,
                [
                    ("x-set".to_owned(), "a".to_owned(), overwrite),
                    ("x-set".to_owned(), "b".to_owned(), append),
                    ("x-add".to_owned(), "c".to_owned(), append),
                ]
            );
            assert_eq!(route.request_headers_to_remove, ["x-drop"]);
            assert_eq!(route.response_headers_to_add.len(), 1);
            assert_eq!(
                action.request_mirror_policies,
                [RequestMirrorPolicy {
                    cluster: shadow.cluster_name(),
                    runtime_fraction: Some(RuntimeFractionalPercent {
                        default_value: Some(FractionalPercent {
                            numerator: 1250,
                            denominator: DenominatorType::TenThousand as i32,
                        }),
                        ..RuntimeFractionalPercent::default()
                    }),
                    ..RequestMirrorPolicy::default()
                }]
            );
        }
        assert!(out.targets.contains(&shadow));
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn the_more_specific_policy_wins_equal_matches_and_longer_prefixes_go_first() {
        let yaml = [
            http_route(
                "mesh-wide",
                "{kind: Mesh}",
                "[{matches: [{path: {type: PathPrefix, value: /api}}], default: {backendRefs: [{kind: MeshService, name: api-v1}]}}, {matches: [{path: {type: PathPrefix, value: /api/v2}}], default: {backendRefs: [{kind: MeshService, name: api-v2}]}}]",
            ),
            http_route(
                "web-only",
                "{kind: Dataplane, name: web-1}",
                "[{matches: [{path: {type: PathPrefix, value: /api}}], default: {backendRefs: [{kind: MeshService, name: api-canary}]}}]",
            ),
        ]
        .concat();
        let out = http_routing(&yaml);
        let r = routes(&out);
        let summary: Vec<(String, String)> = r
            .iter()
            .map(|route| (path(route), clusters(route)[0].0.clone()))
            .collect();
        let pair = |p: &str, c: &str| (p.to_owned(), c.to_owned());
        assert_eq!(
            summary,
            [
                pair("exact:/api/v2", "api-v2"),
                pair("prefix:/api/v2/", "api-v2"),
                pair("exact:/api", "api-canary"),
                pair("prefix:/api/", "api-canary"),
                pair("prefix:/", "backend"),
            ]
        );
        assert!(!out.targets.contains(&ClusterTarget::service("api-v1")));
    }

    #[test]
    fn unsupported_backends_are_reported_and_their_route_left_out() {
        let out = http_routing(&http_route(
            "external",
            "{kind: Mesh}",
            "[{matches: [{path: {type: PathPrefix, value: /}}], default: {backendRefs: [{kind: MeshExternalService, name: httpbin}]}}, {matches: [{path: {type: PathPrefix, value: /zero}}], default: {backendRefs: [{kind: MeshService, name: other, weight: 0}]}}]",
        ));
        let paths: Vec<String> = routes(&out).iter().map(path).collect();
        assert_eq!(paths, ["prefix:/"]);
        assert_eq!(clusters(&routes(&out)[0]), [("backend".to_owned(), 1)]);
        assert_eq!(out.warnings.len(), 3, "{:#?}", out.warnings);
        let has = |parts: &[&str]| {
            out.warnings
                .iter()
                .any(|w| parts.iter().all(|p| w.contains(p)))
        };
        assert!(has(&[
            "MeshHTTPRoute to backend: rules[0].backendRefs[0]",
            "kind MeshExternalService are not supported"
        ]));
        assert!(has(&["rules[0]: no backend"]));
        assert!(has(&["rules[1]: no backend"]));
    }

    const TRAFFIC_ROUTES: &str = r#"
---
type: TrafficRoute
name: route-all
mesh: default
creationTime: "2024-01-01T00:00:00Z"
sources: [{match: {kuma.io/service: "*"}}]
destinations: [{match: {kuma.io/service: "*"}}]
conf:
  destination: {kuma.io/service: "*"}
---
type: TrafficRoute
name: web-to-backend
mesh: default
creationTime: "2024-01-01T00:00:00Z"
sources: [{match: {kuma.io/service: web, version: v1}}]
destinations: [{match: {kuma.io/service: backend}}]
conf:
  http:
    - match:
        path: {prefix: /beta}
        method: {exact: POST}
        headers: {x-user: {exact: tester}}
      modify:
        path: {rewritePrefix: /}
        requestHeaders: {add: [{name: x-beta, value: "1"}]}
      destination: {kuma.io/service: backend, version: v3}
  split:
    - weight: 80
      destination: {kuma.io/service: backend, version: v1}
    - weight: 20
      destination: {kuma.io/service: backend, version: v2}
    - weight: 0
      destination: {kuma.io/service: backend, version: v0}
---
type: TrafficRoute
name: other-source
mesh: default
creationTime: "2025-01-01T00:00:00Z"
sources: [{match: {kuma.io/service: api, version: v1}}]
destinations: [{match: {kuma.io/service: backend}}]
conf:
  destination: {kuma.io/service: nowhere}
"#;

    #[test]
    fn traffic_route_is_the_fallback_and_the_most_specific_one_applies() {
        let out = http_routing(TRAFFIC_ROUTES);
        assert_eq!(
            out.source,
            RouteSource::TrafficRoute("web-to-backend".into())
        );
        let r = routes(&out);
        assert_eq!(r.len(), 2);
        let v3 = subset("backend", &[("version", "v3")]);
        assert_eq!(path(&r[0]), "prefix:/beta");
        assert_eq!(clusters(&r[0]), [(v3.cluster_name(), 1)]);
        assert_eq!(forward(&r[0]).prefix_rewrite, "/");
        let m = r[0].r#match.as_ref().unwrap();
        let names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["x-user", ":method"]);
        assert_eq!(r[0].request_headers_to_add.len(), 1);

        let v1 = subset("backend", &[("version", "v1")]);
        let v2 = subset("backend", &[("version", "v2")]);
        assert_eq!(path(&r[1]), "prefix:/");
        assert_eq!(
            clusters(&r[1]),
            [(v1.cluster_name(), 80), (v2.cluster_name(), 20)]
        );
        assert_eq!(forward(&r[1]).timeout, template().timeout);
        assert_eq!(out.targets, BTreeSet::from([v1, v2, v3]));
    }

    #[test]
    fn a_newer_traffic_route_wins_a_tie_and_wildcards_mean_the_service() {
        let yaml = r#"
---
type: TrafficRoute
name: a-old
mesh: default
creationTime: "2024-01-01T00:00:00Z"
sources: [{match: {kuma.io/service: "*"}}]
destinations: [{match: {kuma.io/service: "*"}}]
conf:
  destination: {kuma.io/service: old}
---
type: TrafficRoute
name: b-new
mesh: default
creationTime: "2024-06-01T00:00:00Z"
sources: [{match: {kuma.io/service: "*"}}]
destinations: [{match: {kuma.io/service: "*"}}]
conf:
  destination: {kuma.io/service: "*", version: "*"}
"#;
        let out = http_routing(yaml);
        assert_eq!(out.source, RouteSource::TrafficRoute("b-new".into()));
        assert_eq!(clusters(&routes(&out)[0]), [("backend".to_owned(), 1)]);
    }

    #[test]
    fn any_mesh_http_route_on_the_proxy_turns_traffic_routes_off() {
        // The MeshHTTPRoute is about another service; Kuma still ignores TrafficRoutes for the
        // proxy, so `backend` gets the plain default route.
        let yaml = format!(
            "{TRAFFIC_ROUTES}{}",
            http_route("x", "{kind: Mesh}", "[]").replace("name: backend", "name: other")
                .replace("rules: []", "rules: [{matches: [{path: {type: PathPrefix, value: /x}}], default: {backendRefs: [{kind: MeshService, name: x}]}}]")
        );
        let out = http_routing(&yaml);
        assert_eq!(out.source, RouteSource::Default);
        assert_eq!(routes(&out).len(), 1);
        assert_eq!(clusters(&routes(&out)[0]), [("backend".to_owned(), 1)]);
    }

    fn tcp_route(backends: &str) -> String {
        format!(
            "---\ntype: MeshTCPRoute\nname: tcp\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: MeshService, name: backend}}\n      rules:\n        - default:\n            backendRefs: {backends}\n"
        )
    }

    #[test]
    fn tcp_split_between_subsets() {
        let out = tcp_routing(&tcp_route(
            "[{kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 90}, {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 10}]",
        ));
        let v1 = subset("backend", &[("version", "v1")]);
        let v2 = subset("backend", &[("version", "v2")]);
        assert_eq!(out.source, RouteSource::MeshRoute);
        assert_eq!(out.targets, [(v1.clone(), 90), (v2.clone(), 10)]);
        let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) =
            tcp_cluster_specifier(&out.targets)
        else {
            panic!("expected weighted clusters");
        };
        let pairs: Vec<(String, u32)> = w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight))
            .collect();
        assert_eq!(pairs, [(v1.cluster_name(), 90), (v2.cluster_name(), 10)]);
    }

    #[test]
    fn tcp_falls_back_to_traffic_route_then_to_the_service() {
        let out = tcp_routing(TRAFFIC_ROUTES);
        assert_eq!(
            out.source,
            RouteSource::TrafficRoute("web-to-backend".into())
        );
        assert_eq!(
            out.targets,
            [
                (subset("backend", &[("version", "v1")]), 80),
                (subset("backend", &[("version", "v2")]), 20)
            ]
        );
        let out = tcp_routing("");
        assert_eq!(out.source, RouteSource::Default);
        assert_eq!(out.targets, [(ClusterTarget::service("backend"), 1)]);
        assert_eq!(
            tcp_cluster_specifier(&out.targets),
            Some(tcp_proxy::ClusterSpecifier::Cluster("backend".into()))
        );
        assert_eq!(tcp_cluster_specifier(&[]), None);
        // A MeshTCPRoute naming only what Meridian cannot reach leaves nothing to forward to.
        let out = tcp_routing(&tcp_route("[{kind: MeshExternalService, name: db}]"));
        assert!(out.targets.is_empty());
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
    }

    #[test]
    fn mesh_http_route_wins_over_mesh_tcp_route_on_http_outbounds_only() {
        let dp = dataplane();
        let http = matched_policies(
            &dp,
            &resources(&http_route(
                "h",
                "{kind: Mesh}",
                "[{matches: [{path: {type: PathPrefix, value: /a}}], default: {backendRefs: [{kind: MeshService, name: a}]}}]",
            )),
        );
        let tcp = matched_policies(
            &dp,
            &resources(&tcp_route("[{kind: MeshService, name: b}]")),
        );
        let none = MatchedPolicies::default();
        assert_eq!(
            outbound_mode("backend", true, &http, &tcp),
            OutboundMode::Http
        );
        assert_eq!(
            outbound_mode("backend", true, &none, &tcp),
            OutboundMode::Tcp
        );
        assert_eq!(
            outbound_mode("backend", true, &none, &none),
            OutboundMode::Http
        );
        assert_eq!(
            outbound_mode("backend", false, &http, &none),
            OutboundMode::Tcp
        );
        // Rules for another service do not count.
        assert_eq!(
            outbound_mode("other", true, &none, &tcp),
            OutboundMode::Http
        );
    }

    #[test]
    fn fractional_percent_keeps_precision() {
        let p = |v: f64| {
            let f = fractional_percent(v);
            (f.numerator, f.denominator)
        };
        assert_eq!(p(50.0), (50, DenominatorType::Hundred as i32));
        assert_eq!(p(0.25), (25, DenominatorType::TenThousand as i32));
        assert_eq!(p(0.0001), (1, DenominatorType::Million as i32));
        assert_eq!(p(150.0), (100, DenominatorType::Hundred as i32));
    }

    #[test]
    fn subset_targets_are_every_tagged_backend_the_mesh_routes_to() {
        let yaml = r#"type: MeshHTTPRoute
name: http
mesh: default
spec:
  targetRef: {kind: MeshService, name: somebody-else}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches: [{path: {type: PathPrefix, value: /}}]
          default:
            filters:
              - type: RequestMirror
                requestMirror: {backendRef: {kind: MeshServiceSubset, name: backend, tags: {version: v3}}}
            backendRefs:
              - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 90}
              - {kind: MeshService, name: other, weight: 10}
---
type: MeshTCPRoute
name: tcp
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: db}
      rules:
        - default:
            backendRefs: [{kind: MeshServiceSubset, name: db, tags: {role: primary, kuma.io/service: db}}]
---
type: TrafficRoute
name: tr
mesh: default
sources: [{match: {kuma.io/service: '*'}}]
destinations: [{match: {kuma.io/service: '*'}}]
conf:
  split:
    - {weight: 50, destination: {kuma.io/service: '*', env: canary}}
    - {weight: 50, destination: {kuma.io/service: cache, env: '*'}}
  http:
    - match: {path: {prefix: /v2}}
      destination: {kuma.io/service: backend, version: v2}
"#;
        let targets = subset_targets(&resources(yaml), ["backend", "db"]);
        let expected: BTreeSet<ClusterTarget> = [
            subset("backend", &[("version", "v1")]),
            subset("backend", &[("version", "v2")]),
            subset("backend", &[("version", "v3")]),
            subset("db", &[("role", "primary")]),
            // The wildcard service with env: canary, for each service the destinations select.
            subset("backend", &[("env", "canary")]),
            subset("db", &[("env", "canary")]),
        ]
        .into_iter()
        .collect();
        // (`cache` with only a wildcard tag is the plain service: no subset.)
        assert_eq!(targets, expected);
    }
}
