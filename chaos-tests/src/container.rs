//! The container tier of the failover scenarios (issue [7]): the same [`Scenario`]s as the
//! process tier, run on the compose federation of issue [6] (`meshctl generate compose --zones 3
//! --global-nodes 3`, images from `deploy/build-images.sh`). Faults are docker verbs (`kill`,
//! `pause`, `unpause`, `start`, `restart`), `docker network disconnect`/`connect`, `tc netem`
//! applied from the host inside a container's network namespace (`nsenter -t <pid> -n`), so the
//! images need no tools, and faults of the relay container's links ([`Relays`]: a slow ingress
//! link where the kernel has no netem, the global nodes' Raft links), set on its control port.
//! The relay container and the links through it are added by the run's override file only when
//! the chosen scenarios need them. Traffic: zone-1's frontend container runs `demo-app call` through its
//! sidecar's outbound to `backend` in 5 s runs one after another, each reporting every 100 ms;
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

use crate::scenario::{
    expand_flaps, failover, missing_at, writer, Action, Component, Link, Outcome, Scenario,
};
use meshctl::generate::{Subnets, INGRESS_PORT, RAFT_PORT};
use serde_yaml::{Mapping, Value};
use test_support::relay::Fault;
use test_support::relay_control::DEFAULT_CONTROL_PORT;

/// Why a scenario cannot run on a federation with `relays`, or `None` when it maps.
pub fn unsupported(scenario: &Scenario, relays: &Relays, netem: bool) -> Option<String> {
    for step in &scenario.timeline {
        match &step.action {
            Action::Link(Link::Ingress(zone), Fault::Degrade(_))
                if !netem && !relays.ingresses.contains(zone) =>
            {
                return Some(format!(
                    "a slow link needs `tc netem` (this kernel has no sch_netem) or {zone}'s \
                     ingress behind the relay container"
                ));
            }
            Action::Link(Link::Raft(_), _) if !relays.raft => {
                return Some(
                    "a cut of one node's Raft links needs the global nodes' peer addresses on \
                     the relay container"
                        .into(),
                );
            }
            _ => {}
        }
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

/// The links of the federation that go through the relay container (`chaos-relay`, image
/// `meridian/fault-relay`), added by the override file only when a scenario needs them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Relays {
    /// Zones whose ingress the other zones reach through the relay (its advertised address is
    /// the relay's): a slow link where the kernel has no netem.
    pub ingresses: Vec<&'static str>,
    /// Every global node's Raft peer address is a relay port (`--peers`), so one node's links
    /// can be cut while its KDS and REST stay up.
    pub raft: bool,
}

impl Relays {
    /// What `scenarios` need: ingresses degraded (when there is no netem) and Raft links.
    pub fn needed_by(scenarios: &[Scenario], netem: bool) -> Relays {
        let mut relays = Relays::default();
        for step in scenarios.iter().flat_map(|s| &s.timeline) {
            match &step.action {
                Action::Link(Link::Ingress(zone), Fault::Degrade(_))
                    if !netem && !relays.ingresses.contains(zone) =>
                {
                    relays.ingresses.push(zone);
                }
                Action::Link(Link::Raft(_), _) => relays.raft = true,
                _ => {}
            }
        }
        relays
    }

    fn any(&self) -> bool {
        self.raft || !self.ingresses.is_empty()
    }
}

/// The relay container's service name.
const RELAY: &str = "chaos-relay";
/// Its fixed host number on the control and inter-zone networks (below Docker's dynamic .128+).
const RELAY_HOST: u8 = 100;

/// The relay's fixed address on the network of `subnet` (`A.B.C.0/24`).
fn relay_ip(subnet: &str) -> String {
    format!("{}.{RELAY_HOST}", subnet.trim_end_matches(".0/24"))
}

/// The relay's port in front of zone-K's ingress.
fn ingress_relay_port(zone: &str) -> anyhow::Result<u16> {
    let k: u16 = zone
        .strip_prefix("zone-")
        .and_then(|k| k.parse().ok())
        .with_context(|| format!("{zone:?} is not zone-K"))?;
    Ok(11000 + k)
}

/// The relay's port in front of global node `id`'s Raft listener.
fn raft_relay_port(id: u64) -> u16 {
    5700 + id as u16
}

/// The zone grace period the global runs with: the one `scenarios` set (they must agree, as the
/// whole run shares one federation), or `None` for the default.
pub fn zone_grace_for(scenarios: &[Scenario]) -> anyhow::Result<Option<Duration>> {
    let mut grace = None;
    for s in scenarios {
        if let Some(g) = s.topology.zone_grace_period {
            anyhow::ensure!(
                grace.is_none_or(|other| other == g),
                "scenarios ask for zone grace periods {:?} and {g:?}: one federation runs them \
                 all (run them separately)",
                grace.unwrap_or_default()
            );
            grace = Some(g);
        }
    }
    Ok(grace)
}

/// The command of `service` in the generated project.
fn command_of(base: &Value, service: &str) -> anyhow::Result<Vec<String>> {
    base["services"][service]["command"]
        .as_sequence()
        .with_context(|| format!("no command of service {service} in docker-compose.yaml"))?
        .iter()
        .map(|a| {
            a.as_str()
                .map(str::to_string)
                .with_context(|| format!("a non-string argument of {service}: {a:?}"))
        })
        .collect()
}

/// The override file of the chaos run over the generated project `base` (docker-compose.yaml,
/// parsed): every zone CP's REST port published; with `opts.relays`, the relay container on the
/// control and inter-zone networks at fixed addresses, the relayed ingresses advertising the
/// relay's address and port, and the global nodes' `--peers` pointing at the relay (each node
/// still listening on its own port); with a zone grace period, the global nodes'
/// `--zone-grace-period`. The relay's image has `opts.tag`, its seed is `opts.seed`.
pub fn override_yaml(
    base: &Value,
    zones: &[String],
    globals: &[String],
    opts: &Options,
    prefix: &str,
) -> anyhow::Result<String> {
    let (relays, grace, tag, seed) = (&opts.relays, opts.zone_grace_period, &opts.tag, opts.seed);
    let subnets = Subnets(prefix);
    let (control_ip, interzone_ip) = (relay_ip(&subnets.control()), relay_ip(&subnets.interzone()));
    let s = |v: &str| Value::String(v.to_string());
    let list = |items: Vec<String>| Value::Sequence(items.into_iter().map(Value::String).collect());
    let mut services = Mapping::new();
    for z in zones {
        let mut cp = Mapping::new();
        cp.insert(
            s("ports"),
            list(vec![format!("127.0.0.1::{}", meshctl::generate::API_PORT)]),
        );
        services.insert(s(&format!("{z}-cp")), Value::Mapping(cp));
    }
    let mut links = Vec::new();
    for zone in &relays.ingresses {
        let k: u32 = zone
            .strip_prefix("zone-")
            .and_then(|k| k.parse().ok())
            .with_context(|| format!("{zone:?} is not zone-K"))?;
        let port = ingress_relay_port(zone)?;
        links.push(format!("{port}={}:{INGRESS_PORT}", subnets.ingress_ip(k)));
        let service = format!("{zone}-ingress");
        let mut command = command_of(base, &service)?;
        command.extend([
            "--advertised-address".to_string(),
            interzone_ip.clone(),
            "--advertised-port".to_string(),
            port.to_string(),
        ]);
        let mut ingress = Mapping::new();
        ingress.insert(s("command"), list(command));
        services.insert(s(&service), Value::Mapping(ingress));
    }
    let peers = (1..=globals.len() as u64)
        .map(|id| format!("{id}={control_ip}:{}", raft_relay_port(id)))
        .collect::<Vec<_>>()
        .join(",");
    for (i, g) in globals.iter().enumerate() {
        let id = i as u64 + 1;
        let mut command = command_of(base, g)?;
        if relays.raft {
            links.push(format!(
                "{}={}:{RAFT_PORT}",
                raft_relay_port(id),
                subnets.global_ip(id as u32)
            ));
            let at = command
                .iter()
                .position(|a| a == "--peers")
                .with_context(|| format!("{g} has no --peers"))?;
            anyhow::ensure!(at + 1 < command.len(), "{g}: --peers without a value");
            command[at + 1] = peers.clone();
            command.extend(["--raft-listen".to_string(), format!("0.0.0.0:{RAFT_PORT}")]);
        }
        if let Some(grace) = grace {
            command.extend([
                "--zone-grace-period".to_string(),
                format!("{}ms", grace.as_millis()),
            ]);
        }
        if relays.raft || grace.is_some() {
            let mut node = Mapping::new();
            node.insert(s("command"), list(command));
            if relays.raft {
                let mut healthy = Mapping::new();
                healthy.insert(s("condition"), s("service_healthy"));
                let mut depends = Mapping::new();
                depends.insert(s(RELAY), Value::Mapping(healthy));
                node.insert(s("depends_on"), Value::Mapping(depends));
            }
            services.insert(s(g), Value::Mapping(node));
        }
    }
    if relays.any() {
        let mut command = vec![
            "--control".to_string(),
            format!("0.0.0.0:{DEFAULT_CONTROL_PORT}"),
            "--seed".to_string(),
            seed.to_string(),
        ];
        command.extend(links);
        let fixed = |ip: &str| {
            let mut m = Mapping::new();
            m.insert(s("ipv4_address"), s(ip));
            Value::Mapping(m)
        };
        let mut networks = Mapping::new();
        networks.insert(s("control"), fixed(&control_ip));
        networks.insert(s("interzone"), fixed(&interzone_ip));
        let mut relay = Mapping::new();
        relay.insert(s("image"), s(&format!("meridian/fault-relay:{tag}")));
        relay.insert(s("command"), list(command));
        relay.insert(
            s("ports"),
            list(vec![format!("127.0.0.1::{DEFAULT_CONTROL_PORT}")]),
        );
        relay.insert(s("networks"), Value::Mapping(networks));
        services.insert(s(RELAY), Value::Mapping(relay));
    }
    let mut top = Mapping::new();
    top.insert(s("version"), s("2.4"));
    top.insert(s("services"), Value::Mapping(services));
    Ok(serde_yaml::to_string(&Value::Mapping(top))?)
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
    /// The links through the relay container.
    pub relays: Relays,
    /// The global's `--zone-grace-period` (its default when `None`).
    pub zone_grace_period: Option<Duration>,
    /// Seeds the relay's jitter and loss.
    pub seed: u64,
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
    relays: Relays,
    /// The first two octets of the project's subnets.
    prefix: String,
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
            relays: opts.relays.clone(),
            prefix: prefix.clone(),
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
        // The zone CPs' REST ports, published like the global's, for the convergence oracle; the
        // relay container and the links through it; the global's zone grace period.
        let compose_file = fed.dir.path().join("docker-compose.yaml");
        let base: Value = serde_yaml::from_str(
            &std::fs::read_to_string(&compose_file)
                .with_context(|| format!("reading {}", compose_file.display()))?,
        )
        .with_context(|| format!("parsing {}", compose_file.display()))?;
        let text = override_yaml(&base, &fed.zones, &fed.globals, opts, &prefix)?;
        std::fs::write(fed.dir.path().join("chaos.override.yaml"), text)?;
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

    /// The backend zones with no ZoneIngress at global-1, as `ZoneIngress of <zone>@global-1`.
    async fn ingresses_missing(&self, zones: &[&str]) -> Vec<String> {
        let missing = match self.api("global-1", self.global_token()).await {
            Ok(api) => crate::scenario::zones_without_ingress(&api, zones).await,
            Err(e) => Err(e),
        };
        match missing {
            Ok(zones) => zones
                .iter()
                .map(|z| format!("ZoneIngress of {z}@global-1"))
                .collect(),
            Err(e) => vec![format!("{e:#}")],
        }
    }

    /// The acknowledged writes missing at a global node (every one) or a zone, as
    /// `<name>@<where>`.
    async fn missing_writes(&self, acked: &[String]) -> anyhow::Result<Vec<String>> {
        let mut places: Vec<(String, Option<String>)> = self
            .globals
            .iter()
            .map(|g| (g.clone(), self.global_token()))
            .collect();
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
            missing.extend(missing_at(&service, &api, acked).await?);
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

    /// The pid whose network namespace is `service`'s.
    async fn netns_pid(&self, service: &str) -> anyhow::Result<String> {
        let id = self.container(service).await?;
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &id]).await?;
        Ok(pid.trim().to_string())
    }

    /// Adds (`cut`) or deletes a blackhole route to the relay's control-network address in
    /// `service`'s network namespace: what it sends to the relay (a global node's Raft messages to
    /// its peers) goes nowhere, its other traffic (KDS, REST) flows. Deleting a route that is not
    /// there (the container was restarted since) is fine.
    async fn relay_route(&self, service: &str, cut: bool) -> anyhow::Result<()> {
        let pid = self.netns_pid(service).await?;
        let relay = format!("{}/32", relay_ip(&Subnets(&self.prefix).control()));
        let verb = if cut { "replace" } else { "del" };
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid, "-n", "ip", "route", verb, "blackhole", &relay]);
        if cut {
            run_cmd(&mut cmd, "nsenter ip route replace blackhole").await?;
        } else {
            let _ = cmd.output().await;
        }
        Ok(())
    }

    /// The network namespace's pid and the interface of `service` on the inter-zone network.
    async fn interzone_iface(&self, service: &str) -> anyhow::Result<(String, String)> {
        let id = self.container(service).await?;
        let pid = self.netns_pid(service).await?;
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

    /// Sets the fault of the relay container's link on `port` (its control port is published).
    async fn relay(&self, port: u16, fault: &Fault) -> anyhow::Result<()> {
        let id = self.container(RELAY).await?;
        let published = docker(&["port", &id, &format!("{DEFAULT_CONTROL_PORT}/tcp")]).await?;
        let control = published
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .with_context(|| {
                format!("{RELAY} publishes no {DEFAULT_CONTROL_PORT} on 127.0.0.1: {published}")
            })?;
        test_support::relay_control::set_fault(control.trim(), port, fault).await
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
    /// The relay container's links under a fault, by port.
    relayed: BTreeSet<u16>,
    /// Global nodes whose messages to the relay are blackholed (their Raft links out).
    raft_cut: BTreeSet<String>,
}

/// Sets a relay link's fault, recording it for heal.
async fn relay_fault(
    fed: &Federation,
    port: u16,
    fault: &Fault,
    damage: &mut Damage,
) -> anyhow::Result<()> {
    fed.relay(port, fault).await?;
    if *fault == Fault::Pass {
        damage.relayed.remove(&port);
    } else {
        damage.relayed.insert(port);
    }
    Ok(())
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
                    let port = ingress_relay_port(zone)?;
                    if damage.relayed.contains(&port) {
                        relay_fault(fed, port, &Fault::Pass, damage).await?;
                    }
                }
                // Behind the relay container, every fault is the relay's, as on the process
                // tier: cutting the ingress off the network instead would leave the relay
                // accepting the egresses' connections and then failing them upstream, which a
                // proxy sees as slow requests rather than failed connects.
                fault if fed.relays.ingresses.contains(zone) => {
                    relay_fault(fed, ingress_relay_port(zone)?, fault, damage).await?;
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
        // Both directions of the node's Raft links, its KDS and REST up: the other nodes -> its
        // Raft listener through the relay (as on the process tier), and, for a blackhole or a
        // reset, what it sends to its peers (all through the relay) routed nowhere in its network
        // namespace (on the process tier its own messages still go out).
        Action::Link(Link::Raft(node), fault) => {
            anyhow::ensure!(
                fed.relays.raft,
                "global node {node}'s Raft links: the federation has no Raft relays"
            );
            relay_fault(fed, raft_relay_port(*node), fault, damage).await?;
            let service = format!("global-{node}");
            match fault {
                Fault::Blackhole | Fault::Reset => {
                    fed.relay_route(&service, true).await?;
                    damage.raft_cut.insert(service);
                }
                Fault::Pass => {
                    if damage.raft_cut.remove(&service) {
                        fed.relay_route(&service, false).await?;
                    }
                }
                Fault::Degrade(_) => {}
            }
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
            for port in std::mem::take(&mut damage.relayed) {
                fed.relay(port, &Fault::Pass).await?;
            }
            for service in std::mem::take(&mut damage.raft_cut) {
                fed.relay_route(&service, false).await?;
            }
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

/// One period of the client: its end from the start of the load and its counts.
#[derive(Debug, Clone, Default)]
struct Burst {
    end: Duration,
    ok: u64,
    failed: u64,
    zones: BTreeMap<String, u64>,
}

impl Burst {
    /// The counts of one `demo-app call --json` report line (a period's or the final one).
    fn from_report(end: Duration, report: &serde_json::Value) -> Burst {
        Burst {
            end,
            ok: report["ok"].as_u64().unwrap_or(0),
            failed: report["failed"].as_u64().unwrap_or(0),
            zones: report["zones"]
                .as_object()
                .map(|z| {
                    z.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// What `total` counted beyond `parts` (the final report's requests that completed after
    /// the last period).
    fn rest(end: Duration, total: &Burst, parts: &[Burst]) -> Burst {
        let mut zones = total.zones.clone();
        for part in parts {
            for (zone, n) in &part.zones {
                if let Some(left) = zones.get_mut(zone) {
                    *left = left.saturating_sub(*n);
                }
            }
        }
        zones.retain(|_, n| *n > 0);
        Burst {
            end,
            ok: total.ok.saturating_sub(parts.iter().map(|p| p.ok).sum()),
            failed: total
                .failed
                .saturating_sub(parts.iter().map(|p| p.failed).sum()),
            zones,
        }
    }
}

/// How long each `demo-app call` of the client runs, and how often it reports.
const CALL_CHUNK: Duration = Duration::from_secs(5);
const CALL_PERIOD: &str = "100ms";

/// Zone-1's frontend calling `backend` through its sidecar until `stop`: `demo-app call` runs
/// of [`CALL_CHUNK`] one after another, each reporting every [`CALL_PERIOD`], each period kept
/// with its end on the load's clock. That clock is set from the arrival of a run's first period
/// line (its `at_secs` subtracted), so a period is stamped no earlier than it ended: failover is
/// measured to about 0.1 s, not to a whole run.
async fn client(
    frontend: String,
    rate: f64,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
    bursts: Arc<Mutex<Vec<Burst>>>,
) {
    use tokio::io::AsyncBufReadExt as _;
    let chunk = format!("{}s", CALL_CHUNK.as_secs());
    while !*stop.borrow() {
        let child = Command::new("docker")
            .args(["exec", &frontend, "/usr/local/bin/demo-app", "call"])
            .args([
                "--target",
                "http://127.0.0.1:10080/",
                "--rate",
                &rate.to_string(),
            ])
            .args(["--duration", &chunk, "--timeout", "1s", "--json"])
            .args(["--report-every", CALL_PERIOD])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut periods: Vec<Burst> = Vec::new();
        let mut total = None;
        if let Ok(mut child) = child {
            if let Some(stdout) = child.stdout.take() {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                let mut offset: Option<Duration> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(report) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let at = Duration::from_secs_f64(report["at_secs"].as_f64().unwrap_or(0.0));
                    let offset = *offset.get_or_insert_with(|| start.elapsed().saturating_sub(at));
                    let burst = Burst::from_report(offset + at, &report);
                    if report["kind"] == "final" {
                        total = Some(burst);
                    } else {
                        periods.push(burst);
                    }
                }
            }
            let _ = child.wait().await;
        }
        let end = start.elapsed();
        let rest = match &total {
            Some(total) => Burst::rest(total.end, total, &periods),
            // The exec itself failing counts the run's requests that no period counted as
            // failed.
            None => {
                let due = (rate * CALL_CHUNK.as_secs_f64()) as u64;
                let counted: u64 = periods.iter().map(|p| p.ok + p.failed).sum();
                Burst {
                    end,
                    failed: due.saturating_sub(counted),
                    ..Burst::default()
                }
            }
        };
        let mut kept = bursts.lock().expect("bursts lock");
        kept.extend(periods);
        kept.push(rest);
    }
}

/// Polls the global nodes' zone overview every 500 ms until `stop`: the first time (from
/// `start`) each zone was not online at any node that answered. Polls no node answers (the
/// global down) count for nothing.
async fn watch_offline(
    fed: &Federation,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> BTreeMap<String, Duration> {
    let mut seen = BTreeMap::new();
    while !*stop.borrow() {
        let online = fed.online_zones().await;
        if !online.is_empty() {
            for z in fed.zones.iter().filter(|z| !online.contains(*z)) {
                seen.entry(z.clone()).or_insert_with(|| start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    seen
}

/// Runs one scenario on the running federation and heals it after.
pub async fn run(fed: &Federation, scenario: &Scenario, seed: u64) -> anyhow::Result<Outcome> {
    let wall = Instant::now();
    let frontend = fed.container("frontend-zone-1-app").await?;
    let steps = expand_flaps(&scenario.timeline);
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
    let api_of = |i: usize| async move { fed.api(&fed.globals[i], fed.global_token()).await.ok() };
    let writes = writer(
        fed.globals.len(),
        api_of,
        &prefix,
        stop_rx.clone(),
        scenario.invariants.settle_within,
    );
    let ((acked, _attempts), (), offline_seen) =
        tokio::join!(writes, timeline, watch_offline(fed, start, stop_rx.clone()));
    let faults_end = steps.last().map(|s| s.at).unwrap_or_default();
    load.await.context("the client panicked")?;
    // Settling: every zone online, every backend zone's ingress at the global and every
    // acknowledged write everywhere.
    let settle_deadline = Instant::now() + scenario.invariants.settle_within;
    let mut settled = None;
    let mut last_missing = Vec::new();
    while Instant::now() < settle_deadline {
        let online = fed.online_zones().await.len() == fed.zones.len();
        let ingresses = fed.ingresses_missing(&scenario.topology.backends).await;
        match fed.missing_writes(&acked).await {
            Ok(missing) if !ingresses.is_empty() => {
                last_missing = missing;
                last_missing.extend(ingresses);
            }
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
    let failover = failover(&onsets, &failures, start.elapsed());
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
            "failover {:.2} s > {:.2} s (0.1 s periods: a failed request counts at its period's end)",
            failover.as_secs_f64(),
            inv.max_failover.as_secs_f64()
        ));
    }
    violations.extend(crate::scenario::unseen_offline(inv, &offline_seen));
    let writes_lost = last_missing.len() as u64;
    if settled.is_none() {
        violations.push(format!(
            "not settled within {:?} of the end of faults (zones online, ingresses at the \
             global, writes everywhere): {}",
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
        offline_seen,
        known_defect: scenario.known_defect.map(str::to_string),
        wall: wall.elapsed(),
    })
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
             tier's (success rate >= 99.9%, failover <= 1 s, every zone online, every backend \
             zone's ZoneIngress at the global and every acknowledged write at the global and in \
             every zone within 30 s of the end of faults, the zones a scenario names seen \
             offline).{}",
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
         interface from the host (`nsenter -t <pid> -n`), or where the kernel has no netem the \
         relay container's `Degrade` (the process tier's: latency and jitter on each direction, \
         a lost chunk delivered 200 ms late) on a link zone-2's ingress advertises instead of its \
         own address (other zones' egresses -> relay -> ingress). A node's Raft links: every \
         node's `--peers` address is a port of the relay container in front of that node's Raft \
         listener, so `Link::Raft(n)` faults what the other nodes send to node n (as on the \
         process tier) and, for a blackhole, a blackhole route to the relay in node n's network \
         namespace drops what it sends to its peers: both directions cut (on the process tier \
         node n's own messages still go out, so a partitioned leader stays leader), its KDS and \
         REST up. The relay (image `meridian/fault-relay`) is in \
         the project only when a chosen scenario needs it; its jitter and loss draw from the \
         seed. `zone-absent-rejoin` runs the global nodes with `--zone-grace-period` shortened \
         to the outage (scenario::zone_absent_rejoin: absent for the 15 s KDS watchdog + the \
         grace + 5 s, standing for the issue's 10-minute absence; the leader's zone janitor \
         removes its inventory meanwhile). Traffic: \
         `demo-app call` in \
         zone-1's frontend container through its sidecar's outbound, 5 s runs one after \
         another (about 0.1-0.3 s between runs for `docker exec`), each reporting every 100 ms, \
         so failover is measured to the end of the last 100 ms period with a failed request \
         (a request counts when it completes: a timeout 1 s after it was sent). The writer applies MeshTimeouts at \
         the global nodes' published REST ports; convergence is checked at every global node and at each \
         zone CP's REST port (published by an override file), and settling also waits for \
         every backend zone's ZoneIngress at global-1. The global's view of offline zones \
         is sampled every 500 ms from the global nodes' REST ports.\n",
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
    fn a_call_report_line_becomes_a_period_and_the_final_one_what_no_period_counted() {
        let line = |ok: u64, failed: u64, zone2: u64| {
            serde_json::json!({"kind": "period", "at_secs": 0.1, "ok": ok, "failed": failed,
                "zones": {"zone-2": zone2}})
        };
        let s = Duration::from_secs;
        let periods = vec![
            Burst::from_report(s(1), &line(9, 1, 9)),
            Burst::from_report(s(2), &line(10, 0, 10)),
        ];
        assert_eq!((periods[0].ok, periods[0].failed), (9, 1));
        assert_eq!(periods[0].zones["zone-2"], 9);
        let total = Burst::from_report(s(3), &line(21, 2, 21));
        let rest = Burst::rest(s(3), &total, &periods);
        assert_eq!((rest.end, rest.ok, rest.failed), (s(3), 2, 1));
        assert_eq!(rest.zones["zone-2"], 2);
        // Nothing left: no zone with a zero count.
        let rest = Burst::rest(s(3), &Burst::from_report(s(3), &line(19, 1, 19)), &periods);
        assert_eq!((rest.ok, rest.failed), (0, 0));
        assert!(rest.zones.is_empty());
    }

    fn args(v: &Value) -> Vec<&str> {
        v["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect()
    }

    fn after<'a>(args: &[&'a str], flag: &str) -> &'a str {
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1]
    }

    #[test]
    fn the_override_routes_raft_and_a_slow_ingress_through_the_relay_only_when_asked() {
        let base: Value =
            serde_yaml::from_str(&meshctl::generate::compose_yaml_on(3, 3, "t", "10.240")).unwrap();
        let zones: Vec<String> = (1..=3).map(|k| format!("zone-{k}")).collect();
        let globals: Vec<String> = (1..=3).map(|k| format!("global-{k}")).collect();
        let mut opts = Options {
            profile: "debug".into(),
            tag: "t".into(),
            skip_cargo: true,
            up_deadline: Duration::from_secs(1),
            relays: Relays::default(),
            zone_grace_period: None,
            seed: 7,
        };
        let plain: Value =
            serde_yaml::from_str(&override_yaml(&base, &zones, &globals, &opts, "10.240").unwrap())
                .unwrap();
        assert!(plain["services"][RELAY].is_null());
        assert!(plain["services"]["global-1"].is_null());
        assert_eq!(
            plain["services"]["zone-2-cp"]["ports"][0],
            "127.0.0.1::5681"
        );

        opts.relays = Relays {
            ingresses: vec!["zone-2"],
            raft: true,
        };
        opts.zone_grace_period = Some(Duration::from_secs(5));
        let text = override_yaml(&base, &zones, &globals, &opts, "10.240").unwrap();
        let d: Value = serde_yaml::from_str(&text).unwrap();
        let relay = args(&d["services"][RELAY]);
        assert_eq!(after(&relay, "--seed"), "7");
        for link in [
            "11002=10.240.1.12:10001",
            "5701=10.240.0.11:5683",
            "5703=10.240.0.13:5683",
        ] {
            assert!(relay.contains(&link), "{link} not in {relay:?}");
        }
        assert_eq!(
            d["services"][RELAY]["networks"]["interzone"]["ipv4_address"],
            "10.240.1.100"
        );
        let ingress = args(&d["services"]["zone-2-ingress"]);
        assert_eq!(after(&ingress, "--advertised-address"), "10.240.1.100");
        assert_eq!(after(&ingress, "--advertised-port"), "11002");
        assert_eq!(after(&ingress, "--address"), "10.240.1.12");
        assert!(d["services"]["zone-3-ingress"].is_null());
        let node = args(&d["services"]["global-2"]);
        assert_eq!(
            after(&node, "--peers"),
            "1=10.240.0.100:5701,2=10.240.0.100:5702,3=10.240.0.100:5703"
        );
        assert_eq!(after(&node, "--raft-listen"), "0.0.0.0:5683");
        assert_eq!(after(&node, "--zone-grace-period"), "5000ms");
        assert_eq!(after(&node, "--node-id"), "2");
    }

    #[test]
    fn relays_are_needed_by_raft_cuts_and_by_slow_links_without_netem() {
        let all = crate::scenario::process_tier(Duration::from_secs(5));
        let without = Relays::needed_by(&all, false);
        assert_eq!(without.ingresses, ["zone-2"]);
        assert!(without.raft);
        assert!(Relays::needed_by(&all, true).ingresses.is_empty());
        for s in &all {
            assert_eq!(unsupported(s, &without, false), None, "{}", s.name);
        }
        let slow = all.iter().find(|s| s.name == "slow-link").unwrap();
        assert!(unsupported(slow, &Relays::default(), false).is_some());
        assert_eq!(unsupported(slow, &Relays::default(), true), None);
    }
}
