//! Policy matching: which targetRef policies select a Dataplane, and their configuration merged
//! in Kuma's specificity order.
//!
//! A policy selects a Dataplane by its top-level `targetRef` (absent means `Mesh`):
//!
//! | kind | selects |
//! |---|---|
//! | `Mesh` | every proxy (narrowed by `proxyTypes`) |
//! | `MeshSubset` | a proxy with an inbound (or gateway) carrying all `tags` |
//! | `MeshService` | a proxy with an inbound whose `kuma.io/service` is `name` |
//! | `MeshServiceSubset` | the same, and the inbound also carries all `tags` |
//! | `Dataplane` | the proxy called `name`, or whose labels include `labels`, or every proxy |
//! | `MeshGateway`, `MeshHTTPRoute` | nothing here (they need the gateway/route resources) |
//!
//! Selected policies are ordered as Kuma orders them: top-level kind (`Mesh` < `Dataplane` <
//! `MeshSubset` < `MeshService` < `MeshServiceSubset`), then origin (`global` < unknown <
//! `zone`), then name *descending*, so that on a tie the alphabetically first name comes last
//! and wins. Entries are then merged as JSON merge patches (RFC 7396): objects merge field by
//! field, later (more specific) values win, lists are replaced, except lists under keys that
//! start with `append` (`appendProfiles`), which are concatenated.
//!
//! For `to`/`from`, every distinct entry target gets the merge of all entries whose target covers
//! it (a `Mesh` entry covers every target, `MeshService x` covers its sections and subsets),
//! ordered by policy, then entry kind, then name. Route rules (`to[].rules` of MeshHTTPRoute and
//! MeshTCPRoute) are combined instead: the more specific policy's rules come first, and replace
//! earlier rules with the same `matches`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::core::dataplane::DataplaneSpec;
use crate::policies::common::{ProxyType, TargetRef, TargetRefKind};
use crate::registry::Spec;
use crate::resource::{Resource, ResourceKey};
use crate::{ORIGIN_LABEL, SERVICE_TAG};

/// What applies to one Dataplane from the policies of one type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchedPolicies {
    /// The policies whose top-level targetRef selects the Dataplane, least specific first (the
    /// order their configuration is merged in).
    pub applied: Vec<ResourceKey>,
    /// Per distinct `to` target (outbound), the merged configuration.
    pub to: Vec<(TargetRef, Value)>,
    /// Per distinct `from` target (inbound, legacy form), the merged configuration.
    pub from: Vec<(TargetRef, Value)>,
    /// The merged `default` of the `rules` entries without `matches` (inbound, new form).
    pub rules: Option<Value>,
    /// The `rules` entries with `matches` (conditioned on the source), in merge order, each as
    /// (matches, default).
    pub conditional_rules: Vec<(Value, Value)>,
    /// The merged top-level `default` (MeshTrace, MeshMetric).
    pub single: Option<Value>,
}

/// What the selection looks at on a Dataplane: its identity and tag sets.
#[derive(Debug, Clone)]
struct DataplaneView<'a> {
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    /// One tag set per inbound, plus the gateway's tags for gateway proxies.
    tag_sets: Vec<&'a BTreeMap<String, String>>,
    proxy_type: ProxyType,
}

impl<'a> DataplaneView<'a> {
    fn new(resource: &'a Resource, spec: &'a DataplaneSpec) -> DataplaneView<'a> {
        let mut tag_sets: Vec<&BTreeMap<String, String>> =
            spec.inbounds().iter().map(|i| &i.tags).collect();
        if let Some(gateway) = spec.gateway() {
            tag_sets.push(&gateway.tags);
        }
        DataplaneView {
            name: &resource.meta.name,
            labels: &resource.meta.labels,
            tag_sets,
            proxy_type: if spec.is_builtin_gateway() {
                ProxyType::Gateway
            } else {
                ProxyType::Sidecar
            },
        }
    }
}

fn tags_include(set: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| set.get(k) == Some(v))
}

fn proxy_type_ok(target: &TargetRef, dp: &DataplaneView<'_>) -> bool {
    match &target.proxy_types {
        Some(types) if !types.is_empty() => types.contains(&dp.proxy_type),
        _ => true,
    }
}

/// Whether a top-level targetRef selects the Dataplane.
fn selects(target: &TargetRef, dp: &DataplaneView<'_>) -> bool {
    let tags = target.tags.clone().unwrap_or_default();
    match &target.kind {
        TargetRefKind::Mesh => proxy_type_ok(target, dp),
        TargetRefKind::MeshSubset => {
            proxy_type_ok(target, dp) && dp.tag_sets.iter().any(|set| tags_include(set, &tags))
        }
        TargetRefKind::MeshService => dp
            .tag_sets
            .iter()
            .any(|set| set.get(SERVICE_TAG).map(String::as_str) == Some(target.name_str())),
        TargetRefKind::MeshServiceSubset => dp.tag_sets.iter().any(|set| {
            set.get(SERVICE_TAG).map(String::as_str) == Some(target.name_str())
                && tags_include(set, &tags)
        }),
        TargetRefKind::Dataplane => {
            let name_ok = target
                .name
                .as_deref()
                .is_none_or(|n| n.is_empty() || n == dp.name);
            let labels_ok = target
                .labels
                .as_ref()
                .is_none_or(|l| tags_include(dp.labels, l));
            name_ok && labels_ok
        }
        _ => false,
    }
}

/// Whether `target` (a top-level targetRef) selects `dataplane`. `false` when `dataplane` is not
/// a Dataplane.
pub fn selects_dataplane(target: &TargetRef, dataplane: &Resource) -> bool {
    match &dataplane.spec {
        Spec::Dataplane(spec) => selects(target, &DataplaneView::new(dataplane, spec)),
        _ => false,
    }
}

fn origin_rank(resource: &Resource) -> u8 {
    match resource.meta.labels.get(ORIGIN_LABEL).map(String::as_str) {
        Some("global") => 1,
        Some("zone") => 3,
        _ => 2,
    }
}

/// Kuma's tie-break between two Dataplane targetRefs: by name beats by labels, a section beats
/// none.
fn dataplane_ref_order(a: &TargetRef, b: &TargetRef) -> Ordering {
    if a.kind != TargetRefKind::Dataplane || b.kind != TargetRefKind::Dataplane {
        return Ordering::Equal;
    }
    let by_name = |t: &TargetRef| !t.name_str().is_empty();
    let by_labels = |t: &TargetRef| t.labels.is_some();
    if by_name(a) && by_labels(b) {
        return Ordering::Greater;
    }
    if by_labels(a) && by_name(b) {
        return Ordering::Less;
    }
    let section = |t: &TargetRef| t.section_name.as_deref().is_some_and(|s| !s.is_empty());
    section(a).cmp(&section(b))
}

/// A selected policy, with what sorting needs.
struct Selected<'a> {
    resource: &'a Resource,
    top: TargetRef,
    spec: Value,
}

fn policy_order(a: &Selected<'_>, b: &Selected<'_>) -> Ordering {
    a.top
        .kind
        .rank()
        .cmp(&b.top.kind.rank())
        .then_with(|| dataplane_ref_order(&a.top, &b.top))
        .then_with(|| origin_rank(a.resource).cmp(&origin_rank(b.resource)))
}

fn name_order(a: &Selected<'_>, b: &Selected<'_>) -> Ordering {
    // Descending: on a tie the alphabetically first name is merged last, so it wins.
    b.resource.meta.name.cmp(&a.resource.meta.name)
}

fn target_ref_of(value: Option<&Value>) -> TargetRef {
    value
        .and_then(|v| serde_json::from_value::<TargetRef>(v.clone()).ok())
        .unwrap_or_else(TargetRef::mesh)
}

/// Computes which of `policies` apply to `dataplane` and their merged configuration.
/// Policies from another mesh, resources that are not targetRef policies, and a `dataplane`
/// that is not a Dataplane yield nothing. Pass the policies of one type.
pub fn matched_policies(dataplane: &Resource, policies: &[Resource]) -> MatchedPolicies {
    let Spec::Dataplane(dp_spec) = &dataplane.spec else {
        return MatchedPolicies::default();
    };
    let view = DataplaneView::new(dataplane, dp_spec);
    let mut selected: Vec<Selected<'_>> = policies
        .iter()
        .filter(|p| p.resource_type().is_policy() && p.meta.mesh == dataplane.meta.mesh)
        .filter_map(|p| {
            let spec = p.spec.to_value();
            let top = target_ref_of(spec.get("targetRef"));
            selects(&top, &view).then_some(Selected {
                resource: p,
                top,
                spec,
            })
        })
        .collect();
    selected.sort_by(|a, b| policy_order(a, b).then_with(|| name_order(a, b)));

    let mut result = MatchedPolicies {
        applied: selected.iter().map(|s| s.resource.key()).collect(),
        ..MatchedPolicies::default()
    };
    result.to = merge_entries(&selected, "to");
    result.from = merge_entries(&selected, "from");

    let mut plain_rules = Vec::new();
    for s in &selected {
        for rule in list(&s.spec, "rules") {
            let default = rule.get("default").cloned().unwrap_or(Value::Null);
            match rule.get("matches") {
                Some(m) if m.as_array().is_some_and(|a| !a.is_empty()) => {
                    result.conditional_rules.push((m.clone(), default))
                }
                _ => plain_rules.push(default),
            }
        }
    }
    result.rules = merge_all(plain_rules);
    result.single = merge_all(
        selected
            .iter()
            .filter_map(|s| s.spec.get("default").cloned()),
    );
    result
}

fn list<'v>(spec: &'v Value, field: &str) -> &'v [Value] {
    spec.get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// One `to`/`from` entry with its sort keys.
struct Entry<'a> {
    policy: &'a Selected<'a>,
    position: usize,
    target: TargetRef,
    conf: Value,
}

fn entry_conf(entry: &Value) -> Value {
    if let Some(default) = entry.get("default") {
        return default.clone();
    }
    // Routes carry `rules` (and `hostnames`) instead of `default`.
    let mut conf = entry.as_object().cloned().unwrap_or_default();
    conf.remove("targetRef");
    Value::Object(conf)
}

fn merge_entries(selected: &[Selected<'_>], field: &str) -> Vec<(TargetRef, Value)> {
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for policy in selected {
        for (i, e) in list(&policy.spec, field).iter().enumerate() {
            entries.push(Entry {
                policy,
                position: i,
                target: target_ref_of(e.get("targetRef")),
                conf: entry_conf(e),
            });
        }
    }
    entries.sort_by(|a, b| {
        policy_order(a.policy, b.policy)
            .then_with(|| a.target.kind.rank().cmp(&b.target.kind.rank()))
            .then_with(|| section_rank(&a.target).cmp(&section_rank(&b.target)))
            .then_with(|| name_order(a.policy, b.policy))
            .then_with(|| a.position.cmp(&b.position))
    });

    let mut targets: Vec<TargetRef> = Vec::new();
    for e in &entries {
        if !targets.iter().any(|t| same_target(t, &e.target)) {
            targets.push(e.target.clone());
        }
    }
    targets.sort_by_key(|t| (t.kind.rank(), section_rank(t)));
    targets
        .into_iter()
        .filter_map(|target| {
            let confs = entries
                .iter()
                .filter(|e| covers(&e.target, &target))
                .map(|e| e.conf.clone());
            merge_all(confs).map(|conf| (target, conf))
        })
        .collect()
}

fn section_rank(t: &TargetRef) -> u8 {
    u8::from(t.kind == TargetRefKind::MeshService && t.section_name.is_some())
}

fn same_target(a: &TargetRef, b: &TargetRef) -> bool {
    a.kind == b.kind
        && a.name_str() == b.name_str()
        && a.namespace == b.namespace
        && a.section_name == b.section_name
        && a.labels.clone().unwrap_or_default() == b.labels.clone().unwrap_or_default()
        && a.tags.clone().unwrap_or_default() == b.tags.clone().unwrap_or_default()
}

/// Whether configuration for `entry` also applies to traffic for `target` (`Mesh` covers every
/// target, `MeshService x` its subsets, a subset every subset with more tags).
pub fn covers(entry: &TargetRef, target: &TargetRef) -> bool {
    use TargetRefKind as K;
    if same_target(entry, target) {
        return true;
    }
    let entry_tags = entry.tags.clone().unwrap_or_default();
    let target_tags = target.tags.clone().unwrap_or_default();
    match (&entry.kind, &target.kind) {
        (K::Mesh, _) => true,
        (K::MeshSubset, K::MeshSubset | K::MeshServiceSubset) => {
            tags_include(&target_tags, &entry_tags)
        }
        (K::MeshService, K::MeshService) => {
            entry.section_name.is_none()
                && entry.name_str() == target.name_str()
                && entry.namespace == target.namespace
        }
        (K::MeshService, K::MeshServiceSubset) => entry.name_str() == target.name_str(),
        (K::MeshServiceSubset, K::MeshServiceSubset) => {
            entry.name_str() == target.name_str() && tags_include(&target_tags, &entry_tags)
        }
        _ => false,
    }
}

/// Merges confs in order (later wins); `None` when there are none.
fn merge_all(confs: impl IntoIterator<Item = Value>) -> Option<Value> {
    let mut merged: Option<Value> = None;
    for conf in confs {
        merged = Some(match merged {
            None => strip_nulls(conf),
            Some(mut base) => {
                merge_patch(&mut base, &conf);
                base
            }
        });
    }
    merged
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

/// RFC 7396 merge patch, with Kuma's extensions: `append*` lists are concatenated and route
/// `rules` lists are combined by `matches`.
pub fn merge_patch(base: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *base = patch.clone();
        return;
    };
    if !base.is_object() {
        *base = Value::Object(Map::new());
    }
    let Value::Object(base_map) = base else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            base_map.remove(key);
            continue;
        }
        match (base_map.get_mut(key), value) {
            (Some(Value::Array(existing)), Value::Array(more)) if key.starts_with("append") => {
                existing.extend(more.iter().cloned());
            }
            (Some(Value::Array(existing)), Value::Array(more))
                if key == "rules" && is_route_rules(more) =>
            {
                // The more specific policy's rules go first; a rule with the same matches
                // replaces the earlier one.
                existing.retain(|r| !more.iter().any(|m| m.get("matches") == r.get("matches")));
                let mut combined = more.clone();
                combined.append(existing);
                *existing = combined;
            }
            (Some(existing @ Value::Object(_)), Value::Object(_)) => merge_patch(existing, value),
            _ => {
                base_map.insert(key.clone(), strip_nulls(value.clone()));
            }
        }
    }
}

fn is_route_rules(rules: &[Value]) -> bool {
    rules.iter().all(|r| {
        r.get("default")
            .is_some_and(|d| d.get("backendRefs").is_some() || d.get("filters").is_some())
    }) && !rules.is_empty()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::parse_documents;

    fn resources(yaml: &str) -> Vec<Resource> {
        parse_documents(yaml)
            .into_iter()
            .map(|r| r.expect("fixture parses").resource)
            .collect()
    }

    const DATAPLANE: &str = r#"
type: Dataplane
name: web-1
mesh: default
labels:
  team: payments
networking:
  address: 10.0.0.1
  inbound:
    - port: 8080
      tags:
        kuma.io/service: web
        version: v2
        kuma.io/protocol: http
"#;

    fn dataplane() -> Resource {
        resources(DATAPLANE).remove(0)
    }

    fn timeout(name: &str, top: &str, to: &str, conf: &str) -> String {
        format!(
            "---\ntype: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef: {top}\n  to:\n    - targetRef: {to}\n      default: {conf}\n"
        )
    }

    #[test]
    fn specificity_orders_the_merge() {
        let yaml = [
            timeout(
                "svc",
                "{kind: MeshService, name: web}",
                "{kind: Mesh}",
                "{idleTimeout: 3s}",
            ),
            timeout(
                "all",
                "{kind: Mesh}",
                "{kind: Mesh}",
                "{idleTimeout: 1s, connectionTimeout: 1s}",
            ),
            timeout(
                "subset",
                "{kind: MeshSubset, tags: {version: v2}}",
                "{kind: Mesh}",
                "{idleTimeout: 2s}",
            ),
            timeout(
                "sub",
                "{kind: MeshServiceSubset, name: web, tags: {version: v2}}",
                "{kind: Mesh}",
                "{http: {requestTimeout: 9s}}",
            ),
        ]
        .concat();
        let m = matched_policies(&dataplane(), &resources(&yaml));
        let names: Vec<&str> = m.applied.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["all", "subset", "svc", "sub"]);
        assert_eq!(m.to.len(), 1);
        assert_eq!(m.to[0].0.kind, TargetRefKind::Mesh);
        assert_eq!(
            m.to[0].1,
            json!({"idleTimeout": "3s", "connectionTimeout": "1s", "http": {"requestTimeout": "9s"}})
        );
    }

    #[test]
    fn ties_are_won_by_the_alphabetically_first_name() {
        let yaml = [
            timeout("b", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 2s}"),
            timeout("a", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 1s}"),
            timeout("c", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 3s}"),
        ]
        .concat();
        let m = matched_policies(&dataplane(), &resources(&yaml));
        let names: Vec<&str> = m.applied.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "a"]);
        assert_eq!(m.to[0].1, json!({"idleTimeout": "1s"}));
    }

    #[test]
    fn zone_origin_beats_global_on_a_tie() {
        let mut policies = resources(
            &[
                timeout("a", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 1s}"),
                timeout("z", "{kind: Mesh}", "{kind: Mesh}", "{idleTimeout: 9s}"),
            ]
            .concat(),
        );
        policies[0]
            .meta
            .labels
            .insert(ORIGIN_LABEL.into(), "global".into());
        policies[1]
            .meta
            .labels
            .insert(ORIGIN_LABEL.into(), "zone".into());
        let m = matched_policies(&dataplane(), &policies);
        assert_eq!(m.to[0].1, json!({"idleTimeout": "9s"}));
    }

    #[test]
    fn non_matching_policies_are_ignored() {
        let mut yaml = [
            timeout(
                "other-svc",
                "{kind: MeshService, name: api}",
                "{kind: Mesh}",
                "{idleTimeout: 1s}",
            ),
            timeout(
                "other-tags",
                "{kind: MeshSubset, tags: {version: v1}}",
                "{kind: Mesh}",
                "{idleTimeout: 1s}",
            ),
            timeout(
                "subset-wrong",
                "{kind: MeshServiceSubset, name: web, tags: {version: v1}}",
                "{kind: Mesh}",
                "{idleTimeout: 1s}",
            ),
            timeout(
                "gateways",
                "{kind: Mesh, proxyTypes: [Gateway]}",
                "{kind: Mesh}",
                "{idleTimeout: 1s}",
            ),
            timeout(
                "other-dp",
                "{kind: Dataplane, name: web-2}",
                "{kind: Mesh}",
                "{idleTimeout: 1s}",
            ),
            timeout(
                "labels",
                "{kind: Dataplane, labels: {team: payments}}",
                "{kind: Mesh}",
                "{idleTimeout: 4s}",
            ),
        ]
        .concat();
        yaml.push_str("---\ntype: MeshTimeout\nname: elsewhere\nmesh: other\nspec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {idleTimeout: 1s}\n");
        let m = matched_policies(&dataplane(), &resources(&yaml));
        let names: Vec<&str> = m.applied.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["labels"]);
        assert_eq!(m.to[0].1, json!({"idleTimeout": "4s"}));
    }

    #[test]
    fn per_target_merge_includes_mesh_wide_entries() {
        let yaml = r#"
type: MeshTimeout
name: mt
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default: {http: {requestTimeout: 5s}}
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 1m, http: {requestTimeout: 1s, streamIdleTimeout: 2s}}
"#;
        let m = matched_policies(&dataplane(), &resources(yaml));
        assert_eq!(m.to.len(), 2);
        assert_eq!(m.to[0].0.kind, TargetRefKind::Mesh);
        assert_eq!(m.to[1].0.name.as_deref(), Some("backend"));
        assert_eq!(
            m.to[1].1,
            json!({"idleTimeout": "1m", "http": {"requestTimeout": "5s", "streamIdleTimeout": "2s"}})
        );
    }

    #[test]
    fn lists_are_replaced_and_append_lists_concatenated() {
        let mut base =
            json!({"retryOn": ["5xx"], "appendProfiles": [{"name": "Basic"}], "x": {"y": 1}});
        merge_patch(
            &mut base,
            &json!({"retryOn": ["Reset"], "appendProfiles": [{"name": "All"}], "x": null}),
        );
        assert_eq!(
            base,
            json!({"retryOn": ["Reset"], "appendProfiles": [{"name": "Basic"}, {"name": "All"}]})
        );
    }

    #[test]
    fn from_rules_and_single_defaults() {
        let yaml = r#"
type: MeshTrafficPermission
name: allow
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Deny}
    - targetRef: {kind: MeshSubset, tags: {team: a}}
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
    - matches:
        - spiffeID: {type: Exact, value: "spiffe://default/x"}
      default:
        deny:
          - spiffeID: {type: Exact, value: "spiffe://default/x"}
---
type: MeshTrace
name: trace
mesh: default
spec:
  default:
    backends: [{type: Zipkin, zipkin: {url: "http://zipkin:9411/api/v2/spans"}}]
    sampling: {overall: 50}
"#;
        let m = matched_policies(&dataplane(), &resources(yaml));
        assert_eq!(m.from.len(), 2);
        assert_eq!(m.from[0].1, json!({"action": "Deny"}));
        assert_eq!(m.from[1].0.kind, TargetRefKind::MeshSubset);
        assert_eq!(m.from[1].1, json!({"action": "Allow"}));
        assert_eq!(
            m.rules,
            Some(json!({"allow": [{"spiffeID": {"type": "Prefix", "value": "spiffe://default"}}]}))
        );
        assert_eq!(m.conditional_rules.len(), 1);
        assert_eq!(
            m.single
                .as_ref()
                .and_then(|s| s.pointer("/sampling/overall")),
            Some(&json!(50))
        );
    }

    #[test]
    fn route_rules_combine_by_matches() {
        let route = |name: &str, top: &str, rules: &str| {
            format!(
                "---\ntype: MeshHTTPRoute\nname: {name}\nmesh: default\nspec:\n  targetRef: {top}\n  to:\n    - targetRef: {{kind: MeshService, name: backend}}\n      rules: {rules}\n"
            )
        };
        let yaml = [
            route(
                "mesh-wide",
                "{kind: Mesh}",
                "[{matches: [{path: {type: PathPrefix, value: /a}}], default: {backendRefs: [{kind: MeshService, name: a-v1}]}}, {matches: [{path: {type: PathPrefix, value: /b}}], default: {backendRefs: [{kind: MeshService, name: b-v1}]}}]",
            ),
            route(
                "web-only",
                "{kind: MeshService, name: web}",
                "[{matches: [{path: {type: PathPrefix, value: /b}}], default: {backendRefs: [{kind: MeshService, name: b-v2}]}}]",
            ),
        ]
        .concat();
        let m = matched_policies(&dataplane(), &resources(&yaml));
        assert_eq!(m.applied.len(), 2);
        let rules = m.to[0].1["rules"].as_array().cloned().unwrap_or_default();
        let backends: Vec<&Value> = rules
            .iter()
            .map(|r| &r["default"]["backendRefs"][0]["name"])
            .collect();
        // The more specific policy's rule comes first and replaces the one with equal matches.
        assert_eq!(backends, [&json!("b-v2"), &json!("a-v1")]);
    }

    #[test]
    fn not_a_dataplane_matches_nothing() {
        let policies = resources(&timeout(
            "a",
            "{kind: Mesh}",
            "{kind: Mesh}",
            "{idleTimeout: 1s}",
        ));
        assert_eq!(
            matched_policies(&policies[0], &policies),
            MatchedPolicies::default()
        );
    }
}
