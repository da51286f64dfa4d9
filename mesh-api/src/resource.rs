//! The resource envelope: identity and metadata around a typed [`Spec`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::registry::{ResourceType, Scope, Spec};

/// The mesh every installation starts with.
pub const DEFAULT_MESH: &str = "default";

/// Identity and bookkeeping of a resource. `version`, `creation_time` and `modification_time` are
/// assigned by the store; a resource that was never stored has version 0.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourceMeta {
    pub name: String,
    /// The owning mesh; `None` for global-scoped types.
    pub mesh: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub version: u64,
    pub creation_time: Option<DateTime<Utc>>,
    pub modification_time: Option<DateTime<Utc>>,
}

/// A typed resource: metadata plus spec. Its type is the spec's variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub meta: ResourceMeta,
    pub spec: Spec,
}

impl Resource {
    /// A resource with the given identity and spec and no labels.
    pub fn new(name: impl Into<String>, mesh: Option<&str>, spec: Spec) -> Resource {
        Resource {
            meta: ResourceMeta {
                name: name.into(),
                mesh: mesh.map(str::to_owned),
                ..ResourceMeta::default()
            },
            spec,
        }
    }

    /// Checks the metadata and spec with Kuma's rules (see [`crate::validate_resource`]).
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        crate::validate_resource(self)
    }

    pub fn resource_type(&self) -> ResourceType {
        self.spec.resource_type()
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            rtype: self.resource_type(),
            mesh: self.meta.mesh.clone(),
            name: self.meta.name.clone(),
        }
    }
}

/// The identity of a resource: (type, mesh, name). `mesh` is `None` exactly for global-scoped types.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub rtype: ResourceType,
    pub mesh: Option<String>,
    pub name: String,
}

impl ResourceKey {
    /// Builds a key, dropping `mesh` for global-scoped types so that equal keys compare equal.
    pub fn new(rtype: ResourceType, mesh: Option<&str>, name: impl Into<String>) -> ResourceKey {
        let mesh = match rtype.scope() {
            Scope::Global => None,
            Scope::Mesh => mesh.map(str::to_owned),
        };
        ResourceKey {
            rtype,
            mesh,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mesh {
            Some(mesh) => write!(f, "{} {}/{}", self.rtype, mesh, self.name),
            None => write!(f, "{} {}", self.rtype, self.name),
        }
    }
}
