//! ZoneInsightSpec: the summary a zone control plane keeps of itself and reports to the global
//! over KDS (what it runs, which version): computed by the zone, never written by users.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The `spec` of a ZoneInsight (one per zone, named after the zone).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneInsightSpec {
    /// The zone this summary describes.
    pub zone: String,
    /// The zone control plane's version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Per mesh: how many Dataplanes and distinct services the zone runs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meshes: BTreeMap<String, MeshSummary>,
    pub zone_ingresses: u32,
    pub zone_egresses: u32,
}

/// What a zone runs in one mesh.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshSummary {
    pub dataplanes: u32,
    /// Distinct `kuma.io/service` values among the Dataplanes' inbounds.
    pub services: u32,
}

impl Validate for ZoneInsightSpec {
    fn validate(
        &self,
        _ctx: &ValidationContext<'_>,
        path: &FieldPath,
        violations: &mut Violations,
    ) {
        if self.zone.is_empty() {
            violations.add(&path.field("zone"), "cannot be empty");
        }
    }
}
