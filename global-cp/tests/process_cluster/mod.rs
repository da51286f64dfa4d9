//! A global cluster of real `global-cp` processes on loopback, for the tests that SIGKILL nodes
//! (`tests/cluster_process.rs`) and the benchmark (`benches/cluster.rs`). Every node's peer
//! listener is on a port picked before any starts; with `relays`, each node dials every other
//! through a `FaultRelay` of its own (`--raft-route`: node i dials node j through relay i->j),
//! so a test can cut one node off in both directions while the others keep talking. A node's stdout and stderr
//! go to `<dir>/node-<id>/global-cp.log`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::relay::{Fault, FaultRelay};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct ProcNode {
    pub id: u64,
    /// The real peer listener.
    pub raft_addr: String,
    /// This node's `--peers` (the real listeners).
    pub peers: String,
    /// This node's `--raft-route`s (through its relays), or empty.
    pub routes: String,
    pub data: PathBuf,
    pub child: Option<Child>,
    pub api: String,
    pub diagnostics: String,
    /// Its KDS address, `https://127.0.0.1:PORT`.
    pub kds: String,
    pub token: String,
}

pub struct ProcCluster {
    pub dir: PathBuf,
    pub nodes: Vec<ProcNode>,
    /// (from, to) -> the relay node `from` dials node `to` through.
    pub relays: BTreeMap<(u64, u64), FaultRelay>,
    pub client: reqwest::Client,
    /// Extra flags for every node.
    pub extra: Vec<String>,
}

/// A free loopback port (bound and released; the node binds it next).
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A loopback listener on a port below Linux's ephemeral range (32768-60999), so that no
/// `127.0.0.1:0` bind of another process (APIs, relays, parallel tests) takes it between its
/// release here and the node's own bind.
fn below_ephemeral() -> std::net::TcpListener {
    loop {
        let port = 20_000 + (rand_u16() % 12_000);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish() as u16
}

impl ProcCluster {
    /// Starts `n` nodes and waits until they agree on a leader and the default mesh exists.
    pub async fn start(dir: &Path, n: u64, relays: bool, extra: &[&str]) -> ProcCluster {
        let ids: Vec<u64> = (1..=n).collect();
        global_cp::cluster::ensure_certs(&dir.join("raft-certs"), &ids).unwrap();
        let kds = dir.join("kds");
        kds::tls::KdsServerTls::load_or_generate(&kds, &[]).unwrap();
        kds::auth::ZoneTokenIssuer::open(kds.join("signing-keys")).unwrap();
        // Held until the nodes start, so the relays' own ports cannot take them.
        let held: Vec<std::net::TcpListener> = ids.iter().map(|_| below_ephemeral()).collect();
        let real: Vec<String> = held
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let mut relay_map = BTreeMap::new();
        if relays {
            for &from in &ids {
                for &to in &ids {
                    if from != to {
                        let target = real[to as usize - 1].parse().unwrap();
                        relay_map.insert((from, to), FaultRelay::start(target).await.unwrap());
                    }
                }
            }
        }
        // Every node's --peers names the real listeners (the membership is the same whichever
        // node's bootstrap wins, as in a deployment); with relays, each node dials every other
        // node through its own relay (--raft-route), so its links can be cut one by one.
        let peers = ids
            .iter()
            .map(|&to| format!("{to}={}", real[to as usize - 1]))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = ids
            .iter()
            .map(|&id| {
                let routes = ids
                    .iter()
                    .filter_map(|&to| {
                        let relay = relay_map.get(&(id, to))?;
                        Some(format!("{to}={}", relay.addr()))
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                ProcNode {
                    id,
                    raft_addr: real[id as usize - 1].clone(),
                    peers: peers.clone(),
                    routes,
                    data: dir.join(format!("node-{id}")),
                    child: None,
                    api: String::new(),
                    diagnostics: String::new(),
                    kds: String::new(),
                    token: String::new(),
                }
            })
            .collect();
        let mut cluster = ProcCluster {
            dir: dir.to_owned(),
            nodes,
            relays: relay_map,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        drop(held);
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i, &[]);
        }
        for i in 0..cluster.nodes.len() {
            cluster.ready(i).await;
        }
        cluster.leader().await;
        for i in 0..cluster.nodes.len() {
            cluster.wait_for_default_mesh(i).await;
        }
        cluster
    }

    /// The command line of node `i` (without spawning it).
    pub fn command(&self, i: usize, extra: &[&str]) -> Command {
        let node = &self.nodes[i];
        let mut command = Command::new(env!("CARGO_BIN_EXE_global-cp"));
        command
            .arg("--data-dir")
            .arg(&node.data)
            .args(["--api-addr", "127.0.0.1:0"])
            .args(["--diagnostics-addr", "127.0.0.1:0"])
            .args(["--kds-addr", "127.0.0.1:0"])
            .args(["--raft-listen", &node.raft_addr])
            .arg("--ready-file")
            .arg(node.data.join("ready.json"))
            .args(["--node-id", &node.id.to_string()])
            .arg("--raft-tls-dir")
            .arg(self.dir.join("raft-certs"))
            .arg("--kds-tls-dir")
            .arg(self.dir.join("kds"))
            .args(&self.extra)
            .args(extra)
            .env("RUST_LOG", "info")
            // An error's backtrace would push its message out of the log tail a failure shows.
            .env("RUST_BACKTRACE", "0");
        if !extra.contains(&"--join") {
            command.args(["--peers", &node.peers]);
        }
        if !node.routes.is_empty() {
            command.args(["--raft-route", &node.routes]);
        }
        command
    }

    /// Starts node `i` (its data dir as it is) with `extra` flags; `ready` waits for it.
    pub fn spawn(&mut self, i: usize, extra: &[&str]) {
        let data = self.nodes[i].data.clone();
        std::fs::create_dir_all(&data).unwrap();
        let _ = std::fs::remove_file(data.join("ready.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("global-cp.log"))
            .unwrap();
        let child = self
            .command(i, extra)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn global-cp");
        self.nodes[i].child = Some(child);
    }

    /// Waits for node `i`'s ready file; panics with its log if it exited.
    pub async fn ready(&mut self, i: usize) {
        let ready = self.nodes[i].data.join("ready.json");
        let started = Instant::now();
        let endpoints: Value = loop {
            if let Some(status) = self.nodes[i].child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "node {} exited ({status}) before it was ready:\n{}",
                    self.nodes[i].id,
                    self.log(i)
                );
            }
            if let Some(endpoints) = std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                break endpoints;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "node {} not ready:\n{}",
                self.nodes[i].id,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let node = &mut self.nodes[i];
        node.api = endpoints["api"].as_str().unwrap().to_owned();
        node.diagnostics = endpoints["diagnostics"].as_str().unwrap().to_owned();
        node.kds = format!("https://{}", endpoints["kds"].as_str().unwrap());
        node.token = std::fs::read_to_string(node.data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
    }

    pub fn log(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.nodes[i].data.join("global-cp.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts node `i` on its data dir and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, &[]);
        self.ready(i).await;
    }

    /// Cuts node `id` off (both directions of each of its links) or heals it.
    pub fn partition(&self, id: u64, cut: bool) {
        let fault = if cut { Fault::Blackhole } else { Fault::Pass };
        for ((from, to), relay) in &self.relays {
            if *from == id || *to == id {
                relay.set(fault.clone());
            }
        }
    }

    pub async fn index(&self, i: usize) -> Option<Value> {
        self.try_index(i).await.ok()
    }

    /// Node `i`'s `GET /`, or why it did not answer.
    pub async fn try_index(&self, i: usize) -> Result<Value, String> {
        let response = self
            .client
            .get(format!("{}/", self.nodes[i].api))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| format!("GET /: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET /: {status}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("GET /: the body: {e}"))
    }

    /// The index of the node every running node in `among` names as leader in the same term.
    /// On timeout, panics with every node's view (role, term, leader, last log index, or why it
    /// did not answer) and the tail of each running node's log.
    pub async fn leader_among(&self, among: &[usize]) -> usize {
        let agreed = test_support::eventually("an agreed leader", DEADLINE, || async {
            let mut views = BTreeSet::new();
            for &i in among {
                let view = self.index(i).await?;
                views.insert((
                    view["cluster"]["leaderId"].as_u64()?,
                    view["cluster"]["term"].as_u64()?,
                ));
            }
            let (leader, _) = *views.iter().next()?;
            let i = self.nodes.iter().position(|n| n.id == leader)?;
            (views.len() == 1 && among.contains(&i)).then_some(i)
        })
        .await;
        match agreed {
            Ok(i) => i,
            Err(e) => panic!(
                "{e} among nodes {:?}:\n{}",
                self.ids(among),
                self.views().await
            ),
        }
    }

    fn ids(&self, among: &[usize]) -> Vec<u64> {
        among.iter().map(|&i| self.nodes[i].id).collect()
    }

    /// Every node's view of the cluster and the tail of its log, for a failure's message.
    pub async fn views(&self) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            if !self.running(i) {
                out.push_str(&format!("node {id}: not running\n"));
                continue;
            }
            let view = match self.try_index(i).await {
                Ok(view) => {
                    let c = &view["cluster"];
                    format!(
                        "role {}, term {}, leader {}, last log index {}, last applied {}",
                        c["role"],
                        c["term"],
                        c["leaderId"],
                        c["lastLogIndex"],
                        c["lastAppliedIndex"]
                    )
                }
                Err(e) => format!("unreachable: {e}"),
            };
            out.push_str(&format!(
                "node {id} (api {}): {view}\n--- node {id} log tail ---\n{}\n",
                self.nodes[i].api,
                self.log(i)
            ));
        }
        let cut: Vec<String> = self
            .relays
            .iter()
            .filter(|(_, relay)| !matches!(relay.fault(), Fault::Pass))
            .map(|((from, to), relay)| format!("{from}->{to}: {:?}", relay.fault()))
            .collect();
        if !cut.is_empty() {
            out.push_str(&format!("relays not passing: {}\n", cut.join(", ")));
        }
        out
    }

    /// The agreed leader of all running nodes.
    pub async fn leader(&self) -> usize {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.running(i)).collect();
        self.leader_among(&running).await
    }

    /// Waits until node `i` serves the default mesh; on timeout, panics with every node's view
    /// and log tail.
    pub async fn wait_for_default_mesh(&self, i: usize) {
        let url = format!("{}/meshes/default", self.nodes[i].api);
        let found = test_support::eventually("the default mesh", DEADLINE, || {
            let (client, url) = (self.client.clone(), url.clone());
            async move {
                let response = client.get(url).send().await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
        if let Err(e) = found {
            panic!("{e} on node {}:\n{}", self.nodes[i].id, self.views().await);
        }
    }

    /// The body of a small policy (a MeshTimeout) named `name`.
    pub fn policy(name: &str, value: &str) -> Value {
        json!({
            "type": "MeshTimeout", "name": name, "mesh": "default",
            "labels": {"value": value},
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"},
                "default": {"idleTimeout": "1h"}}]},
        })
    }

    /// PUTs policy `name` through node `i`: the status, or the transport error.
    pub async fn put(
        &self,
        i: usize,
        name: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<u16, String> {
        put(
            &self.client,
            &self.nodes[i].api,
            &self.nodes[i].token,
            name,
            value,
            timeout,
        )
        .await
    }

    /// A linearizable read of the names on node `i`, retried through elections.
    pub async fn consistent_names(&self, i: usize) -> BTreeSet<String> {
        test_support::eventually("a consistent read", DEADLINE, || self.names(i, true))
            .await
            .unwrap()
    }

    /// The names of the MeshTimeouts node `i` holds (`consistent`: a linearizable read), but
    /// the default mesh's own.
    pub async fn names(&self, i: usize, consistent: bool) -> Option<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        let consistent = if consistent { "&consistent=true" } else { "" };
        let mut url = Some(format!(
            "{}/meshes/default/meshtimeouts?size=1000{consistent}",
            self.nodes[i].api
        ));
        while let Some(next) = url {
            let response = self.client.get(next).send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let page: Value = response.json().await.ok()?;
            for item in page["items"].as_array()? {
                let name = item["name"].as_str()?;
                // The default mesh's own MeshTimeout is not a test's write.
                if !name.starts_with("mesh-timeout-") {
                    names.insert(name.to_owned());
                }
            }
            url = page["next"].as_str().map(str::to_owned);
        }
        Some(names)
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// PUTs policy `name` through the API at `api`.
pub async fn put(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    name: &str,
    value: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let response = client
        .put(format!("{api}/meshes/default/meshtimeouts/{name}"))
        .bearer_auth(token)
        .json(&ProcCluster::policy(name, value))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}
