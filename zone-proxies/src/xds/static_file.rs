//! `zone-proxy run --static FILE`: the configuration from a file instead of the zone CP. The
//! file is a config dump in the JSON form the zone CP serves at
//! `GET /meshes/{mesh}/dataplanes/{name}/xds` (or the proxy's own admin `/config_dump`), read
//! back into messages by config-dump and translated by the same code as ADS responses. A dump
//! has its private keys redacted: put the real key in (`inlineString` or `filename`) first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use envoy_types::pb::google::protobuf::Any;

use super::resources::{Resources, UpdateError};

/// Why a static file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Dump {
        path: String,
        source: config_dump::DumpError,
    },
    #[error("{path}: {source}")]
    Resource { path: String, source: UpdateError },
    #[error("{path}: {kind} {names:?} referred to but not in the file")]
    Missing {
        path: String,
        kind: &'static str,
        names: BTreeSet<String>,
    },
}

/// The resources of a config dump document, translated. Every route table, load assignment
/// and secret the listeners and clusters name must be in it.
pub fn resources_from_json(path: &str, dump: &serde_json::Value) -> Result<Resources, StaticError> {
    let all = config_dump::resources_of_dump(dump).map_err(|source| StaticError::Dump {
        path: path.to_owned(),
        source,
    })?;
    let mut by_type: BTreeMap<String, Vec<Any>> = BTreeMap::new();
    for any in all {
        by_type.entry(any.type_url.clone()).or_default().push(any);
    }
    let mut resources = Resources::default();
    for (type_url, list) in &by_type {
        resources
            .replace(type_url, list)
            .map_err(|source| StaticError::Resource {
                path: path.to_owned(),
                source,
            })?;
    }
    let references = resources.references();
    for (kind, type_url, names) in [
        (
            "route configurations",
            super::ROUTE_TYPE,
            &references.routes,
        ),
        (
            "cluster load assignments",
            super::ENDPOINT_TYPE,
            &references.endpoints,
        ),
        ("secrets", super::SECRET_TYPE, &references.secrets),
    ] {
        let missing: BTreeSet<String> = names
            .iter()
            .filter(|n| !resources.holds(type_url, n))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(StaticError::Missing {
                path: path.to_owned(),
                kind,
                names: missing,
            });
        }
    }
    Ok(resources)
}

/// Reads and translates a static configuration file.
pub fn load(path: &Path) -> Result<Resources, StaticError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| StaticError::Read {
        path: shown.clone(),
        source,
    })?;
    let dump: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| StaticError::Json {
            path: shown.clone(),
            source,
        })?;
    resources_from_json(&shown, &dump)
}
