//! MeshLoadBalancingStrategy: load-balancing algorithm, hash policies and locality awareness
//! (local-zone affinity, cross-zone failover order) for outbound traffic.

use serde::{Deserialize, Serialize};

use super::common::{
    items, kuma_enum, top_or_mesh, validate_percentage, validate_target_ref, Duration, IntOrString,
    TargetRef, TargetRefKind as K, TargetRefRules, ToEntry,
};
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshLoadBalancingStrategy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshLoadBalancingStrategySpec {
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
    pub locality_awareness: Option<LocalityAwareness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityAwareness {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_zone: Option<LocalZone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<CrossZone>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalZone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_tags: Option<Vec<AffinityTag>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityTag {
    #[serde(default, deserialize_with = "lenient::string")]
    pub key: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrossZone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Vec<Failover>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_threshold: Option<FailoverThreshold>,
}

/// One failover rule: from which zones, to which zones.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FailoverFrom>,
    #[serde(default)]
    pub to: FailoverTo,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverFrom {
    #[serde(default, deserialize_with = "zones")]
    pub zones: Vec<String>,
}

kuma_enum! {
    /// Which zones a failover rule sends traffic to.
    FailoverToType { Any => "Any", Only => "Only", AnyExcept => "AnyExcept", None => "None" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverTo {
    #[serde(default, rename = "type")]
    pub to_type: FailoverToType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_vec"
    )]
    pub zones: Option<Vec<String>>,
}

fn zones<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    lenient::opt_string_vec(d).map(Option::unwrap_or_default)
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailoverThreshold {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<IntOrString>,
}

kuma_enum! {
    /// The load-balancing algorithm.
    LoadBalancerType {
        RoundRobin => "RoundRobin",
        LeastRequest => "LeastRequest",
        RingHash => "RingHash",
        Random => "Random",
        Maglev => "Maglev",
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default, rename = "type")]
    pub lb_type: LoadBalancerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_robin: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeastRequest {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub choice_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_request_bias: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub hash_function: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub min_ring_size: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_ring_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Maglev {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub table_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

kuma_enum! {
    /// What a hash policy hashes.
    HashPolicyType {
        Header => "Header",
        Cookie => "Cookie",
        Connection => "Connection",
        SourceIP => "SourceIP",
        QueryParameter => "QueryParameter",
        FilterState => "FilterState",
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashPolicy {
    #[serde(default, rename = "type")]
    pub policy_type: HashPolicyType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub terminal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Cookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<NamedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<FilterStateKey>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedKey {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterStateKey {
    #[serde(default, deserialize_with = "lenient::string")]
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    #[serde(
        default,
        rename = "sourceIP",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub source_ip: Option<bool>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshSubset,
    K::MeshGateway,
    K::MeshService,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshLoadBalancingStrategySpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS).with_gateway_tags();
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let top = top_or_mesh(&self.target_ref).kind;
        for (i, to) in items(&self.to).iter().enumerate() {
            let tpath = path.field("to").index(i);
            let mut rules = TargetRefRules::default();
            if top == K::MeshGateway {
                if to.default.load_balancer.is_some() {
                    rules.kinds = &[K::Mesh];
                    rules.kinds_error = Some(format!(
                        "value '{top}' is not supported, only Mesh is allowed if loadBalancer is set"
                    ));
                } else {
                    rules.kinds = &[K::Mesh, K::MeshService, K::MeshMultiZoneService];
                }
            } else {
                rules.kinds = &[
                    K::Mesh,
                    K::MeshService,
                    K::MeshMultiZoneService,
                    K::MeshHTTPRoute,
                ];
            }
            validate_target_ref(&to.target_ref, &tpath.field("targetRef"), &rules, v);
            if to.target_ref.kind == K::MeshExternalService && top != K::Mesh {
                v.add(
                    &tpath.field("targetRef").field("kind"),
                    "kind MeshExternalService is only allowed with targetRef.kind: Mesh as it is configured on the Zone Egress and shared by all clients in the mesh",
                );
            }
            to.default.check(&to.target_ref, &tpath.field("default"), v);
        }
    }
}

impl Conf {
    fn check(&self, target: &TargetRef, path: &FieldPath, v: &mut Violations) {
        if target.kind == K::MeshHTTPRoute {
            check_hash_policies(
                self.hash_policies.as_deref(),
                &path.field("hashPolicies"),
                v,
            );
            let only = "field is not allowed when targetRef.kind is MeshHTTPRoute, only hashPolicies is supported";
            if self.load_balancer.is_some() {
                v.add(&path.field("loadBalancer"), only);
            }
            if self.locality_awareness.is_some() {
                v.add(&path.field("localityAwareness"), only);
            }
            return;
        }
        if let Some(lb) = &self.load_balancer {
            let lp = path.field("loadBalancer");
            match &lb.lb_type {
                LoadBalancerType::RingHash => {
                    if let Some(r) = &lb.ring_hash {
                        check_hash_policies(
                            r.hash_policies.as_deref(),
                            &lp.field("ringHash").field("hashPolicies"),
                            v,
                        );
                    }
                }
                LoadBalancerType::Maglev => {
                    if let Some(m) = &lb.maglev {
                        check_hash_policies(
                            m.hash_policies.as_deref(),
                            &lp.field("maglev").field("hashPolicies"),
                            v,
                        );
                    }
                }
                LoadBalancerType::LeastRequest => {
                    if let Some(bias) = lb
                        .least_request
                        .as_ref()
                        .and_then(|l| l.active_request_bias.as_ref())
                    {
                        let bp = lp.field("leastRequest").field("activeRequestBias");
                        match bias.decimal() {
                            None => v.add(&bp, "string must be a valid number"),
                            Some(d) if d < 0.0 => v.add(&bp, "must be greater or equal then: 0"),
                            Some(_) => {}
                        }
                    }
                }
                LoadBalancerType::RoundRobin | LoadBalancerType::Random => {}
                LoadBalancerType::Other(t) => v.add(
                    &lp.field("type"),
                    if t.is_empty() {
                        "must be defined".to_owned()
                    } else {
                        format!(
                            "value '{t}' is not supported, must be one of: {}",
                            LoadBalancerType::KNOWN.join(", ")
                        )
                    },
                ),
            }
        }
        if let Some(la) = &self.locality_awareness {
            let lap = path.field("localityAwareness");
            if let Some(lz) = &la.local_zone {
                let tags = items(&lz.affinity_tags);
                let mut weighted = 0;
                for (i, t) in tags.iter().enumerate() {
                    let tp = lap.field("localZone").field("affinityTags").index(i);
                    if t.key.is_empty() {
                        v.add(&tp.field("key"), "must not be empty");
                    }
                    if let Some(w) = t.weight {
                        if w <= 0 {
                            v.add(&tp.field("weight"), "must be greater than 0");
                        }
                        weighted += 1;
                    }
                }
                if weighted > 0 && weighted != tags.len() {
                    v.add(
                        &lap.field("localZone").field("affinityTags"),
                        "all or none affinity tags should have weight",
                    );
                }
            }
            if let Some(cz) = &la.cross_zone {
                check_cross_zone(cz, target, &lap.field("crossZone"), v);
            }
        }
        check_hash_policies(
            self.hash_policies.as_deref(),
            &path.field("hashPolicies"),
            v,
        );
        if self.hash_policies.is_some() {
            if let Some(lb) = &self.load_balancer {
                let root = "hashPolicies already specified in the root level";
                if lb
                    .ring_hash
                    .as_ref()
                    .is_some_and(|r| r.hash_policies.is_some())
                {
                    v.add(&path.field("loadBalancer.ringHash.hashPolicies"), root);
                }
                if lb
                    .maglev
                    .as_ref()
                    .is_some_and(|m| m.hash_policies.is_some())
                {
                    v.add(&path.field("loadBalancer.maglev.hashPolicies"), root);
                }
            }
        }
    }
}

fn check_cross_zone(cz: &CrossZone, target: &TargetRef, path: &FieldPath, v: &mut Violations) {
    let real_service = target.kind == K::MeshService
        && (target
            .section_name
            .as_deref()
            .is_some_and(|s| !s.is_empty())
            || target.labels.as_ref().is_some_and(|l| !l.is_empty()));
    if real_service {
        v.add(path, "must not be set: MeshService traffic is local");
    }
    for (i, f) in items(&cz.failover).iter().enumerate() {
        let fp = path.field("failover").index(i);
        if let Some(from) = &f.from {
            let zp = fp.field("from").field("zones");
            if from.zones.is_empty() {
                v.add(&zp, "must not be empty");
            }
            for (j, z) in from.zones.iter().enumerate() {
                if z.is_empty() {
                    v.add(&zp.index(j), "must not be empty");
                }
            }
        }
        let zones_set = f.to.zones.as_ref().is_some_and(|z| !z.is_empty());
        let zp = fp.field("to").field("zones");
        match &f.to.to_type {
            t @ (FailoverToType::Any | FailoverToType::None) if zones_set => {
                v.add(&zp, format!("must be empty when type is {t}"))
            }
            t @ (FailoverToType::AnyExcept | FailoverToType::Only) if !zones_set => {
                v.add(&zp, format!("must not be empty when type is {t}"))
            }
            FailoverToType::Other(_) => v.add(&fp.field("to").field("type"), "unrecognized type"),
            _ => {}
        }
    }
    if let Some(t) = &cz.failover_threshold {
        let zero = IntOrString::Int(0);
        validate_percentage(
            &path.field("failoverThreshold").field("percentage"),
            Some(t.percentage.as_ref().unwrap_or(&zero)),
            true,
            false,
            v,
        );
    }
}

fn check_hash_policies(policies: Option<&[HashPolicy]>, path: &FieldPath, v: &mut Violations) {
    for (i, p) in policies.unwrap_or(&[]).iter().enumerate() {
        let pp = path.index(i);
        match p.policy_type {
            HashPolicyType::Header if p.header.is_none() => {
                v.add(&pp.field("header"), "must be defined")
            }
            HashPolicyType::Cookie => match &p.cookie {
                None => v.add(&pp.field("cookie"), "must be defined"),
                Some(c) if c.path.as_deref().is_some_and(|s| !s.starts_with('/')) => v.add(
                    &pp.field("cookie").field("path"),
                    "must be an absolute path",
                ),
                Some(_) => {}
            },
            HashPolicyType::QueryParameter if p.query_parameter.is_none() => {
                v.add(&pp.field("queryParameter"), "must be defined")
            }
            HashPolicyType::FilterState if p.filter_state.is_none() => {
                v.add(&pp.field("filterState"), "must be defined")
            }
            HashPolicyType::Connection | HashPolicyType::SourceIP if p.connection.is_none() => {
                v.add(&pp.field("connection"), "must be defined")
            }
            _ => {}
        }
    }
}
