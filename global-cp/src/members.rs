//! The global cluster's membership over REST (admin token for all three, as they expose the
//! topology and change it): `GET /global/members` lists the members and this node's view,
//! `POST /global/members` (`{"id": 4, "address": "global-4:5683"}`) adds a node (a learner until
//! it has caught up, then a voter; one that does not catch up in time is removed again and the
//! request answered 504 naming its address), `DELETE /global/members/{id}` removes one, and
//! `GET /global/backup` returns a consistent backup of the replicated state. Any node takes
//! them; membership changes are done by the leader.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use control_plane::api::{require_admin, ApiError};
use control_plane::auth::AdminToken;
use mesh_store::raft::{NodeId, RaftNodeError, RaftStore};
use serde::Deserialize;
use serde_json::Value;

pub struct MembersApi {
    pub store: RaftStore,
    pub admin: AdminToken,
}

type Shared = Arc<MembersApi>;

pub fn router(api: MembersApi) -> Router {
    Router::new()
        .route("/global/members", get(list).post(add))
        .route("/global/members/:id", delete(remove))
        .route("/global/backup", get(backup))
        .with_state(Arc::new(api))
}

fn status(api: &MembersApi) -> Json<Value> {
    Json(serde_json::to_value(api.store.status()).unwrap_or_default())
}

fn membership_error(e: RaftNodeError) -> ApiError {
    match e {
        RaftNodeError::Membership { .. } => {
            ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
        }
        RaftNodeError::NotCaughtUp { .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway Timeout",
            e.to_string(),
        ),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            other.to_string(),
        ),
    }
}

async fn list(State(api): State<Shared>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers)?;
    Ok(status(&api))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: NodeId,
    /// The new node's peer address, `host:port`.
    address: String,
}

async fn add(
    State(api): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers)?;
    let request: AddMember = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"id\": <node id>, \"address\": \"host:port\"}}: {e}"
        ))
    })?;
    crate::cluster::parse_peer(&format!("{}={}", request.id, request.address))
        .map_err(|e| ApiError::bad_field("address", e))?;
    api.store
        .add_member(request.id, request.address)
        .await
        .map_err(membership_error)?;
    Ok(status(&api))
}

async fn remove(
    State(api): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api.admin, &headers)?;
    let id: NodeId = id
        .parse()
        .map_err(|_| ApiError::bad_field("id", format!("{id:?} is not a node id")))?;
    api.store
        .remove_member(id)
        .await
        .map_err(membership_error)?;
    Ok(status(&api))
}

/// `GET /global/backup`: the replicated state (every resource, the revision), linearizable (it
/// holds every write acknowledged before the call) and taken at one point. `global-cp restore`
/// seeds a new node with it.
async fn backup(
    State(api): State<Shared>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    require_admin(&api.admin, &headers)?;
    let bytes = api.store.backup().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!("cannot take a consistent backup: {e}"),
        )
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}
