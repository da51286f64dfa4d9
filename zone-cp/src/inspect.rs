//! Inspecting a zone's dataplanes through the REST API (issue [3] points 1, 2, 8):
//!
//! - `GET /meshes/{mesh}/dataplanes/{name}/xds`: the Envoy configuration the proxy has (or would
//!   get if it connected now), as Envoy JSON ([`config_dump`]); admin token required, as Kuma
//!   restricts config dumps to admins.
//! - `GET /meshes/{mesh}/dataplanes/{name}/_policies`: per policy type, the policies that select
//!   the Dataplane in merge order (with the targetRef that selected each) and the merged
//!   configuration per `to` target, `from` target and rules ([`mesh_api::matching`]).
//! - `GET /meshes/{mesh}/dataplanes+insights[/{name}]`: Kuma's dataplane overview, the Dataplane
//!   with its `dataplaneInsight` (online, connected since, disconnected at, and per xDS type the
//!   last ACKed version and the last NACK) from the xDS server's status registry.
//!
//! The shapes are documented in docs/api.md.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use control_plane::api::{require_admin, ApiError};
use control_plane::auth::AdminToken;
use mesh_api::matching::{matched_policies, MatchedPolicies};
use mesh_api::{Resource, ResourceKey, ResourceType};
use mesh_store::{ListQuery, ResourceStore};
use serde_json::{json, Map, Value};
use xds_server::cache::SnapshotCache;
use xds_server::snapshot::SourceError;
use xds_server::status::{ProxyStatus, ProxyStatusRegistry};
use xds_server::ProxyId;

/// What the inspection endpoints read.
pub struct InspectApi {
    pub store: Arc<dyn ResourceStore>,
    pub snapshots: Arc<SnapshotCache>,
    pub status: ProxyStatusRegistry,
    pub admin: AdminToken,
}

pub fn router(api: InspectApi) -> Router {
    Router::new()
        .route("/meshes/:mesh/dataplanes/:name/xds", get(xds))
        .route("/meshes/:mesh/dataplanes/:name/_policies", get(policies))
        .route("/meshes/:mesh/dataplanes+insights", get(list_insights))
        .route("/meshes/:mesh/dataplanes+insights/:name", get(one_insight))
        .with_state(Arc::new(api))
}

type Shared = State<Arc<InspectApi>>;

/// The Dataplane `mesh`/`name`, or the API's 404.
async fn dataplane(api: &InspectApi, mesh: &str, name: &str) -> Result<Resource, ApiError> {
    let key = ResourceKey::new(ResourceType::Dataplane, Some(mesh), name);
    api.store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{key} not found")))
}

fn proxy_id(mesh: &str, name: &str) -> Result<ProxyId, ApiError> {
    ProxyId::parse(&format!("{mesh}/{name}")).ok_or_else(|| {
        ApiError::bad_field(
            "name",
            format!("{mesh}/{name} is not a proxy id (no '.' in the mesh, no '/' in either)"),
        )
    })
}

fn internal(details: String) -> ApiError {
    tracing::error!(%details, "inspection failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        details,
    )
}

async fn xds(
    State(api): Shared,
    Path((mesh, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a dataplane's Envoy configuration needs the admin token: send `Authorization: Bearer \
             <token>` (the token is in the control plane's data directory, file admin-token)",
        )
    })?;
    let proxy = proxy_id(&mesh, &name)?;
    dataplane(&api, &mesh, &name).await?;
    let snapshot = api
        .snapshots
        .snapshot_of(&proxy)
        .await
        .map_err(|e| match e {
            SourceError::UnknownDataplane(_) => ApiError::not_found(e.to_string()),
            other => internal(format!("the configuration of {proxy}: {other}")),
        })?;
    config_dump::config_dump(&snapshot)
        .map(Json)
        .map_err(|e| internal(format!("the configuration of {proxy} as JSON: {e}")))
}

async fn policies(
    State(api): Shared,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let dataplane = dataplane(&api, &mesh, &name).await?;
    let mut types = Vec::new();
    for &rtype in ResourceType::ALL.iter().filter(|t| t.is_policy()) {
        let candidates = api
            .store
            .list(&ListQuery::in_mesh(rtype, &mesh))
            .await?
            .items;
        let matched = matched_policies(&dataplane, &candidates);
        if !matched.applied.is_empty() {
            types.push(policy_type_json(rtype, &matched, &candidates));
        }
    }
    Ok(Json(json!({
        "mesh": mesh,
        "name": name,
        "policies": types,
    })))
}

/// One policy type's entry of `_policies`.
fn policy_type_json(
    rtype: ResourceType,
    matched: &MatchedPolicies,
    policies: &[Resource],
) -> Value {
    let applied: Vec<Value> = matched
        .applied
        .iter()
        .map(|key| {
            let policy = policies.iter().find(|p| &p.key() == key);
            let spec = policy.map(|p| p.spec.to_value()).unwrap_or(Value::Null);
            json!({
                "name": key.name,
                // Why it applies: the top-level targetRef that selected the Dataplane.
                "targetRef": spec.get("targetRef").cloned().unwrap_or_else(|| json!({"kind": "Mesh"})),
                "origin": policy.and_then(|p| p.meta.labels.get(mesh_api::ORIGIN_LABEL)),
            })
        })
        .collect();
    let entries = |list: &[(mesh_api::policies::common::TargetRef, Value)]| -> Vec<Value> {
        list.iter()
            .map(|(target, conf)| json!({"targetRef": target, "conf": conf}))
            .collect()
    };
    json!({
        "type": rtype.name(),
        "applied": applied,
        "to": entries(&matched.to),
        "from": entries(&matched.from),
        "rules": matched.rules,
        "conditionalRules": matched
            .conditional_rules
            .iter()
            .map(|(matches, conf)| json!({"matches": matches, "conf": conf}))
            .collect::<Vec<_>>(),
        "default": matched.single,
    })
}

fn time(t: &DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The `dataplaneInsight` of a proxy; never connected when the registry has no entry.
pub fn insight_json(status: Option<&ProxyStatus>) -> Value {
    let Some(status) = status else {
        return json!({"online": false, "connectedSince": null, "disconnectedAt": null, "xds": {}});
    };
    let mut types = Map::new();
    for (type_url, t) in &status.types {
        types.insert(
            type_url.clone(),
            json!({
                "lastAckedVersion": t.acked.as_ref().map(|(v, _)| v),
                "lastAckedAt": t.acked.as_ref().map(|(_, at)| time(at)),
                "lastNack": t.last_nack.as_ref().map(|n| json!({
                    "version": n.version,
                    "nonce": n.nonce,
                    "message": n.message,
                    "at": time(&n.at),
                })),
            }),
        );
    }
    json!({
        "online": status.online,
        "connectedSince": time(&status.connected_since),
        "disconnectedAt": status.disconnected_at.as_ref().map(time),
        "xds": types,
    })
}

fn overview(api: &InspectApi, dataplane: &Resource) -> Value {
    let status = dataplane
        .meta
        .mesh
        .as_deref()
        .and_then(|mesh| ProxyId::parse(&format!("{mesh}/{}", dataplane.meta.name)))
        .and_then(|proxy| api.status.get(&proxy));
    json!({
        "type": "DataplaneOverview",
        "mesh": dataplane.meta.mesh,
        "name": dataplane.meta.name,
        "labels": dataplane.meta.labels,
        "dataplane": mesh_api::to_universal(dataplane),
        "dataplaneInsight": insight_json(status.as_ref()),
    })
}

async fn list_insights(
    State(api): Shared,
    Path(mesh): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let path = format!("/meshes/{mesh}/dataplanes+insights");
    let (page, next) = control_plane::api::list_page(
        api.store.as_ref(),
        ResourceType::Dataplane,
        Some(mesh),
        &path,
        &params,
        &headers,
    )
    .await?;
    Ok(Json(json!({
        "total": page.total,
        "items": page.items.iter().map(|d| overview(&api, d)).collect::<Vec<_>>(),
        "next": next,
    })))
}

async fn one_insight(
    State(api): Shared,
    Path((mesh, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let dataplane = dataplane(&api, &mesh, &name).await?;
    Ok(Json(overview(&api, &dataplane)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use xds_server::status::{Nack, TypeStatus};

    use super::*;

    #[test]
    fn insight_shows_acks_nacks_and_offline() {
        assert_eq!(insight_json(None)["online"], false);
        assert_eq!(insight_json(None)["connectedSince"], Value::Null);
        let at = DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut types = BTreeMap::new();
        types.insert(
            "type.googleapis.com/envoy.config.listener.v3.Listener".to_owned(),
            TypeStatus {
                acked: Some(("v1".into(), at)),
                last_nack: Some(Nack {
                    version: "v2".into(),
                    nonce: "7".into(),
                    message: "bad listener".into(),
                    at,
                }),
            },
        );
        let value = insight_json(Some(&ProxyStatus {
            online: false,
            connected_since: at,
            disconnected_at: Some(at),
            types,
        }));
        assert_eq!(
            value,
            json!({
                "online": false,
                "connectedSince": "2026-01-10T12:00:00.000Z",
                "disconnectedAt": "2026-01-10T12:00:00.000Z",
                "xds": {"type.googleapis.com/envoy.config.listener.v3.Listener": {
                    "lastAckedVersion": "v1",
                    "lastAckedAt": "2026-01-10T12:00:00.000Z",
                    "lastNack": {"version": "v2", "nonce": "7", "message": "bad listener",
                                 "at": "2026-01-10T12:00:00.000Z"}
                }}
            })
        );
    }
}
