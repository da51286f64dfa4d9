//! A global of three real nodes (`global_cp::run`) in one process on 127.0.0.1:0, peers over
//! mutual TLS, one KDS identity and admin token per node: what `tests/cluster.rs` and
//! `tests/zone_leases.rs` start.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use global_cp::{Config, GlobalListeners};
use serde_json::{json, Value};
use test_support::eventually;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Node {
    pub id: u64,
    pub raft_addr: String,
    pub api: String,
    pub diagnostics: String,
    pub kds: String,
    pub token: String,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub peers: String,
    pub nodes: Vec<Node>,
    pub client: reqwest::Client,
    /// Extra flags for every node.
    pub extra: Vec<String>,
}

impl Cluster {
    pub async fn start(dir: &Path) -> Cluster {
        Cluster::start_with(dir, &[]).await
    }

    /// Three nodes, each started with `extra` flags besides the harness's own.
    pub async fn start_with(dir: &Path, extra: &[&str]) -> Cluster {
        let certs = dir.join("raft-certs");
        global_cp::cluster::ensure_certs(&certs, &[1, 2, 3]).unwrap();
        // The KDS identity and zone-token keys all nodes share, made before any starts (as an
        // operator copies one node's to the others).
        let kds = dir.join("kds");
        kds::tls::KdsServerTls::load_or_generate(&kds, &[]).unwrap();
        kds::auth::ZoneTokenIssuer::open(kds.join("signing-keys")).unwrap();
        // Every node's peer address is known before any starts.
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}={}", i + 1, l.local_addr().unwrap()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir: dir.to_owned(),
            peers,
            nodes: Vec::new(),
            extra: extra.iter().map(|e| e.to_string()).collect(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        };
        let mut starting = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            starting.push(cluster.spawn(i as u64 + 1, listener).await);
        }
        for node in starting {
            cluster.nodes.push(cluster.ready(node).await);
        }
        for i in 0..3 {
            cluster.wait_for_default_mesh(i).await;
        }
        cluster
    }

    pub fn config(&self, id: u64) -> Config {
        let data = self.dir.join(format!("node-{id}"));
        Config::parse_from(
            [
                "global-cp".to_owned(),
                "--data-dir".into(),
                data.display().to_string(),
                "--api-addr".into(),
                "127.0.0.1:0".into(),
                "--diagnostics-addr".into(),
                "127.0.0.1:0".into(),
                "--kds-addr".into(),
                "127.0.0.1:0".into(),
                "--raft-listen".into(),
                "127.0.0.1:0".into(),
                "--ready-file".into(),
                data.join("ready.json").display().to_string(),
                "--node-id".into(),
                id.to_string(),
                "--peers".into(),
                self.peers.clone(),
                "--raft-tls-dir".into(),
                self.dir.join("raft-certs").display().to_string(),
                // One KDS CA, certificate and zone-token keys for all nodes, so a zone trusts any.
                "--kds-tls-dir".into(),
                self.dir.join("kds").display().to_string(),
            ]
            .into_iter()
            .chain(self.extra.iter().cloned()),
        )
    }

    /// Starts node `id` on `raft` (its peer listener, at the address in --peers).
    pub async fn spawn(&self, id: u64, raft: tokio::net::TcpListener) -> Node {
        let config = self.config(id);
        let _ = std::fs::remove_file(config.data_dir.join("ready.json"));
        let mut listeners = GlobalListeners::bind(&config).await.unwrap();
        let raft_addr = raft.local_addr().unwrap().to_string();
        listeners.raft = raft;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(global_cp::run(config, listeners, async {
            let _ = rx.await;
        }));
        Node {
            id,
            raft_addr,
            api: String::new(),
            diagnostics: String::new(),
            kds: String::new(),
            token: String::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn ready(&self, mut node: Node) -> Node {
        let data = self.dir.join(format!("node-{}", node.id));
        let ready = data.join("ready.json");
        let endpoints = eventually("a node's ready file", DEADLINE, || {
            let ready = ready.clone();
            let failed = node.task.as_ref().is_some_and(|t| t.is_finished());
            async move {
                if failed {
                    return Some(None);
                }
                std::fs::read(&ready)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .map(Some)
            }
        })
        .await
        .unwrap();
        let Some(endpoints) = endpoints else {
            let ended = node.task.take().unwrap().await.unwrap();
            panic!("node {} ended before it was ready: {ended:?}", node.id);
        };
        node.api = endpoints["api"].as_str().unwrap().to_owned();
        node.diagnostics = endpoints["diagnostics"].as_str().unwrap().to_owned();
        node.kds = format!("https://{}", endpoints["kds"].as_str().unwrap());
        node.token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        node
    }

    pub async fn wait_for_default_mesh(&self, i: usize) {
        let url = format!("{}/meshes/default", self.nodes[i].api);
        eventually("the default mesh", DEADLINE, || {
            let (client, url) = (self.client.clone(), url.clone());
            async move {
                let response = client.get(url).send().await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await
        .unwrap();
    }

    pub async fn index(&self, i: usize) -> Value {
        self.client
            .get(format!("{}/", self.nodes[i].api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The index of the running node every running node names as leader, in the same term.
    pub async fn leader(&self) -> usize {
        eventually("an agreed leader", DEADLINE, || async {
            let mut views = BTreeSet::new();
            for i in 0..self.nodes.len() {
                if self.nodes[i].task.is_none() {
                    continue;
                }
                let view = self.index(i).await;
                views.insert((
                    view["cluster"]["leaderId"].as_u64()?,
                    view["cluster"]["term"].as_u64()?,
                ));
            }
            let (leader, _) = *views.iter().next()?;
            (views.len() == 1)
                .then(|| self.nodes.iter().position(|n| n.id == leader))
                .flatten()
                .filter(|&i| self.nodes[i].task.is_some())
        })
        .await
        .unwrap()
    }

    pub async fn put(&self, i: usize, name: &str, value: &str) -> Result<u16, String> {
        let node = &self.nodes[i];
        let body = json!({
            "type": "MeshTimeout", "name": name, "mesh": "default",
            "labels": {"value": value},
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                "default": {"idleTimeout": "1h"}}]},
        });
        let response = self
            .client
            .put(format!("{}/meshes/default/meshtimeouts/{name}", node.api))
            .bearer_auth(&node.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }

    pub async fn get(&self, i: usize, name: &str, consistent: bool) -> u16 {
        let query = if consistent { "?consistent=true" } else { "" };
        self.client
            .get(format!(
                "{}/meshes/default/meshtimeouts/{name}{query}",
                self.nodes[i].api
            ))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn names(&self, i: usize) -> Option<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        let mut url = Some(format!(
            "{}/meshes/default/meshtimeouts?size=1000",
            self.nodes[i].api
        ));
        while let Some(next) = url {
            let page: Value = self.client.get(next).send().await.ok()?.json().await.ok()?;
            for item in page["items"].as_array()? {
                names.insert(item["name"].as_str()?.to_owned());
            }
            url = page["next"].as_str().map(str::to_owned);
        }
        Some(names)
    }

    pub async fn stop(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(tx) = node.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = node.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Starts a stopped node again on its data and peer address.
    pub async fn restart(&mut self, i: usize) {
        let (id, addr) = (self.nodes[i].id, self.nodes[i].raft_addr.clone());
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        let node = self.spawn(id, listener).await;
        self.nodes[i] = self.ready(node).await;
    }

    pub async fn stop_all(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
