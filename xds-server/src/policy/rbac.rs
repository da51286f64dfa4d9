//! MeshTrafficPermission -> Envoy RBAC, enforced on an inbound against the caller's verified
//! certificate (URI SANs issued by the mesh CA).
//!
//! Principals:
//! - `from` `Mesh` -> any authenticated peer (a client certificate from the mesh CA);
//! - `MeshService x` -> URI SAN `spiffe://<mesh>/x`;
//! - `MeshSubset` / `MeshServiceSubset` tags -> URI SAN `kuma://<tag>/<value>` per tag
//!   (`kuma.io/service` as the SPIFFE ID), all AND-ed;
//! - `rules` SPIFFE ID matches -> URI SAN exact or prefix match.
//!
//! Merging: every `from` target carries the merged action of the entries covering it (mesh-api
//! matching). The most specific target wins for the callers it selects: an allowed target's
//! principal excludes each denied target that is at least as specific and not broader than it
//! (`allow(T) AND NOT deny(S)`), which mirrors Kuma's disjoint rule subsets. Where two targets
//! of equal specificity overlap without one covering the other, deny wins (Kuma decides by
//! policy order there; Meridian fails closed). `rules` entries are all enforced, denies first:
//! `(from allows OR rule allows) AND NOT rule denies`. `AllowWithShadowDeny` allows and also
//! lands in the shadow rules (a DENY policy Envoy only logs and counts).
//!
//! An SNI condition cannot be expressed as an RBAC principal: an allow entry whose match needs
//! an SNI is dropped, a deny entry applies regardless of SNI (fail closed).
//!
//! Without mTLS there is no verified identity and no RBAC ([`inbound_rbac`] returns `None`);
//! with mTLS and no MeshTrafficPermission, everything is denied, as Kuma documents (Meridian
//! creates an `allow-all-<mesh>` policy with every mesh, see control-plane's defaults). The
//! caller puts the filter only on filter chains that terminate the mesh's TLS.

use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier, Set};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, rbac, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::util::pack_any;
use mesh_api::matching::covers;
use mesh_api::policies::common::{Match, SpiffeIdMatchType, TargetRef, TargetRefKind};
use mesh_api::policies::mesh_traffic_permission::Action;
use mesh_api::SERVICE_TAG;

use super::matched::{InboundPolicies, PermissionSource};

/// The name of the RBAC policy in the rules (what Envoy's stats and logs show).
pub const POLICY_NAME: &str = "MeshTrafficPermission";

/// The RBAC of one inbound: the enforced rules and the shadow (log-only) rules.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRbac {
    pub rules: Rbac,
    pub shadow_rules: Option<Rbac>,
}

impl InboundRbac {
    /// As `envoy.filters.network.rbac`, for TCP inbounds (first filter of the chain).
    /// `stat_prefix` is usually the listener name.
    pub fn network_filter(&self, stat_prefix: &str) -> Filter {
        let config = NetworkRbac {
            // The dot makes "inbound:1.2.3.4:80.rbac.allowed", not "...:80rbac.allowed".
            stat_prefix: format!("{stat_prefix}."),
            rules: Some(self.rules.clone()),
            shadow_rules: self.shadow_rules.clone(),
            ..NetworkRbac::default()
        };
        Filter {
            name: "envoy.filters.network.rbac".to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
        }
    }

    /// As `envoy.filters.http.rbac`, for HTTP inbounds (first HTTP filter).
    pub fn http_filter(&self) -> HttpFilter {
        let config = HttpRbac {
            rules: Some(self.rules.clone()),
            shadow_rules: self.shadow_rules.clone(),
            ..HttpRbac::default()
        };
        HttpFilter {
            name: "envoy.filters.http.rbac".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
            ..HttpFilter::default()
        }
    }
}

/// The RBAC for an inbound of a proxy in `mesh`; `None` when mTLS is off.
pub fn inbound_rbac(p: &InboundPolicies, mesh: &str, mtls_enabled: bool) -> Option<InboundRbac> {
    if !mtls_enabled {
        return None;
    }
    let sources = &p.traffic_permission;
    let mut allow = Vec::new();
    let mut shadow_deny = Vec::new();
    for source in sources {
        let principal = || source_principal(source, sources, mesh);
        match source.action {
            Action::Allow => allow.push(principal()),
            Action::AllowWithShadowDeny => {
                allow.push(principal());
                shadow_deny.push(principal());
            }
            _ => {}
        }
    }
    let mut deny = Vec::new();
    for rule in &p.traffic_permission_rules {
        let condition = rule
            .matches
            .as_deref()
            .filter(|m| !m.is_empty())
            .map(|m| or(m.iter().filter_map(|m| match_principal(m, false)).collect()));
        let with_condition = |p: Principal| match &condition {
            Some(Some(c)) => Some(and(vec![c.clone(), p])),
            // Every match needs an SNI: nothing can be allowed under it.
            Some(None) => None,
            None => Some(p),
        };
        let d = &rule.default;
        for m in d.allow.iter().flatten() {
            if let Some(p) = match_principal(m, false).and_then(with_condition) {
                allow.push(p);
            }
        }
        for m in d.allow_with_shadow_deny.iter().flatten() {
            if let Some(p) = match_principal(m, false).and_then(with_condition) {
                allow.push(p.clone());
                shadow_deny.push(p);
            }
        }
        for m in d.deny.iter().flatten() {
            // Fail closed: a deny keeps applying when its SNI condition cannot be expressed.
            let p = match_principal(m, true).unwrap_or_else(any_authenticated);
            deny.push(match &condition {
                Some(Some(c)) => and(vec![c.clone(), p]),
                _ => p,
            });
        }
    }
    let enforced = or(allow).map(|allowed| match or(deny) {
        Some(denied) => and(vec![allowed, not(denied)]),
        None => allowed,
    });
    Some(InboundRbac {
        rules: rbac_of(rbac::Action::Allow, enforced),
        shadow_rules: or(shadow_deny).map(|p| rbac_of(rbac::Action::Deny, Some(p))),
    })
}

fn rbac_of(action: rbac::Action, principal: Option<Principal>) -> Rbac {
    Rbac {
        action: action as i32,
        policies: principal
            .map(|p| {
                (
                    POLICY_NAME.to_owned(),
                    Policy {
                        permissions: vec![Permission {
                            rule: Some(permission::Rule::Any(true)),
                        }],
                        principals: vec![p],
                        ..Policy::default()
                    },
                )
            })
            .into_iter()
            .collect(),
        ..Rbac::default()
    }
}

/// The principal for the callers `source` decides for: its own principal, minus the denied
/// targets that are at least as specific and not broader (they win for their callers).
fn source_principal(source: &PermissionSource, all: &[PermissionSource], mesh: &str) -> Principal {
    let own = target_principal(&source.from, mesh);
    let excluded: Vec<Principal> = all
        .iter()
        .filter(|other| {
            other.action == Action::Deny
                && other.from != source.from
                && !covers(&other.from, &source.from)
                && other.from.kind.rank() >= source.from.kind.rank()
        })
        .map(|other| not(target_principal(&other.from, mesh)))
        .collect();
    if excluded.is_empty() {
        own
    } else {
        and(std::iter::once(own).chain(excluded).collect())
    }
}

fn authenticated(matcher: Option<StringMatcher>) -> Principal {
    Principal {
        identifier: Some(Identifier::Authenticated(Authenticated {
            principal_name: matcher,
        })),
    }
}

/// Any peer with a verified certificate.
fn any_authenticated() -> Principal {
    authenticated(None)
}

fn uri_san(pattern: string_matcher::MatchPattern) -> Principal {
    authenticated(Some(StringMatcher {
        match_pattern: Some(pattern),
        ..StringMatcher::default()
    }))
}

fn exact_san(value: String) -> Principal {
    uri_san(string_matcher::MatchPattern::Exact(value))
}

/// The URI SAN a certificate carries for a tag: `spiffe://<mesh>/<service>` for the service
/// tag, `kuma://<tag>/<value>` otherwise.
fn tag_principal(mesh: &str, key: &str, value: &str) -> Principal {
    if key == SERVICE_TAG {
        exact_san(format!("spiffe://{mesh}/{value}"))
    } else {
        exact_san(format!("kuma://{key}/{value}"))
    }
}

fn target_principal(target: &TargetRef, mesh: &str) -> Principal {
    let mut ids = Vec::new();
    if matches!(
        target.kind,
        TargetRefKind::MeshService | TargetRefKind::MeshServiceSubset
    ) {
        ids.push(tag_principal(mesh, SERVICE_TAG, target.name_str()));
    }
    if matches!(
        target.kind,
        TargetRefKind::MeshSubset | TargetRefKind::MeshServiceSubset
    ) {
        for (k, v) in target.tags_map() {
            ids.push(tag_principal(mesh, &k, &v));
        }
    }
    match ids.len() {
        0 => any_authenticated(),
        _ => and(ids),
    }
}

/// The principal of a rules match; `None` when it needs an SNI (not expressible) unless
/// `ignore_sni`.
fn match_principal(m: &Match, ignore_sni: bool) -> Option<Principal> {
    if m.sni.is_some() && !ignore_sni {
        return None;
    }
    let spiffe = m.spiffe_id.as_ref()?;
    let pattern = match spiffe.match_type {
        SpiffeIdMatchType::Prefix => string_matcher::MatchPattern::Prefix(spiffe.value.clone()),
        _ => string_matcher::MatchPattern::Exact(spiffe.value.clone()),
    };
    Some(uri_san(pattern))
}

fn and(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    Principal {
        identifier: Some(Identifier::AndIds(Set { ids })),
    }
}

/// `None` for an empty list (nothing matches).
fn or(mut ids: Vec<Principal>) -> Option<Principal> {
    match ids.len() {
        0 => None,
        1 => Some(ids.remove(0)),
        _ => Some(Principal {
            identifier: Some(Identifier::OrIds(Set { ids })),
        }),
    }
}

fn not(p: Principal) -> Principal {
    Principal {
        identifier: Some(Identifier::NotId(Box::new(p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{dataplane, policies, unpack};
    use crate::policy::ProxyPolicies;

    /// Evaluates a principal against a peer's URI SANs (what Envoy does with the certificate).
    fn admits(p: &Principal, sans: &[&str]) -> bool {
        match p.identifier.as_ref().unwrap() {
            Identifier::AndIds(s) => s.ids.iter().all(|p| admits(p, sans)),
            Identifier::OrIds(s) => s.ids.iter().any(|p| admits(p, sans)),
            Identifier::NotId(p) => !admits(p, sans),
            Identifier::Any(any) => *any,
            Identifier::Authenticated(a) => match &a.principal_name {
                None => true,
                Some(m) => sans
                    .iter()
                    .any(|san| match m.match_pattern.as_ref().unwrap() {
                        string_matcher::MatchPattern::Exact(e) => san == e,
                        string_matcher::MatchPattern::Prefix(p) => san.starts_with(p.as_str()),
                        other => panic!("unexpected matcher {other:?}"),
                    }),
            },
            other => panic!("unexpected principal {other:?}"),
        }
    }

    fn allowed(rbac: &Rbac, sans: &[&str]) -> bool {
        assert_eq!(rbac.action, rbac::Action::Allow as i32);
        rbac.policies
            .values()
            .any(|p| p.principals.iter().any(|pr| admits(pr, sans)))
    }

    fn rbac_for(yaml: &str) -> InboundRbac {
        let p = ProxyPolicies::compute(&dataplane(), &policies(yaml)).inbound();
        inbound_rbac(&p, "default", true).unwrap()
    }

    const CLIENT: &[&str] = &["spiffe://default/client", "kuma://team/a"];
    const OTHER: &[&str] = &["spiffe://default/other", "kuma://team/b"];

    #[test]
    fn no_mtls_no_rbac_and_no_policy_denies_all() {
        let p = ProxyPolicies::compute(&dataplane(), &[]).inbound();
        assert!(inbound_rbac(&p, "default", false).is_none());
        let r = inbound_rbac(&p, "default", true).unwrap();
        assert!(r.rules.policies.is_empty());
        assert!(!allowed(&r.rules, CLIENT));
        assert!(r.shadow_rules.is_none());
    }

    #[test]
    fn default_allow_all_admits_any_mesh_peer() {
        let r = rbac_for(
            "type: MeshTrafficPermission\nname: allow-all-default\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n",
        );
        let principal = &r.rules.policies[POLICY_NAME].principals[0];
        assert_eq!(*principal, any_authenticated());
        assert!(allowed(&r.rules, OTHER));
    }

    #[test]
    fn service_allow_over_mesh_deny() {
        let r = rbac_for(
            r#"
type: MeshTrafficPermission
name: mtp
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Deny}
    - targetRef: {kind: MeshService, name: client}
      default: {action: Allow}
"#,
        );
        assert_eq!(
            r.rules.policies[POLICY_NAME].principals[0],
            exact_san("spiffe://default/client".into())
        );
        assert!(allowed(&r.rules, CLIENT));
        assert!(!allowed(&r.rules, OTHER));
    }

    #[test]
    fn a_more_specific_deny_carves_out_of_an_allow() {
        let r = rbac_for(
            r#"
type: MeshTrafficPermission
name: mtp
mesh: default
spec:
  from:
    - targetRef: {kind: MeshSubset, tags: {team: a}}
      default: {action: Allow}
    - targetRef: {kind: MeshServiceSubset, name: client, tags: {team: a, version: v1}}
      default: {action: Deny}
    - targetRef: {kind: MeshService, name: other}
      default: {action: AllowWithShadowDeny}
"#,
        );
        assert!(allowed(&r.rules, CLIENT));
        assert!(!allowed(
            &r.rules,
            &[
                "spiffe://default/client",
                "kuma://team/a",
                "kuma://version/v1"
            ]
        ));
        assert!(allowed(&r.rules, OTHER));
        let shadow = r.shadow_rules.unwrap();
        assert_eq!(shadow.action, rbac::Action::Deny as i32);
        assert!(shadow.policies[POLICY_NAME]
            .principals
            .iter()
            .any(|p| admits(p, OTHER)));
    }

    #[test]
    fn rules_allow_and_deny_with_deny_first() {
        let r = rbac_for(
            r#"
type: MeshTrafficPermission
name: allow
mesh: default
spec:
  rules:
    - default:
        allow:
          - spiffeID: {type: Prefix, value: "spiffe://default"}
---
type: MeshTrafficPermission
name: deny
mesh: default
spec:
  rules:
    - default:
        deny:
          - spiffeID: {type: Exact, value: "spiffe://default/other"}
"#,
        );
        assert!(allowed(&r.rules, CLIENT));
        assert!(!allowed(&r.rules, OTHER));
        assert!(!allowed(&r.rules, &["spiffe://elsewhere/client"]));
    }

    #[test]
    fn filters_carry_the_rules() {
        let r = rbac_for(
            "type: MeshTrafficPermission\nname: a\nmesh: default\nspec:\n  from:\n    - targetRef: {kind: Mesh}\n      default: {action: Allow}\n",
        );
        let f = r.network_filter("inbound:10.0.0.1:8080");
        assert_eq!(f.name, "envoy.filters.network.rbac");
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("typed config expected");
        };
        let n: NetworkRbac = unpack(any);
        assert_eq!(n.stat_prefix, "inbound:10.0.0.1:8080.");
        assert_eq!(n.rules.as_ref(), Some(&r.rules));
        let h = r.http_filter();
        assert_eq!(h.name, "envoy.filters.http.rbac");
        let Some(http_filter::ConfigType::TypedConfig(any)) = &h.config_type else {
            panic!("typed config expected");
        };
        let hr: HttpRbac = unpack(any);
        assert_eq!(hr.rules, Some(r.rules));
    }
}
