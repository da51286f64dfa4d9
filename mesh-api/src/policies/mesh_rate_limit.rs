//! MeshRateLimit: local HTTP request and TCP connection rate limits on inbound traffic.

use serde::{Deserialize, Serialize};

use super::common::{
    items, len_of, top_or_mesh, validate_rule_matches, validate_target_ref, DirectionalPolicy,
    Duration, HeaderModifier, TargetRefKind as K, TargetRefRules,
};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshRateLimit: the shared targetRef/to/from/rules shape over [`Conf`].
pub type MeshRateLimitSpec = DirectionalPolicy<Conf>;

/// One entry's limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<Local>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Local {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<LocalHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<LocalTcp>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalHttp {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalTcp {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate: Option<Rate>,
}

/// `num` events per `interval`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub num: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnRateLimit {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderModifier>,
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

const GATEWAY_FROM: &str = "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to";

impl Validate for MeshRateLimitSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let (rules_n, to_n, from_n) = (len_of(&self.rules), len_of(&self.to), len_of(&self.from));
        if rules_n > 0 && (to_n > 0 || from_n > 0) {
            v.add(
                path,
                "fields 'to' and 'from' must be empty when 'rules' is defined",
            );
        }
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS)
                .with_gateway_tags()
                .inbound(rules_n > 0 || from_n > 0);
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let top = top_or_mesh(&self.target_ref);
        if (top.includes_gateways() || top.kind == K::MeshHTTPRoute) && rules_n > 0 {
            v.add(&path.field("rules"), "must not be defined");
        } else {
            for (i, rule) in items(&self.rules).iter().enumerate() {
                let rpath = path.field("rules").index(i);
                let dpath = rpath.field("default");
                if validate_rule_matches(items(&rule.matches), &rpath.field("matches"), v)
                    && rule.default.local.as_ref().is_some_and(|l| l.tcp.is_some())
                {
                    v.add(
                        &dpath.field("local").field("tcp"),
                        "can't be specified when matches contain spiffeID because this field cannot be conditioned on source identity",
                    );
                }
                rule.default.check(&dpath, v);
            }
        }
        if top.includes_gateways() && from_n > 0 {
            v.add(&path.field("from"), GATEWAY_FROM);
        } else if top.kind == K::MeshHTTPRoute && from_n > 0 {
            v.add(
                &path.field("from"),
                "must not be defined when spec.kind is MeshHTTPRoute",
            );
        } else {
            for (i, from) in items(&self.from).iter().enumerate() {
                let fpath = path.field("from").index(i);
                validate_target_ref(
                    &from.target_ref,
                    &fpath.field("targetRef"),
                    &TargetRefRules::kinds(&[K::Mesh]),
                    v,
                );
                from.default.check(&fpath.field("default"), v);
            }
        }
        if !top.includes_gateways() && to_n > 0 {
            v.add(&path.field("to"), "must not be defined");
        } else {
            for (i, to) in items(&self.to).iter().enumerate() {
                let tpath = path.field("to").index(i);
                validate_target_ref(
                    &to.target_ref,
                    &tpath.field("targetRef"),
                    &TargetRefRules::kinds(&[K::Mesh]),
                    v,
                );
                to.default.check(&tpath.field("default"), v);
            }
        }
    }
}

fn check_rate(path: &FieldPath, rate: &Rate, v: &mut Violations) {
    if rate.num.unwrap_or(0) <= 0 {
        v.add(&path.field("num"), "must be greater than 0");
    }
    if rate.interval.as_ref().map_or(0, Duration::nanos) <= 50_000_000 {
        v.add(&path.field("interval"), "must be greater than: 50ms");
    }
}

impl Conf {
    fn check(&self, path: &FieldPath, v: &mut Violations) {
        let lp = path.field("local");
        let Some(local) = &self.local else {
            v.add(&lp, "must be defined");
            return;
        };
        if local.tcp.is_none() && local.http.is_none() {
            v.add(&lp, "must have at least one defined: tcp, http");
        }
        if let Some(http) = &local.http {
            let hp = lp.field("http");
            if http.disabled.is_none()
                && http.request_rate.is_none()
                && http.on_rate_limit.is_none()
            {
                v.add(
                    &hp,
                    "must have at least one defined: disabled, requestRate, onRateLimit",
                );
            } else {
                if let Some(rate) = &http.request_rate {
                    check_rate(&hp.field("requestRate"), rate, v);
                }
                if let Some(on) = &http.on_rate_limit {
                    if on.status.is_some_and(|s| s <= 0) {
                        v.add(
                            &hp.field("onRateLimit").field("status"),
                            "must be greater than 0",
                        );
                    }
                }
            }
        }
        if let Some(tcp) = &local.tcp {
            let tp = lp.field("tcp");
            if tcp.disabled.is_none() && tcp.connection_rate.is_none() {
                v.add(
                    &tp,
                    "must have at least one defined: disabled, connectionRate",
                );
            } else if let Some(rate) = &tcp.connection_rate {
                check_rate(&tp.field("connectionRate"), rate, v);
            }
        }
    }
}
