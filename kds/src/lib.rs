//! KDS, the protocol between the global control plane and the zone control planes: one gRPC
//! connection per zone with two bidirectional streams (`meridian.kds.v1.KdsSync`), policy down
//! (`GlobalToZoneSync`) and inventory up (`ZoneToGlobalSync`), as Envoy delta xDS messages whose
//! resources are `Any`s of our own [`pb::KdsResource`]. Versions are content hashes, only
//! differences travel (also on reconnect), responses are chunked under a byte budget, NACKs are
//! retried with backoff, and both ends keep each stream alive or tear it down. [`server`] is the
//! global side, [`client`] the zone side, [`delta`] the pure diff/chunk engine, [`wire`] the
//! conversions, [`status`] the per-zone link status, [`lease`] the record of which node of the
//! global holds each zone's stream (replicated, so every node sees every zone's state),
//! [`janitor`] the removal of inventory of zones gone past their grace period or deleted (run by
//! one node: the Raft leader); [`auth`] and [`tls`] hold zone identity,
//! [`token_keys`] keeps token signing keys (zone, dataplane, zone proxy) as Secrets of the store,
//! and [`version`] is the version-skew rule of the handshake (a zone of the global's minor
//! version or one behind; the global is upgraded first).
//!
//! Wiring. Global: `serve(listener, Some(tls), KdsServer::new(store, Arc::new(authenticator)),
//! shutdown)`, with [`KdsServer::status`] feeding diagnostics. Zone: `run(KdsClientConfig { tls,
//! token, .. KdsClientConfig::new(zone, "https://global:5685", store) }, shutdown)`, with a clone
//! of [`KdsClientConfig::status`] feeding diagnostics. Tests and benchmarks tune timings through
//! [`KdsTuning`] (heartbeat, watchdog, keepalives, message budget, NACK backoff).

pub mod auth;
pub mod client;
pub mod delta;
pub mod janitor;
pub mod lease;
pub mod pb;
pub mod server;
pub mod status;
pub mod sync;
pub mod tls;
pub mod token_keys;
pub mod version;
pub mod wire;

pub use client::{
    run, ClientError, ClientStatus, ClientStatusSnapshot, KdsClientConfig, TokenSource,
};
pub use janitor::{JanitorError, ZoneJanitor};
pub use lease::{LeaseKeeper, LeaseTiming};
pub use server::{
    serve, AllowAllZonesForTests, KdsServer, ServeError, ZoneAuthenticator, ZONE_METADATA,
};
pub use status::{ZoneStatus, ZoneStatusRegistry, ZoneTransition};
pub use sync::{Backoff, KdsTuning, SyncError};

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

    #[test]
    fn zone_leases_stay_at_the_global() {
        // Neither down (policy, relayed types) nor up: the global's record of its own streams.
        assert!(!global_to_zone_types().any(|t| t == ResourceType::ZoneLease));
        assert!(!zone_to_global_types().any(|t| t == ResourceType::ZoneLease));
        assert!(!server::down_types().contains(&ResourceType::ZoneLease));
        assert!(ResourceType::ZoneLease.is_computed());
    }
}
