//! ZoneSpec: a zone known to the global control plane, which can be disabled to cut it off.

use serde::{Deserialize, Serialize};

use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The `spec` of a Zone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneSpec {
    /// `false` disables the zone; absent means enabled.
    #[serde(
        deserialize_with = "crate::lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enabled: Option<bool>,
}

impl ZoneSpec {
    /// Whether the zone is enabled (the default).
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

impl Validate for ZoneSpec {
    fn validate(
        &self,
        _ctx: &ValidationContext<'_>,
        _path: &FieldPath,
        _violations: &mut Violations,
    ) {
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_by_default() {
        assert!(ZoneSpec::default().is_enabled());
        let spec: ZoneSpec = serde_json::from_value(serde_json::json!({"enabled": false})).unwrap();
        assert!(!spec.is_enabled());
        assert_eq!(
            serde_json::to_value(ZoneSpec::default()).unwrap(),
            serde_json::json!({})
        );
    }
}
