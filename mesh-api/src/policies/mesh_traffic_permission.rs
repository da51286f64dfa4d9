//! MeshTrafficPermissionSpec (placeholder: fields and validation to be written).

use serde::{Deserialize, Serialize};

use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTrafficPermissionSpec {}

impl Validate for MeshTrafficPermissionSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, _path: &FieldPath, _violations: &mut Violations) {}
}
