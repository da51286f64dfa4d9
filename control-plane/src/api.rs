//! The REST API, on Kuma's paths: `GET /`, `/meshes[/{name}]`, `/meshes/{mesh}/{plural}[/{name}]`
//! for mesh-scoped types, `/{plural}[/{name}]` for global-scoped types (and a cross-mesh list for
//! mesh-scoped ones). Bodies are JSON or YAML in either form; answers are JSON in universal form.
//! Writes need the admin token; on a zone control plane, types owned by the global are refused.

mod error;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mesh_api::{Resource, ResourceKey, ResourceType, Scope};
use mesh_store::{ListQuery, ResourceStore, StoreError};
use serde_json::{json, Value};

pub use error::ApiError;

use crate::auth::AdminToken;
use crate::cluster::Cluster;
use crate::metrics::{Metrics, OperationLabels, RequestLabels};
use crate::{defaults, CpMode};

/// The largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Page size when a list request gives none, and the largest one allowed.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// Everything a request handler needs.
pub struct ApiState {
    pub store: Arc<dyn ResourceStore>,
    pub mode: CpMode,
    pub token: AdminToken,
    pub metrics: Arc<Metrics>,
    /// Set when the store is one node of a cluster (`GET /`, `?consistent=true`).
    pub cluster: Option<Arc<dyn Cluster>>,
}

type SharedState = Arc<ApiState>;

/// The API's routes over `state`, plus `extra` routes a binary adds (the global's token and zone
/// status endpoints). Extra routes take precedence, are counted in the metrics like the others,
/// and check the admin token themselves with [`require_admin`] where they write.
pub fn router(state: SharedState, extra: Router) -> Router {
    let resources = Router::new()
        .route("/", get(index))
        .route("/:plural", get(list_top))
        .route(
            "/:plural/:name",
            get(get_top).put(put_top).delete(delete_top),
        )
        .route("/meshes/:mesh/:plural", get(list_in_mesh))
        .route(
            "/meshes/:mesh/:plural/:name",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .with_state(state.clone());
    extra
        .merge(resources)
        .fallback(|| async { ApiError::not_found("no such API path") })
        .layer(middleware::from_fn_with_state(state, track_request))
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: SharedState,
    extra: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, extra))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn track_request(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state
        .metrics
        .api_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    let operation = if status < 400 { "ok" } else { "error" };
    state
        .metrics
        .api_request_duration
        .get_or_create(&OperationLabels { operation })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn index(State(state): State<SharedState>) -> Json<Value> {
    let mut index = json!({
        "product": "Meridian",
        "tagline": "Meridian",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": state.mode.name(),
        "zone": state.mode.zone(),
    });
    if let Some(cluster) = &state.cluster {
        index["cluster"] = cluster.status();
    }
    Json(index)
}

/// `?consistent=true`: the read is linearizable (on a cluster node, confirmed with the leader
/// first; a single store's reads always are). Anything but `true` or `false` is refused.
async fn consistent_read(state: &ApiState, params: &[(String, String)]) -> Result<(), ApiError> {
    let Some((_, value)) = params.iter().rev().find(|(k, _)| k == "consistent") else {
        return Ok(());
    };
    match value.as_str() {
        "false" => Ok(()),
        "true" => match &state.cluster {
            Some(cluster) => Ok(cluster.linearizable().await?),
            None => Ok(()),
        },
        _ => Err(ApiError::bad_field("consistent", "must be true or false")),
    }
}

fn resource_type(plural: &str) -> Result<ResourceType, ApiError> {
    ResourceType::from_plural(plural).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown resource type {plural:?} (expected a plural such as meshtrafficpermissions)"
        ))
    })
}

fn global_type(plural: &str) -> Result<ResourceType, ApiError> {
    let rtype = resource_type(plural)?;
    if rtype.scope() == Scope::Mesh {
        return Err(ApiError::not_found(format!(
            "{rtype} is mesh-scoped: use /meshes/{{mesh}}/{plural}/{{name}}"
        )));
    }
    Ok(rtype)
}

fn mesh_type(plural: &str) -> Result<ResourceType, ApiError> {
    let rtype = resource_type(plural)?;
    if rtype.scope() == Scope::Global {
        return Err(ApiError::not_found(format!(
            "{rtype} is not mesh-scoped: use /{plural}/{{name}}"
        )));
    }
    Ok(rtype)
}

fn universal_json(resource: &Resource) -> Value {
    mesh_api::to_universal(resource)
}

fn with_etag(resource: &Resource, body: Value) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", resource.meta.version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

// ---- reads ----

/// Secrets (CA keys among them) are read with the admin token only, as Kuma does.
fn guard_read(state: &ApiState, rtype: ResourceType, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(rtype, ResourceType::Secret | ResourceType::GlobalSecret) {
        require_admin(&state.token, headers)?;
    }
    Ok(())
}

async fn get_top(
    State(state): State<SharedState>,
    Path((plural, name)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = global_type(&plural)?;
    guard_read(&state, rtype, &headers)?;
    get_one(&state, ResourceKey::new(rtype, None, name), &params).await
}

async fn get_in_mesh(
    State(state): State<SharedState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rtype = mesh_type(&plural)?;
    guard_read(&state, rtype, &headers)?;
    get_one(&state, ResourceKey::new(rtype, Some(&mesh), name), &params).await
}

async fn get_one(
    state: &ApiState,
    key: ResourceKey,
    params: &[(String, String)],
) -> Result<Response, ApiError> {
    consistent_read(state, params).await?;
    match state.store.get(&key).await? {
        Some(resource) => Ok(with_etag(&resource, universal_json(&resource))),
        None => Err(ApiError::not_found(format!("{key} not found"))),
    }
}

async fn list_top(
    State(state): State<SharedState>,
    Path(plural): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let rtype = resource_type(&plural)?;
    list(
        &state,
        rtype,
        None,
        &format!("/{plural}"),
        &params,
        &headers,
    )
    .await
}

async fn list_in_mesh(
    State(state): State<SharedState>,
    Path((mesh, plural)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let rtype = mesh_type(&plural)?;
    let path = format!("/meshes/{mesh}/{plural}");
    list(&state, rtype, Some(mesh), &path, &params, &headers).await
}

async fn list(
    state: &ApiState,
    rtype: ResourceType,
    mesh: Option<String>,
    path: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Json<Value>, ApiError> {
    guard_read(state, rtype, headers)?;
    consistent_read(state, params).await?;
    let params: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "consistent")
        .cloned()
        .collect();
    let (page, next) = list_page(state.store.as_ref(), rtype, mesh, path, &params, headers).await?;
    Ok(Json(json!({
        "total": page.total,
        "items": page.items.iter().map(universal_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// One page of a list as every list endpoint serves it: the query parameters (`size`, `offset`,
/// `namePrefix`, `labels.KEY`) checked and applied, and the URL of the next page (`path` is the
/// list's own path). For endpoints that decorate the items (`dataplanes+insights`).
pub async fn list_page(
    store: &dyn ResourceStore,
    rtype: ResourceType,
    mesh: Option<String>,
    path: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<(mesh_store::ListPage, Option<String>), ApiError> {
    let mut query = ListQuery::all(rtype);
    query.mesh = mesh;
    let mut size = DEFAULT_PAGE_SIZE;
    for (key, value) in params {
        match key.as_str() {
            "size" => {
                size = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_PAGE_SIZE).contains(s))
                    .ok_or_else(|| {
                        ApiError::bad_field(
                            "size",
                            format!("must be a number in [1, {MAX_PAGE_SIZE}]"),
                        )
                    })?;
            }
            "offset" => {
                query.offset = value
                    .parse()
                    .map_err(|_| ApiError::bad_field("offset", "must be a non-negative number"))?;
            }
            "namePrefix" => query.name_prefix = Some(value.clone()),
            other => {
                match other.strip_prefix("labels.") {
                    Some(label) => {
                        query.labels.insert(label.to_owned(), value.clone());
                    }
                    None => return Err(ApiError::bad_field(
                        other,
                        "unknown query parameter (expected size, offset, namePrefix, labels.KEY)",
                    )),
                }
            }
        }
    }
    query.limit = Some(size);
    let page = store.list(&query).await?;
    let next = page
        .next_offset
        .map(|offset| next_url(headers, path, size, offset, &query.labels));
    Ok((page, next))
}

fn next_url(
    headers: &HeaderMap,
    path: &str,
    size: usize,
    offset: usize,
    labels: &BTreeMap<String, String>,
) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut url = format!("http://{host}{path}?size={size}&offset={offset}");
    for (k, v) in labels {
        url.push_str(&format!("&labels.{}={}", encode_query(k), encode_query(v)));
    }
    url
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- writes ----

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    require_admin(&state.token, headers)
}

/// 401 unless `headers` carry the admin token.
pub fn require_admin(token: &AdminToken, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if token.authorizes(header) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_field("If-Match", "must be a resource version, e.g. \"3\"")
            }),
    }
}

async fn put_top(
    State(state): State<SharedState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let rtype = global_type(&plural)?;
    put(&state, ResourceKey::new(rtype, None, name), &headers, body).await
}

async fn put_in_mesh(
    State(state): State<SharedState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let rtype = mesh_type(&plural)?;
    put(
        &state,
        ResourceKey::new(rtype, Some(&mesh), name),
        &headers,
        body,
    )
    .await
}

/// The body's format, from its Content-Type.
enum BodyFormat {
    Json,
    Yaml,
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // YAML is a superset of JSON, so an untyped body is read as YAML.
        return Ok(BodyFormat::Yaml);
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "text/plain" => Ok(BodyFormat::Yaml),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            format!("Content-Type {media:?} is not supported: send application/json or application/yaml"),
        )),
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "Payload Too Large",
        format!("the request body is over {MAX_BODY_BYTES} bytes"),
    )
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())
}

/// Decodes a request body into one resource and its unknown-field warnings.
fn decode(format: BodyFormat, bytes: &[u8]) -> Result<mesh_api::Parsed, ApiError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    match format {
        BodyFormat::Json => {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
            mesh_api::parse_resource(value).map_err(|e| ApiError::bad_request(e.message))
        }
        BodyFormat::Yaml => {
            let mut docs = mesh_api::parse_documents(text);
            if docs.len() != 1 {
                return Err(ApiError::bad_request(format!(
                    "the body must hold exactly one resource, found {}",
                    docs.len()
                )));
            }
            docs.remove(0).map_err(|e| ApiError::bad_request(e.message))
        }
    }
}

async fn put(
    state: &ApiState,
    key: ResourceKey,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(reason) = state.mode.refuses_writes_of(key.rtype) {
        return Err(ApiError::bad_request(reason));
    }
    let format = body_format(headers)?;
    let expected_version = if_match(headers)?;
    let bytes = read_body(headers, body).await?;
    let parsed = decode(format, &bytes)?;
    let mut resource = parsed.resource;
    check_identity(&key, &mut resource)?;
    mesh_api::validate_resource(&resource).map_err(|e| ApiError::invalid(e.violations))?;
    if let Some(mesh) = &key.mesh {
        let mesh_key = ResourceKey::new(ResourceType::Mesh, None, mesh.clone());
        if state.store.get(&mesh_key).await?.is_none() {
            return Err(ApiError::bad_field(
                "mesh",
                format!("mesh {mesh:?} does not exist"),
            ));
        }
    }
    let existing = state.store.get(&key).await?;
    if let Some(current) = &existing {
        refuse_synced(&state.mode, current)?;
    }
    let status = match existing {
        Some(current) => {
            resource.meta.version = expected_version.unwrap_or(current.meta.version);
            state.store.update(resource).await?;
            StatusCode::OK
        }
        None => {
            if let Some(v) = expected_version {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("{key} does not exist, but If-Match asked for version {v}"),
                ));
            }
            let created = state.store.create(resource).await?;
            if key.rtype == ResourceType::Mesh {
                defaults::create_default_policies(state.store.as_ref(), &created).await?;
            }
            StatusCode::CREATED
        }
    };
    Ok((status, Json(json!({ "warnings": parsed.warnings }))).into_response())
}

/// On a federated zone, what KDS brought from the global (labelled `kuma.io/origin: global`, such
/// as other zones' ingresses) is read-only: the next sync would undo a local change anyway.
fn refuse_synced(mode: &CpMode, current: &Resource) -> Result<(), ApiError> {
    let synced = current
        .meta
        .labels
        .get(mesh_api::ORIGIN_LABEL)
        .map(String::as_str)
        == Some("global");
    if matches!(mode, CpMode::Zone { .. }) && synced {
        return Err(ApiError::bad_request(format!(
            "{} is synced from the global control plane: change it there",
            current.key()
        )));
    }
    Ok(())
}

/// The path names the resource; the body must agree with it (or leave the field out).
fn check_identity(key: &ResourceKey, resource: &mut Resource) -> Result<(), ApiError> {
    if resource.resource_type() != key.rtype {
        return Err(ApiError::bad_field(
            "type",
            format!(
                "the body is a {} but the path is for {}",
                resource.resource_type(),
                key.rtype
            ),
        ));
    }
    if resource.meta.name.is_empty() {
        resource.meta.name = key.name.clone();
    } else if resource.meta.name != key.name {
        return Err(ApiError::bad_field(
            "name",
            format!(
                "{:?} differs from the name in the path ({:?})",
                resource.meta.name, key.name
            ),
        ));
    }
    match (&key.mesh, &resource.meta.mesh) {
        (Some(path_mesh), Some(body_mesh)) if path_mesh != body_mesh => {
            // A body without `mesh:` was defaulted to "default" by the parser; the path decides.
            return Err(ApiError::bad_field(
                "mesh",
                format!("{body_mesh:?} differs from the mesh in the path ({path_mesh:?})"),
            ));
        }
        (Some(path_mesh), _) => resource.meta.mesh = Some(path_mesh.clone()),
        (None, _) => resource.meta.mesh = None,
    }
    Ok(())
}

async fn delete_top(
    State(state): State<SharedState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let rtype = global_type(&plural)?;
    delete(&state, ResourceKey::new(rtype, None, name), &headers).await
}

async fn delete_in_mesh(
    State(state): State<SharedState>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let rtype = mesh_type(&plural)?;
    delete(&state, ResourceKey::new(rtype, Some(&mesh), name), &headers).await
}

async fn delete(
    state: &ApiState,
    key: ResourceKey,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(reason) = state.mode.refuses_writes_of(key.rtype) {
        return Err(ApiError::bad_request(reason));
    }
    let expected_version = if_match(headers)?;
    match state.store.get(&key).await? {
        None => return Err(ApiError::not_found(format!("{key} not found"))),
        Some(current) => refuse_synced(&state.mode, &current)?,
    }
    if key.rtype == ResourceType::Mesh {
        delete_mesh_contents(state.store.as_ref(), &key.name).await?;
    }
    match state.store.delete(&key, expected_version).await {
        Ok(_) => Ok((StatusCode::OK, Json(json!({}))).into_response()),
        Err(StoreError::NotFound(_)) => Err(ApiError::not_found(format!("{key} not found"))),
        Err(e) => Err(e.into()),
    }
}

/// Deleting a mesh deletes everything in it, as Kuma does.
async fn delete_mesh_contents(store: &dyn ResourceStore, mesh: &str) -> Result<(), StoreError> {
    for &rtype in ResourceType::ALL
        .iter()
        .filter(|t| t.scope() == Scope::Mesh)
    {
        let page = store.list(&ListQuery::in_mesh(rtype, mesh)).await?;
        for resource in page.items {
            match store.delete(&resource.key(), None).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
