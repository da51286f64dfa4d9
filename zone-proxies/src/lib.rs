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
pub mod admin;
pub mod config;
pub mod dataplane;
pub mod downstream;
pub mod http;
pub mod matcher;
pub mod registration;
pub mod run;
pub mod runtime;
pub mod stats;
pub mod testing;
pub mod tls;
pub mod upstream;
pub mod woken_only;
pub mod workers;
pub mod xds;

/// What a zone proxy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

    /// The xDS node id the zone CP admits this proxy by: `<mesh>/<name>` for a sidecar,
    /// `ingress:<name>` and `egress:<name>` for a zone's ingress and egress (which serve every
    /// mesh).
    pub fn node_id(self, mesh: &str, name: &str) -> String {
        match self {
            ProxyMode::Sidecar => format!("{mesh}/{name}"),
            ProxyMode::Ingress => format!("ingress:{name}"),
            ProxyMode::Egress => format!("egress:{name}"),
        }
    }
}

/// The admin (stats, config dump, readiness) port of every proxy.
pub const ADMIN_PORT: u16 = 9901;
