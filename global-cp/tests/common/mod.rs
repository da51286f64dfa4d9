//! Shared by the global's integration tests: a real global control plane (`global_cp::run`
//! in-process on 127.0.0.1:0), and what its ready file and REST API give a test.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use global_cp::{Config, GlobalListeners};
use serde_json::{json, Value};

pub struct Global {
    pub api: String,
    pub kds: String,
    pub ca: Vec<u8>,
    pub token: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn start_global(dir: &Path) -> Global {
    start_global_with(dir, &[]).await
}

pub async fn start_global_with(dir: &Path, extra: &[&str]) -> Global {
    let ready = dir.join("ready.json");
    let data = dir.join("data");
    let mut args = vec![
        "global-cp",
        "--data-dir",
        data.to_str().unwrap(),
        "--api-addr",
        "127.0.0.1:0",
        "--diagnostics-addr",
        "127.0.0.1:0",
        "--kds-addr",
        "127.0.0.1:0",
        "--ready-file",
        ready.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let config = Config::parse_from(args);
    let listeners = GlobalListeners::bind(&config).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(global_cp::run(config, listeners, async {
        let _ = rx.await;
    }));
    let endpoints: Value =
        test_support::eventually("the ready file", Duration::from_secs(20), || {
            let ready = ready.clone();
            async move {
                std::fs::read(&ready)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            }
        })
        .await
        .unwrap();
    let ca = std::fs::read(
        endpoints["kdsCa"]
            .as_str()
            .expect("kdsCa in the ready file"),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let diagnostics = endpoints["diagnostics"].as_str().unwrap().to_owned();
    test_support::eventually("/ready", Duration::from_secs(20), || {
        let (client, url) = (client.clone(), format!("{diagnostics}/ready"));
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await
    .unwrap();
    Global {
        api: endpoints["api"].as_str().unwrap().to_owned(),
        kds: format!("https://{}", endpoints["kds"].as_str().unwrap()),
        ca,
        token: std::fs::read_to_string(dir.join("data/admin-token"))
            .unwrap()
            .trim()
            .to_owned(),
        client,
        stop: Some(tx),
        task,
    }
}

impl Global {
    pub async fn post(&self, path: &str, body: Value, admin: bool) -> (u16, Value) {
        let mut request = self.client.post(format!("{}{path}", self.api)).json(&body);
        if admin {
            request = request.bearer_auth(&self.token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> u16 {
        request
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The configuration of zone `zone` federated to this global: its token and the global's KDS
    /// CA written under `dir`, data in `dir/<zone>`, every listener on 127.0.0.1:0.
    pub async fn zone_config(&self, dir: &Path, zone: &str) -> zone_cp::Config {
        let token_file = dir.join(format!("{zone}.token"));
        std::fs::write(&token_file, self.zone_token(zone).await).unwrap();
        let ca_file = dir.join("kds-ca.crt");
        std::fs::write(&ca_file, &self.ca).unwrap();
        let data = dir.join(zone);
        zone_cp::Config::parse_from([
            "zone-cp",
            "--zone",
            zone,
            "--mode",
            "zone",
            "--data-dir",
            data.to_str().unwrap(),
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
            "--global-kds-address",
            &self.kds,
            "--kds-ca-file",
            ca_file.to_str().unwrap(),
            "--zone-token-file",
            token_file.to_str().unwrap(),
        ])
    }

    pub async fn zone_token(&self, zone: &str) -> String {
        let (status, body) = self
            .post(
                "/tokens/zone",
                json!({"zone": zone, "validFor": "1h"}),
                true,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn overview(&self) -> Value {
        self.client
            .get(format!("{}/zones/_overview", self.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn zone_status(&self, zone: &str) -> Option<String> {
        let overview = self.overview().await;
        overview["items"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == zone)
            .map(|i| i["status"].as_str().unwrap_or("").to_owned())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}
