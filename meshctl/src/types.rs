//! Resolving the resource type a user names on the command line, and the REST path of a resource.
//!
//! A type may be written as its REST plural (`meshtrafficpermissions`, `traffic-routes`), as its
//! singular in lower case (`meshtrafficpermission`, `traffic-route`), or as its Kind
//! (`MeshTrafficPermission`). Matching ignores case and hyphens.

use mesh_api::{ResourceType, Scope};

/// The comparison key of a name: lower case, hyphens dropped.
fn key(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Every spelling (as comparison keys) that names `rtype`.
fn spellings(rtype: ResourceType) -> [String; 4] {
    let kind = key(rtype.name());
    [
        key(rtype.plural()),
        format!("{kind}s"),
        format!("{kind}es"),
        kind,
    ]
}

/// Looks up the type named by `input`; the error lists the accepted names.
pub fn resolve_type(input: &str) -> anyhow::Result<ResourceType> {
    let wanted = key(input.trim());
    if !wanted.is_empty() {
        if let Some(rtype) = ResourceType::ALL
            .iter()
            .copied()
            .find(|&t| spellings(t).contains(&wanted))
        {
            return Ok(rtype);
        }
    }
    let known: Vec<&str> = ResourceType::ALL.iter().map(|t| t.plural()).collect();
    anyhow::bail!(
        "unknown resource type {input:?}: expected one of {} (plural, singular or Kind)",
        known.join(", ")
    )
}

/// The mesh a resource of `rtype` lives in: `mesh` for mesh-scoped types, none for global ones.
pub fn scoped_mesh(rtype: ResourceType, mesh: &str) -> Option<&str> {
    match rtype.scope() {
        Scope::Global => None,
        Scope::Mesh => Some(mesh),
    }
}

/// The path segments of a list of `rtype`: `/{plural}` for global-scoped types (and for a
/// mesh-scoped type listed across all meshes, `mesh == None`), `/meshes/{mesh}/{plural}` otherwise.
pub fn collection_segments(rtype: ResourceType, mesh: Option<&str>) -> Vec<String> {
    match (rtype.scope(), mesh) {
        (Scope::Mesh, Some(mesh)) => vec![
            "meshes".to_owned(),
            mesh.to_owned(),
            rtype.plural().to_owned(),
        ],
        _ => vec![rtype.plural().to_owned()],
    }
}

/// The path segments of one resource: its collection plus its name.
pub fn resource_segments(rtype: ResourceType, mesh: Option<&str>, name: &str) -> Vec<String> {
    let mut segments = collection_segments(rtype, mesh);
    segments.push(name.to_owned());
    segments
}

/// How a resource is named in messages: `MeshTrafficPermission allow-all (mesh default)`.
pub fn describe(rtype: ResourceType, mesh: Option<&str>, name: &str) -> String {
    match mesh {
        Some(mesh) if rtype.scope() == Scope::Mesh => format!("{rtype} {name} (mesh {mesh})"),
        _ => format!("{rtype} {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plural_singular_and_kind() {
        for input in [
            "meshtrafficpermissions",
            "meshtrafficpermission",
            "MeshTrafficPermission",
            "MESHTRAFFICPERMISSIONS",
        ] {
            assert_eq!(
                resolve_type(input).unwrap(),
                ResourceType::MeshTrafficPermission,
                "{input}"
            );
        }
        assert_eq!(resolve_type("meshes").unwrap(), ResourceType::Mesh);
        assert_eq!(resolve_type("mesh").unwrap(), ResourceType::Mesh);
        assert_eq!(resolve_type("Mesh").unwrap(), ResourceType::Mesh);
        assert_eq!(resolve_type("dataplanes").unwrap(), ResourceType::Dataplane);
        assert_eq!(
            resolve_type("zoneingresses").unwrap(),
            ResourceType::ZoneIngress
        );
        assert_eq!(
            resolve_type("zoneingress").unwrap(),
            ResourceType::ZoneIngress
        );
        assert_eq!(
            resolve_type("traffic-routes").unwrap(),
            ResourceType::TrafficRoute
        );
        assert_eq!(
            resolve_type("traffic-route").unwrap(),
            ResourceType::TrafficRoute
        );
        assert_eq!(
            resolve_type("TrafficRoute").unwrap(),
            ResourceType::TrafficRoute
        );
        assert_eq!(
            resolve_type("global-secrets").unwrap(),
            ResourceType::GlobalSecret
        );
        assert_eq!(
            resolve_type("global-secret").unwrap(),
            ResourceType::GlobalSecret
        );
        assert_eq!(resolve_type("secrets").unwrap(), ResourceType::Secret);
        assert_eq!(
            resolve_type("meshretries").unwrap(),
            ResourceType::MeshRetry
        );
        assert_eq!(resolve_type("meshretry").unwrap(), ResourceType::MeshRetry);
        assert_eq!(
            resolve_type("meshloadbalancingstrategies").unwrap(),
            ResourceType::MeshLoadBalancingStrategy
        );
        assert_eq!(
            resolve_type("MeshHTTPRoute").unwrap(),
            ResourceType::MeshHTTPRoute
        );
        assert_eq!(
            resolve_type("meshhttproute").unwrap(),
            ResourceType::MeshHTTPRoute
        );
    }

    #[test]
    fn every_type_resolves_by_each_spelling_and_no_spelling_is_ambiguous() {
        for &t in ResourceType::ALL {
            assert_eq!(resolve_type(t.plural()).unwrap(), t);
            assert_eq!(resolve_type(t.name()).unwrap(), t);
            assert_eq!(resolve_type(&t.name().to_lowercase()).unwrap(), t);
            for other in ResourceType::ALL.iter().filter(|&&o| o != t) {
                for s in spellings(t) {
                    assert!(
                        !spellings(*other).contains(&s),
                        "{s:?} names both {t} and {other}"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_type_lists_the_known_ones() {
        let err = resolve_type("meshfoos").unwrap_err().to_string();
        assert!(err.contains("\"meshfoos\""), "{err}");
        assert!(err.contains("meshtrafficpermissions"), "{err}");
        assert!(resolve_type("").is_err());
    }

    #[test]
    fn paths_follow_the_rest_contract() {
        assert_eq!(
            resource_segments(ResourceType::Mesh, None, "default"),
            ["meshes", "default"]
        );
        // A mesh given for a global-scoped type is ignored.
        assert_eq!(
            resource_segments(ResourceType::Zone, Some("default"), "zone-1"),
            ["zones", "zone-1"]
        );
        assert_eq!(
            resource_segments(ResourceType::MeshTrafficPermission, Some("demo"), "allow"),
            ["meshes", "demo", "meshtrafficpermissions", "allow"]
        );
        assert_eq!(
            collection_segments(ResourceType::Dataplane, Some("default")),
            ["meshes", "default", "dataplanes"]
        );
        assert_eq!(
            collection_segments(ResourceType::Dataplane, None),
            ["dataplanes"]
        );
        assert_eq!(
            collection_segments(ResourceType::GlobalSecret, Some("default")),
            ["global-secrets"]
        );
        assert_eq!(scoped_mesh(ResourceType::Mesh, "default"), None);
        assert_eq!(scoped_mesh(ResourceType::Secret, "x"), Some("x"));
    }
}
