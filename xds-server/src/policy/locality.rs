//! MeshLoadBalancingStrategy `localityAwareness`, typed for the endpoint builder: which zones'
//! endpoints a proxy uses and at which priority (Envoy fails over to the next priority when the
//! healthy share of the current one drops), how local endpoints are grouped by affinity tags,
//! and the overprovisioning factor. Mirrors Kuma's
//! `meshloadbalancingstrategy/plugin/v1alpha1/{locality_aware,priority}.go`:
//!
//! - no `localityAwareness`: local zone at priority 0, every other zone at priority 1;
//! - `disabled: true` (and neither `localZone` nor `crossZone`): every zone at priority 0;
//! - `localZone` and/or `crossZone` set (they win over `disabled`): local zone at priority 0;
//!   another zone at `i + 1` for the first `crossZone.failover[i]` rule that applies to the
//!   local zone (`from` absent or listing it) and whose `to` admits that zone; a zone no rule
//!   admits is not used at all (so `localZone` alone keeps traffic in the zone).

use std::collections::BTreeMap;

use mesh_api::policies::mesh_load_balancing_strategy::{FailoverToType, LocalityAwareness};

use super::defaults::OVERPROVISIONING_FACTOR;

/// Which zones a failover rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneSelection {
    Any,
    Only(Vec<String>),
    AnyExcept(Vec<String>),
    /// Admits nothing (Kuma's `None`): the rule is skipped.
    None,
}

impl ZoneSelection {
    fn admits(&self, zone: &str) -> bool {
        match self {
            ZoneSelection::Any => true,
            ZoneSelection::Only(zones) => zones.iter().any(|z| z == zone),
            ZoneSelection::AnyExcept(zones) => !zones.iter().any(|z| z == zone),
            ZoneSelection::None => false,
        }
    }
}

/// One `crossZone.failover` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossZoneRule {
    /// The client zones the rule applies to; `None` means every zone.
    pub from_zones: Option<Vec<String>>,
    pub to: ZoneSelection,
    /// The endpoint priority the rule gives: its position in the list plus one.
    pub priority: u32,
}

/// A local-zone affinity group: local endpoints whose tag `key` equals `value` (the client's
/// own value) share the sub-zone `key=value` with this locality weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityGroup {
    pub key: String,
    pub value: String,
    pub weight: u32,
}

impl AffinityGroup {
    /// The locality `sub_zone` for endpoints of this group.
    pub fn sub_zone(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

/// The locality plan for traffic to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    /// Whether the local zone is preferred at all (false: `disabled: true` without groups).
    pub enabled: bool,
    /// `localZone.affinityTags` as (key, weight), weights filled in as Kuma does
    /// (`9 * 10^(n - i - 1)` for the i-th of n tags without weights).
    pub affinity_tags: Vec<(String, u32)>,
    /// `crossZone.failover` rules, when `localZone` or `crossZone` is set; `None` otherwise
    /// (then every remote zone gets priority 1, or 0 when disabled).
    pub cross_zone: Option<Vec<CrossZoneRule>>,
    /// The ClusterLoadAssignment `policy.overprovisioning_factor` to set, when `localZone` or
    /// `crossZone` is set (from `failoverThreshold.percentage`: `int(100 / p) * 100`, else
    /// [`OVERPROVISIONING_FACTOR`]).
    pub overprovisioning_factor: Option<u32>,
}

impl Default for Locality {
    fn default() -> Locality {
        Locality::from_conf(None)
    }
}

impl Locality {
    /// Reads `localityAwareness`; `None` is Kuma's default (locality aware).
    pub fn from_conf(conf: Option<&LocalityAwareness>) -> Locality {
        let Some(conf) = conf else {
            return Locality {
                enabled: true,
                affinity_tags: Vec::new(),
                cross_zone: None,
                overprovisioning_factor: None,
            };
        };
        let tags = conf
            .local_zone
            .as_ref()
            .and_then(|l| l.affinity_tags.clone())
            .unwrap_or_default();
        let n = tags.len();
        let affinity_tags = tags
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let generated = 9u32.saturating_mul(10u32.saturating_pow((n - i - 1) as u32));
                let weight = t.weight.map_or(generated, super::convert::count);
                (t.key, weight)
            })
            .collect();
        let groups = conf.local_zone.is_some() || conf.cross_zone.is_some();
        let cross_zone = groups.then(|| {
            conf.cross_zone
                .as_ref()
                .and_then(|c| c.failover.as_ref())
                .map(|rules| {
                    rules
                        .iter()
                        .enumerate()
                        .map(|(i, rule)| CrossZoneRule {
                            from_zones: rule.from.as_ref().map(|f| f.zones.clone()),
                            to: selection(&rule.to.to_type, rule.to.zones.clone()),
                            priority: u32::try_from(i + 1).unwrap_or(u32::MAX),
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
        let overprovisioning_factor = groups.then(|| {
            conf.cross_zone
                .as_ref()
                .and_then(|c| c.failover_threshold.as_ref())
                .and_then(|t| t.percentage.as_ref())
                .and_then(|p| p.decimal())
                .filter(|p| *p > 0.0)
                .map_or(OVERPROVISIONING_FACTOR, |p| ((100.0 / p) as u32) * 100)
        });
        Locality {
            enabled: groups || conf.disabled != Some(true),
            affinity_tags,
            cross_zone,
            overprovisioning_factor,
        }
    }

    /// The priority of endpoints in `endpoint_zone` for a proxy in `local_zone`; `None` when
    /// they must not be used.
    pub fn priority(&self, local_zone: &str, endpoint_zone: &str) -> Option<u32> {
        if endpoint_zone == local_zone {
            return Some(0);
        }
        let Some(rules) = &self.cross_zone else {
            return Some(u32::from(self.enabled));
        };
        rules
            .iter()
            .filter(|r| {
                r.from_zones
                    .as_ref()
                    .is_none_or(|zones| zones.iter().any(|z| z == local_zone))
            })
            .find(|r| r.to.admits(endpoint_zone))
            .map(|r| r.priority)
    }

    /// The affinity groups for a client whose tags (inbound tags, then labels, as Kuma resolves
    /// them) are `client`: one per affinity tag the client has, in order of preference.
    pub fn affinity_groups(&self, client: &BTreeMap<String, String>) -> Vec<AffinityGroup> {
        self.affinity_tags
            .iter()
            .filter_map(|(key, weight)| {
                Some(AffinityGroup {
                    key: key.clone(),
                    value: client.get(key)?.clone(),
                    weight: *weight,
                })
            })
            .collect()
    }

    /// Whether the cluster should use locality-weighted load balancing (affinity tags set).
    pub fn locality_weighted(&self) -> bool {
        !self.affinity_tags.is_empty()
    }
}

fn selection(to_type: &FailoverToType, zones: Option<Vec<String>>) -> ZoneSelection {
    let zones = zones.unwrap_or_default();
    match to_type {
        FailoverToType::Any => ZoneSelection::Any,
        FailoverToType::Only => ZoneSelection::Only(zones),
        FailoverToType::AnyExcept => ZoneSelection::AnyExcept(zones),
        FailoverToType::None | FailoverToType::Other(_) => ZoneSelection::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{dataplane, policies};
    use crate::policy::ProxyPolicies;

    fn locality(default: &str) -> Locality {
        let yaml = format!(
            "type: MeshLoadBalancingStrategy\nname: lb\nmesh: default\nspec:\n  to:\n    - targetRef: {{kind: MeshService, name: backend}}\n      default: {default}\n"
        );
        ProxyPolicies::compute(&dataplane(), &policies(&yaml))
            .outbound("backend")
            .locality()
    }

    #[test]
    fn default_prefers_the_local_zone() {
        let l = Locality::default();
        assert_eq!(l.priority("east", "east"), Some(0));
        assert_eq!(l.priority("east", "west"), Some(1));
        assert_eq!(l.overprovisioning_factor, None);
    }

    #[test]
    fn disabled_treats_zones_equally() {
        let l = locality("{localityAwareness: {disabled: true}}");
        assert_eq!(l.priority("east", "west"), Some(0));
        assert!(!l.enabled);
    }

    #[test]
    fn local_zone_alone_keeps_traffic_in_the_zone() {
        let l = locality("{localityAwareness: {localZone: {affinityTags: [{key: k8s.io/node}, {key: k8s.io/az}]}}}");
        assert_eq!(l.priority("east", "west"), None);
        assert_eq!(
            l.affinity_tags,
            [("k8s.io/node".to_owned(), 90), ("k8s.io/az".to_owned(), 9)]
        );
        assert_eq!(l.overprovisioning_factor, Some(OVERPROVISIONING_FACTOR));
        let client = BTreeMap::from([("k8s.io/az".to_owned(), "a".to_owned())]);
        let groups = l.affinity_groups(&client);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            (groups[0].sub_zone(), groups[0].weight),
            ("k8s.io/az=a".to_owned(), 9)
        );
        assert!(l.locality_weighted());
    }

    #[test]
    fn cross_zone_failover_orders_zones() {
        let l = locality(
            r#"{localityAwareness: {crossZone: {failoverThreshold: {percentage: 50}, failover: [
                {from: {zones: [us-1, us-2]}, to: {type: Only, zones: [us-1, us-2]}},
                {from: {zones: [eu-1]}, to: {type: Only, zones: [eu-2]}},
                {to: {type: AnyExcept, zones: [eu-3]}}]}}}"#,
        );
        assert_eq!(l.priority("us-1", "us-2"), Some(1));
        // The eu rule does not apply to us-1; the catch-all does, at its own position.
        assert_eq!(l.priority("us-1", "eu-2"), Some(3));
        assert_eq!(l.priority("us-1", "eu-3"), None);
        assert_eq!(l.priority("eu-1", "eu-2"), Some(2));
        assert_eq!(l.overprovisioning_factor, Some(200));
    }
}
