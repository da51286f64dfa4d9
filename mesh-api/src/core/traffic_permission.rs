//! TrafficPermissionSpec: the legacy selector-based allow rule (sources may reach destinations).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::common::{validate_tags, TagRules, TagValues};
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// A tag selector (`match: {kuma.io/service: web}`); `*` matches any value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Selector {
    #[serde(
        rename = "match",
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_tags: BTreeMap<String, String>,
}

impl Selector {
    /// Whether `tags` satisfy this selector.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.match_tags
            .iter()
            .all(|(k, v)| tags.get(k).is_some_and(|t| v == "*" || t == v))
    }
}

/// Checks a list of selectors at `path` (`sources`), each at `path[i].match`.
pub(crate) fn validate_selectors(
    path: &FieldPath,
    selectors: &[Selector],
    rules: TagRules,
    v: &mut Violations,
) {
    if selectors.is_empty() {
        v.add(path, "must have at least one element");
    }
    for (i, selector) in selectors.iter().enumerate() {
        validate_tags(
            &path.index(i).field("match"),
            &selector.match_tags,
            rules,
            v,
        );
    }
}

/// The `spec` of a TrafficPermission.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPermissionSpec {
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sources: Vec<Selector>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destinations: Vec<Selector>,
}

impl Validate for TrafficPermissionSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let rules = TagRules {
            values: TagValues::Selector,
            require_at_least_one: true,
            ..TagRules::default()
        };
        validate_selectors(&path.field("sources"), &self.sources, rules, v);
        validate_selectors(&path.field("destinations"), &self.destinations, rules, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_with_wildcards() {
        let s: Selector =
            serde_json::from_value(serde_json::json!({"match": {"kuma.io/service": "*", "v": 1}}))
                .unwrap();
        let tags: BTreeMap<String, String> = [
            ("kuma.io/service".to_string(), "web".to_string()),
            ("v".into(), "1".into()),
        ]
        .into();
        assert!(s.matches(&tags));
        assert!(!s.matches(&BTreeMap::new()));
    }

    #[test]
    fn needs_sources_and_destinations() {
        let meta = crate::resource::ResourceMeta::default();
        let mut v = Violations::new();
        let spec: TrafficPermissionSpec =
            serde_json::from_value(serde_json::json!({"sources": [{"match": {}}]})).unwrap();
        spec.validate(
            &ValidationContext { meta: &meta },
            &FieldPath::root(),
            &mut v,
        );
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, vec!["sources[0].match", "destinations"]);
    }
}
