//! The zone CP's dataplane-token endpoint, `POST /tokens/dataplane {"mesh","name","validFor"}`
//! (admin token required): a token a proxy presents on its ADS stream for that Dataplane, signed
//! with the mesh's dataplane-token signing key from the store ([`xds_server::DataplaneAuthenticator`];
//! in a federation the key comes from the global, and a request made before it arrived waits for
//! it a few seconds, then gets 503).
//! `"type": "ingress"` or `"egress"` (no mesh) issues the token of the zone's ZoneIngress or
//! ZoneEgress `name` instead.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use control_plane::api::{require_admin, ApiError};
use control_plane::auth::AdminToken;
use kds::auth::AuthError;
use serde::Deserialize;
use serde_json::{json, Value};
use xds_server::{DataplaneAuthenticator, ProxyId};

/// What the endpoint works with.
pub struct DataplaneTokensApi {
    pub auth: DataplaneAuthenticator,
    pub admin: AdminToken,
}

pub fn router(api: DataplaneTokensApi) -> Router {
    Router::new()
        .route("/tokens/dataplane", post(issue))
        .with_state(Arc::new(api))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    #[serde(default)]
    mesh: String,
    name: String,
    /// `dataplane` (default), `ingress` or `egress`.
    #[serde(default, rename = "type")]
    proxy_type: Option<String>,
    #[serde(default = "default_validity")]
    valid_for: String,
}

fn default_validity() -> String {
    "24h".to_owned()
}

async fn issue(
    State(api): State<Arc<DataplaneTokensApi>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers)?;
    let request: TokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))?;
    let node_id = match request.proxy_type.as_deref().unwrap_or("dataplane") {
        "dataplane" => format!("{}/{}", request.mesh, request.name),
        kind @ ("ingress" | "egress") => format!("{kind}:{}", request.name),
        other => {
            return Err(ApiError::bad_field(
                "type",
                format!("{other:?} is not one of dataplane, ingress, egress"),
            ))
        }
    };
    let proxy = ProxyId::parse(&node_id).ok_or_else(|| {
        ApiError::bad_field(
            "name",
            "mesh (for a dataplane) and name must be non-empty, without '/' or ':' (and no '.' in the mesh)",
        )
    })?;
    let validity = kds::auth::parse_validity(&request.valid_for)
        .map_err(|e| ApiError::bad_field("validFor", e.to_string()))?;
    let token = api
        .auth
        .issue(&proxy, validity)
        .await
        .map_err(|e: AuthError| match e {
            AuthError::NoKeyYet { .. } => {
                tracing::warn!(%proxy, error = %e, "dataplane token not issued yet");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                    e.to_string(),
                )
            }
            e => {
                tracing::error!(%proxy, error = %e, "dataplane token not issued");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    e.to_string(),
                )
            }
        })?;
    tracing::info!(%proxy, "issued a dataplane token");
    Ok(Json(
        json!({ "token": token, "mesh": proxy.mesh, "name": proxy.name, "proxy": proxy.to_string() }),
    ))
}
