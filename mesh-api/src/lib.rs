//! Meridian's resource model. Every resource Meridian stores or syncs (Mesh, Zone, Dataplane,
//! ZoneIngress, ZoneEgress, secrets and every policy type) is a typed, plain-Rust value here:
//! [`Resource`] is a [`ResourceMeta`] plus a typed [`Spec`]. This crate parses both YAML forms
//! Kuma users write (universal and Kubernetes-style) into the same value, writes the universal form
//! back out, validates with Kuma's rules (each [`Violation`] names the field path), and computes
//! which policies apply to a Dataplane. It does no I/O: storage, transport and servers live in
//! other crates.

pub mod core;
mod forms;
pub mod lenient;
pub mod matching;
pub mod policies;
mod registry;
mod resource;
mod validation;

pub use forms::{
    parse_documents, parse_resource, parse_spec, to_kubernetes, to_universal, to_yaml, ParseError,
    Parsed,
};
pub use registry::{ResourceType, Scope, Spec, SpecForm, SyncDirection};
pub use resource::{Resource, ResourceKey, ResourceMeta, DEFAULT_MESH};
pub use validation::{
    label_value_errors, qualified_name_errors, validate_resource, FieldPath, Validate,
    ValidationContext, ValidationError, Violation, Violations,
};

/// Label that names the mesh a resource belongs to (Kubernetes form).
pub const MESH_LABEL: &str = "kuma.io/mesh";
/// Label saying where a resource was created: `global` or `zone`.
pub const ORIGIN_LABEL: &str = "kuma.io/origin";
/// Label naming the zone a zone-originated resource came from.
pub const ZONE_LABEL: &str = "kuma.io/zone";
/// The tag that names a service.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// The tag that names a service's protocol.
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";
