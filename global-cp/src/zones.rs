//! The global's REST endpoints about zones: issuing zone tokens (`POST /tokens/zone`), rotating
//! the signing key and revoking tokens (keys and revocations are GlobalSecrets of the replicated
//! store, `kds::token_keys`, so they hold on every node), and the zones overview (`GET /zones/_overview`) that
//! `meshctl inspect zones` shows, with each zone's ZoneInsight (what it runs) when it reported one,
//! its version, and, for a zone whose version the KDS handshake refused (`kds::version`), the
//! status `refused` and the reason in `refused`.
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

/// Every zone that ever connected since this global started, and every Zone resource.
async fn overview(State(api): State<Shared>) -> Result<Json<Value>, ApiError> {
    let mut items: BTreeMap<String, Value> = BTreeMap::new();
    for zone in api
        .store
        .list(&ListQuery::all(ResourceType::Zone))
        .await?
        .items
    {
        items.insert(
            zone.meta.name.clone(),
            json!({ "name": zone.meta.name, "status": "offline" }),
        );
    }
    for s in api.status.snapshot() {
        items.insert(
            s.zone.clone(),
            json!({
                "name": s.zone,
                "status": if s.online {
                    "online"
                } else if s.refused.is_some() {
                    "refused"
                } else {
                    "offline"
                },
                "connectedSince": time(s.connected_since),
                "lastConnected": time(s.last_connected),
                "lastDisconnected": time(s.last_disconnected),
                "lastUpdated": time(s.last_updated),
                "totalUpdates": s.resources_sent + s.resources_received,
                "totalErrors": s.errors + s.nacks_received + s.nacks_sent,
                "resourcesSent": s.resources_sent,
                "resourcesReceived": s.resources_received,
                "nacks": s.nacks_received,
                "nacksSent": s.nacks_sent,
                "bytesSent": s.bytes_sent,
                "lastError": s.last_error,
                "version": s.version,
                "refused": s.refused,
            }),
        );
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
        if let Some(Value::Object(item)) = items.get_mut(zone) {
            item.insert("insight".into(), insight.spec.to_value());
        }
    }
    let items: Vec<Value> = items.into_values().collect();
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
