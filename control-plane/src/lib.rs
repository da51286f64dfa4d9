//! What Meridian's two control planes share. `global-cp` and `zone-cp` both serve the REST API
//! ([`api`], Kuma-compatible paths, port 5681) and the diagnostics endpoints ([`diagnostics`],
//! port 5680) over a [`mesh_store::ResourceStore`]; both keep an admin token for writes
//! ([`auth`]), create the default mesh and its default policies ([`defaults`]), count what they do
//! ([`metrics`]) and start up the same way ([`process`]: bound listeners, a ready file, shutdown on
//! SIGTERM). The mode ([`CpMode`]) decides which types a control plane accepts writes for.

pub mod api;
pub mod auth;
pub mod ca;
pub mod cluster;
pub mod defaults;
pub mod diagnostics;
pub mod metrics;
pub mod process;
pub mod reconciler;
pub mod server;

use mesh_api::{ResourceType, SyncDirection};

/// The role a control plane plays in the federation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpMode {
    /// The global control plane: owns policy, receives zone inventory over KDS.
    Global,
    /// A zone control plane connected to a global: policy comes from the global.
    Zone { zone: String },
    /// A single control plane with no federation: owns everything. A standalone zone control
    /// plane still has a zone name.
    Standalone { zone: Option<String> },
}

impl CpMode {
    pub fn name(&self) -> &'static str {
        match self {
            CpMode::Global => "global",
            CpMode::Zone { .. } => "zone",
            CpMode::Standalone { .. } => "standalone",
        }
    }

    /// The zone this control plane runs (a federated or a standalone zone).
    pub fn zone(&self) -> Option<&str> {
        match self {
            CpMode::Zone { zone } => Some(zone),
            CpMode::Standalone { zone } => zone.as_deref(),
            CpMode::Global => None,
        }
    }

    /// Why this control plane refuses user writes of `rtype`, if it does.
    pub fn refuses_writes_of(&self, rtype: ResourceType) -> Option<String> {
        if rtype.is_computed() {
            return Some(format!(
                "{rtype} resources are computed by the control plane and cannot be written"
            ));
        }
        match (self, rtype.sync_direction()) {
            (CpMode::Zone { .. }, SyncDirection::GlobalToZone) => Some(format!(
                "{rtype} resources are owned by the global control plane: apply them on the global \
                 control plane, which syncs them to every zone"
            )),
            (CpMode::Zone { .. }, _) if rtype == ResourceType::Zone => Some(format!(
                "{rtype} resources can only be created on the global control plane"
            )),
            (CpMode::Global, SyncDirection::ZoneToGlobal) => Some(format!(
                "{rtype} resources are reported by zone control planes: create them on the zone \
                 control plane where the proxy runs"
            )),
            _ => None,
        }
    }
}
