//! A stand-in for `global-cp` and `zone-cp`, used by meshctl's tests to exercise `meshctl up`,
//! `apply`, `get` and `delete` before the real control planes exist. It follows their command-line
//! and ready-file contract and serves a small in-memory version of the REST API (persisted to
//! `DATA_DIR/fake-state.json`, so restarts keep data).
//!
//! Test knobs (environment): `FAKE_CP_EXIT_AFTER_MS=N` exits with status 3 after N ms;
//! `FAKE_CP_NOT_READY=1` answers `/ready` with 503 forever; `FAKE_CP_SLOW_STOP_MS=N` waits N ms
//! after SIGTERM before exiting; `FAKE_CP_ONLY=NAME` limits these to the process named NAME
//! (`global`, `zone-1`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mesh_api::{ResourceType, Scope};
use serde_json::{json, Value};

#[derive(Debug, Default)]
struct Args {
    data_dir: PathBuf,
    api_addr: String,
    diagnostics_addr: String,
    kds_addr: Option<String>,
    xds_addr: Option<String>,
    ready_file: PathBuf,
    zone: Option<String>,
    mode: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| panic!("fake_cp: {flag} needs a value"));
        match flag.as_str() {
            "--data-dir" => args.data_dir = value.into(),
            "--api-addr" => args.api_addr = value,
            "--diagnostics-addr" => args.diagnostics_addr = value,
            "--kds-addr" => args.kds_addr = Some(value),
            "--xds-addr" => args.xds_addr = Some(value),
            "--ready-file" => args.ready_file = value.into(),
            "--zone" => args.zone = Some(value),
            "--mode" => args.mode = Some(value),
            other => panic!("fake_cp: unknown flag {other}"),
        }
    }
    args
}

struct Fake {
    state_file: PathBuf,
    token: String,
    mode: String,
    zone: Option<String>,
    /// Path ("meshes/m/plural/name" or "plural/name") -> universal JSON.
    resources: Mutex<BTreeMap<String, Value>>,
}

type Shared = Arc<Fake>;

fn error(status: StatusCode, title: &str, details: &str) -> Response {
    (
        status,
        Json(json!({"title": title, "details": details, "causes": []})),
    )
        .into_response()
}

impl Fake {
    fn save(&self, resources: &BTreeMap<String, Value>) {
        let text = serde_json::to_string(resources).expect("state serializes");
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write state");
        std::fs::rename(&tmp, &self.state_file).expect("rename state");
    }
}

async fn handle(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let segments: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if segments.is_empty() {
        return Json(json!({"product": "Meridian", "version": "0.1.0",
                           "mode": fake.mode, "zone": fake.zone}))
        .into_response();
    }
    // (type, mesh filter, name)
    let (rtype, mesh, name) = match segments.as_slice() {
        [plural] => (ResourceType::from_plural(plural), None, None),
        [plural, name] => (ResourceType::from_plural(plural), None, Some(name.clone())),
        [m, mesh, plural] if m == "meshes" => {
            (ResourceType::from_plural(plural), Some(mesh.clone()), None)
        }
        [m, mesh, plural, name] if m == "meshes" => (
            ResourceType::from_plural(plural),
            Some(mesh.clone()),
            Some(name.clone()),
        ),
        _ => return error(StatusCode::NOT_FOUND, "Not found", uri.path()),
    };
    let Some(rtype) = rtype else {
        return error(StatusCode::NOT_FOUND, "Unknown type", uri.path());
    };
    let scope_ok = match rtype.scope() {
        Scope::Global => mesh.is_none(),
        Scope::Mesh => mesh.is_some() || name.is_none(),
    };
    if !scope_ok {
        return error(
            StatusCode::NOT_FOUND,
            "Not found",
            "wrong scope for this type",
        );
    }
    let key = |mesh: Option<&str>, name: &str| match mesh {
        Some(m) => format!("meshes/{m}/{}/{name}", rtype.plural()),
        None => format!("{}/{name}", rtype.plural()),
    };
    let write = method == Method::PUT || method == Method::DELETE;
    if write {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != format!("Bearer {}", fake.token) {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "a valid admin token is required",
            );
        }
    }
    let mut resources = fake.resources.lock().expect("lock");
    match (method, name) {
        (Method::GET, None) => {
            let prefix = match &mesh {
                Some(m) => format!("meshes/{m}/{}/", rtype.plural()),
                None => String::new(),
            };
            let all: Vec<Value> = resources
                .iter()
                .filter(|(k, v)| k.starts_with(&prefix) && v["type"].as_str() == Some(rtype.name()))
                .map(|(_, v)| v.clone())
                .collect();
            let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
            let size: usize = param("size").and_then(|s| s.parse().ok()).unwrap_or(2);
            let offset: usize = param("offset").and_then(|s| s.parse().ok()).unwrap_or(0);
            let items: Vec<Value> = all.iter().skip(offset).take(size).cloned().collect();
            let next = (offset + size < all.len()).then(|| {
                let host = headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("127.0.0.1");
                format!(
                    "http://{host}{}?size={size}&offset={}",
                    uri.path(),
                    offset + size
                )
            });
            Json(json!({"total": all.len(), "items": items, "next": next})).into_response()
        }
        (Method::GET, Some(name)) => match resources.get(&key(mesh.as_deref(), &name)) {
            Some(v) => Json(v.clone()).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "Not found",
                &format!("no {rtype} {name}"),
            ),
        },
        (Method::DELETE, Some(name)) => {
            if resources.remove(&key(mesh.as_deref(), &name)).is_none() {
                return error(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    &format!("no {rtype} {name}"),
                );
            }
            fake.save(&resources);
            Json(json!({})).into_response()
        }
        (Method::PUT, Some(name)) => {
            let value: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, "Bad request", &e.to_string()),
            };
            let parsed = match mesh_api::parse_resource(value) {
                Ok(p) => p,
                Err(e) => return error(StatusCode::BAD_REQUEST, "Bad request", &e.message),
            };
            let mut resource = parsed.resource;
            if resource.resource_type() != rtype
                || resource.meta.name != name
                || resource.meta.mesh != mesh
            {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"title": "Resource is not valid",
                        "details": "the document does not match its path",
                        "causes": [{"field": "name", "message": "must match the path"}]})),
                )
                    .into_response();
            }
            let k = key(mesh.as_deref(), &name);
            let previous = resources.get(&k).cloned();
            resource.meta.creation_time = Some(
                previous
                    .as_ref()
                    .and_then(|p| p["creationTime"].as_str())
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .unwrap_or_else(chrono::Utc::now),
            );
            resource.meta.modification_time = Some(chrono::Utc::now());
            resources.insert(k, mesh_api::to_universal(&resource));
            fake.save(&resources);
            let status = if previous.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, Json(json!({"warnings": parsed.warnings}))).into_response()
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            uri.path(),
        ),
    }
}

async fn bind(addr: &str) -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("fake_cp: cannot bind {addr}: {e}"));
    let local = listener.local_addr().expect("local addr");
    (listener, local)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.data_dir).expect("data dir");
    let token_file = args.data_dir.join("admin-token");
    if !token_file.exists() {
        let token = format!(
            "fake-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        );
        std::fs::write(&token_file, format!("{token}\n")).expect("token");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
    let token = std::fs::read_to_string(&token_file)
        .expect("token")
        .trim()
        .to_owned();
    let state_file = args.data_dir.join("fake-state.json");
    let resources = std::fs::read_to_string(&state_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mode = args.mode.clone().unwrap_or_else(|| "global".to_owned());
    let fake = Arc::new(Fake {
        state_file,
        token,
        mode,
        zone: args.zone.clone(),
        resources: Mutex::new(resources),
    });

    let (api, api_addr) = bind(&args.api_addr).await;
    let (diag, diag_addr) = bind(&args.diagnostics_addr).await;
    let sync_addr = args
        .kds_addr
        .clone()
        .or(args.xds_addr.clone())
        .expect("--kds-addr or --xds-addr");
    let (_sync, sync_local) = bind(&sync_addr).await;

    let mut ready =
        json!({"api": format!("http://{api_addr}"), "diagnostics": format!("http://{diag_addr}")});
    let sync_key = if args.kds_addr.is_some() {
        "kds"
    } else {
        "xds"
    };
    ready[sync_key] = json!(sync_local.to_string());
    let tmp = args.ready_file.with_extension("tmp");
    std::fs::write(&tmp, ready.to_string()).expect("ready file");
    std::fs::rename(&tmp, &args.ready_file).expect("ready file rename");

    let me = args.zone.clone().unwrap_or_else(|| "global".to_owned());
    let targeted = std::env::var("FAKE_CP_ONLY").map_or(true, |only| only == me);
    let not_ready = targeted && std::env::var_os("FAKE_CP_NOT_READY").is_some();
    let diag_app = Router::new().route(
        "/ready",
        get(move || async move {
            if not_ready {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }),
    );
    let api_app = Router::new().fallback(handle).with_state(fake);
    tokio::spawn(async move { axum::serve(diag, diag_app).await });
    tokio::spawn(async move { axum::serve(api, api_app).await });
    eprintln!("fake_cp: serving API on {api_addr}");

    let exit_after = std::env::var("FAKE_CP_EXIT_AFTER_MS")
        .ok()
        .and_then(|s| s.parse().ok());
    if let Some(ms) = exit_after.filter(|_| targeted) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        eprintln!("fake_cp: exiting on purpose");
        std::process::exit(3);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    term.recv().await;
    let slow_stop = std::env::var("FAKE_CP_SLOW_STOP_MS")
        .ok()
        .and_then(|s| s.parse().ok());
    if let Some(ms) = slow_stop.filter(|_| targeted) {
        eprintln!("fake_cp: SIGTERM, exiting in {ms} ms");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    eprintln!("fake_cp: SIGTERM, exiting");
}
