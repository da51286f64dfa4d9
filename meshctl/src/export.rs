//! `meshctl export`: every resource the global control plane owns, as a multi-document YAML
//! stream that `meshctl apply -f` restores into a fresh global (disaster recovery, docs/rollout.md;
//! `kumactl export --profile federation` does the same for Kuma).
//!
//! Owned means every type the global syncs to zones (meshes, their secrets and policies, global
//! secrets) and the global's own `Zone` resources. Zone inventory (dataplanes, ingresses, egresses,
//! insights, MeshServices) is left out: zones send it again when they reconnect. So are the types
//! the control plane computes (zone leases: the global writes them again as zones connect, and
//! `apply` could not write them). Documents are
//! in an order `apply` can replay: meshes first (a mesh-scoped resource needs its mesh; one with
//! mTLS without it at first), then global-scoped types, then each mesh's secrets (its builtin CA
//! among them), then the policies, then the meshes with mTLS as exported (the CA is there by
//! then, so the restoring global keeps it instead of making one); every type in registry order and
//! names sorted, so two exports of the same state are byte-identical.

use anyhow::Context as _;
use mesh_api::{ResourceType, Scope, SyncDirection};
use serde_json::Value;

use crate::client::ApiClient;
use crate::types;

/// Fields the server sets; `apply` would warn about them and the restored global sets its own.
const SERVER_FIELDS: &[&str] = &["creationTime", "modificationTime", "version", "revision"];

/// The types `meshctl export` writes, in the order they are restored.
pub fn exported_types() -> Vec<ResourceType> {
    let owned =
        |t: &ResourceType| t.sync_direction() != SyncDirection::ZoneToGlobal && !t.is_computed();
    let mut out = vec![ResourceType::Mesh];
    out.extend(
        ResourceType::ALL
            .iter()
            .copied()
            .filter(|t| owned(t) && t.scope() == Scope::Global && *t != ResourceType::Mesh),
    );
    out.push(ResourceType::Secret);
    out.extend(
        ResourceType::ALL
            .iter()
            .copied()
            .filter(|t| owned(t) && t.scope() == Scope::Mesh && *t != ResourceType::Secret),
    );
    out
}

/// One listed resource as `apply` reads it: without the fields the server sets.
pub fn restorable(item: &Value) -> Value {
    let mut item = item.clone();
    if let Value::Object(map) = &mut item {
        for field in SERVER_FIELDS {
            map.remove(*field);
        }
    }
    item
}

/// The sort key of a listed resource: mesh, then name.
fn key(item: &Value) -> (String, String) {
    let field = |f: &str| item.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
    (field("mesh"), field("name"))
}

/// A mesh with mTLS, first without it: applied before its secrets so that the restoring global
/// does not make a new CA of its own (it would, on seeing a builtin backend without one, and
/// the exported CA would then collide with it); the mesh as exported follows its secrets.
/// The early copy is the mesh's name and labels only: its other settings may depend on mTLS
/// (`routing.zoneEgress` needs it).
pub fn without_mtls(mesh: &Value) -> Option<Value> {
    let map = mesh.as_object()?;
    map.get("mtls")?;
    let kept = map
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "type" | "name" | "labels"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Value::Object(kept))
}

/// The export of `listed` (each type's items, in [`exported_types`] order) as YAML documents:
/// meshes with mTLS first without it, then the rest, then those meshes as exported.
pub fn documents(listed: Vec<(ResourceType, Vec<Value>)>) -> Vec<String> {
    let mut early = Vec::new();
    let mut documents = Vec::new();
    let mut late = Vec::new();
    for (rtype, mut items) in listed {
        items.sort_by_key(key);
        for item in items {
            let item = restorable(&item);
            if rtype == ResourceType::Mesh {
                if let Some(plain) = without_mtls(&item) {
                    early.push(crate::output::to_yaml(&plain));
                    late.push(crate::output::to_yaml(&item));
                    continue;
                }
            }
            documents.push(crate::output::to_yaml(&item));
        }
    }
    early.into_iter().chain(documents).chain(late).collect()
}

/// Lists every exported type on the global at `client` and returns the YAML stream and how
/// many resources it holds.
pub async fn export(client: &ApiClient) -> anyhow::Result<(String, usize)> {
    let mut listed = Vec::new();
    let mut count = 0;
    for rtype in exported_types() {
        let (_, items) = client
            .list_all(&types::collection_segments(rtype, None))
            .await
            .with_context(|| format!("cannot list {} at {}", rtype.plural(), client.base()))?;
        count += items.len();
        listed.push((rtype, items));
    }
    Ok((documents(listed).join("---\n"), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshes_come_first_then_global_types_then_secrets_and_no_zone_inventory() {
        let order = exported_types();
        assert_eq!(order[0], ResourceType::Mesh);
        let secret = order
            .iter()
            .position(|t| *t == ResourceType::Secret)
            .unwrap();
        for (i, t) in order.iter().enumerate() {
            assert_ne!(t.sync_direction(), SyncDirection::ZoneToGlobal, "{t}");
            if t.scope() == Scope::Global {
                assert!(i < secret, "{t} after Secret");
            } else if *t != ResourceType::Secret {
                assert!(i > secret, "{t} before Secret");
            }
        }
        for t in [
            ResourceType::Zone,
            ResourceType::GlobalSecret,
            ResourceType::MeshTrafficPermission,
        ] {
            assert!(order.contains(&t), "{t} missing");
        }
        for t in [
            ResourceType::Dataplane,
            ResourceType::ZoneIngress,
            ResourceType::ZoneInsight,
            ResourceType::ZoneLease,
            ResourceType::MeshService,
        ] {
            assert!(!order.contains(&t), "{t} exported");
        }
    }

    #[test]
    fn a_mesh_with_mtls_comes_first_without_it_and_last_as_exported() {
        let mesh = serde_json::json!({
            "type": "Mesh", "name": "default",
            "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
            "routing": {"zoneEgress": true}
        });
        let plain = serde_json::json!({"type": "Mesh", "name": "other"});
        let secret = serde_json::json!({
            "type": "Secret", "name": "default.ca-builtin-cert-ca-1", "mesh": "default", "data": "eA=="
        });
        let docs = documents(vec![
            (ResourceType::Mesh, vec![plain, mesh]),
            (ResourceType::Secret, vec![secret]),
        ]);
        assert_eq!(docs.len(), 4, "{docs:?}");
        assert_eq!(docs[0], "type: Mesh\nname: default\n");
        assert!(docs[1].contains("name: other"));
        assert!(docs[2].contains("type: Secret"));
        assert!(docs[3].contains("name: default") && docs[3].contains("enabledBackend: ca-1"));
        assert!(docs[3].contains("zoneEgress: true"), "{}", docs[3]);
        let planned = crate::apply::plan(&docs.join("---\n"), "export").unwrap();
        assert_eq!(planned.len(), 4);
    }

    #[test]
    fn a_listed_resource_is_applied_back_without_warnings() {
        let listed = serde_json::json!({
            "type": "MeshTrafficPermission",
            "name": "allow-all",
            "mesh": "default",
            "creationTime": "2026-01-01T00:00:00Z",
            "modificationTime": "2026-01-01T00:00:00Z",
            "version": 3,
            "labels": {"team": "a"},
            "spec": {
                "targetRef": {"kind": "Mesh"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]
            }
        });
        let text = crate::output::to_yaml(&restorable(&listed));
        let planned = crate::apply::plan(&text, "export").unwrap();
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].name, "allow-all");
        assert!(planned[0].warnings.is_empty(), "{:?}", planned[0].warnings);
        assert!(!text.contains("creationTime"), "{text}");
    }
}
