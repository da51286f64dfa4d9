//! Which policies apply to one proxy, decoded into the typed confs (mesh-api's `Conf` structs)
//! the Envoy builders read. Matching and merging are `mesh_api::matching::matched_policies`'s;
//! this file only groups policies by type, picks the entry for a service or for inbound traffic,
//! and decodes it.
//!
//! Inbound traffic: policies are matched against the whole Dataplane ([`ProxyPolicies::inbound`])
//! and, for Dataplanes with several inbounds, against each inbound alone
//! ([`ProxyPolicies::inbound_at`]), so that a policy whose top-level targetRef is
//! `MeshService web` configures only the inbound of `web`, as in Kuma. A `from` entry and a
//! `rules` entry without `matches` both configure all callers; when both exist the `rules` one
//! is merged over the `from` one.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_api::core::dataplane::DataplaneSpec;
use mesh_api::matching::{matched_policies, merge_patch, MatchedPolicies};
use mesh_api::policies::common::{Match, RuleEntry, TargetRef, TargetRefKind};
use mesh_api::policies::{
    mesh_access_log, mesh_circuit_breaker, mesh_fault_injection, mesh_health_check,
    mesh_load_balancing_strategy, mesh_rate_limit, mesh_retry, mesh_timeout,
    mesh_traffic_permission,
};
use mesh_api::{Resource, ResourceType, Spec};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::convert::{count, std_duration};
use super::defaults::{INBOUND_TIMEOUTS, OUTBOUND_TIMEOUTS};
use super::locality::Locality;
use super::{Direction, PolicyError};

/// Timeouts with the defaults of their direction filled in. Zero means disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// MeshTimeout `connectionTimeout` -> cluster `connect_timeout`.
    pub connect: Duration,
    /// `idleTimeout` -> TcpProxy `idle_timeout`, and the cluster's HTTP `idle_timeout`.
    pub idle: Duration,
    /// `http.requestTimeout` -> route `timeout`.
    pub request: Duration,
    /// `http.streamIdleTimeout` -> route `idle_timeout` and HCM `stream_idle_timeout`.
    pub stream_idle: Duration,
    /// `http.requestHeadersTimeout` -> HCM `request_headers_timeout`.
    pub request_headers: Duration,
    /// `http.maxStreamDuration` -> cluster HTTP `max_stream_duration`, route
    /// `max_stream_duration`.
    pub max_stream_duration: Duration,
    /// `http.maxConnectionDuration` -> cluster HTTP `max_connection_duration`, HCM
    /// `max_connection_duration`.
    pub max_connection_duration: Duration,
}

impl Timeouts {
    /// `conf`'s values where set, `defaults` elsewhere.
    pub fn resolve(conf: Option<&mesh_timeout::Conf>, defaults: Timeouts) -> Timeouts {
        let Some(conf) = conf else {
            return defaults;
        };
        let pick = |d: Option<&mesh_api::policies::common::Duration>, default: Duration| {
            d.map_or(default, std_duration)
        };
        let http = conf.http.clone().unwrap_or_default();
        Timeouts {
            connect: pick(conf.connection_timeout.as_ref(), defaults.connect),
            idle: pick(conf.idle_timeout.as_ref(), defaults.idle),
            request: pick(http.request_timeout.as_ref(), defaults.request),
            stream_idle: pick(http.stream_idle_timeout.as_ref(), defaults.stream_idle),
            request_headers: pick(
                http.request_headers_timeout.as_ref(),
                defaults.request_headers,
            ),
            max_stream_duration: pick(
                http.max_stream_duration.as_ref(),
                defaults.max_stream_duration,
            ),
            max_connection_duration: pick(
                http.max_connection_duration.as_ref(),
                defaults.max_connection_duration,
            ),
        }
    }
}

/// What the listener-level builders ([`super::tcp_proxy_settings`],
/// [`super::http_connection_manager_settings`]) need from either direction's policies.
pub trait TrafficPolicies {
    fn direction(&self) -> Direction;
    /// The timeouts, defaults of the direction included.
    fn timeouts(&self) -> Timeouts;
    /// MeshRetry `tcp.maxConnectAttempt` (outbound only).
    fn max_connect_attempts(&self) -> Option<u32>;
}

/// The policies for traffic from the proxy to one `kuma.io/service`: for each type, the merged
/// `to` configuration of the entry targeting `MeshService <service>`, else of the `Mesh` entry;
/// `None` when no policy of that type configures it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutboundPolicies {
    pub service: String,
    pub timeout: Option<mesh_timeout::Conf>,
    pub retry: Option<mesh_retry::Conf>,
    pub circuit_breaker: Option<mesh_circuit_breaker::Conf>,
    pub health_check: Option<mesh_health_check::Conf>,
    pub load_balancing: Option<mesh_load_balancing_strategy::Conf>,
    pub access_log: Option<mesh_access_log::Conf>,
}

impl OutboundPolicies {
    /// Locality awareness (MeshLoadBalancingStrategy `localityAwareness`), typed for endpoint
    /// priorities.
    pub fn locality(&self) -> Locality {
        Locality::from_conf(
            self.load_balancing
                .as_ref()
                .and_then(|c| c.locality_awareness.as_ref()),
        )
    }

    /// The path of a field of this service's conf, for errors.
    pub(crate) fn field(&self, rest: &str) -> String {
        format!("to[{}].default.{rest}", self.service)
    }
}

impl TrafficPolicies for OutboundPolicies {
    fn direction(&self) -> Direction {
        Direction::Outbound
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts::resolve(self.timeout.as_ref(), OUTBOUND_TIMEOUTS)
    }

    fn max_connect_attempts(&self) -> Option<u32> {
        self.retry
            .as_ref()?
            .tcp
            .as_ref()?
            .max_connect_attempt
            .map(count)
    }
}

/// Faults for the callers a `from` entry (or a `rules` entry) selects.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSource {
    /// The `from` targetRef; `Mesh` for a `rules` entry.
    pub from: TargetRef,
    /// The `rules` entry's `matches` (on the caller's SPIFFE ID or SNI); empty for `from`
    /// entries and rules without matches.
    pub matches: Vec<Match>,
    pub conf: mesh_fault_injection::Conf,
}

/// The merged action for the callers a MeshTrafficPermission `from` entry selects.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionSource {
    pub from: TargetRef,
    pub action: mesh_traffic_permission::Action,
}

/// The policies for traffic into the proxy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InboundPolicies {
    pub timeout: Option<mesh_timeout::Conf>,
    pub circuit_breaker: Option<mesh_circuit_breaker::Conf>,
    /// Per source, least specific first (the order of `from` targets: kind, then tags).
    pub fault_injection: Vec<FaultSource>,
    pub rate_limit: Option<mesh_rate_limit::Conf>,
    pub access_log: Option<mesh_access_log::Conf>,
    /// Per `from` target, least specific first.
    pub traffic_permission: Vec<PermissionSource>,
    /// The `rules` entries of the applying MeshTrafficPermissions (SPIFFE ID allow/deny lists),
    /// in merge order.
    pub traffic_permission_rules: Vec<RuleEntry<mesh_traffic_permission::RuleConf>>,
}

impl InboundPolicies {
    /// Whether any MeshTrafficPermission applies (with mTLS on, none means deny everything).
    pub fn has_traffic_permission(&self) -> bool {
        !self.traffic_permission.is_empty() || !self.traffic_permission_rules.is_empty()
    }
}

impl TrafficPolicies for InboundPolicies {
    fn direction(&self) -> Direction {
        Direction::Inbound
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts::resolve(self.timeout.as_ref(), INBOUND_TIMEOUTS)
    }

    fn max_connect_attempts(&self) -> Option<u32> {
        None
    }
}

/// The outbound `to` entries of each type, decoded.
#[derive(Debug, Clone, Default)]
struct OutboundTable {
    timeout: Vec<(TargetRef, mesh_timeout::Conf)>,
    retry: Vec<(TargetRef, mesh_retry::Conf)>,
    circuit_breaker: Vec<(TargetRef, mesh_circuit_breaker::Conf)>,
    health_check: Vec<(TargetRef, mesh_health_check::Conf)>,
    load_balancing: Vec<(TargetRef, mesh_load_balancing_strategy::Conf)>,
    access_log: Vec<(TargetRef, mesh_access_log::Conf)>,
}

/// The entry for `service`: `MeshService <service>` (without section), else `Mesh`.
fn pick<C: Clone>(entries: &[(TargetRef, C)], service: &str) -> Option<C> {
    let by_service = entries.iter().find(|(t, _)| {
        t.kind == TargetRefKind::MeshService
            && t.name_str() == service
            && t.section_name.as_deref().is_none_or(str::is_empty)
    });
    by_service
        .or_else(|| entries.iter().find(|(t, _)| t.kind == TargetRefKind::Mesh))
        .map(|(_, c)| c.clone())
}

/// The types configuring inbound traffic, matched again per inbound.
const INBOUND_TYPES: &[ResourceType] = &[
    ResourceType::MeshTimeout,
    ResourceType::MeshCircuitBreaker,
    ResourceType::MeshFaultInjection,
    ResourceType::MeshRateLimit,
    ResourceType::MeshAccessLog,
    ResourceType::MeshTrafficPermission,
];

/// Everything that applies to one proxy.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicies {
    applied: BTreeMap<ResourceType, MatchedPolicies>,
    outbound: OutboundTable,
    inbound: InboundPolicies,
    inbound_by_port: BTreeMap<u32, InboundPolicies>,
    errors: Vec<PolicyError>,
}

impl ProxyPolicies {
    /// Matches `policies` (all policy resources of the Dataplane's mesh, any type; other
    /// resources are ignored) against `dataplane`, once per type, and decodes what applies.
    pub fn compute(dataplane: &Resource, policies: &[Resource]) -> ProxyPolicies {
        let mut by_type: BTreeMap<ResourceType, Vec<Resource>> = BTreeMap::new();
        for p in policies.iter().filter(|p| p.resource_type().is_policy()) {
            by_type
                .entry(p.resource_type())
                .or_default()
                .push(p.clone());
        }
        let applied: BTreeMap<ResourceType, MatchedPolicies> = by_type
            .iter()
            .map(|(rtype, list)| (*rtype, matched_policies(dataplane, list)))
            .filter(|(_, m)| !m.applied.is_empty())
            .collect();
        let mut errors = Vec::new();
        let outbound = OutboundTable::decode(&applied, &mut errors);
        let inbound = InboundPolicies::decode(&applied, &by_type, &mut errors);

        let mut inbound_by_port = BTreeMap::new();
        if let Spec::Dataplane(spec) = &dataplane.spec {
            for (index, port) in spec.inbounds().iter().map(|i| i.port).enumerate() {
                let Some(single) = with_only_inbound(dataplane, spec, index) else {
                    continue;
                };
                let matched: BTreeMap<ResourceType, MatchedPolicies> = INBOUND_TYPES
                    .iter()
                    .filter_map(|t| Some((*t, matched_policies(&single, by_type.get(t)?))))
                    .filter(|(_, m)| !m.applied.is_empty())
                    .collect();
                let mut scratch = Vec::new();
                let policies = InboundPolicies::decode(&matched, &by_type, &mut scratch);
                for e in scratch {
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                }
                inbound_by_port.entry(port).or_insert(policies);
            }
        }
        ProxyPolicies {
            applied,
            outbound,
            inbound,
            inbound_by_port,
            errors,
        }
    }

    /// The policies for traffic to `service` (a `kuma.io/service` value).
    pub fn outbound(&self, service: &str) -> OutboundPolicies {
        let t = &self.outbound;
        OutboundPolicies {
            service: service.to_owned(),
            timeout: pick(&t.timeout, service),
            retry: pick(&t.retry, service),
            circuit_breaker: pick(&t.circuit_breaker, service),
            health_check: pick(&t.health_check, service),
            load_balancing: pick(&t.load_balancing, service),
            access_log: pick(&t.access_log, service),
        }
    }

    /// The policies for traffic into the proxy, matched against the whole Dataplane.
    pub fn inbound(&self) -> InboundPolicies {
        self.inbound.clone()
    }

    /// The policies for traffic into the inbound listening on `port`, matched against that
    /// inbound alone; the whole-Dataplane view when the Dataplane has no such inbound.
    pub fn inbound_at(&self, port: u32) -> InboundPolicies {
        self.inbound_by_port
            .get(&port)
            .cloned()
            .unwrap_or_else(|| self.inbound.clone())
    }

    /// Per policy type, which policies apply (in merge order) and their merged configuration;
    /// types with no applying policy are absent.
    pub fn applied(&self) -> &BTreeMap<ResourceType, MatchedPolicies> {
        &self.applied
    }

    /// The confs that did not decode (and were skipped), for the generator to log.
    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }
}

/// `dataplane` with only its `index`-th inbound (and no gateway).
fn with_only_inbound(dataplane: &Resource, spec: &DataplaneSpec, index: usize) -> Option<Resource> {
    let mut spec = spec.clone();
    let networking = spec.networking.as_mut()?;
    let inbound = networking.inbound.get(index)?.clone();
    networking.inbound = vec![inbound];
    networking.gateway = None;
    Some(Resource {
        meta: dataplane.meta.clone(),
        spec: Spec::Dataplane(spec),
    })
}

/// How a targetRef reads in an error path: `Mesh`, `MeshService backend`,
/// `MeshSubset {team: a}`.
fn describe(target: &TargetRef) -> String {
    let mut text = target.kind.to_string();
    if let Some(name) = target.name.as_deref().filter(|n| !n.is_empty()) {
        text.push(' ');
        text.push_str(name);
    }
    let tags = target.tags_map();
    if !tags.is_empty() {
        let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        text.push_str(&format!(" {{{}}}", tags.join(", ")));
    }
    text
}

/// Decodes a merged conf; errors name the field under `section`.
fn decode<C: DeserializeOwned>(
    policy: ResourceType,
    section: &str,
    value: &Value,
) -> Result<C, PolicyError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            format!("{section}.default")
        } else {
            format!("{section}.default.{path}")
        };
        PolicyError::new(policy, field, e.into_inner().to_string())
    })
}

/// Decodes `value`, recording a failure in `errors` and yielding `None`.
fn decode_or_record<C: DeserializeOwned>(
    policy: ResourceType,
    section: &str,
    value: &Value,
    errors: &mut Vec<PolicyError>,
) -> Option<C> {
    decode(policy, section, value)
        .map_err(|e| errors.push(e))
        .ok()
}

/// The decoded `to` entries of one type.
fn decode_to<C: DeserializeOwned>(
    rtype: ResourceType,
    applied: &BTreeMap<ResourceType, MatchedPolicies>,
    errors: &mut Vec<PolicyError>,
) -> Vec<(TargetRef, C)> {
    let Some(m) = applied.get(&rtype) else {
        return Vec::new();
    };
    m.to.iter()
        .filter_map(|(target, value)| {
            let section = format!("to[{}]", describe(target));
            decode_or_record(rtype, &section, value, errors).map(|c| (target.clone(), c))
        })
        .collect()
}

impl OutboundTable {
    fn decode(
        applied: &BTreeMap<ResourceType, MatchedPolicies>,
        errors: &mut Vec<PolicyError>,
    ) -> OutboundTable {
        OutboundTable {
            timeout: decode_to(ResourceType::MeshTimeout, applied, errors),
            retry: decode_to(ResourceType::MeshRetry, applied, errors),
            circuit_breaker: decode_to(ResourceType::MeshCircuitBreaker, applied, errors),
            health_check: decode_to(ResourceType::MeshHealthCheck, applied, errors),
            load_balancing: decode_to(ResourceType::MeshLoadBalancingStrategy, applied, errors),
            access_log: decode_to(ResourceType::MeshAccessLog, applied, errors),
        }
    }
}

/// The conf for all callers of a type whose `from` allows only `Mesh`: the `from[Mesh]` conf
/// with the `rules` default (without matches) merged over it.
fn decode_all_callers<C: DeserializeOwned>(
    rtype: ResourceType,
    applied: &BTreeMap<ResourceType, MatchedPolicies>,
    errors: &mut Vec<PolicyError>,
) -> Option<C> {
    let m = applied.get(&rtype)?;
    let from = m
        .from
        .iter()
        .find(|(t, _)| t.kind == TargetRefKind::Mesh)
        .map(|(_, v)| v.clone());
    let (section, value) = match (from, &m.rules) {
        (Some(mut base), Some(rules)) => {
            merge_patch(&mut base, rules);
            ("from[Mesh]+rules", base)
        }
        (Some(base), None) => ("from[Mesh]", base),
        (None, Some(rules)) => ("rules", rules.clone()),
        (None, None) => return None,
    };
    decode_or_record(rtype, section, &value, errors)
}

impl InboundPolicies {
    fn decode(
        applied: &BTreeMap<ResourceType, MatchedPolicies>,
        policies: &BTreeMap<ResourceType, Vec<Resource>>,
        errors: &mut Vec<PolicyError>,
    ) -> InboundPolicies {
        InboundPolicies {
            timeout: decode_all_callers(ResourceType::MeshTimeout, applied, errors),
            circuit_breaker: decode_all_callers(ResourceType::MeshCircuitBreaker, applied, errors),
            fault_injection: decode_faults(applied, errors),
            rate_limit: decode_all_callers(ResourceType::MeshRateLimit, applied, errors),
            access_log: decode_all_callers(ResourceType::MeshAccessLog, applied, errors),
            traffic_permission: decode_permissions(applied, errors),
            traffic_permission_rules: permission_rules(applied, policies),
        }
    }
}

fn decode_faults(
    applied: &BTreeMap<ResourceType, MatchedPolicies>,
    errors: &mut Vec<PolicyError>,
) -> Vec<FaultSource> {
    const T: ResourceType = ResourceType::MeshFaultInjection;
    let Some(m) = applied.get(&T) else {
        return Vec::new();
    };
    let mut entries: Vec<(TargetRef, Value, String)> = m
        .from
        .iter()
        .map(|(t, v)| (t.clone(), v.clone(), format!("from[{}]", describe(t))))
        .collect();
    if let Some(rules) = &m.rules {
        match entries
            .iter_mut()
            .find(|(t, _, _)| t.kind == TargetRefKind::Mesh)
        {
            Some((_, base, section)) => {
                merge_patch(base, rules);
                section.push_str("+rules");
            }
            None => entries.insert(0, (TargetRef::mesh(), rules.clone(), "rules".to_owned())),
        }
    }
    let mut sources: Vec<FaultSource> = entries
        .into_iter()
        .filter_map(|(from, value, section)| {
            let conf = decode_or_record(T, &section, &value, errors)?;
            Some(FaultSource {
                from,
                matches: Vec::new(),
                conf,
            })
        })
        .collect();
    for (i, (matches, default)) in m.conditional_rules.iter().enumerate() {
        let section = format!("rules(with matches)[{i}]");
        let matches: Option<Vec<Match>> = decode_or_record(T, &section, matches, errors);
        let conf = decode_or_record(T, &section, default, errors);
        if let (Some(matches), Some(conf)) = (matches, conf) {
            sources.push(FaultSource {
                from: TargetRef::mesh(),
                matches,
                conf,
            });
        }
    }
    sources
}

fn decode_permissions(
    applied: &BTreeMap<ResourceType, MatchedPolicies>,
    errors: &mut Vec<PolicyError>,
) -> Vec<PermissionSource> {
    const T: ResourceType = ResourceType::MeshTrafficPermission;
    let Some(m) = applied.get(&T) else {
        return Vec::new();
    };
    m.from
        .iter()
        .filter_map(|(from, value)| {
            let section = format!("from[{}]", describe(from));
            let conf: mesh_traffic_permission::Conf = decode_or_record(T, &section, value, errors)?;
            match conf.action {
                Some(action) if action.is_known() => Some(PermissionSource {
                    from: from.clone(),
                    action,
                }),
                other => {
                    let shown = other.map(|a| a.to_string()).unwrap_or_default();
                    errors.push(PolicyError::new(
                        T,
                        format!("{section}.default.action"),
                        format!("'{shown}' is not one of Allow, Deny, AllowWithShadowDeny"),
                    ));
                    None
                }
            }
        })
        .collect()
}

/// The `rules` entries of the applying MeshTrafficPermissions, read from the policies
/// themselves: merging them would replace one policy's allow list by another's, while Kuma
/// enforces every rule (denies first).
fn permission_rules(
    applied: &BTreeMap<ResourceType, MatchedPolicies>,
    policies: &BTreeMap<ResourceType, Vec<Resource>>,
) -> Vec<RuleEntry<mesh_traffic_permission::RuleConf>> {
    const T: ResourceType = ResourceType::MeshTrafficPermission;
    let (Some(m), Some(all)) = (applied.get(&T), policies.get(&T)) else {
        return Vec::new();
    };
    m.applied
        .iter()
        .filter_map(|key| all.iter().find(|p| p.key() == *key))
        .filter_map(|p| match &p.spec {
            Spec::MeshTrafficPermission(spec) => spec.rules.clone(),
            _ => None,
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{dataplane, policies};

    #[test]
    fn no_policy_means_no_conf_and_defaults() {
        let p = ProxyPolicies::compute(&dataplane(), &[]);
        let out = p.outbound("backend");
        assert_eq!(
            out,
            OutboundPolicies {
                service: "backend".into(),
                ..OutboundPolicies::default()
            }
        );
        assert_eq!(out.timeouts(), OUTBOUND_TIMEOUTS);
        assert_eq!(p.inbound().timeouts(), INBOUND_TIMEOUTS);
        assert!(p.applied().is_empty() && p.errors().is_empty());
    }

    #[test]
    fn mesh_service_entry_overrides_mesh_entry() {
        let yaml = r#"
type: MeshTimeout
name: mesh-wide
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default: {connectionTimeout: 2s, http: {requestTimeout: 1s}}
---
type: MeshTimeout
name: for-backend
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  to:
    - targetRef: {kind: MeshService, name: backend}
      default: {http: {requestTimeout: 9s}}
"#;
        let p = ProxyPolicies::compute(&dataplane(), &policies(yaml));
        let backend = p.outbound("backend").timeouts();
        assert_eq!(backend.request, Duration::from_secs(9));
        assert_eq!(backend.connect, Duration::from_secs(2));
        let other = p.outbound("other").timeouts();
        assert_eq!(other.request, Duration::from_secs(1));
        // What no policy sets keeps the default.
        assert_eq!(other.idle, OUTBOUND_TIMEOUTS.idle);
        let names: Vec<&str> = p.applied()[&ResourceType::MeshTimeout]
            .applied
            .iter()
            .map(|k| k.name.as_str())
            .collect();
        assert_eq!(names, ["mesh-wide", "for-backend"]);
    }

    #[test]
    fn inbound_rules_merge_over_from() {
        let yaml = r#"
type: MeshTimeout
name: from
mesh: default
spec:
  from:
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 5m, http: {requestTimeout: 3s}}
---
type: MeshTimeout
name: rules
mesh: default
spec:
  rules:
    - default: {http: {requestTimeout: 7s}}
"#;
        let t = ProxyPolicies::compute(&dataplane(), &policies(yaml))
            .inbound()
            .timeouts();
        assert_eq!(t.request, Duration::from_secs(7));
        assert_eq!(t.idle, Duration::from_secs(300));
        assert_eq!(t.connect, INBOUND_TIMEOUTS.connect);
    }

    #[test]
    fn inbound_at_matches_each_inbound_alone() {
        let dp = crate::policy::testing::resource(
            r#"
type: Dataplane
name: two
mesh: default
networking:
  address: 10.0.0.2
  inbound:
    - port: 8080
      tags: {kuma.io/service: web}
    - port: 9090
      tags: {kuma.io/service: admin}
"#,
        );
        let yaml = r#"
type: MeshRateLimit
name: web-only
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: Mesh}
      default: {local: {http: {requestRate: {num: 5, interval: 1s}}}}
"#;
        let p = ProxyPolicies::compute(&dp, &policies(yaml));
        assert!(p.inbound_at(8080).rate_limit.is_some());
        assert!(p.inbound_at(9090).rate_limit.is_none());
        // The whole-Dataplane view sees it (some inbound is web).
        assert!(p.inbound().rate_limit.is_some());
    }

    #[test]
    fn an_undecodable_conf_is_an_error_naming_the_field_and_is_skipped() {
        // A merged conf the typed struct refuses (validation would have stopped it earlier).
        let mut applied = BTreeMap::new();
        applied.insert(
            ResourceType::MeshRetry,
            MatchedPolicies {
                to: vec![(
                    TargetRef::mesh(),
                    serde_json::json!({"http": {"numRetries": "many"}}),
                )],
                ..MatchedPolicies::default()
            },
        );
        let mut errors = Vec::new();
        let table = OutboundTable::decode(&applied, &mut errors);
        assert!(table.retry.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].policy, ResourceType::MeshRetry);
        assert_eq!(errors[0].field, "to[Mesh].default.http.numRetries");
    }

    #[test]
    fn traffic_permission_sources_and_rules() {
        let yaml = r#"
type: MeshTrafficPermission
name: from
mesh: default
spec:
  from:
    - targetRef: {kind: Mesh}
      default: {action: Deny}
    - targetRef: {kind: MeshService, name: client}
      default: {action: Allow}
---
type: MeshTrafficPermission
name: rules
mesh: default
spec:
  rules:
    - default:
        allow:
          - spiffeID: {type: Prefix, value: "spiffe://default"}
---
type: MeshTrafficPermission
name: rules-2
mesh: default
spec:
  rules:
    - default:
        deny:
          - spiffeID: {type: Exact, value: "spiffe://default/bad"}
"#;
        let inbound = ProxyPolicies::compute(&dataplane(), &policies(yaml)).inbound();
        let actions: Vec<(String, String)> = inbound
            .traffic_permission
            .iter()
            .map(|s| (s.from.kind.to_string(), s.action.to_string()))
            .collect();
        assert_eq!(
            actions,
            [
                ("Mesh".to_owned(), "Deny".to_owned()),
                ("MeshService".to_owned(), "Allow".to_owned())
            ]
        );
        // Both rules policies keep their lists (not merged away).
        assert_eq!(inbound.traffic_permission_rules.len(), 2);
        assert!(inbound.has_traffic_permission());
    }
}
