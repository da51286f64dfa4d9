//! MeshTimeout: connection, idle and HTTP timeouts for inbound (`from`, `rules`) and outbound
//! (`to`) traffic.

use serde::{Deserialize, Serialize};

use super::common::{
    items, len_of, top_or_mesh, validate_not_negative, validate_positive, validate_rule_matches,
    validate_target_ref, DirectionalPolicy, Duration, TargetRefKind as K, TargetRefRules,
};
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshTimeout: the shared targetRef/to/from/rules shape over [`Conf`].
pub type MeshTimeoutSpec = DirectionalPolicy<Conf>;

/// The timeouts of one entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
}

/// HTTP-level timeouts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Http {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Duration>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::Dataplane,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::MeshHTTPRoute,
];

const NOT_ON_ROUTE: &str =
    "can't be specified when top-level TargetRef is referencing MeshHTTPRoute";
const NOT_ON_SPIFFE: &str =
    "can't be specified when matches contain spiffeID because this field cannot be conditioned on source identity";

impl Validate for MeshTimeoutSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let inbound = len_of(&self.from) > 0 || len_of(&self.rules) > 0;
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS)
                .with_gateway_tags()
                .inbound(inbound);
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let (rules_n, to_n, from_n) = (len_of(&self.rules), len_of(&self.to), len_of(&self.from));
        if rules_n > 0 && (to_n > 0 || from_n > 0) {
            v.add(
                path,
                "fields 'to' and 'from' must be empty when 'rules' is defined",
            );
        }
        if rules_n == 0 && to_n == 0 && from_n == 0 {
            v.add(
                path,
                "at least one of 'from', 'to' or 'rules' has to be defined",
            );
        }
        let top = top_or_mesh(&self.target_ref).kind;
        let route_or_gateway = matches!(top, K::MeshHTTPRoute | K::MeshGateway);
        if route_or_gateway && from_n > 0 {
            v.add(&path.field("from"), "must not be defined");
        } else {
            for (i, from) in items(&self.from).iter().enumerate() {
                let fpath = path.field("from").index(i);
                validate_target_ref(
                    &from.target_ref,
                    &fpath.field("targetRef"),
                    &TargetRefRules::kinds(&[K::Mesh]),
                    v,
                );
                from.default.check(&fpath.field("default"), &top, v);
            }
        }
        for (i, to) in items(&self.to).iter().enumerate() {
            let tpath = path.field("to").index(i);
            let kinds: &[K] = if route_or_gateway {
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
            validate_target_ref(
                &to.target_ref,
                &tpath.field("targetRef"),
                &TargetRefRules::kinds(kinds),
                v,
            );
            to.default.check(&tpath.field("default"), &top, v);
        }
        for (i, rule) in items(&self.rules).iter().enumerate() {
            let rpath = path.field("rules").index(i);
            let dpath = rpath.field("default");
            let spiffe = validate_rule_matches(items(&rule.matches), &rpath.field("matches"), v);
            if spiffe {
                let d = &rule.default;
                let mut forbid = |p: FieldPath, set: bool| {
                    if set {
                        v.add(&p, NOT_ON_SPIFFE);
                    }
                };
                forbid(
                    dpath.field("connectionTimeout"),
                    d.connection_timeout.is_some(),
                );
                forbid(dpath.field("idleTimeout"), d.idle_timeout.is_some());
                if let Some(http) = &d.http {
                    let hp = dpath.field("http");
                    forbid(
                        hp.field("requestHeadersTimeout"),
                        http.request_headers_timeout.is_some(),
                    );
                    forbid(
                        hp.field("maxStreamDuration"),
                        http.max_stream_duration.is_some(),
                    );
                    forbid(
                        hp.field("maxConnectionDuration"),
                        http.max_connection_duration.is_some(),
                    );
                }
            }
            rule.default.check(&dpath, &top, v);
        }
    }
}

impl Conf {
    fn check(&self, path: &FieldPath, top: &K, v: &mut Violations) {
        if self.connection_timeout.is_none() && self.idle_timeout.is_none() && self.http.is_none() {
            v.add(path, "at least one timeout should be configured");
            return;
        }
        if *top == K::MeshHTTPRoute {
            let mut forbid = |p: FieldPath, set: bool| {
                if set {
                    v.add(&p, NOT_ON_ROUTE);
                }
            };
            forbid(
                path.field("connectionTimeout"),
                self.connection_timeout.is_some(),
            );
            forbid(path.field("idleTimeout"), self.idle_timeout.is_some());
            if let Some(http) = &self.http {
                forbid(
                    path.field("http").field("maxStreamDuration"),
                    http.max_stream_duration.is_some(),
                );
                forbid(
                    path.field("http").field("maxConnectionDuration"),
                    http.max_connection_duration.is_some(),
                );
            }
        }
        validate_positive(
            &path.field("connectionTimeout"),
            self.connection_timeout.as_ref(),
            v,
        );
        validate_not_negative(&path.field("idleTimeout"), self.idle_timeout.as_ref(), v);
        if let Some(http) = &self.http {
            let hp = path.field("http");
            if http.request_timeout.is_none()
                && http.stream_idle_timeout.is_none()
                && http.max_stream_duration.is_none()
                && http.max_connection_duration.is_none()
                && http.request_headers_timeout.is_none()
            {
                v.add(
                    &hp,
                    "at least one timeout in this section should be configured",
                );
            }
            validate_not_negative(
                &hp.field("requestTimeout"),
                http.request_timeout.as_ref(),
                v,
            );
            validate_not_negative(
                &hp.field("streamIdleTimeout"),
                http.stream_idle_timeout.as_ref(),
                v,
            );
            validate_not_negative(
                &hp.field("maxStreamDuration"),
                http.max_stream_duration.as_ref(),
                v,
            );
            validate_not_negative(
                &hp.field("maxConnectionDuration"),
                http.max_connection_duration.as_ref(),
                v,
            );
            validate_not_negative(
                &hp.field("requestHeadersTimeout"),
                http.request_headers_timeout.as_ref(),
                v,
            );
        }
    }
}
