//! A zone CP running in-process (`zone_cp::run`, standalone, zone `zone-1`) for the tests that
//! run proxies against it; shared by `xds_client.rs` and `registration.rs`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const WAIT: Duration = Duration::from_secs(30);

/// A zone CP running in-process on a data directory.
pub struct ZoneCp {
    pub api: String,
    pub xds: SocketAddr,
    pub admin: String,
    pub http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ZoneCp {
    /// Starts on `data_dir` (a restart when it was used before), on ephemeral ports.
    pub async fn start(data_dir: &Path) -> ZoneCp {
        let any = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
        let config = zone_cp::Config::try_parse_from([
            "zone-cp".to_owned(),
            "--zone".to_owned(),
            "zone-1".to_owned(),
            "--data-dir".to_owned(),
            data_dir.to_str().unwrap().to_owned(),
            "--api-addr".to_owned(),
            any.to_string(),
            "--diagnostics-addr".to_owned(),
            any.to_string(),
            "--xds-addr".to_owned(),
            any.to_string(),
        ])
        .unwrap();
        let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
        let api = format!("http://{}", listeners.api.local_addr().unwrap());
        let xds = listeners.xds.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(zone_cp::run(config, listeners, async {
            let _ = stopped.await;
        }));
        let token_file = data_dir.join(control_plane::auth::ADMIN_TOKEN_FILE);
        let admin = test_support::eventually("the admin token", WAIT, || {
            let file = token_file.clone();
            async move {
                std::fs::read_to_string(&file)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            }
        })
        .await
        .unwrap()
        .trim()
        .to_string();
        let http = reqwest::Client::new();
        test_support::eventually("the zone CP's API", WAIT, || {
            let request = http.get(format!("{api}/meshes"));
            async move {
                request
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await
        .unwrap();
        ZoneCp {
            api,
            xds,
            admin,
            http,
            stop,
            task,
        }
    }

    pub async fn put(&self, path: &str, body: Value) {
        let response = self
            .http
            .put(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT {path}: {:?}",
            response.text().await
        );
    }

    /// `GET path` with the admin token: the status and the body (JSON, `null` when not).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) {
        let response = self
            .http
            .delete(format!("{}{path}", self.api))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "DELETE {path}");
    }

    pub async fn dataplane_token(&self, name: &str) -> String {
        self.proxy_token("dataplane", "default", name).await
    }

    /// A token for the proxy of `kind` (`dataplane`, `ingress`, `egress`) `mesh`/`name`.
    pub async fn proxy_token(&self, kind: &str, mesh: &str, name: &str) -> String {
        let reply: Value = self
            .http
            .post(format!("{}/tokens/dataplane", self.api))
            .bearer_auth(&self.admin)
            .json(&json!({"type": kind, "mesh": mesh, "name": name, "validFor": "1h"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["token"].as_str().expect("a token").to_string()
    }

    /// Waits until the insight of Dataplane `name` satisfies `check`.
    pub async fn insight_until(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let url = format!("{}/meshes/default/dataplanes+insights/{name}", self.api);
        test_support::eventually(what, WAIT, || {
            let request = self.http.get(&url);
            let check = &check;
            async move {
                let body: Value = request.send().await.ok()?.json().await.ok()?;
                check(&body["dataplaneInsight"]).then(|| body["dataplaneInsight"].clone())
            }
        })
        .await
        .unwrap()
    }

    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the zone CP stops")
            .unwrap()
            .unwrap();
    }
}
