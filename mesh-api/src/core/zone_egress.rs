//! ZoneEgressSpec: a zone's egress proxy (address, port, admin port), which carries traffic to
//! other zones and external services when the mesh routes through egress.

use serde::{Deserialize, Serialize};

use crate::core::common::{validate_address, validate_port};
use crate::core::dataplane::EnvoyAdmin;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The `spec` of a ZoneEgress.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneEgressSpec {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking: Option<ZoneEgressNetworking>,
}

/// `networking`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneEgressNetworking {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<EnvoyAdmin>,
}

/// Whether an admin `port` on 127.0.0.1 collides with a listener at `address:listener_port`
/// (Kuma's overlap rule: a wildcard address overlaps everything).
pub(crate) fn overlaps_loopback(address: &str, listener_port: u32, port: u32) -> bool {
    port == listener_port
        && address.parse::<std::net::IpAddr>().is_ok_and(|ip| {
            ip.is_unspecified() || ip == std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        })
}

impl Validate for ZoneEgressSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let path = path.field("networking");
        let empty = ZoneEgressNetworking::default();
        let n = self.networking.as_ref().unwrap_or(&empty);
        if let Some(admin) = &n.admin {
            if overlaps_loopback(&n.address, n.port, admin.port) {
                v.add(&path.field("admin").field("port"), "must differ from port");
            }
        }
        if !n.address.is_empty() {
            validate_address(&path.field("address"), &n.address, v);
        }
        validate_port(&path.field("port"), n.port, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: serde_json::Value) -> Vec<String> {
        let spec: ZoneEgressSpec = serde_json::from_value(json).unwrap();
        let meta = crate::resource::ResourceMeta::default();
        let mut v = Violations::new();
        spec.validate(
            &ValidationContext { meta: &meta },
            &FieldPath::root(),
            &mut v,
        );
        v.into_vec().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn rules() {
        assert!(
            fields(serde_json::json!({"networking": {"address": "1.1.1.1", "port": 12345}}))
                .is_empty()
        );
        assert_eq!(fields(serde_json::json!({})), vec!["networking.port"]);
        assert_eq!(
            fields(
                serde_json::json!({"networking": {"address": "0.0.0.0", "port": 1, "admin": {"port": 1}}})
            ),
            vec!["networking.admin.port", "networking.address.address"]
        );
    }
}
