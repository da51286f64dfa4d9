//! MeshCircuitBreaker: connection limits and outlier detection for inbound (`from`, `rules`)
//! and outbound (`to`) traffic.

use serde::{Deserialize, Serialize};

use super::common::{
    items, len_of, validate_percentage, validate_positive, validate_target_ref, DirectionalPolicy,
    Duration, IntOrString, TargetRefKind as K, TargetRefRules, UINT_PERCENTAGE_RANGE,
};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshCircuitBreaker: the shared targetRef/to/from/rules shape over [`Conf`].
pub type MeshCircuitBreakerSpec = DirectionalPolicy<Conf>;

/// One entry's configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionLimits {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_connections: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_connection_pools: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_pending_requests: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_retries: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_requests: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_ejection_percent: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub split_external_and_local_errors: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Detectors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_panic_threshold: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Detectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<ConsecutiveFailures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_failures: Option<ConsecutiveFailures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<ConsecutiveFailures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsecutiveFailures {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub consecutive: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRate {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub minimum_hosts: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub request_volume: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_deviation_factor: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailurePercentage {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub minimum_hosts: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub request_volume: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub threshold: Option<i64>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshService,
    K::MeshGateway,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshCircuitBreakerSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let inbound = len_of(&self.from) > 0 || len_of(&self.rules) > 0;
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS)
                .with_gateway_tags()
                .inbound(inbound);
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let (rules_n, to_n, from_n) = (len_of(&self.rules), len_of(&self.to), len_of(&self.from));
        if rules_n == 0 && to_n == 0 && from_n == 0 {
            v.add(
                path,
                "at least one of 'from', 'to' or 'rules' has to be defined",
            );
        }
        if rules_n > 0 && (to_n > 0 || from_n > 0) {
            v.add(
                path,
                "fields 'to' and 'from' must be empty when 'rules' is defined",
            );
        }
        for (i, rule) in items(&self.rules).iter().enumerate() {
            rule.default
                .check(&path.field("rules").index(i).field("default"), v);
        }
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

fn positive(path: &FieldPath, value: Option<i64>, v: &mut Violations) {
    if value.is_some_and(|n| n <= 0) {
        v.add(path, "must be greater than 0");
    }
}

fn uint_percentage(path: &FieldPath, value: Option<i64>, v: &mut Violations) {
    if value.is_some_and(|n| !(0..=100).contains(&n)) {
        v.add(path, UINT_PERCENTAGE_RANGE);
    }
}

impl Conf {
    fn check(&self, path: &FieldPath, v: &mut Violations) {
        if self.connection_limits.is_none() && self.outlier_detection.is_none() {
            v.add(
                path,
                "at least one of: 'connectionLimits' or 'outlierDetection' should be configured",
            );
            return;
        }
        if let Some(l) = &self.connection_limits {
            let lp = path.field("connectionLimits");
            positive(&lp.field("maxConnections"), l.max_connections, v);
            positive(&lp.field("maxConnectionPools"), l.max_connection_pools, v);
            positive(&lp.field("maxPendingRequests"), l.max_pending_requests, v);
            positive(&lp.field("maxRetries"), l.max_retries, v);
            positive(&lp.field("maxRequests"), l.max_requests, v);
        }
        if let Some(o) = &self.outlier_detection {
            let op = path.field("outlierDetection");
            validate_positive(&op.field("interval"), o.interval.as_ref(), v);
            validate_positive(
                &op.field("baseEjectionTime"),
                o.base_ejection_time.as_ref(),
                v,
            );
            uint_percentage(&op.field("maxEjectionPercent"), o.max_ejection_percent, v);
            validate_percentage(
                &op.field("healthyPanicThreshold"),
                o.healthy_panic_threshold.as_ref(),
                false,
                true,
                v,
            );
            let dp = op.field("detectors");
            let Some(d) = &o.detectors else {
                v.add(&dp, "must be defined");
                return;
            };
            if d.total_failures.is_none()
                && d.gateway_failures.is_none()
                && d.local_origin_failures.is_none()
                && d.success_rate.is_none()
                && d.failure_percentage.is_none()
            {
                v.add(
                    &dp,
                    "must have at least one defined: totalFailures, gatewayFailures, localOriginFailures, successRate, failurePercentage",
                );
                return;
            }
            for (name, c) in [
                ("totalFailures", &d.total_failures),
                ("gatewayFailures", &d.gateway_failures),
                ("localOriginFailures", &d.local_origin_failures),
            ] {
                if let Some(c) = c {
                    positive(&dp.field(name).field("consecutive"), c.consecutive, v);
                }
            }
            if let Some(s) = &d.success_rate {
                let sp = dp.field("successRate");
                positive(&sp.field("minimumHosts"), s.minimum_hosts, v);
                positive(&sp.field("requestVolume"), s.request_volume, v);
                if let Some(f) = &s.standard_deviation_factor {
                    match f.decimal() {
                        None => v.add(&sp.field("standardDeviationFactor"), "invalid number"),
                        Some(x) if x <= 0.0 => v.add(
                            &sp.field("standardDeviationFactor"),
                            "must be greater than 0",
                        ),
                        Some(_) => {}
                    }
                }
            }
            if let Some(f) = &d.failure_percentage {
                let fp = dp.field("failurePercentage");
                positive(&fp.field("minimumHosts"), f.minimum_hosts, v);
                positive(&fp.field("requestVolume"), f.request_volume, v);
                uint_percentage(&fp.field("threshold"), f.threshold, v);
            }
        }
    }
}
