//! MeshRetry: retry behaviour for outbound TCP, HTTP and gRPC traffic.
//!
//! Kuma reports every violation inside `default` under an extra `conf` segment
//! (`spec.to[0].default.conf.http.retryOn[0]`); Meridian keeps that quirk so paths match.

use serde::{Deserialize, Serialize};

use super::common::{
    items, kuma_enum, top_or_mesh, validate_target_ref, Duration, TargetRef, TargetRefKind as K,
    TargetRefRules, ToEntry,
};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshRetry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshRetrySpec {
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
    pub tcp: Option<Tcp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tcp {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_connect_attempt: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackOff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

kuma_enum! {
    /// How a rate-limit reset header is formatted.
    RateLimitFormat { Seconds => "Seconds", UnixTimestamp => "UnixTimestamp" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResetHeader {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, skip_serializing_if = "RateLimitFormat::is_unset")]
    pub format: RateLimitFormat,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitedBackOff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_headers: Option<Vec<ResetHeader>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

kuma_enum! {
    /// How a header is matched.
    HeaderMatchType {
        Exact => "Exact",
        Present => "Present",
        RegularExpression => "RegularExpression",
        Absent => "Absent",
        Prefix => "Prefix",
    }
}

/// A header match (retriable request/response headers).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub match_type: Option<HeaderMatchType>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub value: Option<String>,
}

kuma_enum! {
    /// A host selection predicate.
    PredicateType {
        OmitPreviousHosts => "OmitPreviousHosts",
        OmitHostsWithTags => "OmitHostsWithTags",
        OmitPreviousPriorities => "OmitPreviousPriorities",
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Predicate {
    #[serde(default)]
    pub predicate: PredicateType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_map"
    )]
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub update_frequency: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Http {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub num_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    /// Enum names (`5xx`, `GatewayError`, ...) or HTTP status codes (`503`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_vec"
    )]
    pub retry_on: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_selection: Option<Vec<Predicate>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub host_selection_max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_response_headers: Option<Vec<HeaderMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_request_headers: Option<Vec<HeaderMatch>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grpc {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub num_retries: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited_back_off: Option<RateLimitedBackOff>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_vec"
    )]
    pub retry_on: Option<Vec<String>>,
}

/// The `retryOn` names Kuma accepts for HTTP (besides status codes).
pub const HTTP_RETRY_ON: &[&str] = &[
    "5xx",
    "GatewayError",
    "Reset",
    "Retriable4xx",
    "ConnectFailure",
    "EnvoyRatelimited",
    "RefusedStream",
    "Http3PostConnectFailure",
    "HttpMethodConnect",
    "HttpMethodDelete",
    "HttpMethodGet",
    "HttpMethodHead",
    "HttpMethodOptions",
    "HttpMethodPatch",
    "HttpMethodPost",
    "HttpMethodPut",
    "HttpMethodTrace",
];

/// The `retryOn` names Kuma accepts for gRPC.
pub const GRPC_RETRY_ON: &[&str] = &[
    "Canceled",
    "DeadlineExceeded",
    "Internal",
    "ResourceExhausted",
    "Unavailable",
];

/// Whether `code` is a registered HTTP status code (the ones with a standard reason phrase).
pub fn is_known_status(code: u16) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429
        | 431 | 451 | 500..=508 | 510 | 511)
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::MeshHTTPRoute,
    K::Dataplane,
];

impl Validate for MeshRetrySpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS).with_gateway_tags();
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let top = top_or_mesh(&self.target_ref).kind;
        let kinds: &[K] = if matches!(top, K::MeshGateway | K::MeshHTTPRoute) {
            &[K::Mesh, K::MeshExternalService]
        } else {
            &[
                K::Mesh,
                K::MeshService,
                K::MeshExternalService,
                K::MeshMultiZoneService,
                K::MeshHTTPRoute,
            ]
        };
        for (i, to) in items(&self.to).iter().enumerate() {
            let tpath = path.field("to").index(i);
            validate_target_ref(
                &to.target_ref,
                &tpath.field("targetRef"),
                &TargetRefRules::kinds(kinds),
                v,
            );
            to.default.check(&tpath.field("default").field("conf"), v);
        }
    }
}

impl Conf {
    fn check(&self, path: &FieldPath, v: &mut Violations) {
        if self.tcp.is_none() && self.http.is_none() && self.grpc.is_none() {
            v.add(
                path,
                "at least one of the 'tcp', 'http', 'grpc' must be specified",
            );
        }
        if let Some(tcp) = &self.tcp {
            match tcp.max_connect_attempt {
                None => v.add(&path.field("tcp"), "must not be empty"),
                Some(n) if n <= 0 => v.add(
                    &path.field("tcp").field("maxConnectAttempt"),
                    "must be greater than 0",
                ),
                Some(_) => {}
            }
        }
        if let Some(http) = &self.http {
            let hp = path.field("http");
            if http.num_retries.is_none()
                && http.per_try_timeout.is_none()
                && http.back_off.is_none()
                && http.retry_on.is_none()
                && http.retriable_request_headers.is_none()
                && http.retriable_response_headers.is_none()
                && http.rate_limited_back_off.is_none()
                && http.host_selection.is_none()
            {
                v.add(&hp, "must not be empty");
            }
            check_back_off(
                &hp,
                http.back_off.as_ref(),
                http.rate_limited_back_off.as_ref(),
                v,
            );
            for (i, item) in items(&http.retry_on).iter().enumerate() {
                let known = HTTP_RETRY_ON.contains(&item.as_str())
                    || item.parse::<u16>().is_ok_and(is_known_status);
                if !known {
                    v.add(
                        &hp.field("retryOn").index(i),
                        format!("unknown item '{item}'"),
                    );
                }
            }
            let mut priorities_set = false;
            for (i, p) in items(&http.host_selection).iter().enumerate() {
                let pp = hp.field("hostSelection").index(i);
                match &p.predicate {
                    PredicateType::OmitHostsWithTags => {
                        if p.tags.is_none() {
                            v.add(&pp.field("tags"), "must be defined");
                        }
                    }
                    PredicateType::OmitPreviousPriorities => {
                        if priorities_set {
                            v.add(
                                &pp.field("predicate"),
                                format!("{} must only be specified once", p.predicate),
                            );
                        }
                        if p.update_frequency.unwrap_or(0) <= 0 {
                            v.add(
                                &pp.field("updateFrequency"),
                                "must be defined and greater than zero",
                            );
                        }
                        priorities_set = true;
                    }
                    PredicateType::OmitPreviousHosts => {}
                    PredicateType::Other(t) => v.add(
                        &pp.field("predicate"),
                        format!("unknown predicate type '{t}'"),
                    ),
                }
            }
        }
        if let Some(grpc) = &self.grpc {
            let gp = path.field("grpc");
            if grpc.num_retries.is_none()
                && grpc.per_try_timeout.is_none()
                && grpc.back_off.is_none()
                && grpc.retry_on.is_none()
                && grpc.rate_limited_back_off.is_none()
            {
                v.add(&gp, "must not be empty");
            }
            check_back_off(
                &gp,
                grpc.back_off.as_ref(),
                grpc.rate_limited_back_off.as_ref(),
                v,
            );
            for (i, item) in items(&grpc.retry_on).iter().enumerate() {
                if !GRPC_RETRY_ON.contains(&item.as_str()) {
                    v.add(
                        &gp.field("retryOn").index(i),
                        format!("unknown item '{item}'"),
                    );
                }
            }
        }
    }
}

fn check_back_off(
    path: &FieldPath,
    back_off: Option<&BackOff>,
    rate_limited: Option<&RateLimitedBackOff>,
    v: &mut Violations,
) {
    if let Some(b) = back_off {
        if b.base_interval.is_none() && b.max_interval.is_none() {
            v.add(&path.field("backOff"), "must not be empty");
        }
    }
    if let Some(r) = rate_limited {
        let rp = path.field("rateLimitedBackOff");
        if r.max_interval.as_ref().is_some_and(|d| d.nanos() <= 0) {
            v.add(
                &rp.field("maxInterval"),
                "must be defined and greater than zero",
            );
        }
        match &r.reset_headers {
            None => v.add(&rp.field("resetHeaders"), "must be defined"),
            Some(headers) => {
                for (i, h) in headers.iter().enumerate() {
                    if h.name.is_empty() {
                        v.add(
                            &rp.field("resetHeaders").index(i).field("name"),
                            "must be defined",
                        );
                    }
                }
            }
        }
    }
}
