//! MeshTrafficPermission: which sources may reach the selected proxies (`from` with an action,
//! or the newer `rules` with SPIFFE ID allow/deny lists).

use serde::{Deserialize, Serialize};

use super::common::{
    items, kuma_enum, len_of, validate_match, validate_target_ref, FromEntry, Match, RuleEntry,
    TargetRef, TargetRefKind as K, TargetRefRules,
};
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

kuma_enum! {
    /// What happens to traffic from a matched source.
    Action {
        Allow => "Allow",
        Deny => "Deny",
        AllowWithShadowDeny => "AllowWithShadowDeny",
    }
}

/// The spec of a MeshTrafficPermission.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTrafficPermissionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<FromEntry<Conf>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleEntry<RuleConf>>>,
}

/// `from[].default`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

/// `rules[].default`: SPIFFE ID lists.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Match>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<Match>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_with_shadow_deny: Option<Vec<Match>>,
}

impl Validate for MeshTrafficPermissionSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let inbound = len_of(&self.from) > 0 || len_of(&self.rules) > 0;
        if let Some(top) = &self.target_ref {
            let kinds = [
                K::Mesh,
                K::MeshSubset,
                K::MeshService,
                K::MeshServiceSubset,
                K::Dataplane,
            ];
            validate_target_ref(
                top,
                &path.field("targetRef"),
                &TargetRefRules::kinds(&kinds).inbound(inbound),
                v,
            );
        }
        if len_of(&self.from) > 0 && len_of(&self.rules) > 0 {
            v.add(path, "field 'from' must be empty when 'rules' is defined");
        }
        if len_of(&self.from) == 0 && len_of(&self.rules) == 0 {
            v.add(path, "at least one of 'from' or 'rules' has to be defined");
        }
        for (i, rule) in items(&self.rules).iter().enumerate() {
            let rpath = path.field("rules").index(i);
            let d = &rule.default;
            if len_of(&d.allow) == 0
                && len_of(&d.deny) == 0
                && len_of(&d.allow_with_shadow_deny) == 0
            {
                v.add(
                    &rpath,
                    "at least one of 'allow', 'allowWithShadowDeny', 'deny' has to be defined",
                );
            }
            for (field, list) in [
                ("allow", &d.allow),
                ("allowWithShadowDeny", &d.allow_with_shadow_deny),
                ("deny", &d.deny),
            ] {
                for (j, m) in items(list).iter().enumerate() {
                    validate_match(m, &rpath.field(field).index(j), v);
                }
            }
        }
        for (i, from) in items(&self.from).iter().enumerate() {
            let fpath = path.field("from").index(i);
            let kinds = [K::Mesh, K::MeshSubset, K::MeshService, K::MeshServiceSubset];
            validate_target_ref(
                &from.target_ref,
                &fpath.field("targetRef"),
                &TargetRefRules::kinds(&kinds),
                v,
            );
            match &from.default.action {
                None => v.add(&fpath.field("default").field("action"), "must be defined"),
                Some(a) if a.is_unset() => {
                    v.add(&fpath.field("default").field("action"), "must be defined")
                }
                Some(a) if !a.is_known() => v.add(
                    &fpath.field("default").field("action"),
                    format!(
                        "value '{a}' is not supported, must be one of: {}",
                        Action::KNOWN.join(", ")
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}
