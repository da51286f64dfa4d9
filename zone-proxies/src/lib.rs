//! The data plane: one `zone-proxy` binary configured over xDS by the zone control plane, running
//! as a service's sidecar, as a zone's ingress or as its egress (issue [4]). [`config`] is the
//! plain-Rust configuration the data path runs on; xDS resources are translated into it.

pub mod config;

/// What a zone proxy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Sidecar,
    Ingress,
    Egress,
}

impl ProxyMode {
    /// The port the proxy listens on for cross-zone traffic by default (DESIGN.md section 1).
    pub fn default_listen_port(self) -> Option<u16> {
        match self {
            ProxyMode::Sidecar => None,
            ProxyMode::Ingress => Some(10001),
            ProxyMode::Egress => Some(10002),
        }
    }
}

/// The admin (stats, config dump, readiness) port of every proxy.
pub const ADMIN_PORT: u16 = 9901;
