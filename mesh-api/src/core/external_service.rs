//! ExternalServiceSpec: a service outside the mesh (`host:port`, optional TLS origination) that
//! mesh services reach by its `kuma.io/service` tag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::common::{is_dns_name, is_ip, validate_port, validate_tags, DataSource, TagRules};
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};
use crate::SERVICE_TAG;

/// The `spec` of an ExternalService.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExternalServiceSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking: Option<ExternalServiceNetworking>,
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
}

impl ExternalServiceSpec {
    /// The `kuma.io/service` tag.
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }
}

/// `networking`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExternalServiceNetworking {
    /// `host:port`
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalServiceTls>,
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_host_dns_entry: bool,
}

impl ExternalServiceNetworking {
    /// The host and port of `address`, when it has that form.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = split_host_port(&self.address)?;
        Some((host, port.parse().ok()?))
    }
}

/// `networking.tls`: TLS originated by the proxy towards the external service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExternalServiceTls {
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub enabled: bool,
    #[serde(alias = "ca_cert", skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<DataSource>,
    #[serde(alias = "client_cert", skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<DataSource>,
    #[serde(alias = "client_key", skip_serializing_if = "Option::is_none")]
    pub client_key: Option<DataSource>,
    #[serde(
        deserialize_with = "crate::lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_renegotiation: Option<bool>,
    #[serde(alias = "server_name", skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(
        deserialize_with = "crate::lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub skip_hostname_verification: Option<bool>,
}

/// Splits `host:port` (`[v6]:port` for IPv6) as Go's `net.SplitHostPort` does.
fn split_host_port(address: &str) -> Option<(&str, &str)> {
    if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host, port));
    }
    let (host, port) = address.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

fn validate_address(path: &FieldPath, address: &str, v: &mut Violations) {
    let at = path.field("address");
    if address.is_empty() {
        v.add(&at, "address can't be empty");
        return;
    }
    let (host, port) = match split_host_port(address) {
        Some(parts) => parts,
        None => {
            v.add(&at, "unable to parse address");
            ("", "")
        }
    };
    if !is_ip(host) && !is_dns_name(host) {
        v.add(&at, "address has to be a valid IP address or a domain name");
    }
    let port = match port.parse::<u32>() {
        Ok(p) => p,
        Err(_) => {
            v.add(&at, "unable to parse port in address");
            0
        }
    };
    validate_port(&at, port, v);
}

impl Validate for ExternalServiceSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let net = path.field("networking");
        match &self.networking {
            None => v.add(&net, "should have networking"),
            Some(n) => {
                validate_address(&net, &n.address, v);
                if let Some(tls) = &n.tls {
                    let at = net.field("tls");
                    if tls.server_name.as_deref() == Some("") {
                        v.add(&at.field("serverName"), "cannot be empty");
                    }
                    for (name, ds) in [
                        ("caCert", &tls.ca_cert),
                        ("clientCert", &tls.client_cert),
                        ("clientKey", &tls.client_key),
                    ] {
                        if let Some(ds) = ds {
                            ds.validate(&at.field(name), v);
                        }
                    }
                }
            }
        }
        validate_tags(
            &path.field("tags"),
            &self.tags,
            TagRules {
                require_service: true,
                check_protocol: true,
                ..TagRules::default()
            },
            v,
        );
        if let (Some(service), Some((host, _))) = (
            self.service(),
            self.networking
                .as_ref()
                .and_then(|n| split_host_port(&n.address)),
        ) {
            if service == host {
                v.add(
                    &path.field("tags").key(SERVICE_TAG),
                    "cannot be the same as networking.address",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: serde_json::Value) -> Vec<String> {
        let spec: ExternalServiceSpec = serde_json::from_value(json).unwrap();
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
    fn valid_and_invalid() {
        assert!(fields(serde_json::json!({
            "networking": {"address": "httpbin.org:443", "tls": {"enabled": true, "serverName": "httpbin.org"}},
            "tags": {"kuma.io/service": "httpbin", "kuma.io/protocol": "http"}
        }))
        .is_empty());
        assert_eq!(
            fields(serde_json::json!({
                "networking": {"address": "httpbin.org", "tls": {"caCert": {}}},
                "tags": {"kuma.io/service": "httpbin.org"}
            })),
            vec![
                "networking.address",
                "networking.address",
                "networking.address",
                "networking.address",
                "networking.tls.caCert"
            ]
        );
        assert_eq!(fields(serde_json::json!({})), vec!["networking", "tags"]);
    }

    #[test]
    fn host_port() {
        let n = ExternalServiceNetworking {
            address: "[::1]:80".into(),
            ..Default::default()
        };
        assert_eq!(n.host_port(), Some(("::1", 80)));
    }
}
