//! MeshTCPRoute: weighted TCP backends for outbound traffic to a service.

use serde::{Deserialize, Serialize};

use super::common::{
    items, top_or_mesh, validate_backend_refs, validate_target_ref, BackendRef, TargetRef,
    TargetRefKind as K, TargetRefRules,
};
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshTCPRoute.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTcpRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To>>,
}

/// A destination and its rules.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct To {
    #[serde(default)]
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// One rule (TCP rules have no matches).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub default: RuleConf,
}

/// Where the traffic goes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshTcpRouteSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS).with_gateway_tags();
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let top = top_or_mesh(&self.target_ref).kind;
        let kinds: &[K] = if top == K::MeshGateway {
            &[K::Mesh]
        } else {
            &[
                K::MeshService,
                K::MeshExternalService,
                K::MeshMultiZoneService,
            ]
        };
        for (i, to) in items(&self.to).iter().enumerate() {
            let tpath = path.field("to").index(i);
            validate_target_ref(
                &to.target_ref,
                &tpath.field("targetRef"),
                &TargetRefRules::kinds(kinds),
                v,
            );
            for (j, rule) in to.rules.iter().enumerate() {
                let bpath = tpath
                    .field("rules")
                    .index(j)
                    .field("default")
                    .field("backendRefs");
                match &rule.default.backend_refs {
                    Some(b) if !b.is_empty() => validate_backend_refs(b, &bpath, v),
                    _ => v.add(&bpath, "must be defined"),
                }
            }
        }
    }
}
