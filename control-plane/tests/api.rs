//! The REST API end to end: a real control plane (sled store in a temp dir) on 127.0.0.1:0,
//! driven over HTTP.

use std::time::Duration;

use control_plane::server::{Listeners, Server, ServerConfig};
use control_plane::CpMode;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

struct Cp {
    api: String,
    diagnostics: String,
    token: String,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Cp {
    async fn start(mode: CpMode) -> Cp {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Cp::start_in(dir.path().to_path_buf(), mode).await;
        cp._dir = Some(dir);
        cp
    }

    async fn start_in(data_dir: std::path::PathBuf, mode: CpMode) -> Cp {
        let server = Server::open(ServerConfig { data_dir, mode }).await.unwrap();
        let token = server.token.as_str().to_owned();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let diagnostics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        let diag_url = format!("http://{}", diagnostics.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(Listeners { api, diagnostics }, async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::new();
        test_support::eventually(
            "the control plane to be ready",
            Duration::from_secs(10),
            || {
                let client = client.clone();
                let url = format!("{diag_url}/ready");
                async move {
                    client
                        .get(url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await
        .unwrap();
        Cp {
            api: api_url,
            diagnostics: diag_url,
            token,
            client,
            stop: Some(tx),
            task,
            _dir: None,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    async fn put(&self, path: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .put(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn delete(&self, path: &str) -> StatusCode {
        self.client
            .delete(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .status()
    }
}

const YAML: &str = "application/yaml";
const JSON: &str = "application/json";

fn fields(body: &Value) -> Vec<String> {
    body["causes"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["field"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn index_reports_product_and_mode() {
    let cp = Cp::start(CpMode::Global).await;
    let (status, body) = cp.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["product"], "Meridian");
    assert_eq!(body["mode"], "global");
    cp.stop().await;
}

#[tokio::test]
async fn default_mesh_and_its_policies_exist_after_first_start() {
    let cp = Cp::start(CpMode::Standalone { zone: None }).await;
    let (status, mesh) = cp.get("/meshes/default").await;
    assert_eq!(status, StatusCode::OK, "{mesh}");
    assert_eq!(mesh["type"], "Mesh");
    for (plural, name) in [
        ("meshtrafficpermissions", "allow-all-default"),
        ("meshtimeouts", "mesh-timeout-all-default"),
        ("meshretries", "mesh-retry-all-default"),
        ("meshcircuitbreakers", "mesh-circuit-breaker-all-default"),
    ] {
        let (status, body) = cp.get(&format!("/meshes/default/{plural}/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{plural}/{name}: {body}");
    }
    cp.stop().await;
}

#[tokio::test]
async fn put_creates_then_updates_and_data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Cp::start_in(dir.path().to_path_buf(), CpMode::Global).await;
    let doc = "type: Mesh\nname: demo\nlabels:\n  team: core\n";
    assert_eq!(
        cp.put("/meshes/demo", YAML, doc).await.0,
        StatusCode::CREATED
    );
    assert_eq!(cp.put("/meshes/demo", YAML, doc).await.0, StatusCode::OK);
    // Kubernetes form, JSON body.
    let kube = r#"{"apiVersion":"kuma.io/v1alpha1","kind":"MeshTimeout","metadata":{"name":"t1","labels":{"kuma.io/mesh":"demo"}},
        "spec":{"targetRef":{"kind":"Mesh"},"to":[{"targetRef":{"kind":"Mesh"},"default":{"idleTimeout":"20s"}}]}}"#;
    let (status, body) = cp.put("/meshes/demo/meshtimeouts/t1", JSON, kube).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, got) = cp.get("/meshes/demo/meshtimeouts/t1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["mesh"], "demo");
    assert_eq!(got["spec"]["to"][0]["default"]["idleTimeout"], "20s");
    cp.stop().await;

    let cp = Cp::start_in(dir.path().to_path_buf(), CpMode::Global).await;
    let (status, got) = cp.get("/meshes/demo/meshtimeouts/t1").await;
    assert_eq!(status, StatusCode::OK, "data must survive a restart");
    assert_eq!(got["name"], "t1");
    cp.stop().await;
}

#[tokio::test]
async fn lists_paginate_and_filter_by_label() {
    let cp = Cp::start(CpMode::Global).await;
    for i in 0..5 {
        let team = if i % 2 == 0 { "a" } else { "b" };
        let doc = format!("type: Mesh\nname: m{i}\nlabels:\n  team: {team}\n");
        assert_eq!(
            cp.put(&format!("/meshes/m{i}"), YAML, &doc).await.0,
            StatusCode::CREATED
        );
    }
    // 5 plus the default mesh.
    let (_, page) = cp.get("/meshes?size=4").await;
    assert_eq!(page["total"], 6);
    assert_eq!(page["items"].as_array().unwrap().len(), 4);
    let next = page["next"].as_str().expect("a next link").to_owned();
    let rest: Value = cp
        .client
        .get(&next)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert!(rest["next"].is_null());
    let (_, filtered) = cp.get("/meshes?labels.team=a").await;
    assert_eq!(filtered["total"], 3);
    let (status, body) = cp.get("/meshes?size=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&body), ["size"]);
    cp.stop().await;
}

#[tokio::test]
async fn writes_need_the_admin_token_and_reads_do_not() {
    let cp = Cp::start(CpMode::Global).await;
    let url = format!("{}/meshes/x", cp.api);
    let anonymous = cp
        .client
        .put(&url)
        .body("type: Mesh\nname: x\n")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = cp
        .client
        .put(&url)
        .bearer_auth("nope")
        .body("type: Mesh\nname: x\n")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let delete = cp
        .client
        .delete(format!("{}/meshes/default", cp.api))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(cp.get("/meshes").await.0, StatusCode::OK);
    cp.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let cp = Cp::start(CpMode::Global).await;
    // Invalid: naming the field path.
    let bad = "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: -1s\n";
    let (status, body) = cp.put("/meshes/default/meshtimeouts/t", YAML, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(fields(&body), ["spec.to[0].default.idleTimeout"], "{body}");
    // Name in body differs from the path.
    let (status, body) = cp.put("/meshes/other", YAML, "type: Mesh\nname: m\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&body), ["name"]);
    // Mesh that does not exist.
    let doc = "type: MeshTimeout\nname: t\nmesh: nope\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: 5s\n";
    let (status, body) = cp.put("/meshes/nope/meshtimeouts/t", YAML, doc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(fields(&body), ["mesh"]);
    // Unparseable YAML.
    let (status, body) = cp.put("/meshes/m", YAML, "type: Mesh\nname: [m\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["details"].as_str().unwrap().contains("YAML"), "{body}");
    // Unsupported media type.
    let (status, _) = cp.put("/meshes/m", "text/html", "<p>").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Too large.
    let huge = format!(
        "type: Mesh\nname: m\nlabels:\n  big: \"{}\"\n",
        "x".repeat(1024 * 1024 + 1)
    );
    let (status, _) = cp.put("/meshes/m", YAML, &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown type and missing resource.
    assert_eq!(
        cp.get("/meshes/default/nosuchthings").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(cp.get("/meshes/nosuchmesh").await.0, StatusCode::NOT_FOUND);
    // Nothing above was stored.
    assert_eq!(cp.get("/meshes/m").await.0, StatusCode::NOT_FOUND);
    cp.stop().await;
}

#[tokio::test]
async fn unknown_fields_are_accepted_with_a_warning() {
    let cp = Cp::start(CpMode::Global).await;
    let doc = "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: 5s\n        idelTimeout: 1s\n";
    let (status, body) = cp.put("/meshes/default/meshtimeouts/t", YAML, doc).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let warnings = body["warnings"].to_string();
    assert!(
        warnings.contains("spec.to[0].default.idelTimeout"),
        "{warnings}"
    );
    cp.stop().await;
}

#[tokio::test]
async fn stale_version_is_a_conflict() {
    let cp = Cp::start(CpMode::Global).await;
    assert_eq!(
        cp.put("/meshes/v", YAML, "type: Mesh\nname: v\n").await.0,
        StatusCode::CREATED
    );
    let resp = cp
        .client
        .get(format!("{}/meshes/v", cp.api))
        .send()
        .await
        .unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let put = |etag: String| {
        cp.client
            .put(format!("{}/meshes/v", cp.api))
            .bearer_auth(&cp.token)
            .header("if-match", etag)
            .body("type: Mesh\nname: v\nlabels:\n  a: b\n")
            .send()
    };
    assert_eq!(put(etag.clone()).await.unwrap().status(), StatusCode::OK);
    assert_eq!(put(etag).await.unwrap().status(), StatusCode::CONFLICT);
    cp.stop().await;
}

#[tokio::test]
async fn zone_refuses_global_types_and_global_refuses_zone_types() {
    let zone = Cp::start(CpMode::Zone {
        zone: "zone-1".into(),
    })
    .await;
    let doc = "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n";
    let (status, body) = zone.put("/meshes/default/meshtimeouts/t", YAML, doc).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["details"].as_str().unwrap().contains("global"),
        "{body}"
    );
    let (status, _) = zone.put("/meshes/m", YAML, "type: Mesh\nname: m\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    zone.stop().await;

    let global = Cp::start(CpMode::Global).await;
    let dp = "type: Dataplane\nname: dp\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 80\n      tags:\n        kuma.io/service: web\n";
    let (status, body) = global.put("/meshes/default/dataplanes/dp", YAML, dp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    global.stop().await;
}

#[tokio::test]
async fn deleting_a_mesh_deletes_its_resources() {
    let cp = Cp::start(CpMode::Standalone { zone: None }).await;
    assert_eq!(
        cp.put("/meshes/gone", YAML, "type: Mesh\nname: gone\n")
            .await
            .0,
        StatusCode::CREATED
    );
    let (_, list) = cp.get("/meshes/gone/meshtimeouts").await;
    assert_eq!(list["total"], 1, "default timeout created with the mesh");
    assert_eq!(cp.delete("/meshes/gone").await, StatusCode::OK);
    assert_eq!(cp.get("/meshes/gone").await.0, StatusCode::NOT_FOUND);
    let (_, list) = cp.get("/meshtimeouts").await;
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["mesh"].clone())
        .collect();
    assert!(!names.contains(&Value::from("gone")), "{list}");
    assert_eq!(cp.delete("/meshes/gone").await, StatusCode::NOT_FOUND);
    cp.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_and_store_operations() {
    let cp = Cp::start(CpMode::Global).await;
    cp.get("/meshes").await;
    cp.get("/meshes/nope").await;
    let text = cp
        .client
        .get(format!("{}/metrics", cp.diagnostics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"meridian_api_requests_total{method="GET",route="/:plural",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"status="404""#), "{text}");
    assert!(
        text.contains(r#"meridian_store_operations_total{operation="list",result="ok"}"#),
        "{text}"
    );
    let healthy = cp
        .client
        .get(format!("{}/healthy", cp.diagnostics))
        .send()
        .await
        .unwrap();
    assert_eq!(healthy.status(), StatusCode::OK);
    cp.stop().await;
}
