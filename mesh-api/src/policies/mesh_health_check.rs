//! MeshHealthCheck: active health checking (TCP, HTTP, gRPC) of outbound upstreams.

use serde::{Deserialize, Serialize};

use super::common::{
    items, validate_percentage, validate_positive, validate_status_code, validate_target_ref,
    Duration, HeaderModifier, IntOrString, TargetRef, TargetRefKind as K, TargetRefRules, ToEntry,
    UINT_PERCENTAGE_RANGE,
};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshHealthCheck.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshHealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<ToEntry<Conf>>>,
}

/// `to[].default`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub unhealthy_threshold: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub healthy_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub interval_jitter_percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<IntOrString>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub fail_traffic_on_panic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_interval: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub event_log_path: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub always_log_health_check_failures: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub reuse_connection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpHealthCheck {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub disabled: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub send: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_vec"
    )]
    pub receive: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub disabled: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_to_add: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<i64>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcHealthCheck {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub disabled: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub service_name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub authority: Option<String>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshHealthCheckSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS).with_gateway_tags();
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        for (i, to) in items(&self.to).iter().enumerate() {
            let tpath = path.field("to").index(i);
            let kinds = [
                K::Mesh,
                K::MeshService,
                K::MeshExternalService,
                K::MeshMultiZoneService,
            ];
            validate_target_ref(
                &to.target_ref,
                &tpath.field("targetRef"),
                &TargetRefRules::kinds(&kinds),
                v,
            );
            to.default.check(&tpath.field("default"), v);
        }
    }
}

impl Conf {
    fn check(&self, path: &FieldPath, v: &mut Violations) {
        let positive = |v: &mut Violations, field: &str, n: Option<i64>| {
            if n.is_some_and(|n| n <= 0) {
                v.add(&path.field(field), "must be greater than zero when defined");
            }
        };
        validate_positive(&path.field("interval"), self.interval.as_ref(), v);
        validate_positive(&path.field("timeout"), self.timeout.as_ref(), v);
        positive(v, "unhealthyThreshold", self.unhealthy_threshold);
        positive(v, "healthyThreshold", self.healthy_threshold);
        validate_positive(
            &path.field("initialJitter"),
            self.initial_jitter.as_ref(),
            v,
        );
        validate_positive(
            &path.field("intervalJitter"),
            self.interval_jitter.as_ref(),
            v,
        );
        if self
            .interval_jitter_percent
            .is_some_and(|p| !(0..=100).contains(&p))
        {
            v.add(&path.field("intervalJitterPercent"), UINT_PERCENTAGE_RANGE);
        }
        validate_percentage(
            &path.field("healthyPanicThreshold"),
            self.healthy_panic_threshold.as_ref(),
            false,
            true,
            v,
        );
        validate_positive(
            &path.field("noTrafficInterval"),
            self.no_traffic_interval.as_ref(),
            v,
        );
        if let Some(p) = &self.event_log_path {
            if p.is_empty() || p.contains('\0') {
                v.add(
                    &path.field("eventLogPath"),
                    "must be a valid path when defined",
                );
            }
        }
        if let Some(http) = &self.http {
            let hp = path.field("http");
            if http.path.as_deref() == Some("") {
                v.add(&hp.field("path"), "must be defined");
            }
            for (i, s) in items(&http.expected_statuses).iter().enumerate() {
                validate_status_code(&hp.field("expectedStatuses").index(i), *s, v);
            }
        }
        if self.http.is_none() && self.tcp.is_none() && self.grpc.is_none() {
            v.add(path, "must have at least one defined: http, tcp, grpc");
        }
    }
}
