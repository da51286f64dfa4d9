//! MeshTrace: tracing backend (Zipkin, Datadog, OpenTelemetry), sampling and span tags. It has
//! a single top-level `default` instead of `to`/`from`.

use serde::{Deserialize, Serialize};

use super::common::{
    items, kuma_enum, validate_target_ref, BackendResourceRef, IntOrString, TargetRef,
    TargetRefKind as K, TargetRefRules,
};
use super::mesh_access_log::{check_otel_target, is_url};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshTrace.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTraceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub default: Conf,
}

/// The tracing configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<Backend>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
}

kuma_enum! {
    /// Where spans go.
    BackendType { Zipkin => "Zipkin", Datadog => "Datadog", OpenTelemetry => "OpenTelemetry" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "BackendType::is_unset"
    )]
    pub backend_type: BackendType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<Zipkin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<Datadog>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OpenTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Zipkin {
    #[serde(default, deserialize_with = "lenient::string")]
    pub url: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub trace_id128bit: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub api_version: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub shared_span_context: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datadog {
    #[serde(default, deserialize_with = "lenient::string")]
    pub url: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub split_service: Option<bool>,
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
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sampling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tag {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub literal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderTag>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderTag {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub default: Option<String>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshTraceSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(top) = &self.target_ref {
            validate_target_ref(
                top,
                &path.field("targetRef"),
                &TargetRefRules::kinds(TOP_KINDS),
                v,
            );
        }
        let dp = path.field("default");
        let bp = dp.field("backends");
        let conf = &self.default;
        match &conf.backends {
            None => v.add(&bp, "must be defined"),
            Some(b) if b.len() > 1 => v.add(&bp, "must have zero or one backend defined"),
            Some(b) => {
                if let Some(backend) = b.first() {
                    check_backend(backend, &bp.index(0), v);
                }
            }
        }
        for (i, tag) in items(&conf.tags).iter().enumerate() {
            let tp = dp.field("tags").index(i);
            if tag.name.is_empty() {
                v.add(&tp.field("name"), "must not be empty");
            }
            if tag.header.is_some() == tag.literal.is_some() {
                v.add(&tp, "tag must have only one type defined: header, literal");
            }
        }
        if let Some(s) = &conf.sampling {
            let sp = dp.field("sampling");
            for (name, value) in [
                ("client", &s.client),
                ("random", &s.random),
                ("overall", &s.overall),
            ] {
                if let Some(value) = value {
                    match value.decimal() {
                        None => v.add(&sp.field(name), "string is not a number"),
                        Some(d) if !(0.0..=100.0).contains(&d) => {
                            v.add(&sp.field(name), "must be between 0 and 100")
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

fn check_backend(backend: &Backend, path: &FieldPath, v: &mut Violations) {
    match &backend.backend_type {
        BackendType::Datadog => {
            let Some(d) = &backend.datadog else {
                v.add(&path.field("datadog"), "must be defined");
                return;
            };
            let up = path.field("datadog").field("url");
            match d.url.strip_prefix("http://") {
                None if !d.url.contains("://") => v.add(&up, "must be a valid url"),
                None => v.add(&up, "scheme must be http"),
                Some(rest) => {
                    let (authority, tail) = match rest.find(['/', '?', '#']) {
                        Some(i) => (&rest[..i], &rest[i..]),
                        None => (rest, ""),
                    };
                    match authority.rsplit_once(':') {
                        None => v.add(&up, "port must be defined"),
                        Some((_, port)) => {
                            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                                v.add(&up, "port must be a valid (1-65535)");
                            }
                        }
                    }
                    if !tail.is_empty() {
                        v.add(&up, "path must not be defined");
                    }
                }
            }
        }
        BackendType::Zipkin => {
            let Some(z) = &backend.zipkin else {
                v.add(&path.field("zipkin"), "must be defined");
                return;
            };
            let up = path.field("zipkin").field("url");
            if z.url.is_empty() {
                v.add(&up, "must not be empty");
            } else if !is_url(&z.url) {
                v.add(&up, "must be a valid url");
            }
        }
        BackendType::OpenTelemetry => {
            let Some(o) = &backend.open_telemetry else {
                v.add(&path.field("openTelemetry"), "must be defined");
                return;
            };
            check_otel_target(
                &o.endpoint,
                o.backend_ref.as_ref(),
                &path.field("openTelemetry"),
                v,
            );
        }
        BackendType::Other(t) => v.add(
            &path.field("type"),
            if t.is_empty() {
                "must be defined".to_owned()
            } else {
                format!(
                    "value '{t}' is not supported, must be one of: {}",
                    BackendType::KNOWN.join(", ")
                )
            },
        ),
    }
}
