//! MeshFaultInjection: HTTP aborts, delays and bandwidth limits injected into traffic.

use serde::{Deserialize, Serialize};

use super::common::{
    items, len_of, top_or_mesh, validate_match, validate_percentage, validate_status_code,
    validate_target_ref, DirectionalPolicy, Duration, IntOrString, TargetRefKind as K,
    TargetRefRules,
};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshFaultInjection: the shared targetRef/to/from/rules shape over [`Conf`].
pub type MeshFaultInjectionSpec = DirectionalPolicy<Conf>;

/// One entry's faults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<Fault>>,
}

/// One fault: any of abort, delay, response bandwidth.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<ResponseBandwidth>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub http_status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseBandwidth {
    /// `50kbps`, `10 Mbps`, `1Gbps`
    #[serde(default, deserialize_with = "lenient::string")]
    pub limit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<IntOrString>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshFaultInjectionSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let inbound = len_of(&self.from) > 0 || len_of(&self.rules) > 0;
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS)
                .with_gateway_tags()
                .inbound(inbound);
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let top = top_or_mesh(&self.target_ref);
        if len_of(&self.from) > 0 && len_of(&self.rules) > 0 {
            v.add(path, "field 'from' must be empty when 'rules' is defined");
        }
        for (i, rule) in items(&self.rules).iter().enumerate() {
            let rpath = path.field("rules").index(i);
            for (j, m) in items(&rule.matches).iter().enumerate() {
                validate_match(m, &rpath.field("matches").index(j), v);
            }
            rule.default.check(&rpath.field("default"), v);
        }
        if top.includes_gateways() && len_of(&self.from) > 0 {
            v.add(
                &path.field("from"),
                "must not be defined when the scope includes a Gateway, select only proxyType Sidecar or select only gateways and use spec.to",
            );
        } else {
            for (i, from) in items(&self.from).iter().enumerate() {
                let fpath = path.field("from").index(i);
                let kinds = [K::Mesh, K::MeshSubset, K::MeshServiceSubset, K::MeshService];
                validate_target_ref(
                    &from.target_ref,
                    &fpath.field("targetRef"),
                    &TargetRefRules::kinds(&kinds),
                    v,
                );
                from.default.check(&fpath.field("default"), v);
            }
        }
        if !top.includes_gateways() && len_of(&self.to) > 0 {
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

/// Whether `limit` is a bandwidth with a `kbps`/`Mbps`/`Gbps` unit.
pub fn is_bandwidth(limit: &str) -> bool {
    let digits_end = limit
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(limit.len());
    let rest = &limit[digits_end..];
    let rest = rest
        .strip_prefix(|c: char| c.is_whitespace())
        .unwrap_or(rest);
    let Some(prefix) = rest.strip_suffix("bps") else {
        return false;
    };
    !prefix.is_empty() && prefix.chars().all(|c| matches!(c, 'G' | 'M' | 'k'))
}

impl Conf {
    fn check(&self, path: &FieldPath, v: &mut Violations) {
        let hp = path.field("http");
        let zero = IntOrString::Int(0);
        for (i, fault) in items(&self.http).iter().enumerate() {
            if let Some(a) = &fault.abort {
                let ap = hp.field("abort").index(i);
                validate_status_code(&ap.field("httpStatus"), a.http_status.unwrap_or(0), v);
                validate_percentage(
                    &ap.field("percentage"),
                    Some(a.percentage.as_ref().unwrap_or(&zero)),
                    true,
                    true,
                    v,
                );
            }
            if let Some(d) = &fault.delay {
                let dp = hp.field("delay").index(i);
                if d.value.as_ref().is_some_and(Duration::is_negative) {
                    v.add(&dp.field("value"), "must not be negative when defined");
                }
                validate_percentage(
                    &dp.field("percentage"),
                    Some(d.percentage.as_ref().unwrap_or(&zero)),
                    true,
                    true,
                    v,
                );
            }
            if let Some(b) = &fault.response_bandwidth {
                let bp = hp.field("responseBandwidth").index(i);
                if b.limit.is_empty() {
                    v.add(&bp.field("limit"), "must be defined");
                } else if !is_bandwidth(&b.limit) {
                    v.add(&bp.field("limit"), "must be in kbps/Mbps/Gbps units");
                }
                validate_percentage(
                    &bp.field("percentage"),
                    Some(b.percentage.as_ref().unwrap_or(&zero)),
                    true,
                    true,
                    v,
                );
            }
        }
    }
}
