//! The scenario language of issue [7] and its process-tier runner. A [`Scenario`] is a
//! [`Topology`] (zones, where `backend` runs, retries on or off), [`Traffic`] (demo clients in
//! zones calling `backend` across zones at a fixed rate, every outcome recorded), a timeline of
//! [`Step`]s (faults on named [`Link`]s, signals to [`Component`]s, wipes, heal) and the
//! [`Invariants`] checked on the [`Outcome`]. [`run`] builds the federation with every component
//! link through a `FaultRelay` (zone -> global KDS, zone -> zone ingress), the global and the
//! zone CPs as child processes (killable, pausable, restartable), plays the timeline under load
//! while a writer applies policies at the global, and measures.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use test_support::relay::{Degradation, Fault, FaultRelay};

use crate::federation::{GlobalCp, ProxyProcess, ZoneCp};
use crate::topology::{
    answered_from, wait_for_ca, Client, Ingress, Instance, MTLS_MESH, RESILIENCE,
};

/// A link between components, each through its own relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Zone -> global KDS.
    Kds(&'static str),
    /// Other zones -> this zone's ingress.
    Ingress(&'static str),
    /// The other global nodes -> this global node's Raft peer address (a multi-node global).
    Raft(u64),
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Kds(zone) => write!(f, "{zone} -> global KDS"),
            Link::Ingress(zone) => write!(f, "-> {zone} ingress"),
            Link::Raft(node) => write!(f, "-> global node {node} Raft"),
        }
    }
}

/// A control plane process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The global (node 1 of a multi-node global).
    Global,
    /// Node `n` of a multi-node global.
    GlobalNode(u64),
    /// Whichever global node leads when the step runs (it becomes that `GlobalNode`).
    GlobalLeader,
    ZoneCp(&'static str),
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Global => write!(f, "global CP"),
            Component::GlobalNode(n) => write!(f, "global node {n}"),
            Component::GlobalLeader => write!(f, "global leader"),
            Component::ZoneCp(zone) => write!(f, "{zone} CP"),
        }
    }
}

/// What happens at a step of the timeline.
#[derive(Debug, Clone)]
pub enum Action {
    /// Sets a link's state (`Fault::Pass` lifts it).
    Link(Link, Fault),
    /// Blackholes the link and lets it pass again in turns of `every`, until `until` (from the
    /// scenario's start), then leaves it passing.
    Flap {
        link: Link,
        every: Duration,
        until: Duration,
    },
    /// SIGKILL.
    Kill(Component),
    /// SIGSTOP.
    Pause(Component),
    /// SIGCONT.
    Resume(Component),
    /// Starts a killed component again, on its data and addresses.
    Start(Component),
    /// SIGTERM, wait, start again.
    Restart(Component),
    /// Deletes a stopped component's data directory.
    Wipe(Component),
    /// Every link passes, paused components resume, killed ones start: the end of the faults.
    Heal,
}

/// An action at `at` from the start of the load.
#[derive(Debug, Clone)]
pub struct Step {
    pub at: Duration,
    pub action: Action,
}

/// Where things run. The zone names are those of [`RESILIENCE`]: `backend` prefers zone-2, then
/// zone-3.
#[derive(Debug, Clone)]
pub struct Topology {
    pub zones: Vec<&'static str>,
    /// Zones running a `backend` instance (HTTP/2) and an ingress.
    pub backends: Vec<&'static str>,
    /// Zones running a `frontend` client calling `backend`.
    pub clients: Vec<&'static str>,
    /// MeshRetry, outlier detection, a 1 s connect timeout and the zone preference.
    pub retries: bool,
    /// Nodes of the global (1, or 3 for a Raft cluster whose peer links go through relays).
    pub global_nodes: u64,
    /// The global's `--zone-grace-period` (how long an offline zone's inventory stays), shortened
    /// for a scenario that outlasts it; the global's default (1 h) when `None`.
    pub zone_grace_period: Option<Duration>,
}

impl Default for Topology {
    fn default() -> Topology {
        Topology {
            zones: vec!["zone-1", "zone-2", "zone-3"],
            backends: vec!["zone-2", "zone-3"],
            clients: vec!["zone-1"],
            retries: true,
            global_nodes: 1,
            zone_grace_period: None,
        }
    }
}

/// The load each client sends during the timeline and `tail` after its end.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub rate: f64,
    pub tail: Duration,
}

impl Default for Traffic {
    fn default() -> Traffic {
        Traffic {
            rate: 100.0,
            tail: Duration::from_secs(2),
        }
    }
}

/// What must hold (issue [7] point 4).
#[derive(Debug, Clone)]
pub struct Invariants {
    /// Share of requests answered, 0.0 to 1.0.
    pub min_success_rate: f64,
    /// Longest time from a fault's onset to the last request failing because of it.
    pub max_failover: Duration,
    /// Every zone online, every backend zone's ZoneIngress at the global (a zone's inventory back
    /// after it rejoins), every proxy registered and ready, every acknowledged write everywhere,
    /// within this long of the end of the faults.
    pub settle_within: Duration,
    /// Zones the global must have reported offline during the run: the fault was long enough to
    /// be noticed.
    pub seen_offline: Vec<&'static str>,
}

impl Default for Invariants {
    fn default() -> Invariants {
        Invariants {
            min_success_rate: 0.999,
            max_failover: Duration::from_secs(1),
            settle_within: Duration::from_secs(30),
            seen_offline: Vec::new(),
        }
    }
}

/// A scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// The fault, in words, for the report.
    pub fault: String,
    pub topology: Topology,
    pub traffic: Traffic,
    /// In order of `at`; ends with [`Action::Heal`] (added if missing).
    pub timeline: Vec<Step>,
    pub invariants: Invariants,
    /// A component defect this scenario exposes (how it shows), while it is not fixed: the
    /// scenario still runs from `chaos-tests run` and its report, not in the CI test.
    pub known_defect: Option<&'static str>,
}

fn step(at: Duration, action: Action) -> Step {
    Step { at, action }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// How long after a zone's KDS streams hang the global tears them down and reports the zone
/// offline: KDS's watchdog (a built-in tuning, not a flag).
pub fn zone_offline_after() -> Duration {
    kds::sync::KdsTuning::default().watchdog_timeout
}

/// `zone-absent-rejoin`: the "zone absent for 10 minutes", with shortened grace settings.
/// The global runs with `--zone-grace-period` of `outage` (1 h by default), and zone-3 is away for
/// as long as the global takes to notice (the watchdog, [`zone_offline_after`]) plus that grace
/// plus 5 s: its inventory is removed at the global while it is away, as after a long absence,
/// and must come back when it rejoins (in a multi-node global too: its leader runs the janitor
/// from the zones' replicated lease records).
fn zone_absent_rejoin(outage: Duration) -> Scenario {
    let grace = outage;
    let absent = zone_offline_after() + grace + Duration::from_secs(5);
    let mut s = Scenario {
        name: "zone-absent-rejoin",
        fault: format!(
            "zone-3 CP SIGSTOPped for {} s (absent, its streams hung: offline after the {} s \
             KDS watchdog, then its inventory removed after the global's zone grace period, \
             shortened to {} s), then SIGCONT",
            absent.as_secs_f64(),
            zone_offline_after().as_secs_f64(),
            grace.as_secs_f64()
        ),
        topology: Topology::default(),
        traffic: Traffic::default(),
        timeline: vec![
            step(secs(1.0), Action::Pause(Component::ZoneCp("zone-3"))),
            step(secs(1.0) + absent, Action::Heal),
        ],
        invariants: Invariants::default(),
        known_defect: None,
    };
    s.topology.zone_grace_period = Some(grace);
    s.invariants.seen_offline = vec!["zone-3"];
    s
}

/// The process tier's scenarios; `outage` is how long the long faults last (60 s in the issue,
/// shorter for CI).
pub fn process_tier(outage: Duration) -> Vec<Scenario> {
    let o = outage.as_secs_f64();
    let base = |name, fault: String, timeline| Scenario {
        name,
        fault,
        topology: Topology::default(),
        traffic: Traffic::default(),
        timeline,
        invariants: Invariants::default(),
        known_defect: None,
    };
    let flap_until = 7.0 + o.max(8.0);
    vec![
        base(
            "global-down",
            format!("global CP SIGKILLed for {o} s, writes retried until the global is back"),
            vec![
                step(secs(1.0), Action::Kill(Component::Global)),
                step(secs(1.0 + o), Action::Heal),
            ],
        ),
        base(
            "zone-cut-from-global",
            format!("zone-1 <-> global KDS blackholed both ways for {o} s, then reset"),
            vec![
                step(secs(1.0), Action::Link(Link::Kds("zone-1"), Fault::Blackhole)),
                step(secs(1.0 + o), Action::Link(Link::Kds("zone-1"), Fault::Reset)),
                step(secs(1.5 + o), Action::Heal),
            ],
        ),
        base(
            "zone-cp-restart",
            "zone-2 CP SIGKILLed, restarted 3 s later on its data".to_string(),
            vec![
                step(secs(1.0), Action::Kill(Component::ZoneCp("zone-2"))),
                step(secs(4.0), Action::Heal),
            ],
        ),
        base(
            "zone-cp-wiped",
            "zone-2 CP SIGKILLed, its data dir wiped, restarted 3 s later".to_string(),
            vec![
                step(secs(1.0), Action::Kill(Component::ZoneCp("zone-2"))),
                step(secs(1.0), Action::Wipe(Component::ZoneCp("zone-2"))),
                step(secs(4.0), Action::Heal),
            ],
        ),
        base(
            "ingress-blackhole-reset-flap",
            format!(
                "zone-2 ingress link blackholed 2 s, reset 2 s, then flapping every 2 s until {flap_until} s"
            ),
            vec![
                step(secs(1.0), Action::Link(Link::Ingress("zone-2"), Fault::Blackhole)),
                step(secs(3.0), Action::Link(Link::Ingress("zone-2"), Fault::Reset)),
                step(secs(5.0), Action::Link(Link::Ingress("zone-2"), Fault::Pass)),
                step(
                    secs(7.0),
                    Action::Flap {
                        link: Link::Ingress("zone-2"),
                        every: secs(2.0),
                        until: secs(flap_until),
                    },
                ),
                step(secs(flap_until), Action::Heal),
            ],
        ),
        base(
            "slow-link",
            format!("zone-2 ingress link 300 ms delay (+0-20 ms jitter), 5% loss for {o} s"),
            vec![
                step(
                    secs(1.0),
                    Action::Link(
                        Link::Ingress("zone-2"),
                        Fault::Degrade(Degradation {
                            latency: Duration::from_millis(300),
                            jitter: Duration::from_millis(20),
                            loss_percent: 5.0,
                            bytes_per_second: None,
                        }),
                    ),
                ),
                step(secs(1.0 + o), Action::Heal),
            ],
        ),
        base(
            "rolling-zone-restart",
            "every zone CP restarted in turn (SIGTERM, start), 2 s apart".to_string(),
            vec![
                step(secs(1.0), Action::Restart(Component::ZoneCp("zone-1"))),
                step(secs(3.0), Action::Restart(Component::ZoneCp("zone-2"))),
                step(secs(5.0), Action::Restart(Component::ZoneCp("zone-3"))),
                step(secs(7.0), Action::Heal),
            ],
        ),
        zone_absent_rejoin(outage),
        raft(base(
            "global-leader-killed",
            format!("3-node global: the Raft leader SIGKILLed under the writer, restarted {o} s later"),
            vec![
                step(secs(1.0), Action::Kill(Component::GlobalLeader)),
                step(secs(1.0 + o), Action::Heal),
            ],
        )),
        raft(base(
            "rolling-global-restart",
            "3-node global: every node restarted in turn (SIGTERM, start), 3 s apart".to_string(),
            vec![
                step(secs(1.0), Action::Restart(Component::GlobalNode(1))),
                step(secs(4.0), Action::Restart(Component::GlobalNode(2))),
                step(secs(7.0), Action::Restart(Component::GlobalNode(3))),
                step(secs(10.0), Action::Heal),
            ],
        )),
        raft(base(
            "raft-minority-partition",
            format!(
                "3-node global: node 3's Raft links blackholed for {o} s while writes continue on the majority, then healed"
            ),
            vec![
                step(secs(1.0), Action::Link(Link::Raft(3), Fault::Blackhole)),
                step(secs(1.0 + o), Action::Heal),
            ],
        )),
    ]
}

/// The scenario on a three-node global.
fn raft(mut scenario: Scenario) -> Scenario {
    scenario.topology.global_nodes = 3;
    scenario
}

/// What a scenario measured, and the invariants it broke.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub fault: String,
    pub seed: u64,
    pub sent: u64,
    pub failed: u64,
    pub success_rate: f64,
    /// The longest onset-to-last-failure, over the faults (0 when nothing failed).
    pub failover: Duration,
    /// End of faults to every acknowledged write at the global and in every zone.
    pub convergence: Option<Duration>,
    /// End of faults to every zone online, every backend zone's ZoneIngress at the global and
    /// every proxy registered and ready.
    pub settled: Option<Duration>,
    pub writes_acknowledged: u64,
    pub writes_lost: u64,
    /// Answers per zone, over every client.
    pub zones: BTreeMap<String, u64>,
    pub violations: Vec<String>,
    /// The zones the global reported offline during the run, with when it first did (from the
    /// start of the load): whether it noticed the fault, for the report.
    pub offline_seen: BTreeMap<String, Duration>,
    /// The scenario's [`Scenario::known_defect`].
    pub known_defect: Option<String>,
    pub wall: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Everything a scenario runs.
struct Mesh {
    /// The global's nodes (one unless the topology asks for more); the first takes the setup.
    globals: Vec<GlobalCp>,
    /// Each zone's KDS links, one per global node.
    kds: BTreeMap<&'static str, Vec<FaultRelay>>,
    /// A multi-node global's Raft links, one relay per direction: (from, to) -> the relay node
    /// `from` dials `to` through (`--raft-route`), so cutting a node cuts what it sends and
    /// what it receives.
    raft: BTreeMap<(u64, u64), FaultRelay>,
    zones: Vec<ZoneCp>,
    backends: Vec<(&'static str, Instance)>,
    ingresses: Vec<(&'static str, Ingress)>,
    clients: Vec<(&'static str, Client)>,
    /// Components killed or paused by the timeline, not yet healed.
    killed: Vec<Component>,
    paused: Vec<Component>,
}

impl Mesh {
    async fn start(topology: &Topology, seed: u64, dir: &Path) -> anyhow::Result<Mesh> {
        let mut raft = BTreeMap::new();
        let extra: Vec<std::ffi::OsString> = match topology.zone_grace_period {
            Some(grace) => vec![
                "--zone-grace-period".into(),
                format!("{}ms", grace.as_millis()).into(),
            ],
            None => Vec::new(),
        };
        let globals = if topology.global_nodes > 1 {
            let nodes = 1..=topology.global_nodes;
            let mut listen = Vec::new();
            for _ in nodes.clone() {
                let addr: std::net::SocketAddr =
                    format!("127.0.0.1:{}", crate::federation::free_port()?).parse()?;
                listen.push(addr);
            }
            let mut routes = Vec::new();
            for from in nodes.clone() {
                let mut table = BTreeMap::new();
                for to in nodes.clone().filter(|to| *to != from) {
                    let target = listen[(to - 1) as usize];
                    let relay =
                        FaultRelay::start_with_seed(target, seed ^ (0x200 + (from << 4) + to))
                            .await?;
                    table.insert(to, relay.addr());
                    raft.insert((from, to), relay);
                }
                routes.push(table);
            }
            GlobalCp::start_cluster(&dir.join("global"), &listen, &routes, &extra).await?
        } else {
            vec![GlobalCp::start_process_with(&dir.join("global"), extra).await?]
        };
        let global = &globals[0];
        global.apply(MTLS_MESH).await?;
        if topology.retries {
            global.apply(RESILIENCE).await?;
        }
        let mut kds = BTreeMap::new();
        let mut zones = Vec::new();
        for (i, zone) in topology.zones.iter().enumerate() {
            let mut relays = Vec::new();
            for (n, node) in globals.iter().enumerate() {
                let target: std::net::SocketAddr = node
                    .kds_url
                    .trim_start_matches("https://")
                    .parse()
                    .context("the global's KDS address")?;
                let seed = seed ^ (i as u64 + 1) ^ ((n as u64) << 8);
                relays.push(FaultRelay::start_with_seed(target, seed).await?);
            }
            let urls: Vec<String> = relays
                .iter()
                .map(|r| format!("https://{}", r.addr()))
                .collect();
            zones.push(ZoneCp::start_process(dir, global, &urls.join(","), zone).await?);
            kds.insert(*zone, relays);
        }
        test_support::eventually(
            "every zone online at the global",
            crate::federation::STARTUP,
            || async { zones_online(&globals, &topology.zones).await.then_some(()) },
        )
        .await?;
        let mut mesh = Mesh {
            globals,
            kds,
            raft,
            zones,
            backends: Vec::new(),
            ingresses: Vec::new(),
            clients: Vec::new(),
            killed: Vec::new(),
            paused: Vec::new(),
        };
        for (i, name) in topology.backends.iter().enumerate() {
            let zone = mesh.zone(name)?;
            wait_for_ca(zone).await?;
            let instance =
                Instance::start(zone, &format!("backend-{name}"), "backend", "http2", None).await?;
            let ingress = Ingress::start_with_seed(zone, seed ^ (0x100 + i as u64)).await?;
            mesh.backends.push((*name, instance));
            mesh.ingresses.push((*name, ingress));
        }
        for name in &topology.clients {
            let zone = mesh.zone(name)?;
            wait_for_ca(zone).await?;
            let client = Client::start(zone, &format!("frontend-{name}"), "backend").await?;
            mesh.clients.push((*name, client));
        }
        // Every client knows every backend zone's ingress before the faults start.
        for (_, client) in &mesh.clients {
            if let Some(first) = topology.backends.first() {
                answered_from(&client.url(), first).await?;
            }
            for (_, ingress) in &mesh.ingresses {
                let port = ingress.link.addr().port();
                test_support::eventually(
                    &format!("ingress port {port} in {}'s endpoints", client.sidecar.name),
                    crate::topology::DEADLINE,
                    || async {
                        let dump = client.sidecar.config_dump().await.ok()?;
                        let compact: String = dump.chars().filter(|c| !c.is_whitespace()).collect();
                        compact
                            .contains(&format!("\"portValue\":{port}"))
                            .then_some(())
                    },
                )
                .await?;
            }
        }
        Ok(mesh)
    }

    fn zone(&self, name: &str) -> anyhow::Result<&ZoneCp> {
        self.zones
            .iter()
            .find(|z| z.name == name)
            .with_context(|| format!("no zone {name} in the topology"))
    }

    fn zone_mut(&mut self, name: &str) -> anyhow::Result<&mut ZoneCp> {
        self.zones
            .iter_mut()
            .find(|z| z.name == name)
            .with_context(|| format!("no zone {name} in the topology"))
    }

    /// The relays of a link (a zone's KDS link has one per global node).
    fn link(&self, link: Link) -> anyhow::Result<Vec<&FaultRelay>> {
        let relays: Vec<&FaultRelay> = match link {
            Link::Kds(zone) => self.kds.get(zone).map(|r| r.iter().collect()),
            Link::Ingress(zone) => self
                .ingresses
                .iter()
                .find(|(z, _)| *z == zone)
                .map(|(_, i)| vec![&i.link]),
            Link::Raft(node) => Some(
                self.raft
                    .iter()
                    .filter(|((from, to), _)| *from == node || *to == node)
                    .map(|(_, relay)| relay)
                    .collect(),
            ),
        }
        .unwrap_or_default();
        anyhow::ensure!(!relays.is_empty(), "no link {link} in the topology");
        Ok(relays)
    }

    fn global_node(&self, component: Component) -> anyhow::Result<usize> {
        let id = match component {
            Component::Global => return Ok(0),
            Component::GlobalNode(id) => id,
            _ => anyhow::bail!("{component} is not a global node"),
        };
        self.globals
            .iter()
            .position(|g| g.node_id == Some(id))
            .with_context(|| format!("no {component} in the topology"))
    }

    /// A `GlobalLeader` resolved to the node leading now; other components as they are.
    async fn resolve(&self, component: Component) -> anyhow::Result<Component> {
        if component != Component::GlobalLeader {
            return Ok(component);
        }
        let leader =
            test_support::eventually("an agreed leader", Duration::from_secs(10), || async {
                crate::federation::leader_of(&self.globals).await
            })
            .await?;
        let id = self.globals[leader]
            .node_id
            .context("the leader has no node id")?;
        Ok(Component::GlobalNode(id))
    }

    fn pid(&self, component: Component) -> anyhow::Result<u32> {
        match component {
            Component::ZoneCp(zone) => self.zone(zone)?.pid(),
            _ => self.globals[self.global_node(component)?].pid(),
        }
        .with_context(|| format!("{component} is not running"))
    }

    async fn kill(&mut self, component: Component) -> anyhow::Result<()> {
        match component {
            Component::ZoneCp(zone) => self.zone_mut(zone)?.kill().await?,
            _ => {
                let i = self.global_node(component)?;
                self.globals[i].kill().await?
            }
        }
        self.killed.push(component);
        Ok(())
    }

    async fn start_again(&mut self, component: Component) -> anyhow::Result<()> {
        match component {
            Component::ZoneCp(zone) => self.zone_mut(zone)?.restart().await?,
            _ => {
                let i = self.global_node(component)?;
                self.globals[i].restart().await?
            }
        }
        self.killed.retain(|c| *c != component);
        Ok(())
    }

    fn wipe(&self, component: Component) -> anyhow::Result<()> {
        let dir = match component {
            Component::ZoneCp(zone) => self.zone(zone)?.dir.clone(),
            _ => self.globals[self.global_node(component)?].dir.join("data"),
        };
        anyhow::ensure!(
            self.pid(component).is_err(),
            "wiping {component} while it runs"
        );
        std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))
    }

    fn signal(&self, component: Component, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(component)?;
        // kill(1), not libc: the one signal API of the workspace sends TERM and KILL only.
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .context("running kill(1)")?;
        anyhow::ensure!(
            status.success(),
            "kill -s {signal} {pid} ({component}): {status}"
        );
        Ok(())
    }

    /// Every proxy of the topology, with its zone and its resource path in the zone's API (a
    /// Dataplane's with its insight: whether its ADS stream is open now).
    fn proxies(&self) -> Vec<(&'static str, &ProxyProcess, Vec<String>)> {
        let dataplane = |name: &str| {
            ["meshes", "default", "dataplanes+insights", name]
                .map(String::from)
                .to_vec()
        };
        let mut all = Vec::new();
        for (zone, b) in &self.backends {
            all.push((*zone, &b.sidecar, dataplane(&format!("backend-{zone}"))));
        }
        for (zone, i) in &self.ingresses {
            let path = ["zoneingresses".to_string(), format!("ingress-{zone}")].to_vec();
            all.push((*zone, &i.proxy, path));
        }
        for (zone, c) in &self.clients {
            all.push((*zone, &c.sidecar, dataplane(&format!("frontend-{zone}"))));
        }
        all
    }

    async fn stop(self) -> anyhow::Result<()> {
        // Servers first (see tests/cross_zone.rs), then ingresses, clients, control planes.
        for (_, b) in self.backends {
            b.stop().await?;
        }
        for (_, i) in self.ingresses {
            i.proxy.stop().await?;
        }
        for (_, c) in self.clients {
            c.sidecar.stop().await?;
        }
        for zone in self.zones {
            zone.stop().await?;
        }
        for global in self.globals {
            global.stop().await?;
        }
        Ok(())
    }
}

/// Whether every zone of `zones` is online at the global: reported online by at least one node
/// (each node knows only the zones connected to it).
async fn zones_online(globals: &[GlobalCp], zones: &[&str]) -> bool {
    let mut online = std::collections::BTreeSet::new();
    for global in globals {
        let Ok(Ok((_, items))) =
            tokio::time::timeout(Duration::from_secs(2), global.api.zones_overview()).await
        else {
            continue;
        };
        for zone in meshctl::inspect::ZoneOverview::from_items(&items).unwrap_or_default() {
            if zone.is_online() {
                online.insert(zone.name);
            }
        }
    }
    zones.iter().all(|z| online.contains(*z))
}

/// Per-period failures of one client: (end of the period from the scenario's start, failed).
type Periods = Arc<Mutex<Vec<(Duration, u64)>>>;

/// The policy writer of both tiers: applies MeshTimeouts `<prefix>-<n>` at the global one after
/// another, retrying a write until it is acknowledged (as a user with a queue would), and records
/// the acknowledged names. `api_of(i)` is a client of global node `i` of `nodes` (`None` while it
/// cannot be reached); a failed attempt moves to the next node. Once `stop` is set, the write in
/// hand is still retried until acknowledged or `drain_deadline` has passed. Returns the
/// acknowledged names and the attempts.
pub async fn writer<F, Fut>(
    nodes: usize,
    mut api_of: F,
    prefix: &str,
    stop: tokio::sync::watch::Receiver<bool>,
    drain_deadline: Duration,
) -> (Vec<String>, u64)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Option<meshctl::client::ApiClient>>,
{
    let mut acked = Vec::new();
    let mut attempts = 0u64;
    let mut n = 0u64;
    let mut node = 0usize;
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && *stop.borrow() {
            stopped_at = Some(Instant::now());
        }
        let name = format!("{prefix}-{n}");
        let yaml = format!(
            "type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef:\n    kind: MeshService\n    name: chaos-writer\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      connectionTimeout: {}s\n",
            n + 1
        );
        attempts += 1;
        let applied = match api_of(node % nodes.max(1)).await {
            Some(api) => matches!(
                tokio::time::timeout(
                    Duration::from_secs(2),
                    meshctl::apply::apply_text(&api, &yaml, "the chaos writer"),
                )
                .await,
                Ok(Ok(()))
            ),
            None => false,
        };
        if applied {
            acked.push(name);
            n += 1;
            if stopped_at.is_some() {
                return (acked, attempts);
            }
        } else {
            node += 1;
            if stopped_at.is_some_and(|at| at.elapsed() > drain_deadline) {
                return (acked, attempts);
            }
        }
        // The writer's pace: a write (or a retry) every 250 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The acknowledged writes missing at `place` (a global node or a zone, read through `api`), as
/// `<name>@<place>`.
pub async fn missing_at(
    place: &str,
    api: &meshctl::client::ApiClient,
    acked: &[String],
) -> anyhow::Result<Vec<String>> {
    let path = ["meshes", "default", "meshtimeouts"].map(String::from);
    let (_, items) = api
        .list_all(&path)
        .await
        .with_context(|| format!("listing MeshTimeouts at {place}"))?;
    let names: std::collections::BTreeSet<&str> =
        items.iter().filter_map(|i| i["name"].as_str()).collect();
    Ok(acked
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .map(|n| format!("{n}@{place}"))
        .collect())
}

/// Runs `scenario` with its data under `dir`; `seed` seeds every relay's jitter and loss.
pub async fn run(scenario: &Scenario, seed: u64, dir: &Path) -> anyhow::Result<Outcome> {
    let wall = Instant::now();
    let mut mesh = Mesh::start(&scenario.topology, seed, dir)
        .await
        .with_context(|| format!("starting scenario {}", scenario.name))?;
    let mut timeline = expand_flaps(&scenario.timeline);
    if !matches!(
        timeline.last(),
        Some(Step {
            action: Action::Heal,
            ..
        })
    ) {
        let at = timeline.last().map(|s| s.at).unwrap_or_default();
        timeline.push(step(at, Action::Heal));
    }
    let faults_last = timeline.last().map(|s| s.at).unwrap_or_default();
    let load_for = faults_last + scenario.traffic.tail;

    let start = Instant::now();
    let mut loads = Vec::new();
    for (zone, client) in &mesh.clients {
        let periods: Periods = Arc::default();
        let config = demo_app::client::CallConfig {
            target: client.url().parse()?,
            rate: scenario.traffic.rate,
            duration: load_for,
            concurrency: 1024,
            timeout: Duration::from_secs(5),
            report_every: Some(Duration::from_millis(50)),
        };
        let recorder = periods.clone();
        let task = tokio::spawn(async move {
            let began = start.elapsed();
            demo_app::client::call(config, std::future::pending(), move |report| {
                let end = began + Duration::from_secs_f64(report.at_secs);
                recorder.lock().expect("periods").push((end, report.failed));
            })
            .await
        });
        loads.push((*zone, task, periods));
    }
    let (stop_writer, stop_rx) = tokio::sync::watch::channel(false);
    let apis: Vec<meshctl::client::ApiClient> =
        mesh.globals.iter().map(|g| g.api.clone()).collect();
    let settle_within = scenario.invariants.settle_within;
    let writes = tokio::spawn(async move {
        writer(
            apis.len(),
            |i| std::future::ready(Some(apis[i].clone())),
            "chaos-write",
            stop_rx,
            settle_within,
        )
        .await
    });

    let (stop_watching, watching) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch_zones(
        mesh.globals.iter().map(|g| g.api.clone()).collect(),
        start,
        watching,
    ));

    // The timeline: onsets are when a fault begins (what failover is measured from).
    let mut onsets: Vec<Duration> = Vec::new();
    for s in &timeline {
        tokio::time::sleep_until((start + s.at).into()).await;
        let now = start.elapsed();
        match &s.action {
            Action::Link(link, fault) => {
                if *fault != Fault::Pass {
                    onsets.push(now);
                }
                for relay in mesh.link(*link)? {
                    relay.set(fault.clone());
                }
            }
            // Expanded into link steps before the timeline runs.
            Action::Flap { .. } => {}
            Action::Kill(c) => {
                onsets.push(now);
                let c = mesh.resolve(*c).await?;
                mesh.kill(c).await?;
            }
            Action::Pause(c) => {
                onsets.push(now);
                mesh.signal(*c, "STOP")?;
                mesh.paused.push(*c);
            }
            Action::Resume(c) => {
                mesh.signal(*c, "CONT")?;
                mesh.paused.retain(|p| p != c);
            }
            Action::Start(c) => mesh.start_again(*c).await?,
            Action::Restart(c) => {
                onsets.push(now);
                match mesh.resolve(*c).await? {
                    Component::ZoneCp(zone) => {
                        let zone = mesh.zone_mut(zone)?;
                        zone.terminate().await?;
                        zone.restart().await?;
                    }
                    node => {
                        let i = mesh.global_node(node)?;
                        mesh.globals[i].terminate().await?;
                        mesh.globals[i].restart().await?;
                    }
                }
            }
            Action::Wipe(c) => mesh.wipe(*c)?,
            Action::Heal => {
                for relay in mesh.kds.values().flatten().chain(mesh.raft.values()) {
                    relay.set(Fault::Pass);
                }
                for (_, i) in &mesh.ingresses {
                    i.link.set(Fault::Pass);
                }
                for c in std::mem::take(&mut mesh.paused) {
                    mesh.signal(c, "CONT")?;
                }
                for c in mesh.killed.clone() {
                    mesh.start_again(c).await?;
                }
            }
        }
    }
    let faults_end = Instant::now();
    let _ = stop_writer.send(true);

    let (acked, _attempts) = writes.await.context("the writer panicked")?;
    let offline_seen = {
        let _ = stop_watching.send(true);
        watcher.await.context("the zone watcher panicked")?
    };

    // After heal, measured side by side: every zone online and every proxy registered in its zone
    // and ready; every acknowledged write at the global and in every zone.
    let mut violations = Vec::new();
    let settle = scenario.invariants.settle_within;
    let zones = scenario.topology.zones.clone();
    let backends = scenario.topology.backends.clone();
    let settling = test_support::eventually(
        "every zone online, every ingress at the global, every proxy back",
        settle,
        || async {
            if !zones_online(&mesh.globals, &zones).await {
                return None;
            }
            let api = &mesh.globals.first()?.api;
            if !zones_without_ingress(api, &backends).await.ok()?.is_empty() {
                return None;
            }
            for (zone, proxy, path) in mesh.proxies() {
                let resource = mesh.zone(zone).ok()?.api.get(&path).await.ok()?;
                if !stream_open(&resource) {
                    return None;
                }
                let (status, _) =
                    crate::federation::http_get(&format!("http://{}/ready", proxy.admin))
                        .await
                        .ok()?;
                (status == 200).then_some(())?;
            }
            Some(faults_end.elapsed())
        },
    );
    let converging =
        test_support::eventually("every acknowledged write everywhere", settle, || async {
            let missing = missing_writes(&mesh, &acked).await.ok()?;
            missing.is_empty().then(|| faults_end.elapsed())
        });
    let (settled, convergence) = tokio::join!(settling, converging);
    let convergence = convergence.ok();
    let settled = match settled {
        Ok(t) => Some(t),
        Err(e) => {
            violations.push(format!(
                "not settled within {settle:?} of the end of faults: {e:#}{}",
                unsettled(&mesh, &scenario.topology.backends).await
            ));
            None
        }
    };
    let writes_lost = match convergence {
        Some(_) => 0,
        None => {
            let missing = missing_writes(&mesh, &acked).await.unwrap_or_default();
            violations.push(format!(
                "acknowledged writes missing {settle:?} after the end of faults: {}",
                missing.join(", ")
            ));
            missing.len() as u64
        }
    };

    // The load.
    let mut sent = 0;
    let mut failed = 0;
    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: Vec<(Duration, u64)> = Vec::new();
    for (zone, task, periods) in loads {
        let report = task
            .await
            .context("a load task panicked")?
            .with_context(|| format!("the load from {zone}"))?;
        sent += report.sent + report.failures.not_sent;
        failed += report.failed + report.failures.not_sent;
        for (z, n) in &report.zones {
            *answered.entry(z.clone()).or_default() += n;
        }
        if report.failed > 0 {
            eprintln!("{}: load from {zone}: {}", scenario.name, report.to_text());
        }
        failures.extend(periods.lock().expect("periods").iter().filter(|p| p.1 > 0));
    }
    let success_rate = if sent == 0 {
        0.0
    } else {
        (sent - failed) as f64 / sent as f64
    };
    let failover = failover(&onsets, &failures, load_for);

    // No process crashed unless the timeline killed it.
    for global in &mut mesh.globals {
        if let Some(status) = global.exited() {
            let which = global
                .node_id
                .map_or("the global CP".to_string(), |n| format!("global node {n}"));
            violations.push(format!("{which} exited on its own: {status}"));
        }
    }
    for zone in &mut mesh.zones {
        if let Some(status) = zone.exited() {
            violations.push(format!("{} CP exited on its own: {status}", zone.name));
        }
    }
    for (zone, proxy, _) in mesh.proxies() {
        if proxy.is_finished() {
            violations.push(format!("proxy {} of {zone} ended", proxy.name));
        }
    }
    let inv = &scenario.invariants;
    if success_rate < inv.min_success_rate {
        violations.push(format!(
            "success rate {:.4}% below {:.4}% ({failed} of {sent} failed)",
            success_rate * 100.0,
            inv.min_success_rate * 100.0
        ));
    }
    if failover > inv.max_failover {
        violations.push(format!(
            "failover {:.2} s above {:.2} s",
            failover.as_secs_f64(),
            inv.max_failover.as_secs_f64()
        ));
    }
    violations.extend(unseen_offline(inv, &offline_seen));
    if let Err(e) = mesh.stop().await {
        eprintln!("{}: stopping the federation: {e:#}", scenario.name);
    }
    Ok(Outcome {
        name: scenario.name.to_string(),
        fault: scenario.fault.clone(),
        seed,
        sent,
        failed,
        success_rate,
        failover,
        convergence,
        settled,
        writes_acknowledged: acked.len() as u64,
        writes_lost,
        zones: answered,
        violations,
        known_defect: scenario.known_defect.map(str::to_string),
        offline_seen,
        wall: wall.elapsed(),
    })
}

/// A violation for each zone of [`Invariants::seen_offline`] the global never reported offline.
pub fn unseen_offline(inv: &Invariants, offline_seen: &BTreeMap<String, Duration>) -> Vec<String> {
    inv.seen_offline
        .iter()
        .filter(|z| !offline_seen.contains_key(**z))
        .map(|z| format!("the global never reported {z} offline: the absence went unnoticed"))
        .collect()
}

/// The timeline with each [`Action::Flap`] replaced by the link steps it stands for, in time
/// order (steps at the same time keep their order).
pub fn expand_flaps(timeline: &[Step]) -> Vec<Step> {
    let mut steps = Vec::new();
    for s in timeline {
        match &s.action {
            Action::Flap { link, every, until } => {
                let (mut at, mut down) = (s.at, true);
                while at < *until {
                    let fault = if down { Fault::Blackhole } else { Fault::Pass };
                    steps.push(step(at, Action::Link(*link, fault)));
                    down = !down;
                    at += *every;
                }
                steps.push(step(*until, Action::Link(*link, Fault::Pass)));
            }
            _ => steps.push(s.clone()),
        }
    }
    steps.sort_by_key(|s| s.at);
    steps
}

/// Failover: for each onset, the time from it to the end of the last period with a failed
/// request before the next onset (or the end of the load); the longest of them.
pub fn failover(onsets: &[Duration], failures: &[(Duration, u64)], end: Duration) -> Duration {
    let mut onsets = onsets.to_vec();
    onsets.sort();
    let mut longest = Duration::ZERO;
    for (i, onset) in onsets.iter().enumerate() {
        let next = onsets
            .get(i + 1)
            .copied()
            .unwrap_or(end + Duration::from_secs(60));
        let last = failures
            .iter()
            .filter(|(at, _)| at > onset && *at <= next)
            .map(|(at, _)| *at)
            .max();
        if let Some(last) = last {
            longest = longest.max(last - *onset);
        }
    }
    longest
}

/// The acknowledged writes missing at a global node or a zone, as `<name>@<where>`.
async fn missing_writes(mesh: &Mesh, acked: &[String]) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    let mut apis: Vec<(String, &meshctl::client::ApiClient)> = mesh
        .globals
        .iter()
        .map(|g| {
            let place = g
                .node_id
                .filter(|_| mesh.globals.len() > 1)
                .map_or("global".to_string(), |n| format!("global-{n}"));
            (place, &g.api)
        })
        .collect();
    apis.extend(mesh.zones.iter().map(|z| (z.name.clone(), &z.api)));
    for (place, api) in apis {
        missing.extend(missing_at(&place, api, acked).await?);
    }
    Ok(missing)
}

/// The zones of `zones` with no ZoneIngress at the global (read through `api`): a zone's
/// inventory is back at the global once it has (re)joined.
pub async fn zones_without_ingress(
    api: &meshctl::client::ApiClient,
    zones: &[&str],
) -> anyhow::Result<Vec<String>> {
    let (_, items) = api
        .list_all(&["zoneingresses".to_string()])
        .await
        .context("listing ZoneIngresses at the global")?;
    let present: std::collections::BTreeSet<&str> = items
        .iter()
        .filter_map(|i| i["labels"][mesh_api::ZONE_LABEL].as_str())
        .collect();
    Ok(zones
        .iter()
        .filter(|z| !present.contains(**z))
        .map(|z| z.to_string())
        .collect())
}

/// What is not back after the faults, for a violation's message.
async fn unsettled(mesh: &Mesh, backends: &[&str]) -> String {
    let mut notes = Vec::new();
    if let Some(global) = mesh.globals.first() {
        match zones_without_ingress(&global.api, backends).await {
            Ok(zones) if zones.is_empty() => {}
            Ok(zones) => notes.push(format!(
                "no ZoneIngress of {} at the global",
                zones.join(", ")
            )),
            Err(e) => notes.push(format!("{e:#}")),
        }
    }
    for (zone, proxy, path) in mesh.proxies() {
        let Ok(z) = mesh.zone(zone) else { continue };
        match z.api.get(&path).await {
            Err(e) => notes.push(format!("{} not in {zone}'s API ({e:#})", path.join("/"))),
            Ok(r) if !stream_open(&r) => notes.push(format!(
                "{} has no open ADS stream: {}",
                path.join("/"),
                r["dataplaneInsight"]
            )),
            Ok(_) => {}
        }
        match crate::federation::http_get(&format!("http://{}/ready", proxy.admin)).await {
            Ok((200, _)) => {}
            other => notes.push(format!("proxy {} not ready: {other:?}", proxy.name)),
        }
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    }
}

/// Whether a resource read from a zone's API shows its proxy connected: a Dataplane's overview
/// (`dataplanes+insights`) must say `online`; other resources only exist.
fn stream_open(resource: &serde_json::Value) -> bool {
    match resource.get("dataplaneInsight") {
        Some(insight) => insight["online"].as_bool() == Some(true),
        None => true,
    }
}

/// Polls the global's zone overview every 250 ms until told to stop; the first time each zone
/// was reported offline (by every node that answered: each knows only its own zones), from
/// `start`. Polls while the global is down just fail.
async fn watch_zones(
    apis: Vec<meshctl::client::ApiClient>,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> BTreeMap<String, Duration> {
    let mut seen = BTreeMap::new();
    while !*stop.borrow() {
        let mut online = std::collections::BTreeSet::new();
        let mut listed = std::collections::BTreeSet::new();
        for api in &apis {
            let polled = tokio::time::timeout(Duration::from_secs(1), api.zones_overview()).await;
            if let Ok(Ok((_, items))) = polled {
                for zone in meshctl::inspect::ZoneOverview::from_items(&items).unwrap_or_default() {
                    if zone.is_online() {
                        online.insert(zone.name.clone());
                    }
                    listed.insert(zone.name);
                }
            }
        }
        for zone in listed.difference(&online) {
            seen.entry(zone.clone()).or_insert_with(|| start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failover_is_the_longest_onset_to_last_failure_before_the_next_onset() {
        let onsets = [ms(1000), ms(5000)];
        // Failures 0.4 s after the first onset and 0.15 s after the second; one before any onset
        // counts for neither.
        let failures = [(ms(500), 1), (ms(1200), 3), (ms(1400), 1), (ms(5150), 2)];
        assert_eq!(failover(&onsets, &failures, ms(9000)), ms(400));
        assert_eq!(failover(&onsets, &[], ms(9000)), Duration::ZERO);
    }

    #[test]
    fn a_flap_becomes_alternating_link_steps_ending_passing() {
        let link = Link::Ingress("zone-2");
        let steps = expand_flaps(&[
            step(
                ms(1000),
                Action::Flap {
                    link,
                    every: ms(2000),
                    until: ms(6000),
                },
            ),
            step(ms(6000), Action::Heal),
        ]);
        let shown: Vec<String> = steps
            .iter()
            .map(|s| format!("{}:{:?}", s.at.as_millis(), s.action))
            .collect();
        assert_eq!(
            shown,
            [
                "1000:Link(Ingress(\"zone-2\"), Blackhole)",
                "3000:Link(Ingress(\"zone-2\"), Pass)",
                "5000:Link(Ingress(\"zone-2\"), Blackhole)",
                "6000:Link(Ingress(\"zone-2\"), Pass)",
                "6000:Heal",
            ]
        );
    }
}
