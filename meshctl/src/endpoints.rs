//! The files `meshctl up` reads and writes about running processes: the ready file each control
//! plane writes once its listeners are bound, and `endpoints.json`, the addresses of the whole
//! local federation.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// What a control plane writes to its `--ready-file` after binding: `api` and `diagnostics` are
/// URLs; `kds` (global) or `xds` (zone) is a `host:port` address; `kdsCa` (global) is the path of
/// the CA certificate that signed its KDS server certificate, which zones trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyFile {
    pub api: String,
    pub diagnostics: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<String>,
    #[serde(default, rename = "kdsCa", skip_serializing_if = "Option::is_none")]
    pub kds_ca: Option<String>,
}

impl ReadyFile {
    /// Reads a ready file: `Ok(None)` while it does not exist yet.
    pub fn read(path: &Path) -> anyhow::Result<Option<ReadyFile>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("ready file {} is not the expected JSON", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!(
                "cannot read ready file {}: {e}",
                path.display()
            )),
        }
    }
}

/// The global control plane's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalEndpoints {
    pub api: String,
    pub kds: String,
    pub diagnostics: String,
    /// The CA certificate zones trust for KDS (`zone-cp --kds-ca-file`).
    #[serde(default, rename = "kdsCa", skip_serializing_if = "Option::is_none")]
    pub kds_ca: Option<String>,
    /// Every node of a multi-node global (`meshctl up --global-nodes N`), node 1 first; empty
    /// for a single node (then `api`, `kds` and `diagnostics` are the node's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<GlobalNodeEndpoints>,
}

/// One node of a multi-node global.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalNodeEndpoints {
    pub id: u64,
    pub api: String,
    pub kds: String,
    pub diagnostics: String,
    /// `leader` or `follower` (or `learner`, `candidate`) when `meshctl up` became ready.
    pub role: String,
}

/// A zone control plane's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneEndpoints {
    pub api: String,
    pub xds: String,
    pub diagnostics: String,
}

/// A demo process's addresses (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoProcessEndpoints {
    pub zone: String,
    /// `ingress`, `egress`, `sidecar` or `app`.
    pub role: String,
    /// What it listens on: an ingress's or egress's port, a sidecar's inbound, an app's port.
    pub listen: String,
    /// A proxy's admin server (`/ready`, `/stats/prometheus`, `/config_dump`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The frontend sidecar's outbound to backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<String>,
}

/// The demo `meshctl up` runs: a cross-zone request and every process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DemoEndpoints {
    /// `http://127.0.0.1:PORT/`, through zone-1's frontend sidecar to backend.
    pub request: String,
    /// The zone whose backend answers it.
    pub answered_by: String,
    pub processes: BTreeMap<String, DemoProcessEndpoints>,
}

/// `DIR/endpoints.json`: `{"global": {...}, "zones": {"zone-1": {...}, ...}, "demo": {...}}`
/// (`demo` unless `--no-demo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub global: GlobalEndpoints,
    pub zones: BTreeMap<String, ZoneEndpoints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo: Option<DemoEndpoints>,
}

impl Endpoints {
    /// The file name inside the data directory.
    pub const FILE: &'static str = "endpoints.json";

    /// Reads `endpoints.json`; `Ok(None)` while it does not exist.
    pub fn read(path: &Path) -> anyhow::Result<Option<Endpoints>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is not the expected JSON", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_json_has_the_documented_shape() {
        let endpoints = Endpoints {
            global: GlobalEndpoints {
                api: "http://127.0.0.1:1".into(),
                kds: "127.0.0.1:2".into(),
                diagnostics: "http://127.0.0.1:3".into(),
                kds_ca: Some("/d/global/kds/ca.crt".into()),
                nodes: Vec::new(),
            },
            zones: [(
                "zone-1".to_owned(),
                ZoneEndpoints {
                    api: "http://127.0.0.1:4".into(),
                    xds: "127.0.0.1:5".into(),
                    diagnostics: "http://127.0.0.1:6".into(),
                },
            )]
            .into(),
            demo: None,
        };
        let value: serde_json::Value = serde_json::from_str(&endpoints.to_json()).unwrap();
        assert_eq!(
            value,
            json!({
                "global": {"api": "http://127.0.0.1:1", "kds": "127.0.0.1:2", "diagnostics": "http://127.0.0.1:3",
                           "kdsCa": "/d/global/kds/ca.crt"},
                "zones": {"zone-1": {"api": "http://127.0.0.1:4", "xds": "127.0.0.1:5", "diagnostics": "http://127.0.0.1:6"}}
            })
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(Endpoints::FILE);
        assert_eq!(Endpoints::read(&path).unwrap(), None);
        std::fs::write(&path, endpoints.to_json()).unwrap();
        assert_eq!(Endpoints::read(&path).unwrap(), Some(endpoints));
    }

    #[test]
    fn ready_files_of_both_roles_parse() {
        let global: ReadyFile = serde_json::from_str(
            r#"{"api": "http://127.0.0.1:1", "diagnostics": "http://127.0.0.1:2", "kds": "127.0.0.1:3",
                "kdsCa": "/d/global/kds/ca.crt"}"#,
        )
        .unwrap();
        assert_eq!(global.kds.as_deref(), Some("127.0.0.1:3"));
        assert_eq!(global.kds_ca.as_deref(), Some("/d/global/kds/ca.crt"));
        assert_eq!(global.xds, None);
        let zone: ReadyFile = serde_json::from_str(
            r#"{"api": "http://127.0.0.1:1", "diagnostics": "http://127.0.0.1:2", "xds": "127.0.0.1:4"}"#,
        )
        .unwrap();
        assert_eq!(zone.xds.as_deref(), Some("127.0.0.1:4"));
        assert_eq!(zone.kds_ca, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        assert_eq!(ReadyFile::read(&path).unwrap(), None);
        std::fs::write(&path, "{").unwrap();
        let err = ReadyFile::read(&path).unwrap_err();
        assert!(err.to_string().contains("ready.json"), "{err}");
    }
}
