//! The data plane: one `zone-proxy` binary configured over xDS by the zone control plane, running
//! as a service's sidecar, as a zone's ingress or as its egress (issue [4]). [`config`] is the
//! plain-Rust configuration the data path runs on; xDS resources are translated into it.
//!
//! The data path: [`dataplane::run`] follows the configuration channel and keeps the listeners;
//! [`runtime`] is one configuration version made ready to serve; [`downstream`] takes a
//! connection from accept to its handler (SNI inspection, TLS termination, RBAC, TCP proxy);
//! [`http`] is the HTTP connection manager; [`upstream`] holds clusters, load balancing,
//! connecting, outlier detection and health checks; [`stats`] and [`access_log`] observe it.

pub mod access_log;
pub mod config;
pub mod dataplane;
pub mod downstream;
pub mod http;
pub mod matcher;
pub mod runtime;
pub mod stats;
pub mod testing;
pub mod tls;
pub mod upstream;

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
