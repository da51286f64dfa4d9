//! What exists without anyone creating it: the `default` mesh at first start, and for every new
//! Mesh the default policies Kuma creates (allow-all traffic permission, default timeouts, retries
//! and circuit breaker), unless the Mesh's `skipCreatingInitialPolicies` names them or says `*`.

use mesh_api::{Resource, ResourceType, Spec, DEFAULT_MESH};
use mesh_store::{ResourceStore, StoreError};

/// The default policies, as YAML templates over `{mesh}`. Kept as documents (not struct literals)
/// so they read as what a user would apply, and a test proves each one validates.
const DEFAULT_POLICIES: &[(ResourceType, &str)] = &[
    (
        ResourceType::MeshTrafficPermission,
        r#"
type: MeshTrafficPermission
name: allow-all-{mesh}
mesh: {mesh}
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        action: Allow
"#,
    ),
    (
        ResourceType::MeshTimeout,
        r#"
type: MeshTimeout
name: mesh-timeout-all-{mesh}
mesh: {mesh}
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        connectionTimeout: 5s
        idleTimeout: 2h
        http:
          requestTimeout: 15s
          streamIdleTimeout: 30m
  to:
    - targetRef:
        kind: Mesh
      default:
        connectionTimeout: 5s
        idleTimeout: 1h
        http:
          requestTimeout: 15s
          streamIdleTimeout: 30m
"#,
    ),
    (
        ResourceType::MeshRetry,
        r#"
type: MeshRetry
name: mesh-retry-all-{mesh}
mesh: {mesh}
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        tcp:
          maxConnectAttempt: 5
        http:
          numRetries: 5
          perTryTimeout: 16s
          backOff:
            baseInterval: 25ms
            maxInterval: 250ms
        grpc:
          numRetries: 5
          perTryTimeout: 16s
          backOff:
            baseInterval: 25ms
            maxInterval: 250ms
"#,
    ),
    (
        ResourceType::MeshCircuitBreaker,
        r#"
type: MeshCircuitBreaker
name: mesh-circuit-breaker-all-{mesh}
mesh: {mesh}
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        connectionLimits:
          maxConnections: 1024
          maxPendingRequests: 1024
          maxRequests: 1024
          maxRetries: 3
        outlierDetection:
          disabled: false
          detectors:
            totalFailures:
              consecutive: 5
            gatewayFailures:
              consecutive: 5
            localOriginFailures:
              consecutive: 5
"#,
    ),
];

/// The default policies of `mesh`, minus those its `skipCreatingInitialPolicies` names.
pub fn default_policies(mesh: &Resource) -> Vec<Resource> {
    let skip: Vec<String> = match mesh.spec.to_value().get("skipCreatingInitialPolicies") {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    DEFAULT_POLICIES
        .iter()
        .filter(|(rtype, _)| !skip.iter().any(|s| s == "*" || s == rtype.name()))
        .filter_map(|(rtype, template)| {
            let text = template.replace("{mesh}", &mesh.meta.name);
            match mesh_api::parse_documents(&text).pop() {
                Some(Ok(parsed)) => Some(parsed.resource),
                other => {
                    // Unreachable while the templates are valid (tested below); never fatal.
                    tracing::error!(policy = %rtype, result = ?other, "a default policy template does not parse");
                    None
                }
            }
        })
        .collect()
}

/// Creates the default policies of a newly created mesh; existing ones are left as they are.
pub async fn create_default_policies(
    store: &dyn ResourceStore,
    mesh: &Resource,
) -> Result<(), StoreError> {
    for policy in default_policies(mesh) {
        match store.create(policy).await {
            Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the `default` mesh (and its policies) when the store is brand new. A store that has
/// seen any write is left alone, so a deleted default mesh stays deleted.
pub async fn ensure_default_mesh(store: &dyn ResourceStore) -> Result<(), StoreError> {
    if store.revision() > 0 {
        return Ok(());
    }
    let mesh = Resource::new(DEFAULT_MESH, None, Spec::empty(ResourceType::Mesh));
    match store.create(mesh).await {
        Ok(created) => create_default_policies(store, &created).await,
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_policy_is_valid() {
        let mesh = Resource::new("demo", None, Spec::empty(ResourceType::Mesh));
        let policies = default_policies(&mesh);
        assert_eq!(policies.len(), DEFAULT_POLICIES.len());
        for policy in &policies {
            assert_eq!(policy.meta.mesh.as_deref(), Some("demo"));
            mesh_api::validate_resource(policy).unwrap_or_else(|e| panic!("{}: {e}", policy.key()));
        }
    }

    #[test]
    fn skip_list_is_honoured() {
        let text = "type: Mesh\nname: m\nskipCreatingInitialPolicies: [MeshRetry, MeshTimeout]\n";
        let mesh = mesh_api::parse_documents(text).remove(0).unwrap().resource;
        let kinds: Vec<_> = default_policies(&mesh)
            .iter()
            .map(|p| p.resource_type())
            .collect();
        assert_eq!(
            kinds,
            [
                ResourceType::MeshTrafficPermission,
                ResourceType::MeshCircuitBreaker
            ]
        );
        let all =
            mesh_api::parse_documents("type: Mesh\nname: m\nskipCreatingInitialPolicies: ['*']\n")
                .remove(0)
                .unwrap()
                .resource;
        assert!(default_policies(&all).is_empty());
    }
}
