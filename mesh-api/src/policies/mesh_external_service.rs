//! MeshExternalService: a service outside the mesh, reachable through a generated hostname and
//! port, with its endpoints and the TLS used to reach them.

use serde::{Deserialize, Serialize};

use super::common::{is_dns_name, items, kuma_enum};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshExternalService.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshExternalServiceSpec {
    #[serde(default, rename = "match")]
    pub match_: Match,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

kuma_enum! {
    /// How the service is matched (only generated hostnames today).
    MatchType { HostnameGenerator => "HostnameGenerator" }
}

/// What traffic this external service answers: a port and protocol on generated hostnames.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    #[serde(default, rename = "type", skip_serializing_if = "MatchType::is_unset")]
    pub match_type: MatchType,
    #[serde(default, deserialize_with = "int")]
    pub port: i64,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient::string"
    )]
    pub protocol: String,
}

fn int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    lenient::opt_i64(d).map(Option::unwrap_or_default)
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    #[serde(default, rename = "type", deserialize_with = "lenient::string")]
    pub extension_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// An address and port the service is reached at.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, deserialize_with = "lenient::string")]
    pub address: String,
    #[serde(default, deserialize_with = "int")]
    pub port: i64,
}

kuma_enum! {
    /// A TLS protocol version bound.
    TlsVersion { TlsAuto => "TLSAuto", Tls10 => "TLS10", Tls11 => "TLS11", Tls12 => "TLS12", Tls13 => "TLS13" }
}

kuma_enum! {
    /// How much of the server certificate is checked.
    VerificationMode { SkipSan => "SkipSAN", SkipCa => "SkipCA", SkipAll => "SkipAll", Secured => "Secured" }
}

kuma_enum! {
    /// How a subject alternative name is compared.
    SanMatchType { Prefix => "Prefix", Exact => "Exact" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub allow_renegotiation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<TlsVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<TlsVersion>,
}

/// A secret given inline or by reference.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub secret: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub inline: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub inline_string: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SanMatch {
    #[serde(default, rename = "type")]
    pub match_type: SanMatchType,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    #[serde(default, skip_serializing_if = "VerificationMode::is_unset")]
    pub mode: VerificationMode,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_alt_names: Option<Vec<SanMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<DataSource>,
}

const PROTOCOLS: &[&str] = &["tcp", "grpc", "http", "http2"];

fn one_of(field: &str, allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
    format!("{field:?} must be one of [{}]", quoted.join(", "))
}

fn valid_port(port: i64) -> bool {
    (1..=65535).contains(&port)
}

impl Validate for MeshExternalServiceSpec {
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
        let mp = path.field("match");
        let m = &self.match_;
        if !m.match_type.is_unset() && m.match_type != MatchType::HostnameGenerator {
            v.add(
                &mp.field("type"),
                format!(
                    "unrecognized type '{}' - only 'HostnameGenerator' is supported",
                    m.match_type
                ),
            );
        }
        if !valid_port(m.port) {
            v.add(&mp.field("port"), "port must be a valid (1-65535)");
        }
        if !PROTOCOLS.contains(&m.protocol.as_str()) {
            v.add(&mp.field("protocol"), one_of("protocol", PROTOCOLS));
        }
        if self.extension.is_none() {
            for (i, e) in items(&self.endpoints).iter().enumerate() {
                let ep = path.field("endpoints").index(i);
                let is_ip = e.address.parse::<std::net::IpAddr>().is_ok();
                if is_ip || is_dns_name(&e.address) {
                    if !valid_port(e.port) {
                        v.add(&ep.field("port"), "port must be a valid (1-65535)");
                    }
                } else {
                    v.add(
                        &ep.field("address"),
                        "address has to be a valid IP or hostname",
                    );
                }
            }
            if let Some(tls) = &self.tls {
                check_tls(tls, &path.field("tls"), v);
            }
        }
        if let Some(e) = &self.extension {
            if e.extension_type.is_empty() {
                v.add(&path.field("extension").field("type"), "must not be empty");
            }
        }
    }
}

fn check_tls(tls: &Tls, path: &FieldPath, v: &mut Violations) {
    if let Some(version) = &tls.version {
        let vp = path.field("version");
        let rank = |t: &TlsVersion| TlsVersion::KNOWN.iter().position(|k| *k == t.as_str());
        let mut specific = [None, None];
        for (slot, (field, value)) in [("min", &version.min), ("max", &version.max)]
            .into_iter()
            .enumerate()
        {
            if let Some(value) = value {
                if !value.is_known() {
                    v.add(&vp.field(field), one_of(field, TlsVersion::KNOWN));
                } else if *value != TlsVersion::TlsAuto {
                    specific[slot] = rank(value);
                }
            }
        }
        if let [Some(min), Some(max)] = specific {
            if min > max {
                v.add(&vp.field("min"), "min version must be lower than max");
            }
        }
    }
    if let Some(ver) = &tls.verification {
        let vp = path.field("verification");
        if ver.server_name.as_ref().is_some_and(|s| !is_dns_name(s)) {
            v.add(&vp.field("serverName"), "must be a valid DNS name");
        }
        if !ver.mode.is_unset() && !ver.mode.is_known() {
            v.add(&vp.field("mode"), one_of("mode", VerificationMode::KNOWN));
        }
        for (i, san) in items(&ver.subject_alt_names).iter().enumerate() {
            if !san.match_type.is_known() {
                v.add(
                    &vp.field("subjectAltNames").index(i).field("type"),
                    one_of("type", &["Prefix", "Exact"]),
                );
            }
        }
        if ver.client_cert.is_some() && ver.client_key.is_none() {
            v.add(
                &vp.field("clientKey"),
                "must be defined when clientCert is defined",
            );
        }
        if ver.client_cert.is_none() && ver.client_key.is_some() {
            v.add(
                &vp.field("clientCert"),
                "must be defined when clientKey is defined",
            );
        }
    }
}
