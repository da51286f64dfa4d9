//! The one list of resource types. Everything that depends on "which types exist" (names, plural
//! REST paths, scope, sync direction, YAML form, the typed spec) is generated from it, so adding a
//! type is one line here plus its spec module.

use crate::validation::{FieldPath, Validate, ValidationContext, Violations};
use crate::{core, policies};

/// Whether a resource lives inside a mesh or beside the meshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Keyed by name alone (Mesh, Zone, ZoneIngress, ZoneEgress, GlobalSecret).
    Global,
    /// Keyed by (mesh, name).
    Mesh,
}

/// How a type's fields sit in a universal document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecForm {
    /// Legacy/core types: the spec fields sit next to `type`/`name`/`mesh` (no `spec:` key), and
    /// violations are reported without a `spec.` prefix.
    Flat,
    /// New-style policies: the fields sit under `spec:`.
    Wrapped,
}

/// Which way KDS carries a type between the global and the zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncDirection {
    /// Owned by the global, replicated to every zone; zones refuse local writes in multizone mode.
    GlobalToZone,
    /// Owned by the zone that created it, reported to the global.
    ZoneToGlobal,
    /// Never synced (exists only where it is written).
    Local,
}

macro_rules! resource_types {
    ($(
        $variant:ident {
            plural: $plural:literal,
            scope: $scope:ident,
            form: $form:ident,
            sync: $sync:ident,
            spec: $spec:ty $(,)?
        }
    ),* $(,)?) => {
        /// Every resource type Meridian knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ResourceType { $($variant),* }

        impl ResourceType {
            /// All types, in declaration order.
            pub const ALL: &'static [ResourceType] = &[$(ResourceType::$variant),*];

            /// The type's name as written in `type:` / `kind:` (`MeshHTTPRoute`).
            pub fn name(self) -> &'static str {
                match self { $(ResourceType::$variant => stringify!($variant)),* }
            }

            /// The plural used in REST paths (`meshhttproutes`).
            pub fn plural(self) -> &'static str {
                match self { $(ResourceType::$variant => $plural),* }
            }

            /// Whether the type is keyed inside a mesh.
            pub fn scope(self) -> Scope {
                match self { $(ResourceType::$variant => Scope::$scope),* }
            }

            /// Where its fields sit in a universal document.
            pub fn form(self) -> SpecForm {
                match self { $(ResourceType::$variant => SpecForm::$form),* }
            }

            /// Which way KDS carries it.
            pub fn sync_direction(self) -> SyncDirection {
                match self { $(ResourceType::$variant => SyncDirection::$sync),* }
            }

            /// Looks a type up by its name (`MeshHTTPRoute`), case-sensitively as Kuma does.
            pub fn from_name(name: &str) -> Option<ResourceType> {
                match name { $(stringify!($variant) => Some(ResourceType::$variant),)* _ => None }
            }

            /// Looks a type up by its REST plural (`meshhttproutes`).
            pub fn from_plural(plural: &str) -> Option<ResourceType> {
                match plural { $($plural => Some(ResourceType::$variant),)* _ => None }
            }
        }

        /// The typed body of a resource, one variant per [`ResourceType`].
        #[derive(Debug, Clone, PartialEq)]
        pub enum Spec { $($variant($spec)),* }

        impl Spec {
            /// The type this spec belongs to.
            pub fn resource_type(&self) -> ResourceType {
                match self { $(Spec::$variant(_) => ResourceType::$variant),* }
            }

            /// Decodes a spec of type `rtype` from a JSON value, leniently as Kuma does: unknown
            /// fields are accepted and reported through `unknown` as paths relative to the spec.
            pub fn from_value(
                rtype: ResourceType,
                value: serde_json::Value,
                unknown: &mut dyn FnMut(String),
            ) -> Result<Spec, serde_json::Error> {
                match rtype {
                    $(ResourceType::$variant => {
                        let spec: $spec = serde_ignored::deserialize(value, |path| {
                            unknown(crate::forms::ignored_path_to_string(&path))
                        })?;
                        Ok(Spec::$variant(spec))
                    })*
                }
            }

            /// Encodes the spec as the JSON object a universal document carries.
            pub fn to_value(&self) -> serde_json::Value {
                let value = match self {
                    $(Spec::$variant(spec) => serde_json::to_value(spec)),*
                };
                // Serializing plain structs into a Value cannot fail: every map key is a string.
                value.unwrap_or(serde_json::Value::Null)
            }

            /// Checks the spec against Kuma's rules, appending violations under `path`.
            pub fn validate(&self, ctx: &ValidationContext<'_>, path: &FieldPath, violations: &mut Violations) {
                match self { $(Spec::$variant(spec) => spec.validate(ctx, path, violations)),* }
            }

            /// An empty spec of the given type (what `type: X` with no fields decodes to).
            pub fn empty(rtype: ResourceType) -> Spec {
                match rtype { $(ResourceType::$variant => Spec::$variant(<$spec>::default())),* }
            }
        }
    };
}

resource_types! {
    Mesh { plural: "meshes", scope: Global, form: Flat, sync: GlobalToZone, spec: core::mesh::MeshSpec },
    Zone { plural: "zones", scope: Global, form: Flat, sync: Local, spec: core::zone::ZoneSpec },
    ZoneIngress { plural: "zoneingresses", scope: Global, form: Flat, sync: ZoneToGlobal, spec: core::zone_ingress::ZoneIngressSpec },
    ZoneEgress { plural: "zoneegresses", scope: Global, form: Flat, sync: ZoneToGlobal, spec: core::zone_egress::ZoneEgressSpec },
    ZoneInsight { plural: "zone-insights", scope: Global, form: Flat, sync: ZoneToGlobal, spec: core::zone_insight::ZoneInsightSpec },
    ZoneLease { plural: "zone-leases", scope: Global, form: Flat, sync: Local, spec: core::zone_lease::ZoneLeaseSpec },
    GlobalSecret { plural: "global-secrets", scope: Global, form: Flat, sync: GlobalToZone, spec: core::secret::SecretSpec },
    Dataplane { plural: "dataplanes", scope: Mesh, form: Flat, sync: ZoneToGlobal, spec: core::dataplane::DataplaneSpec },
    Secret { plural: "secrets", scope: Mesh, form: Flat, sync: GlobalToZone, spec: core::secret::SecretSpec },
    ExternalService { plural: "external-services", scope: Mesh, form: Flat, sync: GlobalToZone, spec: core::external_service::ExternalServiceSpec },
    TrafficRoute { plural: "traffic-routes", scope: Mesh, form: Flat, sync: GlobalToZone, spec: core::traffic_route::TrafficRouteSpec },
    TrafficPermission { plural: "traffic-permissions", scope: Mesh, form: Flat, sync: GlobalToZone, spec: core::traffic_permission::TrafficPermissionSpec },
    MeshTrafficPermission { plural: "meshtrafficpermissions", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_traffic_permission::MeshTrafficPermissionSpec },
    MeshHTTPRoute { plural: "meshhttproutes", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_http_route::MeshHttpRouteSpec },
    MeshTCPRoute { plural: "meshtcproutes", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_tcp_route::MeshTcpRouteSpec },
    MeshLoadBalancingStrategy { plural: "meshloadbalancingstrategies", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_load_balancing_strategy::MeshLoadBalancingStrategySpec },
    MeshTimeout { plural: "meshtimeouts", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_timeout::MeshTimeoutSpec },
    MeshRetry { plural: "meshretries", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_retry::MeshRetrySpec },
    MeshCircuitBreaker { plural: "meshcircuitbreakers", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_circuit_breaker::MeshCircuitBreakerSpec },
    MeshHealthCheck { plural: "meshhealthchecks", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_health_check::MeshHealthCheckSpec },
    MeshFaultInjection { plural: "meshfaultinjections", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_fault_injection::MeshFaultInjectionSpec },
    MeshAccessLog { plural: "meshaccesslogs", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_access_log::MeshAccessLogSpec },
    MeshTrace { plural: "meshtraces", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_trace::MeshTraceSpec },
    MeshMetric { plural: "meshmetrics", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_metric::MeshMetricSpec },
    MeshRateLimit { plural: "meshratelimits", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_rate_limit::MeshRateLimitSpec },
    MeshExternalService { plural: "meshexternalservices", scope: Mesh, form: Wrapped, sync: GlobalToZone, spec: policies::mesh_external_service::MeshExternalServiceSpec },
    MeshService { plural: "meshservices", scope: Mesh, form: Wrapped, sync: ZoneToGlobal, spec: policies::mesh_service::MeshServiceSpec },
}

impl ResourceType {
    /// Whether the control plane computes this type itself, so users never write it.
    pub fn is_computed(self) -> bool {
        matches!(self, ResourceType::ZoneInsight | ResourceType::ZoneLease)
    }

    /// Whether KDS relays this type from the zone that owns it to every other zone.
    pub fn relayed_across_zones(self) -> bool {
        matches!(self, ResourceType::ZoneIngress)
    }

    /// Whether this is a targetRef policy (it has a top-level `targetRef` and is matched against
    /// Dataplanes by [`crate::matching`]).
    pub fn is_policy(self) -> bool {
        self.form() == SpecForm::Wrapped
            && !matches!(
                self,
                ResourceType::MeshExternalService | ResourceType::MeshService
            )
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_plurals_round_trip() {
        for &t in ResourceType::ALL {
            assert_eq!(ResourceType::from_name(t.name()), Some(t));
            assert_eq!(ResourceType::from_plural(t.plural()), Some(t));
        }
        assert_eq!(ResourceType::from_name("meshhttproute"), None);
    }
}
