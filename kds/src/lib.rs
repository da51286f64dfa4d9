//! KDS, the protocol between the global control plane and the zone control planes: one gRPC
//! connection per zone carrying policy down and inventory up as Envoy delta xDS messages. This
//! crate will hold the service definition, the delta engine for both directions and zone
//! authentication (issue [2]). Today it only fixes which resource types travel which way, taken
//! from the resource model.

pub mod auth;
pub mod tls;

use mesh_api::{ResourceType, SyncDirection};

/// Types the global sends down to every zone.
pub fn global_to_zone_types() -> impl Iterator<Item = ResourceType> {
    ResourceType::ALL
        .iter()
        .copied()
        .filter(|t| t.sync_direction() == SyncDirection::GlobalToZone)
}

/// Types a zone reports up to the global.
pub fn zone_to_global_types() -> impl Iterator<Item = ResourceType> {
    ResourceType::ALL
        .iter()
        .copied()
        .filter(|t| t.sync_direction() == SyncDirection::ZoneToGlobal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_flow_down_and_inventory_flows_up() {
        assert!(global_to_zone_types().any(|t| t == ResourceType::MeshTrafficPermission));
        assert!(global_to_zone_types().any(|t| t == ResourceType::Mesh));
        assert!(zone_to_global_types().any(|t| t == ResourceType::Dataplane));
        assert!(!zone_to_global_types().any(|t| t == ResourceType::Mesh));
    }
}
