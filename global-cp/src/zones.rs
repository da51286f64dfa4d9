//! The global's REST endpoints about zones: issuing zone tokens (`POST /tokens/zone`), rotating
//! the signing key and revoking tokens (keys and revocations are GlobalSecrets of the replicated
//! store, `kds::token_keys`, so they hold on every node), and the zones overview (`GET /zones/_overview`) that
//! `meshctl inspect zones` shows. The overview is the same on every node of a multi-node global:
//! a zone's status comes from its lease record (`kds::lease`, written through the replicated
//! store by the node holding its KDS stream), `globalNode` names that node, and the node asked
//! adds its own counters for the zones connected to it. Also each zone's ZoneInsight (what it
//! runs) when it reported one, its version, and, for a zone whose version the KDS handshake
//! refused (`kds::version`), the status `refused` and the reason in `refused`.
//! [`register_connected_zones`] gives every zone that connects a Zone resource.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use control_plane::api::{require_admin, ApiError};
use control_plane::auth::AdminToken;
use kds::auth::AuthError;
use kds::lease::Liveness;
use kds::status::ZoneStatusRegistry;
use kds::token_keys::{KeyFamily, StoreKeys};
use mesh_api::ResourceType;
use mesh_store::{ListQuery, ResourceStore};
use serde::Deserialize;
use serde_json::{json, Value};

/// What the zone endpoints work with.
pub struct ZonesApi {
    /// The zone-token keys.
    pub keys: StoreKeys,
    pub status: ZoneStatusRegistry,
    pub store: Arc<dyn ResourceStore>,
    pub admin: AdminToken,
    /// This node's id in the global cluster (the `globalNode` of the zones connected to it).
    pub node: u64,
}

type Shared = Arc<ZonesApi>;

pub fn router(api: ZonesApi) -> Router {
    Router::new()
        .route("/tokens/zone", post(issue_token))
        .route("/tokens/zone/rotate", post(rotate_key))
        .route("/tokens/zone/revoke", post(revoke_token))
        .route("/zones/_overview", get(overview))
        .with_state(Arc::new(api))
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::InvalidZone(_) => ApiError::bad_field("zone", e.to_string()),
        AuthError::InvalidValidity(_) => ApiError::bad_field("validFor", e.to_string()),
        AuthError::InvalidTokenId(_) | AuthError::Malformed(_) => {
            ApiError::bad_field("token", e.to_string())
        }
        AuthError::NoKeyYet { .. } => {
            tracing::warn!(error = %e, "zone token operation refused for now");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                e.to_string(),
            )
        }
        other => {
            tracing::error!(error = %other, "zone token operation failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                other.to_string(),
            )
        }
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    zone: String,
    #[serde(default = "default_validity")]
    valid_for: String,
}

fn default_validity() -> String {
    "24h".to_owned()
}

async fn issue_token(
    State(api): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers)?;
    let request: TokenRequest = json_body(&body)?;
    let validity = kds::auth::parse_validity(&request.valid_for).map_err(auth_error)?;
    if !kds::auth::is_valid_zone_name(&request.zone) {
        return Err(auth_error(AuthError::InvalidZone(request.zone)));
    }
    let (token, claims) = api
        .keys
        .issue(
            &KeyFamily::zone_tokens(),
            &request.zone,
            validity,
            chrono::Utc::now(),
        )
        .await
        .map_err(auth_error)?;
    tracing::info!(zone = %request.zone, token_id = %claims.jti, "issued a zone token");
    Ok(Json(json!({
        "token": token,
        "tokenId": claims.jti,
        "zone": claims.zone,
        "expiresAt": claims.expires_at().to_rfc3339(),
    })))
}

async fn rotate_key(
    State(api): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers)?;
    let family = KeyFamily::zone_tokens();
    let key_id = api.keys.rotate(&family).await.map_err(auth_error)?;
    let key_ids = api.keys.key_ids(&family).await.map_err(auth_error)?;
    tracing::info!(key_id, "rotated the zone-token signing key");
    Ok(Json(json!({ "signingKeyId": key_id, "keyIds": key_ids })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeRequest {
    #[serde(default)]
    token_id: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

async fn revoke_token(
    State(api): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers)?;
    let request: RevokeRequest = json_body(&body)?;
    let token_id = match (request.token_id, request.token) {
        (Some(id), _) => id,
        (None, Some(token)) => {
            kds::auth::decode_unverified(&token)
                .map_err(auth_error)?
                .jti
        }
        (None, None) => return Err(ApiError::bad_field("tokenId", "give tokenId or token")),
    };
    api.keys
        .revoke(&KeyFamily::zone_tokens(), &token_id)
        .await
        .map_err(auth_error)?;
    Ok(Json(json!({ "revoked": token_id })))
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339()))
        .unwrap_or(Value::Null)
}

/// An overview item of a zone nothing is known of yet but its name.
fn overview_item(zone: &str) -> serde_json::Map<String, Value> {
    let mut item = serde_json::Map::new();
    item.insert("name".into(), json!(zone));
    item.insert("status".into(), json!("offline"));
    item.insert("globalNode".into(), Value::Null);
    item
}

/// Every Zone resource, every zone with a lease record (connected to any node of the global, now
/// or before), and every zone that connected to this node since it started.
async fn overview(State(api): State<Shared>) -> Result<Json<Value>, ApiError> {
    let now = chrono::Utc::now();
    let mut items: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for zone in api
        .store
        .list(&ListQuery::all(ResourceType::Zone))
        .await?
        .items
    {
        items.insert(zone.meta.name.clone(), overview_item(&zone.meta.name));
    }
    // What every node sees: the lease records.
    let mut recorded = std::collections::BTreeSet::new();
    for record in api
        .store
        .list(&ListQuery::all(ResourceType::ZoneLease))
        .await?
        .items
    {
        let Some(lease) = kds::lease::lease_spec(&record) else {
            continue;
        };
        let zone = &record.meta.name;
        let entry = items
            .entry(zone.clone())
            .or_insert_with(|| overview_item(zone));
        let online = match kds::lease::liveness(lease, now) {
            Liveness::Online { node, until } => {
                entry.insert("status".into(), json!("online"));
                entry.insert("globalNode".into(), json!(node));
                entry.insert("leaseExpires".into(), time(Some(until)));
                true
            }
            Liveness::Offline { .. } => {
                if lease.refused.is_some() {
                    entry.insert("status".into(), json!("refused"));
                }
                false
            }
        };
        entry.insert(
            "connectedSince".into(),
            time(lease.connected_since.filter(|_| online)),
        );
        entry.insert("lastConnected".into(), time(lease.last_connected));
        entry.insert("lastDisconnected".into(), time(lease.last_disconnected));
        entry.insert("refused".into(), json!(lease.refused));
        recorded.insert(zone.clone());
    }
    // What only this node knows: the counters of the zones that connected to it, and a
    // connection whose lease is not written yet.
    for s in api.status.snapshot() {
        let entry = items
            .entry(s.zone.clone())
            .or_insert_with(|| overview_item(&s.zone));
        if s.online && entry["status"] != "online" {
            entry.insert("status".into(), json!("online"));
            entry.insert("globalNode".into(), json!(api.node));
            entry.insert("connectedSince".into(), time(s.connected_since));
        } else if s.refused.is_some() && entry["status"] == "offline" {
            entry.insert("status".into(), json!("refused"));
        }
        if !recorded.contains(&s.zone) {
            entry.insert("connectedSince".into(), time(s.connected_since));
            entry.insert("lastConnected".into(), time(s.last_connected));
            entry.insert("lastDisconnected".into(), time(s.last_disconnected));
        }
        if s.refused.is_some() || !entry.contains_key("refused") {
            entry.insert("refused".into(), json!(s.refused));
        }
        for (field, value) in [
            ("lastUpdated", time(s.last_updated)),
            (
                "totalUpdates",
                json!(s.resources_sent + s.resources_received),
            ),
            (
                "totalErrors",
                json!(s.errors + s.nacks_received + s.nacks_sent),
            ),
            ("resourcesSent", json!(s.resources_sent)),
            ("resourcesReceived", json!(s.resources_received)),
            ("nacks", json!(s.nacks_received)),
            ("nacksSent", json!(s.nacks_sent)),
            ("bytesSent", json!(s.bytes_sent)),
            ("lastError", json!(s.last_error)),
            ("version", json!(s.version)),
        ] {
            entry.insert(field.into(), value);
        }
    }
    // Each zone's own summary, reported over KDS and stored under the zone's label.
    for insight in api
        .store
        .list(&ListQuery::all(ResourceType::ZoneInsight))
        .await?
        .items
    {
        let Some(zone) = insight.meta.labels.get(mesh_api::ZONE_LABEL) else {
            continue;
        };
        if let Some(item) = items.get_mut(zone) {
            let spec = insight.spec.to_value();
            // The version of a zone connected to another node: as the zone reported it.
            if item.get("version").is_none_or(Value::is_null) {
                if let Some(version) = spec.get("version").filter(|v| v.is_string()) {
                    item.insert("version".into(), version.clone());
                }
            }
            item.insert("insight".into(), spec);
        }
    }
    let items: Vec<Value> = items.into_values().map(Value::Object).collect();
    Ok(Json(
        json!({ "total": items.len(), "items": items, "next": null }),
    ))
}

/// Creates the Zone resource of every zone that connects without one, so every zone is listed by
/// `GET /zones` and can be removed with `DELETE /zones/{name}` whether or not an operator created
/// it first. Follows the KDS status registry's online transitions; no polling.
pub async fn register_connected_zones(
    status: ZoneStatusRegistry,
    store: Arc<dyn ResourceStore>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut transitions = status.subscribe();
    tokio::pin!(shutdown);
    let mut catch_up = true;
    loop {
        if catch_up {
            for zone in status.snapshot().into_iter().filter(|z| z.online) {
                ensure_zone(store.as_ref(), &zone.zone).await;
            }
            catch_up = false;
        }
        tokio::select! {
            _ = &mut shutdown => return,
            transition = transitions.recv() => match transition {
                Ok(t) if t.online => ensure_zone(store.as_ref(), &t.zone).await,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn ensure_zone(store: &dyn ResourceStore, zone: &str) {
    let key = mesh_api::ResourceKey::new(ResourceType::Zone, None, zone);
    match store.get(&key).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let resource =
                mesh_api::Resource::new(zone, None, mesh_api::Spec::empty(ResourceType::Zone));
            match store.create(resource).await {
                Ok(_) => tracing::info!(zone, "registered a newly connected zone"),
                Err(mesh_store::StoreError::AlreadyExists(_)) => {}
                Err(e) => tracing::error!(zone, error = %e, "cannot register the zone"),
            }
        }
        Err(e) => tracing::error!(zone, error = %e, "cannot register the zone"),
    }
}
