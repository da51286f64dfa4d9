//! MeshService: a service as a resource (selector of its Dataplanes, ports, identities). Mostly
//! written by zone control planes; decoded permissively.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::IntOrString;
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshService.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshServiceSpec {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub state: Option<String>,
    #[serde(default)]
    pub selector: Selector,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<Identity>>,
}

/// Which Dataplanes back the service (at most one way).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_map"
    )]
    pub dataplane_tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_ref: Option<DataplaneRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_labels: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneRef {
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient::string"
    )]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    #[serde(default, rename = "type", deserialize_with = "lenient::string")]
    pub identity_type: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

impl Validate for MeshServiceSpec {
    fn validate(&self, ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let name = ctx
            .meta
            .labels
            .get("kuma.io/display-name")
            .unwrap_or(&ctx.meta.name);
        if name.len() > 63 {
            v.add(
                &FieldPath::new("name"),
                "must not be longer than 63 characters",
            );
        }
        let s = &self.selector;
        let set = [
            s.dataplane_tags.is_some(),
            s.dataplane_ref.is_some(),
            s.dataplane_labels.is_some(),
        ];
        if set.iter().filter(|x| **x).count() > 1 {
            v.add(
                &path.field("selector"),
                "must specify only one of: dataplaneTags, dataplaneRef, or dataplaneLabels",
            );
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.port.is_some_and(|n| !(1..=65535).contains(&n)) {
                v.add(
                    &path.field("ports").index(i).field("port"),
                    "port must be a valid (1-65535)",
                );
            }
        }
    }
}
