//! The proxy's side of xDS: [`translate`] turns Envoy v3 resources into the plain-Rust
//! [`crate::config`] model (a resource it cannot carry out is an error naming the resource and the
//! field), [`client`] is the ADS client that keeps them current from the zone CP, and
//! [`static_file`] reads the same resources from a config dump for `zone-proxy run --static`.
//!
//! Whatever the source, what the proxy runs with is an [`Accepted`]: the translated
//! [`ProxyConfig`] plus the raw resources it came from (for the admin `/config_dump`).

pub mod client;
pub mod resources;
pub mod static_file;
pub mod translate;

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use crate::config::ProxyConfig;

pub use config_dump::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE};

/// The configuration the proxy accepted, as the admin server shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accepted {
    /// What the data path runs with.
    pub config: Arc<ProxyConfig>,
    /// Type URL -> resource name -> the resource as received (ACKed).
    pub resources: BTreeMap<String, BTreeMap<String, Any>>,
    /// Type URL -> the version last ACKed.
    pub versions: BTreeMap<String, String>,
    /// Whether a complete configuration has been received (the proxy is ready).
    pub complete: bool,
}

impl Accepted {
    /// The accepted resources as a config dump (`{"version", "listeners", ...}`, private keys
    /// redacted); `version` joins the per-type versions.
    pub fn dump(&self) -> Result<serde_json::Value, config_dump::DumpError> {
        let version = self
            .versions
            .iter()
            .map(|(type_url, v)| {
                let short = type_url.rsplit('.').next().unwrap_or(type_url);
                format!("{short}={v}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let order = [
            LISTENER_TYPE,
            ROUTE_TYPE,
            CLUSTER_TYPE,
            ENDPOINT_TYPE,
            SECRET_TYPE,
        ];
        let known = order
            .iter()
            .filter_map(|t| self.resources.get(*t))
            .flat_map(|m| m.iter());
        let other = self
            .resources
            .iter()
            .filter(|(t, _)| !order.contains(&t.as_str()))
            .flat_map(|(_, m)| m.iter());
        config_dump::dump_resources(
            &version,
            known.chain(other).map(|(name, any)| (name.as_str(), any)),
        )
    }
}
