//! New-style targetRef policies (fields under `spec:`), plus MeshExternalService and MeshService.

pub mod common;
pub mod mesh_access_log;
pub mod mesh_circuit_breaker;
pub mod mesh_external_service;
pub mod mesh_fault_injection;
pub mod mesh_health_check;
pub mod mesh_http_route;
pub mod mesh_load_balancing_strategy;
pub mod mesh_metric;
pub mod mesh_rate_limit;
pub mod mesh_retry;
pub mod mesh_service;
pub mod mesh_tcp_route;
pub mod mesh_timeout;
pub mod mesh_trace;
pub mod mesh_traffic_permission;

#[cfg(test)]
mod rule_tests {
    //! The general rules shared by the policies: allowed kinds per section, `from`/`to`/`rules`
    //! exclusivity, durations, and clean serialization.

    use crate::validation::{FieldPath, ValidationContext, Violations};
    use crate::{parse_spec, ResourceMeta, ResourceType, Spec};

    fn violations(rtype: ResourceType, yaml: &str) -> Vec<String> {
        let (spec, _) = parse_spec(rtype, yaml).expect("spec parses");
        let meta = ResourceMeta::default();
        let mut v = Violations::new();
        spec.validate(
            &ValidationContext { meta: &meta },
            &FieldPath::new("spec"),
            &mut v,
        );
        v.iter()
            .map(|x| format!("{}: {}", x.field, x.message))
            .collect()
    }

    #[test]
    fn kinds_are_checked_per_section() {
        let v = violations(
            ResourceType::MeshTrafficPermission,
            "targetRef: {kind: MeshHTTPRoute, name: r}\nfrom:\n- targetRef: {kind: Dataplane}\n  default: {action: Allow}\n",
        );
        assert_eq!(
            v,
            [
                "spec.targetRef.kind: value 'MeshHTTPRoute' is not supported",
                "spec.from[0].targetRef.kind: value 'Dataplane' is not supported",
            ]
        );
        let v = violations(ResourceType::MeshRetry, "to:\n- targetRef: {kind: MeshSubset, tags: {a: b}}\n  default: {tcp: {maxConnectAttempt: 1}}\n");
        assert_eq!(
            v,
            ["spec.to[0].targetRef.kind: value 'MeshSubset' is not supported"]
        );
    }

    #[test]
    fn target_ref_fields_follow_the_kind() {
        let v = violations(
            ResourceType::MeshTimeout,
            "targetRef: {kind: Mesh, tags: {a: b}, proxyTypes: []}\nto:\n- targetRef: {kind: MeshService}\n  default: {idleTimeout: 1s}\n",
        );
        assert_eq!(
            v,
            [
                "spec.targetRef.tags: must not be set with kind Mesh",
                "spec.targetRef.proxyTypes: must be undefined or have at least one element",
                "spec.to[0].targetRef: name or labels must be set when kind is MeshService",
            ]
        );
        let v = violations(
            ResourceType::MeshTimeout,
            "to:\n- targetRef: {name: x}\n  default: {idleTimeout: 1s}\n",
        );
        assert_eq!(v, ["spec.to[0].targetRef.kind: must be defined"]);
    }

    #[test]
    fn sections_are_exclusive_and_required() {
        assert_eq!(
            violations(ResourceType::MeshTimeout, "targetRef: {kind: Mesh}\n"),
            ["spec: at least one of 'from', 'to' or 'rules' has to be defined"]
        );
        assert_eq!(
            violations(
                ResourceType::MeshTrafficPermission,
                "from:\n- targetRef: {kind: Mesh}\n  default: {action: Allow}\nrules:\n- default: {allow: [{spiffeID: {type: Exact, value: 'spiffe://a/b'}}]}\n"
            ),
            ["spec: field 'from' must be empty when 'rules' is defined"]
        );
        assert_eq!(
            violations(ResourceType::MeshFaultInjection, "targetRef: {kind: MeshService, name: a}\nto:\n- targetRef: {kind: Mesh}\n  default: {}\n"),
            ["spec.to: must not be defined"]
        );
    }

    #[test]
    fn durations_and_ranges() {
        let v = violations(
            ResourceType::MeshTimeout,
            "to:\n- targetRef: {kind: Mesh}\n  default: {connectionTimeout: 0s, http: {requestTimeout: -1s}}\n",
        );
        assert_eq!(
            v,
            [
                "spec.to[0].default.connectionTimeout: must be greater than zero when defined",
                "spec.to[0].default.http.requestTimeout: must not be negative when defined",
            ]
        );
        assert!(parse_spec(
            ResourceType::MeshTimeout,
            "to:\n- default: {idleTimeout: 5 seconds}\n"
        )
        .is_err());
        let v = violations(
            ResourceType::MeshLoadBalancingStrategy,
            "to:\n- targetRef: {kind: Mesh}\n  default: {localityAwareness: {crossZone: {failoverThreshold: {percentage: '0'}}}}\n",
        );
        assert_eq!(
            v,
            ["spec.to[0].default.localityAwareness.crossZone.failoverThreshold.percentage: must be greater than 0"]
        );
    }

    #[test]
    fn serialization_skips_unset_fields_and_round_trips() {
        let yaml = "targetRef:\n  kind: MeshService\n  name: web\nto:\n- targetRef: {kind: MeshService, name: backend, sectionName: '8080'}\n  default:\n    http: {retryOn: [5xx, 503], numRetries: 2, backOff: {baseInterval: 1m30s}}\n";
        let (spec, warnings) = parse_spec(ResourceType::MeshRetry, yaml).expect("parses");
        assert!(warnings.is_empty(), "{warnings:?}");
        let value = spec.to_value();
        assert_eq!(
            value,
            serde_json::json!({
                "targetRef": {"kind": "MeshService", "name": "web"},
                "to": [{
                    "targetRef": {"kind": "MeshService", "name": "backend", "sectionName": "8080"},
                    "default": {"http": {"numRetries": 2, "backOff": {"baseInterval": "1m30s"}, "retryOn": ["5xx", "503"]}}
                }]
            })
        );
        let mut unknown = Vec::new();
        let again = Spec::from_value(ResourceType::MeshRetry, value, &mut |p| unknown.push(p))
            .expect("decodes");
        assert_eq!(again, spec);
        assert!(unknown.is_empty());
    }
}
