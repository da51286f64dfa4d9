//! ZoneIngressSpec: a zone's ingress proxy (its addresses and ports, and the services it makes
//! reachable from other zones), with Kuma's validation rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::common::{validate_address, validate_port, validate_tags, TagRules};
use crate::core::dataplane::EnvoyAdmin;
use crate::core::zone_egress::overlaps_loopback;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The `spec` of a ZoneIngress.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneIngressSpec {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking: Option<ZoneIngressNetworking>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub available_services: Vec<AvailableService>,
}

/// `networking`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneIngressNetworking {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The address other zones use (a public IP or name).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub advertised_address: String,
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    #[serde(
        deserialize_with = "crate::lenient::u32",
        skip_serializing_if = "is_zero"
    )]
    pub advertised_port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<EnvoyAdmin>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `availableServices[]`: a service in this zone reachable through the ingress.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AvailableService {
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(
        deserialize_with = "crate::lenient::u32",
        skip_serializing_if = "is_zero"
    )]
    pub instances: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mesh: String,
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub external_service: bool,
}

impl Validate for ZoneIngressSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let net = path.field("networking");
        let empty = ZoneIngressNetworking::default();
        let n = self.networking.as_ref().unwrap_or(&empty);
        if let Some(admin) = &n.admin {
            if overlaps_loopback(&n.address, n.port, admin.port)
                || overlaps_loopback(&n.advertised_address, n.advertised_port, admin.port)
            {
                v.add(&net.field("admin").field("port"), "must differ from port");
            }
        }
        if n.advertised_address.is_empty() && n.advertised_port != 0 {
            v.add(
                &net.field("advertisedAddress"),
                "has to be defined with advertisedPort",
            );
        }
        if n.advertised_port == 0 && !n.advertised_address.is_empty() {
            v.add(
                &net.field("advertisedPort"),
                "has to be defined with advertisedAddress",
            );
        }
        if !n.address.is_empty() {
            validate_address(&net.field("address"), &n.address, v);
        }
        if !n.advertised_address.is_empty() {
            validate_address(&net.field("advertisedAddress"), &n.advertised_address, v);
        }
        validate_port(&net.field("port"), n.port, v);
        if n.advertised_port != 0 {
            validate_port(&net.field("advertisedPort"), n.advertised_port, v);
        }
        // Kuma reports these under the singular `availableService`.
        let services = path.field("availableService");
        for (i, service) in self.available_services.iter().enumerate() {
            validate_tags(
                &services.index(i).field("tags"),
                &service.tags,
                TagRules {
                    require_service: true,
                    ..TagRules::default()
                },
                v,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: serde_json::Value) -> Vec<String> {
        let spec: ZoneIngressSpec = serde_json::from_value(json).unwrap();
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
    fn advertised_address_and_port_go_together() {
        assert_eq!(
            fields(serde_json::json!({"networking": {"port": 1, "advertisedPort": 2}})),
            vec!["networking.advertisedAddress"]
        );
        assert_eq!(
            fields(serde_json::json!({"networking": {"port": 1, "advertisedAddress": "a.b"}})),
            vec!["networking.advertisedPort"]
        );
    }

    #[test]
    fn available_services_need_a_service_tag() {
        assert_eq!(
            fields(serde_json::json!({
                "networking": {"address": "1.1.1.1", "port": 10001},
                "availableServices": [{"tags": {"kuma.io/service": "a"}}, {"tags": {"version": 2}}]
            })),
            vec!["availableService[1].tags"]
        );
    }
}
