//! The container tier of the failover scenarios (issue [7]): the same [`Scenario`]s as the
//! process tier, run on the compose federation of issue [6] (`meshctl generate compose --zones 3
//! --global-nodes 3`, images from `deploy/build-images.sh`). Faults are docker verbs (`kill`,
//! `pause`, `unpause`, `start`, `restart`), `docker network disconnect`/`connect` and `tc netem`
//! applied from the host inside a container's network namespace (`nsenter -t <pid> -n`), so the
//! images need no tools. Traffic: zone-1's frontend container runs `demo-app call` through its
//! sidecar's outbound to `backend` in 1 s bursts one after another, each burst's counts kept;
//! a writer applies MeshTimeouts at the global's published REST port and records the
//! acknowledged ones, which must afterwards be at the global and in every zone (the zone CPs'
//! REST ports are published by an override file). The whole project is taken down (`down -v`)
//! when the [`Federation`] is dropped, also on error or Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use meshctl::client::ApiClient;
use tokio::process::Command;

use crate::scenario::{Action, Component, Link, Outcome, Scenario, Step};
use test_support::relay::Fault;

/// Why a scenario cannot run on this tier yet, or `None` when it maps.
pub fn unsupported(scenario: &Scenario, netem: bool) -> Option<String> {
    let degrades = scenario
        .timeline
        .iter()
        .any(|s| matches!(s.action, Action::Link(_, Fault::Degrade(_))));
    if degrades && !netem {
        return Some(
            "a slow link needs `tc netem` and this kernel has no sch_netem \
             (\"Specified qdisc kind is unknown\")"
                .into(),
        );
    }
    let raft_link = scenario
        .timeline
        .iter()
        .any(|s| matches!(s.action, Action::Link(Link::Raft(_), _)));
    if raft_link {
        return Some(
            "a cut of one node's Raft links needs per-peer faults; on this tier a global node's \
             Raft, KDS and REST share the control network (not mapped yet)"
                .into(),
        );
    }
    if scenario.topology.zones.len() != 3
        || scenario.topology.clients != ["zone-1"]
        || scenario.topology.backends != ["zone-2", "zone-3"]
    {
        return Some(
            "only the default topology (zone-1 client, zone-2/3 backends) is generated".into(),
        );
    }
    None
}

/// How the federation is built.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cargo profile of the binaries put in the images (`debug` is faster to build).
    pub profile: String,
    /// Image tag.
    pub tag: String,
    /// Use the binaries as they are (no `cargo build` in `build-images.sh`).
    pub skip_cargo: bool,
    /// Longest wait for the federation to come up.
    pub up_deadline: Duration,
}

/// Runs `cmd`, failing with its stderr when it exits non-zero; returns its stdout.
async fn run_cmd(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    run_cmd(
        Command::new("docker").args(args),
        &format!("docker {}", args.join(" ")),
    )
    .await
}

/// A running compose federation, taken down when dropped.
pub struct Federation {
    dir: tempfile::TempDir,
    project: String,
    globals: Vec<String>,
    zones: Vec<String>,
    /// Container ids by service (a container keeps its id across kill, start and restart).
    ids: Mutex<BTreeMap<String, String>>,
}

impl Federation {
    /// Builds the images (once), generates the project and brings it up; returns when every
    /// zone is online at the global.
    pub async fn up(opts: &Options) -> anyhow::Result<Federation> {
        let repo = test_support::workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target"));
        let mut build = Command::new(repo.join("deploy/build-images.sh"));
        build
            .env("PROFILE", &opts.profile)
            .env("TAG", &opts.tag)
            .env("CARGO_TARGET_DIR", &target);
        if opts.skip_cargo {
            build.env("SKIP_CARGO", "1");
        }
        run_cmd(&mut build, "deploy/build-images.sh").await?;
        let meshctl = target.join(&opts.profile).join("meshctl");
        let prefix = free_prefix().await?;
        let dir = tempfile::Builder::new()
            .prefix("meridian-chaos.")
            .tempdir()?;
        let project = format!("meridian-chaos-{}", std::process::id());
        let fed = Federation {
            dir,
            project,
            globals: (1..=3).map(|i| format!("global-{i}")).collect(),
            zones: (1..=3).map(|i| format!("zone-{i}")).collect(),
            ids: Mutex::new(BTreeMap::new()),
        };
        let out = fed.dir.path().to_str().context("temp dir is not UTF-8")?;
        run_cmd(
            Command::new(&meshctl).args([
                "generate",
                "compose",
                "--zones",
                "3",
                "--global-nodes",
                "3",
                "--out",
                out,
                "--image-tag",
                &opts.tag,
                "--subnet-prefix",
                &prefix,
            ]),
            "meshctl generate compose",
        )
        .await?;
        // The zone CPs' REST ports, published like the global's, for the convergence oracle.
        let mut override_yaml = String::from("version: '2.4'\nservices:\n");
        for z in &fed.zones {
            override_yaml.push_str(&format!("  {z}-cp:\n    ports:\n    - 127.0.0.1::5681\n"));
        }
        std::fs::write(fed.dir.path().join("chaos.override.yaml"), override_yaml)?;
        if let Err(e) = fed.compose(&["up", "-d"]).await {
            // Seen once under load: a global node unhealthy; its logs say why.
            let logs = fed
                .compose(&["logs", "--tail", "20"])
                .await
                .unwrap_or_default();
            return Err(e.context(format!("the project's last logs:\n{logs}")));
        }
        let deadline = Instant::now() + opts.up_deadline;
        loop {
            if fed.online_zones().await.len() == fed.zones.len() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not every zone online within {:?} of up",
                opts.up_deadline
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The process tier's resilience policies (MeshRetry, outlier detection, zone-2 then
        // zone-3, a 1 s connect timeout), so both tiers run the same mesh.
        loop {
            let mut applied = false;
            for g in &fed.globals {
                if let Ok(api) = fed.api(g, fed.global_token()).await {
                    if meshctl::apply::apply_text(&api, crate::topology::RESILIENCE, "RESILIENCE")
                        .await
                        .is_ok()
                    {
                        applied = true;
                        break;
                    }
                }
            }
            if applied {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the resilience policies not applied at the global within {:?} of up",
                opts.up_deadline
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(fed)
    }

    async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(
            Command::new("docker-compose")
                .current_dir(self.dir.path())
                .args(["-p", &self.project, "-f", "docker-compose.yaml"])
                .args(["-f", "chaos.override.yaml"])
                .args(args),
            &format!("docker-compose {}", args.join(" ")),
        )
        .await
    }

    /// The container id of a compose service.
    async fn container(&self, service: &str) -> anyhow::Result<String> {
        if let Some(id) = self.ids.lock().expect("ids lock").get(service) {
            return Ok(id.clone());
        }
        let id = self.compose(&["ps", "-q", service]).await?;
        let id = id.trim().to_string();
        anyhow::ensure!(!id.is_empty(), "no container for service {service}");
        self.ids
            .lock()
            .expect("ids lock")
            .insert(service.to_string(), id.clone());
        Ok(id)
    }

    /// A client of a service's REST API (its published port 5681), with `token`.
    async fn api(&self, service: &str, token: Option<String>) -> anyhow::Result<ApiClient> {
        // `docker port`, not `docker-compose port`: no Python start per call. The host port
        // changes when the container restarts, so it is looked up each time.
        let id = self.container(service).await?;
        let port = docker(&["port", &id, "5681/tcp"]).await?;
        let addr = port
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .with_context(|| format!("{service} publishes no 5681 on 127.0.0.1: {port}"))?;
        ApiClient::new(&format!("http://{}", addr.trim()), token)
    }

    fn global_token(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.path().join("secrets/meshctl.yaml")).ok()?;
        meshctl::config::ConfigFile::parse(&text).ok()?.token
    }

    /// The zones some global node says are online.
    async fn online_zones(&self) -> BTreeSet<String> {
        let mut online = BTreeSet::new();
        for g in &self.globals {
            let Ok(api) = self.api(g, self.global_token()).await else {
                continue;
            };
            let Ok(Ok((_, items))) =
                tokio::time::timeout(Duration::from_secs(2), api.zones_overview()).await
            else {
                continue;
            };
            if let Ok(zones) = meshctl::inspect::ZoneOverview::from_items(&items) {
                online.extend(zones.into_iter().filter(|z| z.is_online()).map(|z| z.name));
            }
        }
        online
    }

    /// The acknowledged writes missing at a global node or a zone, as `<name>@<where>`.
    async fn missing_writes(&self, acked: &[String]) -> anyhow::Result<Vec<String>> {
        let path = ["meshes", "default", "meshtimeouts"].map(String::from);
        let mut places = vec![("global-1".to_string(), self.global_token())];
        for z in &self.zones {
            let token =
                std::fs::read_to_string(self.dir.path().join(format!("secrets/{z}/admin-token")))
                    .ok()
                    .map(|t| t.trim().to_string());
            places.push((format!("{z}-cp"), token));
        }
        let mut missing = Vec::new();
        for (service, token) in places {
            let api = self.api(&service, token).await?;
            let (_, items) = api
                .list_all(&path)
                .await
                .with_context(|| format!("listing MeshTimeouts at {service}"))?;
            let names: BTreeSet<&str> = items.iter().filter_map(|i| i["name"].as_str()).collect();
            missing.extend(
                acked
                    .iter()
                    .filter(|n| !names.contains(n.as_str()))
                    .map(|n| format!("{n}@{service}")),
            );
        }
        Ok(missing)
    }

    /// The compose services of `c`; the whole global (every node) for [`Component::Global`],
    /// the node leading now for [`Component::GlobalLeader`].
    async fn services(&self, c: Component) -> anyhow::Result<Vec<String>> {
        Ok(match c {
            Component::Global => self.globals.clone(),
            Component::GlobalNode(n) => vec![format!("global-{n}")],
            Component::GlobalLeader => vec![format!("global-{}", self.leader_id().await?)],
            Component::ZoneCp(z) => vec![format!("{z}-cp")],
        })
    }

    /// The Raft leader's node id, as the first global node that answers names it.
    async fn leader_id(&self) -> anyhow::Result<u64> {
        for g in &self.globals {
            let Ok(api) = self.api(g, self.global_token()).await else {
                continue;
            };
            if let Ok(Ok(index)) = tokio::time::timeout(Duration::from_secs(2), api.get(&[])).await
            {
                if let Some(id) = index["cluster"]["leaderId"].as_u64() {
                    return Ok(id);
                }
            }
        }
        anyhow::bail!("no global node named a Raft leader")
    }

    /// The network namespace's pid and the interface of `service` on the inter-zone network.
    async fn interzone_iface(&self, service: &str) -> anyhow::Result<(String, String)> {
        let id = self.container(service).await?;
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &id]).await?;
        let ips = docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
            &id,
        ])
        .await?;
        let ip = ips
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.ends_with("_interzone"))
            .map(|(_, v)| v.to_string())
            .with_context(|| {
                format!("{service} has no address on the inter-zone network: {ips}")
            })?;
        let pid = pid.trim().to_string();
        let addrs = run_cmd(
            Command::new("nsenter").args(["-t", &pid, "-n", "ip", "-o", "-4", "addr", "show"]),
            "nsenter ip addr",
        )
        .await?;
        let iface = addrs
            .lines()
            .find(|l| l.contains(&format!("inet {ip}/")))
            .and_then(|l| l.split_whitespace().nth(1))
            .with_context(|| format!("no interface of {service} holds {ip}"))?
            .to_string();
        Ok((pid, iface))
    }

    async fn netem(&self, service: &str, args: Option<Vec<String>>) -> anyhow::Result<()> {
        let (pid, iface) = self.interzone_iface(service).await?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid, "-n", "tc", "qdisc"]);
        match args {
            Some(netem) => {
                cmd.args(["replace", "dev", &iface, "root", "netem"])
                    .args(netem);
                run_cmd(&mut cmd, "tc qdisc replace").await?;
            }
            None => {
                cmd.args(["del", "dev", &iface, "root"]);
                // No qdisc to delete is fine.
                let _ = cmd.output().await;
            }
        }
        Ok(())
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker-compose")
            .current_dir(self.dir.path())
            .args(["-p", &self.project, "-f", "docker-compose.yaml"])
            .args([
                "-f",
                "chaos.override.yaml",
                "down",
                "-v",
                "--remove-orphans",
            ])
            .output();
        // `down` can leave containers or networks on a loaded machine; remove what is labelled.
        let label = format!("label=com.docker.compose.project={}", self.project);
        for (list, rm) in [
            (vec!["ps", "-aq", "--filter"], vec!["rm", "-f", "-v"]),
            (
                vec!["network", "ls", "-q", "--filter"],
                vec!["network", "rm"],
            ),
        ] {
            let ids = std::process::Command::new("docker")
                .args(&list)
                .arg(&label)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(&rm)
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// Whether this kernel has `tc netem` (tried in a network namespace of its own).
pub async fn netem_available() -> bool {
    Command::new("unshare")
        .args([
            "-n", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
        ])
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

/// A /16 under 10.231-250 no docker network uses (the project's subnets are fixed).
async fn free_prefix() -> anyhow::Result<String> {
    let ids = docker(&["network", "ls", "-q"]).await?;
    let mut args = vec![
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
    ];
    args.extend(ids.split_whitespace());
    let used = docker(&args).await?;
    (231..=250)
        .map(|second| format!("10.{second}"))
        .find(|p| !used.contains(&format!("{p}.")))
        .context("no free 10.231-250.0.0/16 for the project's networks")
}

/// What the faults changed, to undo at heal.
#[derive(Default)]
struct Damage {
    stopped: BTreeSet<String>,
    paused: BTreeSet<String>,
    disconnected: BTreeSet<String>,
    netem: BTreeSet<String>,
    /// Ingresses off the inter-zone network, with their fixed address there.
    cut_ingresses: BTreeMap<String, String>,
}

/// Connects a cut ingress to the inter-zone network again, at its fixed address.
async fn reconnect_ingress(
    fed: &Federation,
    service: &str,
    damage: &mut Damage,
) -> anyhow::Result<()> {
    if let Some(ip) = damage.cut_ingresses.remove(service) {
        let id = fed.container(service).await?;
        let network = project_network(fed, "_interzone").await?;
        docker(&["network", "connect", "--ip", &ip, &network, &id]).await?;
    }
    Ok(())
}

/// Applies one action; `Flap`s are expanded before.
async fn apply(fed: &Federation, action: &Action, damage: &mut Damage) -> anyhow::Result<()> {
    match action {
        Action::Link(Link::Kds(zone), fault) => {
            let service = format!("{zone}-cp");
            let id = fed.container(&service).await?;
            let network = control_network(fed).await?;
            match fault {
                Fault::Pass => {
                    if damage.disconnected.remove(&service) {
                        docker(&["network", "connect", &network, &id]).await?;
                    }
                }
                _ => {
                    if damage.disconnected.insert(service) {
                        docker(&["network", "disconnect", &network, &id]).await?;
                    }
                }
            }
        }
        Action::Link(Link::Ingress(zone), fault) => {
            let service = format!("{zone}-ingress");
            match fault {
                Fault::Pass => {
                    reconnect_ingress(fed, &service, damage).await?;
                    if damage.netem.remove(&service) {
                        fed.netem(&service, None).await?;
                    }
                }
                // Off the inter-zone network: other zones' packets to it go nowhere (no reset
                // of connections on this tier).
                Fault::Blackhole | Fault::Reset => {
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        damage.cut_ingresses.entry(service.clone())
                    {
                        let id = fed.container(&service).await?;
                        let network = project_network(fed, "_interzone").await?;
                        let ip = docker(&[
                            "inspect",
                            "-f",
                            &format!(
                                "{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"
                            ),
                            &id,
                        ])
                        .await?;
                        docker(&["network", "disconnect", &network, &id]).await?;
                        slot.insert(ip.trim().to_string());
                    }
                }
                Fault::Degrade(d) => {
                    let mut args = vec![
                        "delay".to_string(),
                        format!("{}ms", d.latency.as_millis()),
                        format!("{}ms", d.jitter.as_millis()),
                    ];
                    if d.loss_percent > 0.0 {
                        args.extend(["loss".to_string(), format!("{}%", d.loss_percent)]);
                    }
                    damage.netem.insert(service.clone());
                    fed.netem(&service, Some(args)).await?;
                }
            }
        }
        Action::Flap { .. } => anyhow::bail!("a flap reached apply unexpanded"),
        Action::Link(Link::Raft(node), _) => {
            anyhow::bail!(
                "global node {node}'s Raft links: not mapped on this tier (`unsupported`)"
            )
        }
        Action::Kill(c) => {
            for s in fed.services(*c).await? {
                docker(&["kill", &fed.container(&s).await?]).await?;
                damage.stopped.insert(s);
            }
        }
        Action::Pause(c) => {
            for s in fed.services(*c).await? {
                docker(&["pause", &fed.container(&s).await?]).await?;
                damage.paused.insert(s);
            }
        }
        Action::Resume(c) => {
            for s in fed.services(*c).await? {
                docker(&["unpause", &fed.container(&s).await?]).await?;
                damage.paused.remove(&s);
            }
        }
        Action::Start(c) => {
            for s in fed.services(*c).await? {
                docker(&["start", &fed.container(&s).await?]).await?;
                damage.stopped.remove(&s);
            }
        }
        Action::Restart(c) => {
            for s in fed.services(*c).await? {
                docker(&["restart", "-t", "10", &fed.container(&s).await?]).await?;
            }
        }
        Action::Wipe(c) => {
            // The data volume is a bind mount under secrets/ (`./secrets/<zone>`).
            for s in fed.services(*c).await? {
                let data = match c {
                    Component::ZoneCp(z) => fed.dir.path().join("secrets").join(z),
                    _ => fed.dir.path().join("secrets").join(&s),
                };
                for entry in std::fs::read_dir(&data)
                    .with_context(|| format!("reading {}", data.display()))?
                {
                    let path = entry?.path();
                    if path.file_name().is_some_and(|n| n == "admin-token") {
                        continue;
                    }
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path)?;
                    } else {
                        std::fs::remove_file(&path)?;
                    }
                }
            }
        }
        Action::Heal => {
            let cut: Vec<String> = damage.cut_ingresses.keys().cloned().collect();
            for s in cut {
                reconnect_ingress(fed, &s, damage).await?;
            }
            for s in std::mem::take(&mut damage.netem) {
                fed.netem(&s, None).await?;
            }
            for s in std::mem::take(&mut damage.disconnected) {
                let id = fed.container(&s).await?;
                docker(&["network", "connect", &control_network(fed).await?, &id]).await?;
            }
            for s in std::mem::take(&mut damage.paused) {
                docker(&["unpause", &fed.container(&s).await?]).await?;
            }
            for s in std::mem::take(&mut damage.stopped) {
                docker(&["start", &fed.container(&s).await?]).await?;
            }
        }
    }
    Ok(())
}

/// The project's control network (its name as compose normalised the project's).
async fn control_network(fed: &Federation) -> anyhow::Result<String> {
    project_network(fed, "_control").await
}

/// The project's network whose name ends with `suffix`.
async fn project_network(fed: &Federation, suffix: &str) -> anyhow::Result<String> {
    let label = format!("label=com.docker.compose.project={}", fed.project);
    let names = docker(&["network", "ls", "--filter", &label, "--format", "{{.Name}}"]).await?;
    names
        .lines()
        .find(|n| n.ends_with(suffix))
        .map(str::to_string)
        .with_context(|| format!("no network *{suffix} of project {}", fed.project))
}

/// The timeline with each `Flap` expanded into blackhole/pass steps.
fn expand(timeline: &[Step]) -> Vec<Step> {
    let mut steps = Vec::new();
    for s in timeline {
        if let Action::Flap { link, every, until } = &s.action {
            let mut at = s.at;
            let mut down = true;
            while at < *until {
                let fault = if down { Fault::Blackhole } else { Fault::Pass };
                steps.push(Step {
                    at,
                    action: Action::Link(*link, fault),
                });
                down = !down;
                at += *every;
            }
            steps.push(Step {
                at: *until,
                action: Action::Link(*link, Fault::Pass),
            });
        } else {
            steps.push(s.clone());
        }
    }
    steps.sort_by_key(|s| s.at);
    steps
}

/// One burst of the client: its end from the start of the load and its counts.
#[derive(Debug, Clone, Default)]
struct Burst {
    end: Duration,
    ok: u64,
    failed: u64,
    zones: BTreeMap<String, u64>,
}

/// Zone-1's frontend calling `backend` through its sidecar in 1 s bursts until `stop`.
async fn client(
    frontend: String,
    rate: f64,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
    bursts: Arc<Mutex<Vec<Burst>>>,
) {
    while !*stop.borrow() {
        let out = Command::new("docker")
            .args(["exec", &frontend, "/usr/local/bin/demo-app", "call"])
            .args([
                "--target",
                "http://127.0.0.1:10080/",
                "--rate",
                &rate.to_string(),
            ])
            .args(["--duration", "1s", "--timeout", "1s", "--json"])
            .output()
            .await;
        let mut burst = Burst {
            end: start.elapsed(),
            ..Burst::default()
        };
        let report = out.ok().and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            serde_json::from_str::<serde_json::Value>(text.lines().last()?).ok()
        });
        match report {
            Some(r) => {
                burst.ok = r["ok"].as_u64().unwrap_or(0);
                burst.failed = r["failed"].as_u64().unwrap_or(0);
                if let Some(z) = r["zones"].as_object() {
                    burst.zones = z
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect();
                }
            }
            // The exec itself failing counts the burst's requests as failed.
            None => burst.failed = rate as u64,
        }
        bursts.lock().expect("bursts lock").push(burst);
    }
}

/// Applies MeshTimeouts `<prefix>-<n>` at the global (any node), retrying each until
/// acknowledged, every 250 ms, until `stop`; returns the acknowledged names.
async fn writer(
    fed: &Federation,
    prefix: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut node = 0usize;
    let mut n = 0u64;
    while !*stop.borrow() {
        let name = format!("{prefix}-{n}");
        let yaml = format!(
            "type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef:\n    kind: MeshService\n    name: chaos-writer\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      connectionTimeout: {}s\n",
            n + 1
        );
        // The node's published port changes when its container restarts: look it up each time.
        let global = &fed.globals[node % fed.globals.len()];
        let applied = match fed.api(global, fed.global_token()).await {
            Ok(api) => matches!(
                tokio::time::timeout(
                    Duration::from_secs(2),
                    meshctl::apply::apply_text(&api, &yaml, "the chaos writer"),
                )
                .await,
                Ok(Ok(()))
            ),
            Err(_) => false,
        };
        if applied {
            acked.push(name);
            n += 1;
        } else {
            node += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    acked
}

/// Runs one scenario on the running federation and heals it after.
pub async fn run(fed: &Federation, scenario: &Scenario, seed: u64) -> anyhow::Result<Outcome> {
    let wall = Instant::now();
    let frontend = fed.container("frontend-zone-1-app").await?;
    let steps = expand(&scenario.timeline);
    let start = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let bursts = Arc::new(Mutex::new(Vec::new()));
    let load = tokio::spawn(client(
        frontend,
        scenario.traffic.rate,
        start,
        stop_rx.clone(),
        bursts.clone(),
    ));
    let prefix = format!("chaos-{}", scenario.name);
    let mut damage = Damage::default();
    let mut onsets = Vec::new();
    let mut violations = Vec::new();
    let timeline = async {
        for s in &steps {
            tokio::time::sleep_until((start + s.at).into()).await;
            let lifts = matches!(
                s.action,
                Action::Heal | Action::Link(_, Fault::Pass) | Action::Resume(_) | Action::Start(_)
            );
            if !lifts {
                onsets.push(s.at);
            }
            if let Err(e) = apply(fed, &s.action, &mut damage).await {
                violations.push(format!("applying {:?} at {:?}: {e:#}", s.action, s.at));
            }
        }
        // Nothing may stay broken for the next scenario; then the tail of the load.
        if let Err(e) = apply(fed, &Action::Heal, &mut damage).await {
            violations.push(format!("healing: {e:#}"));
        }
        tokio::time::sleep(scenario.traffic.tail).await;
        let _ = stop_tx.send(true);
    };
    let (acked, ()) = tokio::join!(writer(fed, prefix, stop_rx.clone()), timeline);
    let faults_end = steps.last().map(|s| s.at).unwrap_or_default();
    load.await.context("the client panicked")?;
    // Settling: every zone online and every acknowledged write everywhere.
    let settle_deadline = Instant::now() + scenario.invariants.settle_within;
    let mut settled = None;
    let mut last_missing = Vec::new();
    while Instant::now() < settle_deadline {
        let online = fed.online_zones().await.len() == fed.zones.len();
        match fed.missing_writes(&acked).await {
            Ok(missing) if online && missing.is_empty() => {
                settled = Some(start.elapsed().saturating_sub(faults_end));
                last_missing.clear();
                break;
            }
            Ok(missing) => last_missing = missing,
            Err(e) => last_missing = vec![format!("{e:#}")],
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let bursts = bursts.lock().expect("bursts lock").clone();
    let ok: u64 = bursts.iter().map(|b| b.ok).sum();
    let failed: u64 = bursts.iter().map(|b| b.failed).sum();
    let mut zones = BTreeMap::new();
    for b in &bursts {
        for (z, n) in &b.zones {
            *zones.entry(z.clone()).or_insert(0) += n;
        }
    }
    let sent = ok + failed;
    let success_rate = if sent == 0 {
        0.0
    } else {
        ok as f64 / sent as f64
    };
    let failures: Vec<(Duration, u64)> = bursts
        .iter()
        .filter(|b| b.failed > 0)
        .map(|b| (b.end, b.failed))
        .collect();
    let failover = failover(&onsets, &failures);
    let inv = &scenario.invariants;
    if sent == 0 {
        violations.push("no request completed".into());
    }
    if success_rate < inv.min_success_rate {
        violations.push(format!(
            "success rate {:.3}% < {:.3}%",
            success_rate * 100.0,
            inv.min_success_rate * 100.0
        ));
    }
    if failover > inv.max_failover {
        violations.push(format!(
            "failover {:.2} s > {:.2} s (1 s bursts: a failed burst counts at its end)",
            failover.as_secs_f64(),
            inv.max_failover.as_secs_f64()
        ));
    }
    let writes_lost = last_missing.len() as u64;
    if settled.is_none() {
        violations.push(format!(
            "not settled within {:?} of the end of faults (zones online, writes everywhere): {}",
            inv.settle_within,
            last_missing.join(", ")
        ));
    }
    Ok(Outcome {
        name: scenario.name.to_string(),
        fault: scenario.fault.clone(),
        seed,
        sent,
        failed,
        success_rate,
        failover,
        convergence: settled,
        settled,
        writes_acknowledged: acked.len() as u64,
        writes_lost,
        zones,
        violations,
        offline_seen: BTreeMap::new(),
        known_defect: scenario.known_defect.map(str::to_string),
        wall: wall.elapsed(),
    })
}

/// Longest time from a fault's onset to the end of the last burst with failures before the
/// next onset.
fn failover(onsets: &[Duration], failures: &[(Duration, u64)]) -> Duration {
    let mut longest = Duration::ZERO;
    for (i, onset) in onsets.iter().enumerate() {
        let next = onsets.get(i + 1).copied().unwrap_or(Duration::MAX);
        if let Some(last) = failures
            .iter()
            .filter(|(at, _)| at > onset && *at <= next)
            .map(|(at, _)| *at)
            .max()
        {
            longest = longest.max(last - *onset);
        }
    }
    longest
}

/// The report's directory-independent helper: where the reports of this tier go.
pub fn report_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (
        dir.join("chaos-report-container.md"),
        dir.join("chaos-report-container.json"),
    )
}

/// The shared Markdown report with the process tier's description of the setup replaced by a
/// pointer to this tier's (in [`report_notes`]).
pub fn markdown(shared: &str, skipped: &[(&str, String)]) -> String {
    let intro_start = shared.find("Tier `container`:");
    let table_start = shared.find("\n\n| scenario");
    let mut md = match (intro_start, table_start) {
        (Some(a), Some(b)) if a < b => format!(
            "{}Tier `container`: see \"Container tier\" below. The invariants are the process \
             tier's (success rate >= 99.9%, failover <= 1 s, every zone online and every \
             acknowledged write at the global and in every zone within 30 s of the end of \
             faults).{}",
            &shared[..a],
            &shared[b..]
        ),
        _ => shared.to_string(),
    };
    md.push_str(&report_notes(skipped));
    md
}

/// What the container tier's report adds to the shared Markdown: how this tier differs, and the
/// scenarios skipped with their reasons.
pub fn report_notes(skipped: &[(&str, String)]) -> String {
    let mut md = String::from(
        "\n## Container tier\n\nThe federation is the compose project of `meshctl generate compose --zones 3 --global-nodes 3` \
         (debug images from `deploy/build-images.sh`) with the process tier's resilience policies \
         (`topology::RESILIENCE`: MeshRetry, outlier detection, zone-2 then zone-3, 1 s connect \
         timeout) applied at the global, one project for the whole run, each \
         scenario healed before the next. Faults: `Kill`/`Pause`/`Resume`/`Start`/`Restart` are \
         `docker kill`/`pause`/`unpause`/`start`/`restart` (the global is all three nodes); a \
         zone's KDS link is `docker network disconnect`/`connect` of its CP on the control \
         network; an ingress link blackholed (or reset) is the ingress disconnected from the \
         inter-zone network and connected again at its fixed address (no reset of connections \
         on this tier); a degraded one is `tc netem` `delay`/`loss` on the ingress's inter-zone \
         interface from the host (`nsenter -t <pid> -n`), skipped where the kernel has no netem. Traffic: `demo-app call` in \
         zone-1's frontend container through its sidecar's outbound, 1 s bursts one after \
         another (about 0.1-0.3 s between bursts for `docker exec`), so failover is measured to \
         the end of the last failed burst: a 1 s granularity. The writer applies MeshTimeouts at \
         the global nodes' published REST ports; convergence is checked at global-1 and at each \
         zone CP's REST port (published by an override file). The global's view of offline zones \
         is not sampled on this tier. The seed is recorded only: nothing on this tier draws \
         from it.\n",
    );
    if !skipped.is_empty() {
        md.push_str("\n### Skipped\n\n");
        for (name, why) in skipped {
            md.push_str(&format!("- `{name}`: {why}\n"));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaps_expand_to_alternating_steps_ending_passing() {
        let steps = expand(&[Step {
            at: Duration::from_secs(7),
            action: Action::Flap {
                link: Link::Ingress("zone-2"),
                every: Duration::from_secs(2),
                until: Duration::from_secs(11),
            },
        }]);
        let kinds: Vec<_> = steps
            .iter()
            .map(|s| match &s.action {
                Action::Link(_, Fault::Blackhole) => "down",
                Action::Link(_, Fault::Pass) => "up",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["down", "up", "up"]);
        assert_eq!(steps.last().map(|s| s.at), Some(Duration::from_secs(11)));
    }

    #[test]
    fn failover_is_onset_to_last_failed_burst() {
        let s = Duration::from_secs;
        assert_eq!(failover(&[s(1)], &[(s(2), 5), (s(4), 1)]), s(3));
        assert_eq!(failover(&[s(1)], &[]), Duration::ZERO);
    }
}
