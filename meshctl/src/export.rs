//! `meshctl export`: every resource the global control plane owns, as a multi-document YAML
//! stream that `meshctl apply -f` restores into a fresh global (disaster recovery, docs/rollout.md;
//! `kumactl export --profile federation` does the same for Kuma).
//!
//! Owned means every type the global syncs to zones (meshes, their secrets and policies, global
//! secrets) and the global's own `Zone` resources. Zone inventory (dataplanes, ingresses, egresses,
//! insights, MeshServices) is left out: zones send it again when they reconnect. Documents are
//! in an order `apply` can replay: meshes first (a mesh-scoped resource needs its mesh), then
//! global-scoped types, then each mesh's secrets (a mesh's builtin CA lives in one: restored before
//! the policies), then the policies, every type in registry order and names sorted, so two
//! exports of the same state are byte-identical.

use anyhow::Context as _;
use mesh_api::{ResourceType, Scope, SyncDirection};
use serde_json::Value;

use crate::client::ApiClient;
use crate::types;

/// Fields the server sets; `apply` would warn about them and the restored global sets its own.
const SERVER_FIELDS: &[&str] = &["creationTime", "modificationTime", "version", "revision"];

/// The types `meshctl export` writes, in the order they are restored.
pub fn exported_types() -> Vec<ResourceType> {
    let owned = |t: &ResourceType| t.sync_direction() != SyncDirection::ZoneToGlobal;
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

/// Lists every exported type on the global at `client` and returns the YAML stream and how
/// many resources it holds.
pub async fn export(client: &ApiClient) -> anyhow::Result<(String, usize)> {
    let mut documents = Vec::new();
    for rtype in exported_types() {
        let (_, mut items) = client
            .list_all(&types::collection_segments(rtype, None))
            .await
            .with_context(|| format!("cannot list {} at {}", rtype.plural(), client.base()))?;
        items.sort_by_key(key);
        documents.extend(items.iter().map(|i| crate::output::to_yaml(&restorable(i))));
    }
    let count = documents.len();
    Ok((documents.join("---\n"), count))
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
            ResourceType::MeshService,
        ] {
            assert!(!order.contains(&t), "{t} exported");
        }
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
