//! `meshctl up`: a local federation in one command. Starts one `global-cp` and N `zone-cp` as
//! child processes on free loopback ports: the global first; then, for each zone, a zone token
//! issued by the global (`POST /tokens/zone`), and the zone in `zone` mode dialling the global's
//! KDS over TLS (trusting the CA named by the global's ready file). It waits until each is ready
//! and the global reports every zone online (`GET /zones/_overview`), writes `endpoints.json` and
//! a `meshctl.yaml` config pointing at the global API, then supervises: Ctrl-C or SIGTERM stops
//! every child (SIGTERM, then SIGKILL after a grace period) and exits 0; a child that dies on its
//! own is reported and the others are stopped. Data lives under the data directory and survives
//! restarts.
//!
//! Unless `--no-demo`, it then runs the demo ([`demo`]): per zone an ingress and an egress
//! (`zone-proxy`), and demo services (`demo-app`) behind sidecars, every proxy registering itself
//! with its zone CP; it prints the cross-zone request to try. On SIGTERM the demo processes stop
//! first (so each proxy deregisters from a running zone CP), then the zones, then the global.
//!
//! Layout of the data directory:
//! - `global/`, `zone-1/`, ...: each control plane's `--data-dir` (its admin token is
//!   `admin-token` inside);
//! - `logs/<name>.log`: each child's stdout and stderr, appended across runs;
//! - `run/<name>.ready.json`, `run/<name>.pid`, `run/up.pid`: this run's bookkeeping;
//! - `run/zone-K.token`: zone-K's token (mode 0600), issued again at each start; likewise
//!   `run/<proxy>.token`, each demo proxy's dataplane token;
//! - `endpoints.json` and `meshctl.yaml`: written once everything is ready, removed on shutdown
//!   (`meshctl.yaml` is kept: the token stays valid across restarts).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::client::ApiClient;
use crate::config::ConfigFile;
use crate::endpoints::{Endpoints, GlobalEndpoints, GlobalNodeEndpoints, ReadyFile, ZoneEndpoints};
use crate::fsutil::write_atomic;
use crate::inspect::ZoneOverview;
use crate::process::{self, Signal};

pub mod demo;

/// Arguments of `meshctl up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Number of zone control planes to start (named zone-1 .. zone-N).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub zones: u32,
    /// Directory holding every process's data, logs, endpoints.json and meshctl.yaml.
    #[arg(long, default_value = ".meridian")]
    pub data_dir: PathBuf,
    /// Seconds to wait for each control plane to become ready.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout: u64,
    /// Seconds to wait, once the zones are ready, for the global to report every zone online.
    #[arg(long, default_value_t = 30)]
    pub online_timeout: u64,
    /// Seconds each child gets to exit after SIGTERM before it is killed.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Start only the control planes: no ingresses, egresses or demo services.
    #[arg(long)]
    pub no_demo: bool,
    /// Number of global control plane nodes: 1, or a Raft cluster of N (named global-1 ..
    /// global-N, sharing one KDS identity and admin token; zones are given every node).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub global_nodes: u32,
}

/// What a child process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Global,
    Zone,
    /// The demo's processes: a zone's ingress and egress, a service's sidecar, a demo service.
    Ingress,
    Egress,
    Sidecar,
    App,
}

impl Role {
    pub fn binary(self) -> &'static str {
        match self {
            Role::Global => "global-cp",
            Role::Zone => "zone-cp",
            Role::Ingress | Role::Egress | Role::Sidecar => "zone-proxy",
            Role::App => "demo-app",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Global => "global",
            Role::Zone => "zone",
            Role::Ingress => "ingress",
            Role::Egress => "egress",
            Role::Sidecar => "sidecar",
            Role::App => "app",
        }
    }

    /// A control plane (stopped after the demo's processes).
    pub fn is_control_plane(self) -> bool {
        matches!(self, Role::Global | Role::Zone)
    }
}

/// Where everything lives under the data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }

    pub fn ready_file(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.ready.json"))
    }

    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.pid"))
    }

    /// The zone token `zone-cp --zone-token-file` reads.
    pub fn zone_token(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.token"))
    }

    /// The dataplane token demo proxy `name` reads (`zone-proxy --token-file`).
    pub fn proxy_token(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.token"))
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("run").join("up.pid")
    }

    pub fn admin_token(&self, name: &str) -> PathBuf {
        self.data_dir(name).join("admin-token")
    }

    pub fn endpoints(&self) -> PathBuf {
        self.root.join(Endpoints::FILE)
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("meshctl.yaml")
    }
}

/// How to start one child.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// `global` or `zone-K`.
    pub name: String,
    pub role: Role,
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    pub data_dir: PathBuf,
    pub ready_file: PathBuf,
    pub log_file: PathBuf,
    pub pid_file: PathBuf,
    /// Ready when `GET` answers 2xx (processes without a ready file: the demo's); control planes
    /// are probed through their ready file and diagnostics instead.
    pub ready_url: Option<String>,
}

const LOOPBACK_ANY_PORT: &str = "127.0.0.1:0";

/// How long the tokens `meshctl up` issues for its zones are valid (a year: they are issued again
/// at each start anyway).
pub const ZONE_TOKEN_VALIDITY: &str = "8760h";

/// What a zone needs to connect to the global over KDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdsLink {
    /// `https://127.0.0.1:P` (`zone-cp --global-kds-address`).
    pub address: String,
    /// The CA certificate of the global's KDS server (`zone-cp --kds-ca-file`).
    pub ca_file: PathBuf,
}

impl KdsLink {
    /// The link described by the global's ready file (`kds` and `kdsCa`); errors name the file.
    pub fn from_ready(ready: &ReadyFile, ready_file: &Path) -> anyhow::Result<KdsLink> {
        let kds = ready
            .kds
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let kds = kds.with_context(|| {
            format!("ready file {} has no \"kds\" address", ready_file.display())
        })?;
        let ca = ready
            .kds_ca
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let ca = ca.with_context(|| {
            format!(
                "ready file {} has no \"kdsCa\" (the CA certificate zones trust for KDS)",
                ready_file.display()
            )
        })?;
        let address = if kds.contains("://") {
            kds.to_owned()
        } else {
            format!("https://{kds}")
        };
        Ok(KdsLink {
            address,
            ca_file: PathBuf::from(ca),
        })
    }
}

/// The names of `zones` zones: `zone-1` .. `zone-N`.
pub fn zone_names(zones: u32) -> Vec<String> {
    (1..=zones).map(|k| format!("zone-{k}")).collect()
}

fn spec(
    layout: &Layout,
    name: String,
    role: Role,
    binary: &Path,
    mut args: Vec<OsString>,
) -> ProcessSpec {
    let data_dir = layout.data_dir(&name);
    let ready_file = layout.ready_file(&name);
    args.extend([
        "--data-dir".into(),
        data_dir.clone().into_os_string(),
        "--api-addr".into(),
        LOOPBACK_ANY_PORT.into(),
        "--diagnostics-addr".into(),
        LOOPBACK_ANY_PORT.into(),
    ]);
    match role {
        Role::Global => args.extend(["--kds-addr".into(), LOOPBACK_ANY_PORT.into()]),
        Role::Zone => args.extend(["--xds-addr".into(), LOOPBACK_ANY_PORT.into()]),
        // The demo's processes get their ports from the demo plan.
        _ => {}
    }
    args.extend(["--ready-file".into(), ready_file.clone().into_os_string()]);
    ProcessSpec {
        log_file: layout.log_file(&name),
        pid_file: layout.pid_file(&name),
        name,
        role,
        binary: binary.to_path_buf(),
        args,
        data_dir,
        ready_file,
        ready_url: None,
    }
}

/// The global's command line (the `global-cp` contract; its KDS TLS files go to the default
/// `<data-dir>/kds`).
pub fn global_spec(layout: &Layout, global_bin: &Path) -> ProcessSpec {
    spec(
        layout,
        "global".into(),
        Role::Global,
        global_bin,
        Vec::new(),
    )
}

/// The name of global node `id` of `nodes`: `global` for a single node, `global-<id>` in a
/// cluster.
pub fn global_name(nodes: u32, id: u32) -> String {
    if nodes <= 1 {
        "global".into()
    } else {
        format!("global-{id}")
    }
}

/// How the nodes of a multi-node global find each other: the Raft peer addresses, the peers'
/// TLS material and the KDS identity they share (docs/raft.md, "Running a three-node global").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalCluster {
    /// `1=127.0.0.1:P1,2=...` (`global-cp --peers`).
    pub peers: String,
    /// `global-cp raft-certs --out` of every node id.
    pub raft_tls_dir: PathBuf,
    /// The KDS CA, server certificate and zone-token signing keys every node serves with.
    pub kds_dir: PathBuf,
}

impl GlobalCluster {
    /// The cluster of `nodes` nodes under `layout`: peer addresses from `<root>/global-peers`
    /// when an earlier run wrote it (a node's log holds its members' addresses, so a restart
    /// must reuse them), else free loopback ports, written there.
    pub fn prepare(layout: &Layout, nodes: u32) -> anyhow::Result<GlobalCluster> {
        let file = layout.root.join("global-peers");
        let peers = match std::fs::read_to_string(&file) {
            Ok(text) if peer_ids(text.trim()) == (1..=nodes as u64).collect::<Vec<_>>() => {
                text.trim().to_owned()
            }
            Ok(text) => anyhow::bail!(
                "{} names the peers {:?}, not nodes 1..{nodes}: this data dir holds a global of                  another size (start with that --global-nodes, or use another --data-dir)",
                file.display(),
                text.trim()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let peers = (1..=nodes)
                    .map(|id| Ok(format!("{id}=127.0.0.1:{}", demo::free_port()?)))
                    .collect::<anyhow::Result<Vec<_>>>()?
                    .join(",");
                write_atomic(&file, format!("{peers}\n").as_bytes(), None)?;
                peers
            }
            Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
        };
        Ok(GlobalCluster {
            peers,
            raft_tls_dir: layout.root.join("global-raft-certs"),
            kds_dir: layout.root.join("global-kds"),
        })
    }
}

/// The node ids of a `--peers` value, in order.
fn peer_ids(peers: &str) -> Vec<u64> {
    peers
        .split(',')
        .filter_map(|p| p.split_once('=')?.0.trim().parse().ok())
        .collect()
}

/// Node `id`'s command line in `cluster`.
pub fn global_node_spec(
    layout: &Layout,
    global_bin: &Path,
    nodes: u32,
    id: u32,
    cluster: &GlobalCluster,
) -> ProcessSpec {
    let mut args: Vec<OsString> = vec![
        "--node-id".into(),
        id.to_string().into(),
        "--peers".into(),
        cluster.peers.clone().into(),
        "--raft-tls-dir".into(),
        cluster.raft_tls_dir.clone().into_os_string(),
        "--kds-tls-dir".into(),
        cluster.kds_dir.clone().into_os_string(),
    ];
    // Loopback only (global-cp's default is 0.0.0.0 at the port in --peers).
    let own = cluster
        .peers
        .split(',')
        .find_map(|p| p.strip_prefix(&format!("{id}=")));
    if let Some(addr) = own {
        args.extend(["--raft-listen".into(), addr.into()]);
    }
    spec(
        layout,
        global_name(nodes, id),
        Role::Global,
        global_bin,
        args,
    )
}

/// Zone `name`'s command line (the `zone-cp` contract): zone mode, connected to the global
/// through `link`, with its token in [`Layout::zone_token`].
pub fn zone_spec(layout: &Layout, name: &str, zone_bin: &Path, link: &KdsLink) -> ProcessSpec {
    let args = vec![
        "--zone".into(),
        name.into(),
        "--mode".into(),
        "zone".into(),
        "--global-kds-address".into(),
        link.address.clone().into(),
        "--kds-ca-file".into(),
        link.ca_file.clone().into_os_string(),
        "--zone-token-file".into(),
        layout.zone_token(name).into_os_string(),
    ];
    spec(layout, name.to_owned(), Role::Zone, zone_bin, args)
}

/// The zones of `expected` the overview does not show online, each with what it shows instead
/// (`status offline`, `not listed`).
pub fn not_online(expected: &[String], overview: &[ZoneOverview]) -> Vec<(String, String)> {
    expected
        .iter()
        .filter_map(|name| match overview.iter().find(|z| &z.name == name) {
            Some(z) if z.is_online() => None,
            Some(z) if z.status.is_empty() => Some((name.clone(), "no status".to_owned())),
            Some(z) => Some((name.clone(), format!("status {}", z.status))),
            None => Some((name.clone(), "not listed".to_owned())),
        })
        .collect()
}

/// Finds a workspace binary: next to `own_exe` first, else on `path` (the `PATH` variable).
pub fn locate_binary(
    name: &str,
    own_exe: Option<&Path>,
    path: Option<&OsString>,
) -> anyhow::Result<PathBuf> {
    let beside = own_exe.and_then(Path::parent).map(|dir| dir.join(name));
    if let Some(candidate) = beside.as_ref().filter(|c| c.is_file()) {
        return Ok(candidate.clone());
    }
    if let Some(path) = path {
        for dir in std::env::split_paths(path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let beside = beside
        .map(|b| format!(" at {}", b.display()))
        .unwrap_or_default();
    anyhow::bail!(
        "cannot find {name}: it is neither next to meshctl{beside} nor on PATH \
         (build it with `cargo build --workspace --bins`)"
    )
}

/// The endpoints file for a set of ready children; `roles` holds each global node's Raft role
/// by name in a multi-node global (then every node is listed in `global.nodes`).
pub fn endpoints_of(
    children: &[(&ProcessSpec, &ReadyFile)],
    roles: &BTreeMap<String, String>,
) -> anyhow::Result<Endpoints> {
    let mut global: Option<GlobalEndpoints> = None;
    let mut nodes = Vec::new();
    let mut zones = std::collections::BTreeMap::new();
    for (spec, ready) in children {
        match spec.role {
            Role::Global => {
                let kds = ready.kds.clone().with_context(|| {
                    format!(
                        "ready file {} has no \"kds\" address",
                        spec.ready_file.display()
                    )
                })?;
                if let Some(role) = roles.get(&spec.name) {
                    nodes.push(GlobalNodeEndpoints {
                        id: spec
                            .name
                            .rsplit_once('-')
                            .and_then(|(_, id)| id.parse().ok())
                            .unwrap_or_default(),
                        api: ready.api.clone(),
                        kds: kds.clone(),
                        diagnostics: ready.diagnostics.clone(),
                        role: role.clone(),
                    });
                }
                // The first node is the one meshctl.yaml points at.
                global.get_or_insert(GlobalEndpoints {
                    api: ready.api.clone(),
                    kds,
                    diagnostics: ready.diagnostics.clone(),
                    kds_ca: ready.kds_ca.clone(),
                    nodes: Vec::new(),
                });
            }
            Role::Zone => {
                let xds = ready.xds.clone().with_context(|| {
                    format!(
                        "ready file {} has no \"xds\" address",
                        spec.ready_file.display()
                    )
                })?;
                zones.insert(
                    spec.name.clone(),
                    ZoneEndpoints {
                        api: ready.api.clone(),
                        xds,
                        diagnostics: ready.diagnostics.clone(),
                    },
                );
            }
            _ => {}
        }
    }
    let mut global = global.context("no global control plane was started")?;
    global.nodes = nodes;
    Ok(Endpoints {
        global,
        zones,
        demo: None,
    })
}

/// The status table printed once everything is ready.
/// `roles` as in [`endpoints_of`]: a global node's row shows `global (leader)`.
pub fn status_table(
    children: &[(&ProcessSpec, &ReadyFile, u32)],
    roles: &BTreeMap<String, String>,
) -> String {
    let rows: Vec<Vec<String>> = children
        .iter()
        .map(|(spec, ready, pid)| {
            let sync = match spec.role {
                Role::Global => ready.kds.clone(),
                Role::Zone => ready.xds.clone(),
                _ => None,
            };
            let label = match roles.get(&spec.name) {
                Some(role) => format!("{} ({role})", spec.role.label()),
                None => spec.role.label().to_owned(),
            };
            vec![
                spec.name.clone(),
                label,
                ready.api.clone(),
                ready.diagnostics.clone(),
                sync.unwrap_or_default(),
                pid.to_string(),
            ]
        })
        .collect();
    crate::output::align(
        &["NAME", "ROLE", "API", "DIAGNOSTICS", "KDS/XDS", "PID"],
        &rows,
    )
}

/// Up to `max` last lines a child wrote to its log during this run.
fn log_tail(log_file: &Path, max: usize) -> String {
    let Ok(text) = std::fs::read_to_string(log_file) else {
        return String::new();
    };
    let this_run = text
        .rfind(LOG_MARKER)
        .and_then(|at| text[at..].find('\n').map(|nl| &text[at + nl + 1..]))
        .unwrap_or(&text);
    let lines: Vec<&str> = this_run.lines().collect();
    let start = lines.len().saturating_sub(max);
    lines[start..].join("\n")
}

const LOG_MARKER: &str = "=== meshctl up: starting ";

/// A started child.
#[derive(Debug)]
struct Child {
    spec: ProcessSpec,
    pid: u32,
    exit: Option<Exit>,
    ready: Option<ReadyFile>,
    healthy: bool,
}

impl Child {
    fn describe(&self) -> String {
        format!(
            "{} {} (pid {})",
            self.spec.role.binary(),
            self.spec.name,
            self.pid
        )
    }

    fn with_log(&self, message: String) -> String {
        let tail = log_tail(&self.spec.log_file, 20);
        let mut text = format!("{message}; see its log {}", self.spec.log_file.display());
        if !tail.trim().is_empty() {
            text.push(':');
            for line in tail.lines() {
                text.push_str("\n    ");
                text.push_str(line);
            }
        }
        text
    }
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exit {
    /// `exit status: 1`, `signal: 9 (SIGKILL)`.
    text: String,
    success: bool,
}

impl Exit {
    fn of(status: &std::io::Result<ExitStatus>) -> Exit {
        match status {
            Ok(s) => Exit {
                text: s.to_string(),
                success: s.success(),
            },
            Err(e) => Exit {
                text: format!("unknown status ({e})"),
                success: false,
            },
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Starts children, tracks their exits, stops them.
struct Supervisor {
    children: Vec<Child>,
    exits: mpsc::UnboundedReceiver<(usize, Exit)>,
    exits_tx: mpsc::UnboundedSender<(usize, Exit)>,
    http: reqwest::Client,
}

impl Supervisor {
    fn new() -> anyhow::Result<Supervisor> {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Supervisor {
            children: Vec::new(),
            exits,
            exits_tx,
            http,
        })
    }

    fn spawn(&mut self, spec: ProcessSpec) -> anyhow::Result<()> {
        for path in [&spec.ready_file, &spec.pid_file] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove stale {}: {e}", path.display()),
            }
        }
        std::fs::create_dir_all(&spec.data_dir)
            .with_context(|| format!("cannot create {}", spec.data_dir.display()))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .with_context(|| format!("cannot open log file {}", spec.log_file.display()))?;
        {
            use std::io::Write as _;
            writeln!(
                log,
                "{LOG_MARKER}{} at {} ===",
                spec.binary.display(),
                chrono::Utc::now().to_rfc3339()
            )
            .with_context(|| format!("cannot write log file {}", spec.log_file.display()))?;
        }
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot open log file {}", spec.log_file.display()))?;
        let mut command = tokio::process::Command::new(&spec.binary);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a Ctrl-C in the terminal reaches meshctl only, which then
            // stops the children in order.
            .process_group(0);
        process::terminate_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", spec.binary.display()))?;
        let pid = child.id().context("the child exited before it had a pid")?;
        let index = self.children.len();
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send((index, Exit::of(&status)));
        });
        let pid_file = spec.pid_file.clone();
        self.children.push(Child {
            spec,
            pid,
            exit: None,
            ready: None,
            healthy: false,
        });
        // After the push: on failure the child is known, so it gets stopped like the others.
        write_atomic(&pid_file, format!("{pid}\n").as_bytes(), None)
    }

    fn record(&mut self, (index, status): (usize, Exit)) -> usize {
        if let Some(child) = self.children.get_mut(index) {
            child.exit = Some(status);
            let _ = std::fs::remove_file(&child.spec.pid_file);
        }
        index
    }

    fn drain_exits(&mut self) {
        while let Ok(exit) = self.exits.try_recv() {
            self.record(exit);
        }
    }

    /// The next child to exit.
    async fn next_exit(&mut self) -> usize {
        match self.exits.recv().await {
            Some(exit) => self.record(exit),
            // The supervisor holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// One readiness probe of child `i`: its ready file, then `GET <diagnostics>/ready`, then (for
    /// the global) its admin token file. Returns what it is still waiting for.
    async fn probe(&mut self, i: usize, layout: &Layout) -> anyhow::Result<Option<String>> {
        let child = &mut self.children[i];
        if let Some(url) = child.spec.ready_url.clone() {
            return match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    self.children[i].healthy = true;
                    Ok(None)
                }
                Ok(r) => Ok(Some(format!("GET {url} to succeed (last: {})", r.status()))),
                Err(e) => Ok(Some(format!("GET {url} to succeed (last: {e})"))),
            };
        }
        if child.ready.is_none() {
            child.ready = ReadyFile::read(&child.spec.ready_file)?;
        }
        let Some(ready) = child.ready.clone() else {
            return Ok(Some(format!(
                "its ready file {}",
                child.spec.ready_file.display()
            )));
        };
        if !child.healthy {
            let url = format!("{}/ready", ready.diagnostics.trim_end_matches('/'));
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => self.children[i].healthy = true,
                Ok(r) => return Ok(Some(format!("GET {url} to succeed (last: {})", r.status()))),
                Err(e) => return Ok(Some(format!("GET {url} to succeed (last: {e})"))),
            }
        }
        let child = &self.children[i];
        if child.spec.role == Role::Global {
            let token = layout.admin_token(&child.spec.name);
            let present = std::fs::read_to_string(&token).is_ok_and(|t| !t.trim().is_empty());
            if !present {
                return Ok(Some(format!("its admin token {}", token.display())));
            }
        }
        Ok(None)
    }

    /// Waits until every child in `indexes` is ready, failing when one exits or the deadline
    /// passes.
    async fn wait_ready(
        &mut self,
        indexes: &[usize],
        layout: &Layout,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = indexes.to_vec();
        let mut waiting_for: Vec<String> = vec![String::new(); self.children.len()];
        let mut pause = Duration::from_millis(10);
        loop {
            self.drain_exits();
            for &i in &pending {
                let child = &self.children[i];
                if let Some(exit) = &child.exit {
                    anyhow::bail!(child.with_log(format!(
                        "{} exited before it was ready ({exit})",
                        child.describe()
                    )));
                }
            }
            let mut still = Vec::new();
            for i in pending {
                if let Some(what) = self.probe(i, layout).await? {
                    waiting_for[i] = what;
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let i = pending[0];
                let child = &self.children[i];
                anyhow::bail!(child.with_log(format!(
                    "{} was not ready within {timeout:?}: still waiting for {}",
                    child.describe(),
                    waiting_for[i]
                )));
            }
            let sleep = pause.min(deadline - now);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                Some(exit) = self.exits.recv() => { self.record(exit); }
            }
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Waits until every global node of `indexes` names the same leader in the same term
    /// (`GET /`'s `cluster`), failing when one exits or `timeout` passes. Returns each node's
    /// role by name.
    async fn wait_leader(
        &mut self,
        indexes: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            self.check_alive(indexes, "while the global elected a leader")?;
            let mut views = BTreeMap::new();
            let mut last = String::new();
            for &i in indexes {
                let child = &self.children[i];
                let Some(ready) = &child.ready else { continue };
                let url = format!("{}/", ready.api.trim_end_matches('/'));
                let view = match self.http.get(&url).send().await {
                    Ok(r) => r.json::<serde_json::Value>().await.ok(),
                    Err(e) => {
                        last = format!("{}: GET {url}: {e}", child.spec.name);
                        None
                    }
                };
                let cluster = view.as_ref().map(|v| &v["cluster"]);
                let leader =
                    cluster.and_then(|c| Some((c["leaderId"].as_u64()?, c["term"].as_u64()?)));
                let role = cluster
                    .and_then(|c| c["role"].as_str())
                    .unwrap_or("unknown");
                match leader {
                    Some(leader) => {
                        views.insert(child.spec.name.clone(), (leader, role.to_owned()));
                    }
                    None if last.is_empty() => {
                        last = format!("{} names no leader", child.spec.name)
                    }
                    None => {}
                }
            }
            let agreed: std::collections::BTreeSet<(u64, u64)> =
                views.values().map(|(l, _)| *l).collect();
            if views.len() == indexes.len() && agreed.len() == 1 {
                return Ok(views.into_iter().map(|(n, (_, r))| (n, r)).collect());
            }
            if last.is_empty() {
                last = format!("the nodes disagree (leader, term): {agreed:?}");
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "the global's nodes did not agree on a leader within {timeout:?}: {last} \
                     (logs in {})",
                    self.children[indexes[0]]
                        .spec
                        .log_file
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Fails naming the first child of `indexes` that has exited, `what` being what it was doing.
    fn check_alive(&mut self, indexes: &[usize], what: &str) -> anyhow::Result<()> {
        self.drain_exits();
        for &i in indexes {
            let child = &self.children[i];
            if let Some(exit) = &child.exit {
                anyhow::bail!(
                    child.with_log(format!("{} exited {what} ({exit})", child.describe()))
                );
            }
        }
        Ok(())
    }

    /// Waits until the global (child 0, reached through `global`) reports every zone in `zones`
    /// online, failing when a child exits or the deadline passes; the error names the first zone
    /// still offline and its log.
    async fn wait_online(
        &mut self,
        zones: &[usize],
        global: &ApiClient,
        layout: &Layout,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let names: Vec<String> = zones
            .iter()
            .map(|&i| self.children[i].spec.name.clone())
            .collect();
        let url = global.url(&["zones".to_owned(), "_overview".to_owned()]);
        let mut last: Vec<(String, String)> = names
            .iter()
            .map(|n| (n.clone(), "no answer yet".to_owned()))
            .collect();
        let mut pause = Duration::from_millis(20);
        loop {
            let mut watched = vec![0];
            watched.extend_from_slice(zones);
            self.check_alive(&watched, "before every zone was online")?;
            let now = Instant::now();
            let answer = tokio::time::timeout(
                deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(100)),
                global.zones_overview(),
            )
            .await;
            match answer {
                Ok(Ok((_, items))) => {
                    let overview = ZoneOverview::from_items(&items)
                        .with_context(|| format!("unexpected answer to GET {url}"))?;
                    last = not_online(&names, &overview);
                    if last.is_empty() {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => {
                    let e = format!("{e:#}");
                    for entry in &mut last {
                        entry.1 = format!("GET {url} failed: {e}");
                    }
                }
                Err(_) => {
                    for entry in &mut last {
                        entry.1 = format!("GET {url} did not answer");
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let (name, state) = &last[0];
                let i = zones
                    .iter()
                    .copied()
                    .find(|&i| &self.children[i].spec.name == name)
                    .unwrap_or(zones[0]);
                let child = &self.children[i];
                let others = if last.len() > 1 {
                    let rest: Vec<&str> = last[1..].iter().map(|(n, _)| n.as_str()).collect();
                    format!(" (nor did {})", rest.join(", "))
                } else {
                    String::new()
                };
                anyhow::bail!(child.with_log(format!(
                    "{} did not come online on the global within {timeout:?}{others}: last seen \
                     {state} (the global's log is {})",
                    child.describe(),
                    // Child 0: the global, or node 1 of a multi-node global (the one asked).
                    layout.log_file(&self.children[0].spec.name).display()
                )));
            }
            let sleep = pause.min(deadline - now);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                Some(exit) = self.exits.recv() => { self.record(exit); }
            }
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.children.len())
            .filter(|&i| self.children[i].exit.is_none())
            .collect()
    }

    /// Stops every running child: the demo's processes first (each proxy deregisters from a
    /// zone CP still running), then the control planes. Returns one line per child that did not
    /// stop cleanly.
    async fn shutdown(&mut self, grace: Duration, signals: &mut StopSignals) -> Vec<String> {
        self.drain_exits();
        let (planes, demo): (Vec<usize>, Vec<usize>) =
            (0..self.children.len()).partition(|&i| self.children[i].spec.role.is_control_plane());
        let mut problems = self.stop_group(&demo, grace, signals).await;
        problems.extend(self.stop_group(&planes, grace, signals).await);
        problems
    }

    /// Stops the running children of `group`: SIGTERM, up to `grace` to exit (cut short by
    /// another Ctrl-C or SIGTERM), then SIGKILL.
    async fn stop_group(
        &mut self,
        group: &[usize],
        grace: Duration,
        signals: &mut StopSignals,
    ) -> Vec<String> {
        self.drain_exits();
        let mut problems = Vec::new();
        let running = |sup: &Supervisor| -> Vec<usize> {
            sup.running()
                .into_iter()
                .filter(|i| group.contains(i))
                .collect()
        };
        // Zones first, the global last, so zones never see their global vanish first.
        for i in running(self).into_iter().rev() {
            if let Err(e) = process::send_signal(self.children[i].pid, Signal::Term) {
                problems.push(format!(
                    "cannot send SIGTERM to {}: {e}",
                    self.children[i].describe()
                ));
            }
        }
        let terminated = running(self);
        let hurried = tokio::select! {
            _ = self.wait_exits(group, Instant::now() + grace) => None,
            sig = signals.recv() => Some(sig),
        };
        let mut killed = Vec::new();
        for i in running(self) {
            let why = match hurried {
                Some(sig) => format!("{sig} received again"),
                None => format!("did not exit within {grace:?} of SIGTERM"),
            };
            problems.push(format!("{} {why}; killed it", self.children[i].describe()));
            let _ = process::send_signal(self.children[i].pid, Signal::Kill);
            killed.push(i);
        }
        self.wait_exits(group, Instant::now() + Duration::from_secs(5))
            .await;
        for i in running(self) {
            problems.push(format!(
                "{} is still running after SIGKILL",
                self.children[i].describe()
            ));
        }
        for i in terminated.into_iter().filter(|i| !killed.contains(i)) {
            let child = &self.children[i];
            if let Some(exit) = child.exit.as_ref().filter(|e| !e.success) {
                problems.push(format!("{} stopped with {exit}", child.describe()));
            }
        }
        problems
    }

    /// Waits until every child of `group` has exited, or `deadline`.
    async fn wait_exits(&mut self, group: &[usize], deadline: Instant) {
        while self.running().iter().any(|i| group.contains(i)) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match tokio::time::timeout(deadline - now, self.exits.recv()).await {
                Ok(Some(exit)) => {
                    self.record(exit);
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Refuses to start when another `meshctl up` is running on the same directory.
fn take_lock(layout: &Layout) -> anyhow::Result<()> {
    let lock = layout.lock_file();
    if let Ok(text) = std::fs::read_to_string(&lock) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            if pid != std::process::id() && process::is_alive(pid) && is_meshctl(pid) {
                anyhow::bail!(
                    "another `meshctl up` (pid {pid}) is running with data dir {}; stop it first \
                     (or remove {} if that pid is not meshctl)",
                    layout.root.display(),
                    lock.display()
                );
            }
        }
    }
    write_atomic(&lock, format!("{}\n", std::process::id()).as_bytes(), None)
}

/// Whether process `pid` runs meshctl (a recycled pid of another program does not hold the lock).
fn is_meshctl(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim().starts_with("meshctl"),
        // Without /proc, trust the pid.
        Err(_) => true,
    }
}

fn remove_if_present(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// What `start_all` starts.
struct Plan<'a> {
    zones: u32,
    global_nodes: u32,
    global_bin: &'a Path,
    zone_bin: &'a Path,
    /// `zone-proxy` and `demo-app`, unless `--no-demo`.
    demo_bins: Option<(PathBuf, PathBuf)>,
    ready_timeout: Duration,
    online_timeout: Duration,
}

/// A client of the global's API (node `name`) with its admin token.
fn global_client(layout: &Layout, name: &str, ready: &ReadyFile) -> anyhow::Result<ApiClient> {
    ApiClient::new(&ready.api, Some(read_admin_token(layout, name)?))
}

fn read_admin_token(layout: &Layout, name: &str) -> anyhow::Result<String> {
    let path = layout.admin_token(name);
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the global admin token {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// Asks the global for zone `name`'s token and writes it where the zone reads it (mode 0600).
async fn issue_zone_token(global: &ApiClient, layout: &Layout, name: &str) -> anyhow::Result<()> {
    let token = global
        .generate_zone_token(name, ZONE_TOKEN_VALIDITY)
        .await
        .with_context(|| format!("cannot get a zone token for {name} from the global"))?;
    write_atomic(&layout.zone_token(name), token.as_bytes(), Some(0o600))
}

/// What `start_all` started: the endpoints, the demo when one runs, and each global node's Raft
/// role by name (empty for a single node).
type Started = (Endpoints, Option<demo::DemoPlan>, BTreeMap<String, String>);

/// Starts everything and waits until it is ready and every zone is online.
async fn start_all(
    sup: &mut Supervisor,
    layout: &Layout,
    plan: Plan<'_>,
) -> anyhow::Result<Started> {
    // The global first: zones need its KDS address, its CA and a token it issued.
    let first = global_name(plan.global_nodes, 1);
    let roles = if plan.global_nodes == 1 {
        sup.spawn(global_spec(layout, plan.global_bin))?;
        sup.wait_ready(&[0], layout, plan.ready_timeout).await?;
        BTreeMap::new()
    } else {
        start_global_cluster(sup, layout, &plan).await?
    };
    let global_ready = sup.children[0]
        .ready
        .clone()
        .context("the global is ready but its ready file was not read")?;
    if plan.zones > 0 {
        let mut link = KdsLink::from_ready(&global_ready, &layout.ready_file(&first))?;
        if !link.ca_file.is_file() {
            anyhow::bail!(sup.children[0].with_log(format!(
                "the global's KDS CA certificate {} (\"kdsCa\" in {}) is not a file",
                link.ca_file.display(),
                layout.ready_file(&first).display()
            )));
        }
        // Every node's KDS address: the zone dials them in turn and fails over (one KDS
        // identity, so one CA, for all).
        let mut addresses = vec![link.address.clone()];
        for id in 2..=plan.global_nodes {
            let name = global_name(plan.global_nodes, id);
            let ready = sup.children[id as usize - 1]
                .ready
                .as_ref()
                .with_context(|| format!("{name} is ready but its ready file was not read"))?;
            addresses.push(KdsLink::from_ready(ready, &layout.ready_file(&name))?.address);
        }
        link.address = addresses.join(",");
        let global = global_client(layout, &first, &global_ready)?;
        let names = zone_names(plan.zones);
        for name in &names {
            issue_zone_token(&global, layout, name).await?;
        }
        let zones: Vec<usize> = names
            .iter()
            .map(|name| {
                sup.spawn(zone_spec(layout, name, plan.zone_bin, &link))?;
                Ok(sup.children.len() - 1)
            })
            .collect::<anyhow::Result<_>>()?;
        sup.wait_ready(&zones, layout, plan.ready_timeout).await?;
        sup.wait_online(&zones, &global, layout, plan.online_timeout)
            .await?;
    }
    let ready: Vec<(&ProcessSpec, &ReadyFile)> = sup
        .children
        .iter()
        .filter_map(|c| c.ready.as_ref().map(|r| (&c.spec, r)))
        .collect();
    let mut endpoints = endpoints_of(&ready, &roles)?;
    let demo = match &plan.demo_bins {
        Some(bins) if plan.zones > 0 => {
            let demo = start_demo(sup, layout, &endpoints, &global_ready, bins, &plan).await?;
            endpoints.demo = Some(demo.endpoints());
            Some(demo)
        }
        _ => None,
    };
    Ok((endpoints, demo, roles))
}

/// Starts the nodes of a multi-node global (children 0..N) as docs/raft.md describes: the
/// peers' certificates (`global-cp raft-certs`), node 1 first so that it makes the KDS identity
/// all nodes share and the admin token copied to the others, then the rest; waits until every
/// node names the same leader. Returns each node's role by name.
async fn start_global_cluster(
    sup: &mut Supervisor,
    layout: &Layout,
    plan: &Plan<'_>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let nodes = plan.global_nodes;
    let cluster = GlobalCluster::prepare(layout, nodes)?;
    let ids = (1..=nodes).map(|i| i.to_string()).collect::<Vec<_>>();
    let output = tokio::process::Command::new(plan.global_bin)
        .arg("raft-certs")
        .arg("--out")
        .arg(&cluster.raft_tls_dir)
        .arg("--ids")
        .arg(ids.join(","))
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {} raft-certs", plan.global_bin.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "{} raft-certs --out {} failed ({}): {}",
            plan.global_bin.display(),
            cluster.raft_tls_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    sup.spawn(global_node_spec(
        layout,
        plan.global_bin,
        nodes,
        1,
        &cluster,
    ))?;
    sup.wait_ready(&[0], layout, plan.ready_timeout).await?;
    let first = global_name(nodes, 1);
    let token = layout.admin_token(&first);
    for id in 2..=nodes {
        let name = global_name(nodes, id);
        let target = layout.admin_token(&name);
        if !target.exists() {
            std::fs::create_dir_all(layout.data_dir(&name))
                .with_context(|| format!("cannot create {}", layout.data_dir(&name).display()))?;
            let text = std::fs::read(&token)
                .with_context(|| format!("cannot read {}", token.display()))?;
            write_atomic(&target, &text, Some(0o600))?;
        }
        sup.spawn(global_node_spec(
            layout,
            plan.global_bin,
            nodes,
            id,
            &cluster,
        ))?;
    }
    let all: Vec<usize> = (0..nodes as usize).collect();
    sup.wait_ready(&all, layout, plan.ready_timeout).await?;
    sup.wait_leader(&all, plan.ready_timeout).await
}

/// Prepares the default mesh, then starts the demo's proxies and services and waits until they
/// are ready.
async fn start_demo(
    sup: &mut Supervisor,
    layout: &Layout,
    endpoints: &Endpoints,
    global_ready: &ReadyFile,
    (zone_proxy, demo_app): &(PathBuf, PathBuf),
    plan: &Plan<'_>,
) -> anyhow::Result<demo::DemoPlan> {
    let global = global_client(layout, &global_name(plan.global_nodes, 1), global_ready)?;
    let mut zones = std::collections::BTreeMap::new();
    for (name, zone) in &endpoints.zones {
        let path = layout.admin_token(name);
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {name}'s admin token {}", path.display()))?;
        zones.insert(
            name.clone(),
            ApiClient::new(&zone.api, Some(token.trim().to_owned()))?,
        );
    }
    let ordered: Vec<(String, ApiClient)> = zone_names(plan.zones)
        .into_iter()
        .filter_map(|z| zones.get(&z).map(|api| (z, api.clone())))
        .collect();
    demo::prepare_mesh(&global, &ordered, plan.online_timeout).await?;
    let xds = endpoints
        .zones
        .iter()
        .map(|(name, z)| (name.clone(), z.xds.clone()))
        .collect();
    let demo = demo::plan(layout, &zone_names(plan.zones), &xds, demo::free_port)?;
    demo::issue_tokens(layout, &demo, &zones).await?;
    let first = sup.children.len();
    for process in &demo.processes {
        sup.spawn(demo::spec(layout, process, zone_proxy, demo_app))?;
    }
    let started: Vec<usize> = (first..sup.children.len()).collect();
    sup.wait_ready(&started, layout, plan.ready_timeout).await?;
    Ok(demo)
}

/// Runs `meshctl up` until it is stopped.
pub async fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let root = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("cannot resolve data dir {}", args.data_dir.display()))?;
    let layout = Layout::new(root);
    for dir in ["logs", "run"] {
        let dir = layout.root.join(dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    take_lock(&layout)?;
    remove_if_present(&layout.endpoints());

    let own_exe = std::env::current_exe().ok();
    let path = std::env::var_os("PATH");
    let global_bin = locate_binary(Role::Global.binary(), own_exe.as_deref(), path.as_ref())?;
    let zone_bin = if args.zones > 0 {
        locate_binary(Role::Zone.binary(), own_exe.as_deref(), path.as_ref())?
    } else {
        PathBuf::new()
    };
    let demo_bins = if args.zones > 0 && !args.no_demo {
        let find = |role: Role| locate_binary(role.binary(), own_exe.as_deref(), path.as_ref());
        Some((find(Role::Sidecar)?, find(Role::App)?))
    } else {
        None
    };
    let plan = Plan {
        zones: args.zones,
        global_nodes: args.global_nodes,
        global_bin: &global_bin,
        zone_bin: &zone_bin,
        demo_bins,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        online_timeout: Duration::from_secs(args.online_timeout),
    };

    let mut signals = StopSignals::install()?;
    let mut sup = Supervisor::new()?;
    let grace = Duration::from_secs(args.stop_timeout);

    let started = tokio::select! {
        result = start_all(&mut sup, &layout, plan) => result.map(Some),
        sig = signals.recv() => {
            eprintln!("{sig} received while starting; stopping");
            Ok(None)
        }
    };
    let (endpoints, demo, roles) = match started {
        Ok(Some(started)) => started,
        Ok(None) => {
            report(&sup.shutdown(grace, &mut signals).await);
            finish(&layout);
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            report(&sup.shutdown(grace, &mut signals).await);
            finish(&layout);
            return Err(e.context(format!(
                "meshctl up failed to start the federation in {}",
                layout.root.display()
            )));
        }
    };

    let written = write_outputs(&layout, &global_name(args.global_nodes, 1), &endpoints);
    if let Err(e) = written {
        report(&sup.shutdown(grace, &mut signals).await);
        finish(&layout);
        return Err(e);
    }
    print_status(&sup, &layout, demo.as_ref(), &roles);

    let died = tokio::select! {
        sig = signals.recv() => {
            eprintln!("{sig} received; stopping {} process(es)", sup.running().len());
            None
        }
        index = sup.next_exit() => Some(index),
    };
    let problems = sup.shutdown(grace, &mut signals).await;
    report(&problems);
    finish(&layout);
    match died {
        None => {
            println!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Some(i) => {
            let child = &sup.children[i];
            let exit = child.exit.as_ref().map(Exit::to_string).unwrap_or_default();
            Err(anyhow::anyhow!(child.with_log(format!(
                "{} exited unexpectedly ({exit}); stopped the others",
                child.describe()
            ))))
        }
    }
}

fn write_outputs(layout: &Layout, first: &str, endpoints: &Endpoints) -> anyhow::Result<()> {
    // Node 1's API: any node of a multi-node global takes writes.
    let token = read_admin_token(layout, first)?;
    ConfigFile {
        api_url: Some(endpoints.global.api.clone()),
        token: Some(token),
    }
    .save(&layout.config())?;
    // endpoints.json last: whoever waits for it finds the config already in place.
    write_atomic(&layout.endpoints(), endpoints.to_json().as_bytes(), None)
}

fn print_status(
    sup: &Supervisor,
    layout: &Layout,
    demo: Option<&demo::DemoPlan>,
    roles: &BTreeMap<String, String>,
) {
    let rows: Vec<(&ProcessSpec, &ReadyFile, u32)> = sup
        .children
        .iter()
        .filter_map(|c| c.ready.as_ref().map(|r| (&c.spec, r, c.pid)))
        .collect();
    let zones = rows.iter().filter(|(s, _, _)| s.role == Role::Zone).count();
    println!("{}", status_table(&rows, roles));
    let global = match roles.len() {
        0 => "1 global".to_owned(),
        n => format!("a {n}-node global"),
    };
    println!(
        "Meridian is up: {global} and {zones} zone(s) connected to it over KDS, data in {}",
        layout.root.display()
    );
    println!("  endpoints: {}", layout.endpoints().display());
    println!("  logs:      {}", layout.root.join("logs").display());
    println!("Use it with:");
    println!(
        "  meshctl --config {} get meshes",
        layout.config().display()
    );
    println!(
        "  meshctl --config {} inspect zones",
        layout.config().display()
    );
    if let Some(demo) = demo {
        let rows: Vec<(&demo::DemoProcess, u32)> = demo
            .processes
            .iter()
            .filter_map(|p| {
                let child = sup.children.iter().find(|c| c.spec.name == p.name)?;
                Some((p, child.pid))
            })
            .collect();
        println!();
        println!("{}", demo::status_table(&rows));
        println!(
            "The demo: an ingress and an egress per zone, frontend in zone-1 and backend in {} \
             (each behind its sidecar), mTLS on the default mesh.",
            demo.answered_by
        );
        println!(
            "Send a request through zone-1's frontend sidecar, answered by backend in {}:",
            demo.answered_by
        );
        println!("  curl {}", demo.request);
    }
    println!("Press Ctrl-C to stop.");
}

fn report(problems: &[String]) {
    for p in problems {
        eprintln!("warning: {p}");
    }
}

/// Removes what only describes a running federation.
fn finish(layout: &Layout) {
    remove_if_present(&layout.endpoints());
    if let Ok(entries) = std::fs::read_dir(layout.root.join("run")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Zone tokens are secrets, and issued again at each start.
            if name.ends_with(".ready.json") || name.ends_with(".token") {
                remove_if_present(&entry.path());
            }
        }
    }
    remove_if_present(&layout.lock_file());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> KdsLink {
        KdsLink {
            address: "https://127.0.0.1:3".into(),
            ca_file: PathBuf::from("/d/global/kds/ca.crt"),
        }
    }

    fn args(s: &ProcessSpec) -> Vec<String> {
        s.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_lines_follow_the_contract() {
        let layout = Layout::new("/d");
        let global = global_spec(&layout, Path::new("/bin/global-cp"));
        assert_eq!(global.name, "global");
        assert_eq!(global.role, Role::Global);
        assert_eq!(global.binary, Path::new("/bin/global-cp"));
        assert_eq!(
            args(&global),
            [
                "--data-dir",
                "/d/global",
                "--api-addr",
                "127.0.0.1:0",
                "--diagnostics-addr",
                "127.0.0.1:0",
                "--kds-addr",
                "127.0.0.1:0",
                "--ready-file",
                "/d/run/global.ready.json"
            ]
        );
        assert_eq!(zone_names(2), ["zone-1", "zone-2"]);
        assert!(zone_names(0).is_empty());
        let zone = zone_spec(&layout, "zone-2", Path::new("/bin/zone-cp"), &link());
        assert_eq!(zone.name, "zone-2");
        assert_eq!(zone.role, Role::Zone);
        assert_eq!(zone.binary, Path::new("/bin/zone-cp"));
        assert_eq!(
            args(&zone),
            [
                "--zone",
                "zone-2",
                "--mode",
                "zone",
                "--global-kds-address",
                "https://127.0.0.1:3",
                "--kds-ca-file",
                "/d/global/kds/ca.crt",
                "--zone-token-file",
                "/d/run/zone-2.token",
                "--data-dir",
                "/d/zone-2",
                "--api-addr",
                "127.0.0.1:0",
                "--diagnostics-addr",
                "127.0.0.1:0",
                "--xds-addr",
                "127.0.0.1:0",
                "--ready-file",
                "/d/run/zone-2.ready.json"
            ]
        );
        assert_eq!(zone.log_file, Path::new("/d/logs/zone-2.log"));
        assert_eq!(
            layout.admin_token("global"),
            Path::new("/d/global/admin-token")
        );
        assert_eq!(
            layout.zone_token("zone-1"),
            Path::new("/d/run/zone-1.token")
        );
        assert_eq!(layout.endpoints(), Path::new("/d/endpoints.json"));
        assert_eq!(layout.config(), Path::new("/d/meshctl.yaml"));
    }

    #[test]
    fn a_global_cluster_keeps_its_peers_and_each_node_gets_its_own_id() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        let cluster = GlobalCluster::prepare(&layout, 3).unwrap();
        assert_eq!(peer_ids(&cluster.peers), [1, 2, 3]);
        // A restart reuses the addresses the nodes' logs hold.
        assert_eq!(GlobalCluster::prepare(&layout, 3).unwrap(), cluster);
        let err = GlobalCluster::prepare(&layout, 5).unwrap_err().to_string();
        assert!(err.contains("not nodes 1..5"), "{err}");

        let node = global_node_spec(&layout, Path::new("/bin/global-cp"), 3, 2, &cluster);
        assert_eq!(node.name, "global-2");
        let a = args(&node);
        let own = cluster
            .peers
            .split(',')
            .nth(1)
            .unwrap()
            .strip_prefix("2=")
            .unwrap();
        for pair in [
            ["--node-id", "2"],
            ["--peers", cluster.peers.as_str()],
            ["--raft-listen", own],
        ] {
            assert!(a.windows(2).any(|w| w == pair), "{pair:?} in {a:?}");
        }
        assert_eq!(global_name(1, 1), "global");
        assert_eq!(global_name(3, 3), "global-3");
    }

    #[test]
    fn the_kds_link_comes_from_the_global_ready_file() {
        let path = Path::new("/d/run/global.ready.json");
        let mut ready = ReadyFile {
            api: "http://127.0.0.1:1".into(),
            diagnostics: "http://127.0.0.1:2".into(),
            kds: Some("127.0.0.1:3".into()),
            xds: None,
            kds_ca: Some("/d/global/kds/ca.crt".into()),
        };
        assert_eq!(KdsLink::from_ready(&ready, path).unwrap(), link());
        ready.kds = Some("https://[::1]:3".into());
        assert_eq!(
            KdsLink::from_ready(&ready, path).unwrap().address,
            "https://[::1]:3"
        );
        ready.kds_ca = None;
        let err = KdsLink::from_ready(&ready, path).unwrap_err().to_string();
        assert!(err.contains("kdsCa"), "{err}");
        assert!(err.contains("global.ready.json"), "{err}");
        ready.kds = Some(" ".into());
        let err = KdsLink::from_ready(&ready, path).unwrap_err().to_string();
        assert!(err.contains("no \"kds\" address"), "{err}");
    }

    #[test]
    fn zones_count_as_online_only_when_the_global_says_so() {
        let names = zone_names(3);
        let zone = |name: &str, status: &str| ZoneOverview {
            name: name.into(),
            status: status.into(),
            ..ZoneOverview::default()
        };
        let overview = [
            zone("zone-1", "online"),
            zone("zone-2", "offline"),
            zone("zone-9", "online"),
        ];
        assert_eq!(
            not_online(&names, &overview),
            [
                ("zone-2".to_owned(), "status offline".to_owned()),
                ("zone-3".to_owned(), "not listed".to_owned())
            ]
        );
        let overview = [
            zone("zone-3", "Online"),
            zone("zone-2", "online"),
            zone("zone-1", "online"),
        ];
        assert!(not_online(&names, &overview).is_empty());
        assert_eq!(
            not_online(&names[..1], &[zone("zone-1", "")]),
            [("zone-1".to_owned(), "no status".to_owned())]
        );
    }

    #[test]
    fn endpoints_and_status_from_ready_files() {
        let layout = Layout::new("/d");
        let global_spec = global_spec(&layout, Path::new("g"));
        let zone_spec = zone_spec(&layout, "zone-1", Path::new("z"), &link());
        let global = ReadyFile {
            api: "http://127.0.0.1:1".into(),
            diagnostics: "http://127.0.0.1:2".into(),
            kds: Some("127.0.0.1:3".into()),
            xds: None,
            kds_ca: Some("/d/global/kds/ca.crt".into()),
        };
        let zone = ReadyFile {
            api: "http://127.0.0.1:4".into(),
            diagnostics: "http://127.0.0.1:5".into(),
            kds: None,
            xds: Some("127.0.0.1:6".into()),
            kds_ca: None,
        };
        let none = BTreeMap::new();
        let endpoints =
            endpoints_of(&[(&global_spec, &global), (&zone_spec, &zone)], &none).unwrap();
        assert_eq!(endpoints.global.kds, "127.0.0.1:3");
        assert_eq!(
            endpoints.global.kds_ca.as_deref(),
            Some("/d/global/kds/ca.crt")
        );
        assert_eq!(endpoints.zones["zone-1"].xds, "127.0.0.1:6");
        assert_eq!(endpoints.zones["zone-1"].api, "http://127.0.0.1:4");

        let err = endpoints_of(&[(&zone_spec, &global)], &none).unwrap_err();
        assert!(err.to_string().contains("zone-1.ready.json"), "{err}");

        let table = status_table(
            &[(&global_spec, &global, 10), (&zone_spec, &zone, 11)],
            &none,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME     ROLE     API"), "{table}");
        assert!(lines[0].ends_with("KDS/XDS       PID"), "{table}");
        assert!(
            lines[1].contains("global   global   http://127.0.0.1:1"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("zone-1   zone     http://127.0.0.1:4"),
            "{table}"
        );
        assert!(lines[2].contains("127.0.0.1:6   11"), "{table}");
    }

    /// A stand-in global: `POST /tokens/zone` answers a token naming the zone,
    /// `GET /zones/_overview` reports zone-1 online and zone-2 offline.
    async fn fake_global() -> String {
        use axum::routing::{get, post};
        let app = axum::Router::new()
            .route(
                "/tokens/zone",
                post(
                    |axum::Json(body): axum::Json<serde_json::Value>| async move {
                        let token = format!("token-of-{}-for-{}", body["zone"], body["validFor"]);
                        axum::Json(serde_json::json!({ "token": token }))
                    },
                ),
            )
            .route(
                "/zones/_overview",
                get(|| async {
                    axum::Json(serde_json::json!({"total": 2, "items": [
                        {"name": "zone-1", "status": "online"},
                        {"name": "zone-2", "status": "offline"}
                    ], "next": null}))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// A supervisor that believes it runs the global and `zones` (no real processes).
    fn supervisor_of(layout: &Layout, zones: &[&str]) -> Supervisor {
        let mut sup = Supervisor::new().unwrap();
        let mut specs = vec![global_spec(layout, Path::new("g"))];
        specs.extend(
            zones
                .iter()
                .map(|z| zone_spec(layout, z, Path::new("z"), &link())),
        );
        for (pid, spec) in specs.into_iter().enumerate() {
            sup.children.push(Child {
                spec,
                pid: 100 + pid as u32,
                exit: None,
                ready: None,
                healthy: true,
            });
        }
        sup
    }

    #[tokio::test]
    async fn zone_tokens_are_written_for_their_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let global = ApiClient::new(&fake_global().await, Some("admin".into())).unwrap();
        issue_zone_token(&global, &layout, "zone-1").await.unwrap();
        let path = layout.zone_token("zone-1");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "token-of-\"zone-1\"-for-\"8760h\""
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let unreachable = ApiClient::new("http://127.0.0.1:1", None).unwrap();
        let err = issue_zone_token(&unreachable, &layout, "zone-2")
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("zone token for zone-2"), "{text}");
        assert!(text.contains("/tokens/zone"), "{text}");
    }

    #[tokio::test]
    async fn waiting_for_zones_online_names_the_offline_zone_and_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let global = ApiClient::new(&fake_global().await, None).unwrap();

        let mut sup = supervisor_of(&layout, &["zone-1"]);
        sup.wait_online(&[1], &global, &layout, Duration::from_secs(5))
            .await
            .unwrap();

        let mut sup = supervisor_of(&layout, &["zone-1", "zone-2", "zone-3"]);
        let started = Instant::now();
        let err = sup
            .wait_online(&[1, 2, 3], &global, &layout, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            err.starts_with("zone-cp zone-2 (pid 102) did not come online"),
            "{err}"
        );
        assert!(err.contains("within 300ms (nor did zone-3)"), "{err}");
        assert!(err.contains("last seen status offline"), "{err}");
        assert!(err.contains("logs/global.log"), "{err}");
        assert!(err.contains("see its log"), "{err}");
        assert!(err.contains("logs/zone-2.log"), "{err}");

        // A zone that exits while waiting is reported at once.
        let mut sup = supervisor_of(&layout, &["zone-2"]);
        sup.exits_tx
            .send((
                1,
                Exit {
                    text: "exit status: 2".into(),
                    success: false,
                },
            ))
            .unwrap();
        let err = sup
            .wait_online(&[1], &global, &layout, Duration::from_secs(30))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "zone-cp zone-2 (pid 101) exited before every zone was online (exit status: 2)"
            ),
            "{err}"
        );

        // A global that does not answer the overview is named with the URL.
        let silent = ApiClient::new("http://127.0.0.1:1", None).unwrap();
        let mut sup = supervisor_of(&layout, &["zone-1"]);
        let err = sup
            .wait_online(&[1], &silent, &layout, Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GET http://127.0.0.1:1/zones/_overview failed"),
            "{err}"
        );
    }

    #[test]
    fn binaries_are_found_beside_meshctl_then_on_path() {
        let beside = tempfile::tempdir().unwrap();
        let on_path = tempfile::tempdir().unwrap();
        let exe = beside.path().join("meshctl");
        std::fs::write(on_path.path().join("global-cp"), "").unwrap();
        let path = std::env::join_paths([on_path.path()]).unwrap();
        assert_eq!(
            locate_binary("global-cp", Some(&exe), Some(&path)).unwrap(),
            on_path.path().join("global-cp")
        );
        std::fs::write(beside.path().join("global-cp"), "").unwrap();
        assert_eq!(
            locate_binary("global-cp", Some(&exe), Some(&path)).unwrap(),
            beside.path().join("global-cp")
        );
        let err = locate_binary("zone-cp", Some(&exe), Some(&path)).unwrap_err();
        assert!(err.to_string().contains("cannot find zone-cp"), "{err}");
        assert!(err.to_string().contains("cargo build"), "{err}");
    }

    #[test]
    fn log_tail_shows_only_this_run() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(
            &log,
            format!("{LOG_MARKER}a ===\nold\n{LOG_MARKER}b ===\nnew 1\nnew 2\nnew 3\n"),
        )
        .unwrap();
        assert_eq!(log_tail(&log, 2), "new 2\nnew 3");
        assert_eq!(log_tail(&log, 10), "new 1\nnew 2\nnew 3");
        assert_eq!(log_tail(&dir.path().join("missing.log"), 5), "");
    }
}
