//! Conversion between the domain model ([`mesh_api::Resource`]) and the KDS wire form
//! ([`KdsResource`] inside an Envoy `Resource`), the content-hash version, the per-type Envoy
//! `type_url`s and wire names, and the label/name transforms of each direction: what the global
//! sends a zone (labelled `kuma.io/origin: global`), what a zone reports (labelled with its zone),
//! and how the global renames zone inventory (`<name>.<zone>`) so that zones can never collide.

use std::collections::BTreeMap;

use mesh_api::{Resource, ResourceKey, ResourceMeta, ResourceType, Scope, Spec};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb::{Any, EnvoyResource, KdsResource, RESOURCE_TYPE_URL};

/// Label keeping a zone resource's own name at the global (where it is stored as `<name>.<zone>`).
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
/// Value of [`mesh_api::ORIGIN_LABEL`] on resources that came from the global.
pub const ORIGIN_GLOBAL: &str = "global";
/// Value of [`mesh_api::ORIGIN_LABEL`] on resources a zone owns.
pub const ORIGIN_ZONE: &str = "zone";
/// Prefix of the Envoy `type_url` of each resource type (`meridian.kds.v1.MeshTimeout`).
pub const TYPE_URL_PREFIX: &str = "meridian.kds.v1.";
/// The `type_url` of the liveness messages (an empty response ACKed by the peer).
pub const HEARTBEAT_TYPE_URL: &str = "meridian.kds.v1.Heartbeat";

/// Why a wire resource could not be turned into a domain resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("resource {name:?} carries no payload")]
    MissingPayload { name: String },
    #[error(
        "resource {name:?}: unexpected payload type {type_url:?} (expected {RESOURCE_TYPE_URL})"
    )]
    WrongPayloadType { name: String, type_url: String },
    #[error("resource {name:?}: payload does not decode: {reason}")]
    Decode { name: String, reason: String },
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    #[error("resource {name:?} is of type {actual}, but the response is for {expected}")]
    TypeMismatch {
        name: String,
        expected: ResourceType,
        actual: ResourceType,
    },
    #[error("resource {name:?}: spec is not valid JSON for {rtype}: {reason}")]
    Spec {
        name: String,
        rtype: ResourceType,
        reason: String,
    },
    #[error("resource {name:?}: the wire name does not match its key {key}")]
    NameMismatch { name: String, key: String },
    #[error("resource {name:?}: version {claimed} does not match its content ({actual})")]
    VersionMismatch {
        name: String,
        claimed: String,
        actual: String,
    },
    #[error("{0} is mesh-scoped but has no mesh")]
    MissingMesh(String),
}

/// The Envoy `type_url` of a resource type.
pub fn type_url(rtype: ResourceType) -> String {
    format!("{TYPE_URL_PREFIX}{}", rtype.name())
}

/// The resource type of an Envoy `type_url`.
pub fn type_from_url(url: &str) -> Result<ResourceType, WireError> {
    url.strip_prefix(TYPE_URL_PREFIX)
        .and_then(ResourceType::from_name)
        .ok_or_else(|| WireError::UnknownType(url.to_owned()))
}

/// The name of a resource on the wire: `<mesh>/<name>` for mesh-scoped types, `<name>` otherwise
/// (names are RFC 1123 subdomains, so `/` cannot be part of them).
pub fn wire_name(key: &ResourceKey) -> String {
    match &key.mesh {
        Some(mesh) => format!("{mesh}/{}", key.name),
        None => key.name.clone(),
    }
}

/// The key a wire name stands for.
pub fn key_from_wire_name(rtype: ResourceType, name: &str) -> Result<ResourceKey, WireError> {
    match rtype.scope() {
        Scope::Global => Ok(ResourceKey::new(rtype, None, name)),
        Scope::Mesh => match name.split_once('/') {
            Some((mesh, n)) if !mesh.is_empty() && !n.is_empty() => {
                Ok(ResourceKey::new(rtype, Some(mesh), n))
            }
            _ => Err(WireError::MissingMesh(name.to_owned())),
        },
    }
}

/// The wire message of a resource (identity, labels and spec; the store's version and times are
/// bookkeeping of each store and do not travel).
pub fn encode(resource: &Resource) -> KdsResource {
    let spec = serde_json::to_vec(&resource.spec.to_value()).unwrap_or_default();
    KdsResource {
        r#type: resource.resource_type().name().to_owned(),
        mesh: resource.meta.mesh.clone().unwrap_or_default(),
        name: resource.meta.name.clone(),
        labels: resource.meta.labels.clone(),
        spec,
    }
}

/// The domain resource of a wire message (version 0, no times: as if never stored).
pub fn decode(message: &KdsResource) -> Result<Resource, WireError> {
    let rtype = ResourceType::from_name(&message.r#type)
        .ok_or_else(|| WireError::UnknownType(message.r#type.clone()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&message.spec).map_err(|e| WireError::Spec {
            name: message.name.clone(),
            rtype,
            reason: e.to_string(),
        })?;
    let spec = Spec::from_value(rtype, value, &mut |_| {}).map_err(|e| WireError::Spec {
        name: message.name.clone(),
        rtype,
        reason: e.to_string(),
    })?;
    let mesh = match rtype.scope() {
        Scope::Global => None,
        Scope::Mesh if message.mesh.is_empty() => {
            return Err(WireError::MissingMesh(message.name.clone()))
        }
        Scope::Mesh => Some(message.mesh.clone()),
    };
    Ok(Resource {
        meta: ResourceMeta {
            name: message.name.clone(),
            mesh,
            labels: message.labels.clone(),
            ..ResourceMeta::default()
        },
        spec,
    })
}

/// The version of a wire message: the hex sha256 of a canonical encoding (length-prefixed type,
/// mesh, name, labels in key order, spec JSON with sorted keys). Equal content, equal version.
pub fn version_of(message: &KdsResource) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(message.r#type.as_bytes());
    field(message.mesh.as_bytes());
    field(message.name.as_bytes());
    field(&(message.labels.len() as u64).to_be_bytes());
    for (k, v) in &message.labels {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(&message.spec);
    hex::encode(hasher.finalize())
}

/// The version of a domain resource (of its wire form).
pub fn version(resource: &Resource) -> String {
    version_of(&encode(resource))
}

/// The Envoy resource carrying a domain resource: wire name, content version, `Any` payload.
pub fn to_envoy(resource: &Resource) -> EnvoyResource {
    let message = encode(resource);
    EnvoyResource {
        name: wire_name(&resource.key()),
        version: version_of(&message),
        resource: Some(Any {
            type_url: RESOURCE_TYPE_URL.to_owned(),
            value: message.encode_to_vec(),
        }),
        ..EnvoyResource::default()
    }
}

/// Decodes an Envoy resource of a response for `rtype`, checking its payload type, its wire name
/// against its key and its version against its content.
pub fn from_envoy(rtype: ResourceType, resource: &EnvoyResource) -> Result<Resource, WireError> {
    let name = &resource.name;
    let any = resource
        .resource
        .as_ref()
        .ok_or_else(|| WireError::MissingPayload { name: name.clone() })?;
    if any.type_url != RESOURCE_TYPE_URL {
        return Err(WireError::WrongPayloadType {
            name: name.clone(),
            type_url: any.type_url.clone(),
        });
    }
    let message = KdsResource::decode(any.value.as_slice()).map_err(|e| WireError::Decode {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let decoded = decode(&message)?;
    if decoded.resource_type() != rtype {
        return Err(WireError::TypeMismatch {
            name: name.clone(),
            expected: rtype,
            actual: decoded.resource_type(),
        });
    }
    let key = decoded.key();
    if wire_name(&key) != *name {
        return Err(WireError::NameMismatch {
            name: name.clone(),
            key: key.to_string(),
        });
    }
    let actual = version_of(&message);
    if !resource.version.is_empty() && resource.version != actual {
        return Err(WireError::VersionMismatch {
            name: name.clone(),
            claimed: resource.version.clone(),
            actual,
        });
    }
    Ok(decoded)
}

/// Whether two resources have the same content (what KDS carries), ignoring store bookkeeping.
pub fn same_content(a: &Resource, b: &Resource) -> bool {
    a.meta.name == b.meta.name
        && a.meta.mesh == b.meta.mesh
        && a.meta.labels == b.meta.labels
        && a.spec == b.spec
}

fn label<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    labels.get(key).map(String::as_str)
}

/// Whether a resource came from the global (`kuma.io/origin: global`).
pub fn is_from_global(resource: &Resource) -> bool {
    label(&resource.meta.labels, mesh_api::ORIGIN_LABEL) == Some(ORIGIN_GLOBAL)
}

/// The zone a global-stored zone resource belongs to, when it is one (`origin: zone`).
pub fn owning_zone(resource: &Resource) -> Option<&str> {
    if label(&resource.meta.labels, mesh_api::ORIGIN_LABEL) == Some(ORIGIN_ZONE) {
        label(&resource.meta.labels, mesh_api::ZONE_LABEL)
    } else {
        None
    }
}

/// What the global sends to zone `zone` for a stored resource, or `None` when that zone does not
/// receive it: every global-to-zone type (labelled origin global) but the zone-token signing keys,
/// and the cross-zone types (ZoneIngress) of every *other* zone, keeping their zone label.
pub fn global_to_zone_form(resource: &Resource, zone: &str) -> Option<Resource> {
    let rtype = resource.resource_type();
    let forward = match rtype.sync_direction() {
        mesh_api::SyncDirection::GlobalToZone => !crate::token_keys::is_global_only(resource),
        _ if rtype.relayed_across_zones() => owning_zone(resource).is_some_and(|z| z != zone),
        _ => false,
    };
    if !forward {
        return None;
    }
    let mut out = Resource {
        meta: ResourceMeta {
            name: resource.meta.name.clone(),
            mesh: resource.meta.mesh.clone(),
            labels: resource.meta.labels.clone(),
            ..ResourceMeta::default()
        },
        spec: resource.spec.clone(),
    };
    out.meta
        .labels
        .insert(mesh_api::ORIGIN_LABEL.to_owned(), ORIGIN_GLOBAL.to_owned());
    Some(out)
}

/// What zone `zone` reports up for a resource of its store, or `None` when it does not report it:
/// zone-to-global types it owns itself (not labelled origin global), labelled origin zone, its
/// zone name and its display name.
pub fn zone_to_global_form(resource: &Resource, zone: &str) -> Option<Resource> {
    let rtype = resource.resource_type();
    if rtype.sync_direction() != mesh_api::SyncDirection::ZoneToGlobal || is_from_global(resource) {
        return None;
    }
    let mut out = Resource {
        meta: ResourceMeta {
            name: resource.meta.name.clone(),
            mesh: resource.meta.mesh.clone(),
            labels: resource.meta.labels.clone(),
            ..ResourceMeta::default()
        },
        spec: resource.spec.clone(),
    };
    stamp_zone(&mut out, zone);
    Some(out)
}

fn stamp_zone(resource: &mut Resource, zone: &str) {
    let labels = &mut resource.meta.labels;
    labels.insert(mesh_api::ORIGIN_LABEL.to_owned(), ORIGIN_ZONE.to_owned());
    labels.insert(mesh_api::ZONE_LABEL.to_owned(), zone.to_owned());
    labels.insert(DISPLAY_NAME_LABEL.to_owned(), resource.meta.name.clone());
}

/// The name a zone resource is stored under at the global: `<name>.<zone>`.
pub fn global_name(name: &str, zone: &str) -> String {
    format!("{name}.{zone}")
}

/// How the global stores a resource reported by `zone`: renamed `<name>.<zone>` and labelled with
/// the zone whatever the zone sent (a zone cannot claim another zone's labels or names).
pub fn stored_at_global(mut reported: Resource, zone: &str) -> Resource {
    stamp_zone(&mut reported, zone);
    reported.meta.name = global_name(&reported.meta.name, zone);
    reported.meta.version = 0;
    reported.meta.creation_time = None;
    reported.meta.modification_time = None;
    reported
}

/// The inverse of [`stored_at_global`]: the resource as zone `zone` reported it, or `None` when
/// the stored resource is not that zone's.
pub fn reported_by_zone(stored: &Resource, zone: &str) -> Option<Resource> {
    if owning_zone(stored) != Some(zone) {
        return None;
    }
    let display = label(&stored.meta.labels, DISPLAY_NAME_LABEL)?;
    if stored.meta.name != global_name(display, zone) {
        return None;
    }
    Some(Resource {
        meta: ResourceMeta {
            name: display.to_owned(),
            mesh: stored.meta.mesh.clone(),
            labels: stored.meta.labels.clone(),
            ..ResourceMeta::default()
        },
        spec: stored.spec.clone(),
    })
}

/// Whether `zone` is a usable zone name: an RFC 1123 label (lowercase letters, digits, `-`, no
/// dots, at most 63 characters), so that `<name>.<zone>` can never be ambiguous.
pub fn valid_zone_name(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= 63
        && zone
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !zone.starts_with('-')
        && !zone.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::ResourceType;

    fn policy(name: &str) -> Resource {
        let mut r = Resource::new(
            name,
            Some("default"),
            Spec::empty(ResourceType::MeshTimeout),
        );
        r.meta.labels.insert("team".into(), "a".into());
        r
    }

    #[test]
    fn round_trips_and_versions_are_content_hashes() {
        let r = policy("p1");
        let env = to_envoy(&r);
        assert_eq!(env.name, "default/p1");
        assert_eq!(env.version.len(), 64);
        let back = from_envoy(ResourceType::MeshTimeout, &env).unwrap();
        assert!(same_content(&r, &back));
        // Store bookkeeping does not change the version.
        let mut stored = r.clone();
        stored.meta.version = 7;
        stored.meta.creation_time = Some(chrono::Utc::now());
        assert_eq!(version(&stored), env.version);
        let mut other = r.clone();
        other.meta.labels.insert("team".into(), "b".into());
        assert_ne!(version(&other), env.version);
    }

    #[test]
    fn refuses_bad_payloads() {
        let r = policy("p1");
        let mut env = to_envoy(&r);
        assert!(matches!(
            from_envoy(ResourceType::MeshRetry, &env),
            Err(WireError::TypeMismatch { .. })
        ));
        env.version = "0".repeat(64);
        assert!(matches!(
            from_envoy(ResourceType::MeshTimeout, &env),
            Err(WireError::VersionMismatch { .. })
        ));
        env.name = "other/p1".into();
        env.version.clear();
        assert!(matches!(
            from_envoy(ResourceType::MeshTimeout, &env),
            Err(WireError::NameMismatch { .. })
        ));
        env.resource.as_mut().unwrap().value = vec![0xff, 0xff];
        assert!(matches!(
            from_envoy(ResourceType::MeshTimeout, &env),
            Err(WireError::Decode { .. })
        ));
        env.resource = None;
        assert!(matches!(
            from_envoy(ResourceType::MeshTimeout, &env),
            Err(WireError::MissingPayload { .. })
        ));
        assert!(type_from_url("meridian.kds.v1.Nope").is_err());
        assert_eq!(
            type_from_url(&type_url(ResourceType::Dataplane)).unwrap(),
            ResourceType::Dataplane
        );
    }

    #[test]
    fn zone_names_and_inverse_transform() {
        let dp = Resource::new("web", Some("default"), Spec::empty(ResourceType::Dataplane));
        let up = zone_to_global_form(&dp, "zone-1").unwrap();
        let stored = stored_at_global(up.clone(), "zone-1");
        assert_eq!(stored.meta.name, "web.zone-1");
        assert_eq!(owning_zone(&stored), Some("zone-1"));
        let back = reported_by_zone(&stored, "zone-1").unwrap();
        assert_eq!(version(&back), version(&up));
        assert!(reported_by_zone(&stored, "zone-2").is_none());
        // A zone lying about its labels is relabelled.
        let mut lie = up;
        lie.meta
            .labels
            .insert(mesh_api::ZONE_LABEL.into(), "zone-1".into());
        assert_eq!(
            owning_zone(&stored_at_global(lie, "zone-2")),
            Some("zone-2")
        );
        assert!(valid_zone_name("zone-1"));
        assert!(!valid_zone_name("zone.1"));
        assert!(!valid_zone_name(""));
        assert!(!valid_zone_name("Zone"));
    }

    #[test]
    fn relay_only_other_zones_ingresses() {
        let ing = Resource::new("ingress", None, Spec::empty(ResourceType::ZoneIngress));
        let stored = stored_at_global(zone_to_global_form(&ing, "zone-1").unwrap(), "zone-1");
        assert!(global_to_zone_form(&stored, "zone-1").is_none());
        let relayed = global_to_zone_form(&stored, "zone-2").unwrap();
        assert!(is_from_global(&relayed));
        assert_eq!(
            relayed
                .meta
                .labels
                .get(mesh_api::ZONE_LABEL)
                .map(String::as_str),
            Some("zone-1")
        );
        // Relayed resources are never reported back up.
        assert!(zone_to_global_form(&relayed, "zone-2").is_none());
        let dp = Resource::new("web", Some("default"), Spec::empty(ResourceType::Dataplane));
        assert!(global_to_zone_form(&dp, "zone-1").is_none());
        assert!(is_from_global(
            &global_to_zone_form(&policy("p"), "zone-1").unwrap()
        ));
    }
}
