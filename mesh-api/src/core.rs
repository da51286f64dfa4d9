//! Core and legacy types (flat universal form): Mesh, Zone, Dataplane, ZoneIngress, ZoneEgress,
//! Secret/GlobalSecret, ExternalService, TrafficRoute, TrafficPermission, and the computed ZoneInsight
//! (a zone's own summary) and ZoneLease (which global node holds a zone's KDS stream).

pub mod common;
pub mod dataplane;
pub mod external_service;
pub mod mesh;
pub mod secret;
pub mod traffic_permission;
pub mod traffic_route;
pub mod zone;
pub mod zone_egress;
pub mod zone_ingress;
pub mod zone_insight;
pub mod zone_lease;
