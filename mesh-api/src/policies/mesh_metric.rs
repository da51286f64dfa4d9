//! MeshMetric: which proxy and application metrics are exposed, and to which backends
//! (Prometheus scraping, OpenTelemetry push). Single top-level `default`.

use serde::{Deserialize, Serialize};

use super::common::{
    items, kuma_enum, validate_target_ref, BackendResourceRef, Duration, TargetRef,
    TargetRefKind as K, TargetRefRules,
};
use super::mesh_access_log::check_otel_target;
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshMetric.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshMetricSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub default: Conf,
}

/// The metrics configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<Vec<Application>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Profiles>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub include_unused: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_profiles: Option<Vec<Profile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<Selector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<Selector>>,
}

kuma_enum! {
    /// A predefined set of metrics.
    ProfileName { All => "All", None => "None", Basic => "Basic" }
}

kuma_enum! {
    /// How a metric name is selected.
    SelectorType { Prefix => "Prefix", Regex => "Regex", Exact => "Exact", Contains => "Contains" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(default)]
    pub name: ProfileName,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(default, rename = "type")]
    pub selector_type: SelectorType,
    #[serde(default, rename = "match", deserialize_with = "lenient::string")]
    pub match_value: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub path: Option<String>,
    #[serde(default, deserialize_with = "port")]
    pub port: i64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub address: Option<String>,
}

fn port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    lenient::opt_i64(d).map(Option::unwrap_or_default)
}

kuma_enum! {
    /// Where metrics go.
    BackendType { Prometheus => "Prometheus", OpenTelemetry => "OpenTelemetry" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    #[serde(default, rename = "type")]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<Prometheus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OpenTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prometheus {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub client_id: Option<String>,
    #[serde(default, deserialize_with = "port")]
    pub port: i64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetry {
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient::string"
    )]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<BackendResourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<Duration>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshService,
    K::MeshServiceSubset,
    K::MeshGateway,
    K::Dataplane,
];

impl Validate for MeshMetricSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS).with_gateway_tags();
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let dp = path.field("default");
        if let Some(profiles) = self
            .default
            .sidecar
            .as_ref()
            .and_then(|s| s.profiles.as_ref())
        {
            let pp = dp.field("sidecar").field("profiles");
            for (field, list) in [
                ("exclude", &profiles.exclude),
                ("include", &profiles.include),
            ] {
                for (i, s) in items(list).iter().enumerate() {
                    let sp = pp.field(field).index(i);
                    match &s.selector_type {
                        SelectorType::Regex if s.match_value.is_empty() => {
                            v.add(&sp.field("match"), "invalid regex")
                        }
                        SelectorType::Other(t) => v.add(
                            &sp.field("type"),
                            format!("unrecognized type '{t}' - 'Regex', 'Prefix', 'Exact' are supported"),
                        ),
                        _ => {}
                    }
                }
            }
            for (i, p) in items(&profiles.append_profiles).iter().enumerate() {
                if !p.name.is_known() {
                    v.add(
                        &pp.field("appendProfiles").index(i).field("name"),
                        format!(
                            "unrecognized profile name '{}' - 'All', 'None', 'Basic' are supported",
                            p.name
                        ),
                    );
                }
            }
        }
        for (i, a) in items(&self.default.applications).iter().enumerate() {
            if !(1..=65535).contains(&a.port) {
                v.add(
                    &dp.field("applications").index(i).field("port"),
                    "port must be a valid (1-65535)",
                );
            }
        }
        for (i, b) in items(&self.default.backends).iter().enumerate() {
            let bp = dp.field("backends").index(i);
            match &b.backend_type {
                BackendType::Prometheus => match &b.prometheus {
                    None => v.add(&bp.field("prometheus"), "must be defined"),
                    Some(p) if !(1..=65535).contains(&p.port) => v.add(
                        &bp.field("prometheus").field("port"),
                        "port must be a valid (1-65535)",
                    ),
                    Some(_) => {}
                },
                BackendType::OpenTelemetry => match &b.open_telemetry {
                    None => v.add(&bp.field("openTelemetry"), "must be defined"),
                    Some(o) => {
                        let op = bp.field("openTelemetry");
                        check_otel_target(&o.endpoint, o.backend_ref.as_ref(), &op, v);
                        if !o.endpoint.is_empty()
                            && !o.endpoint.contains(['/', '?', '#'])
                            && o.endpoint.rsplit_once(':').is_none()
                        {
                            v.add(&op.field("endpoint"), "must be in host:port format");
                        }
                    }
                },
                BackendType::Other(_) => v.add(&bp, "unrecognized type"),
            }
        }
    }
}
