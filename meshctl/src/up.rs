//! `meshctl up`: a local federation in one command. Starts one `global-cp` and N `zone-cp` as
//! child processes on free loopback ports, waits until each is ready, writes `endpoints.json` and
//! a `meshctl.yaml` config pointing at the global API, then supervises: Ctrl-C or SIGTERM stops
//! every child (SIGTERM, then SIGKILL after a grace period) and exits 0; a child that dies on its
//! own is reported and the others are stopped. Data lives under the data directory and survives
//! restarts.
//!
//! Layout of the data directory:
//! - `global/`, `zone-1/`, ...: each control plane's `--data-dir` (its admin token is
//!   `admin-token` inside);
//! - `logs/<name>.log`: each child's stdout and stderr, appended across runs;
//! - `run/<name>.ready.json`, `run/<name>.pid`, `run/up.pid`: this run's bookkeeping;
//! - `endpoints.json` and `meshctl.yaml`: written once everything is ready, removed on shutdown
//!   (`meshctl.yaml` is kept: the token stays valid across restarts).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::ConfigFile;
use crate::endpoints::{Endpoints, GlobalEndpoints, ReadyFile, ZoneEndpoints};
use crate::fsutil::write_atomic;
use crate::process::{self, Signal};

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
    /// Seconds each child gets to exit after SIGTERM before it is killed.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
}

/// What a child process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Global,
    Zone,
}

impl Role {
    pub fn binary(self) -> &'static str {
        match self {
            Role::Global => "global-cp",
            Role::Zone => "zone-cp",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Global => "global",
            Role::Zone => "zone",
        }
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
}

const LOOPBACK_ANY_PORT: &str = "127.0.0.1:0";

/// The global's and the zones' command lines (the `global-cp` / `zone-cp` contract).
pub fn process_specs(
    layout: &Layout,
    zones: u32,
    global_bin: &Path,
    zone_bin: &Path,
) -> Vec<ProcessSpec> {
    let spec = |name: String, role: Role, binary: &Path, mut args: Vec<OsString>| {
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
        }
    };
    let mut specs = vec![spec("global".into(), Role::Global, global_bin, Vec::new())];
    for k in 1..=zones {
        let name = format!("zone-{k}");
        let args = vec![
            "--zone".into(),
            name.clone().into(),
            "--mode".into(),
            "standalone".into(),
        ];
        specs.push(spec(name, Role::Zone, zone_bin, args));
    }
    specs
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

/// The endpoints file for a set of ready children.
pub fn endpoints_of(children: &[(&ProcessSpec, &ReadyFile)]) -> anyhow::Result<Endpoints> {
    let mut global = None;
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
                global = Some(GlobalEndpoints {
                    api: ready.api.clone(),
                    kds,
                    diagnostics: ready.diagnostics.clone(),
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
        }
    }
    Ok(Endpoints {
        global: global.context("no global control plane was started")?,
        zones,
    })
}

/// The status table printed once everything is ready.
pub fn status_table(children: &[(&ProcessSpec, &ReadyFile, u32)]) -> String {
    let rows: Vec<Vec<String>> = children
        .iter()
        .map(|(spec, ready, pid)| {
            let sync = match spec.role {
                Role::Global => ready.kds.clone(),
                Role::Zone => ready.xds.clone(),
            };
            vec![
                spec.name.clone(),
                spec.role.label().to_owned(),
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

    fn running(&self) -> Vec<usize> {
        (0..self.children.len())
            .filter(|&i| self.children[i].exit.is_none())
            .collect()
    }

    /// Stops every running child: SIGTERM, up to `grace` to exit (cut short by another Ctrl-C or
    /// SIGTERM), then SIGKILL. Returns one line per child that did not stop cleanly.
    async fn shutdown(&mut self, grace: Duration, signals: &mut StopSignals) -> Vec<String> {
        self.drain_exits();
        let mut problems = Vec::new();
        // Zones first, the global last, so zones never see their global vanish first.
        for i in self.running().into_iter().rev() {
            if let Err(e) = process::send_signal(self.children[i].pid, Signal::Term) {
                problems.push(format!(
                    "cannot send SIGTERM to {}: {e}",
                    self.children[i].describe()
                ));
            }
        }
        let terminated = self.running();
        let hurried = tokio::select! {
            _ = self.wait_exits(Instant::now() + grace) => None,
            sig = signals.recv() => Some(sig),
        };
        let mut killed = Vec::new();
        for i in self.running() {
            let why = match hurried {
                Some(sig) => format!("{sig} received again"),
                None => format!("did not exit within {grace:?} of SIGTERM"),
            };
            problems.push(format!("{} {why}; killed it", self.children[i].describe()));
            let _ = process::send_signal(self.children[i].pid, Signal::Kill);
            killed.push(i);
        }
        self.wait_exits(Instant::now() + Duration::from_secs(5))
            .await;
        for i in self.running() {
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

    async fn wait_exits(&mut self, deadline: Instant) {
        while !self.running().is_empty() {
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

/// Starts everything and waits until it is ready; returns the endpoints.
async fn start_all(
    sup: &mut Supervisor,
    specs: Vec<ProcessSpec>,
    layout: &Layout,
    timeout: Duration,
) -> anyhow::Result<Endpoints> {
    let mut specs = specs.into_iter();
    // The global first: zones will dial its KDS address once they run in zone mode.
    if let Some(global) = specs.next() {
        sup.spawn(global)?;
        sup.wait_ready(&[0], layout, timeout).await?;
    }
    let zones: Vec<usize> = specs
        .map(|spec| {
            sup.spawn(spec)?;
            Ok(sup.children.len() - 1)
        })
        .collect::<anyhow::Result<_>>()?;
    sup.wait_ready(&zones, layout, timeout).await?;
    let ready: Vec<(&ProcessSpec, &ReadyFile)> = sup
        .children
        .iter()
        .filter_map(|c| c.ready.as_ref().map(|r| (&c.spec, r)))
        .collect();
    endpoints_of(&ready)
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
    let specs = process_specs(&layout, args.zones, &global_bin, &zone_bin);

    let mut signals = StopSignals::install()?;
    let mut sup = Supervisor::new()?;
    let timeout = Duration::from_secs(args.ready_timeout);
    let grace = Duration::from_secs(args.stop_timeout);

    let started = tokio::select! {
        result = start_all(&mut sup, specs, &layout, timeout) => result.map(Some),
        sig = signals.recv() => {
            eprintln!("{sig} received while starting; stopping");
            Ok(None)
        }
    };
    let endpoints = match started {
        Ok(Some(endpoints)) => endpoints,
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

    let written = write_outputs(&layout, &endpoints);
    if let Err(e) = written {
        report(&sup.shutdown(grace, &mut signals).await);
        finish(&layout);
        return Err(e);
    }
    print_status(&sup, &layout);

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

fn write_outputs(layout: &Layout, endpoints: &Endpoints) -> anyhow::Result<()> {
    let token_path = layout.admin_token("global");
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| {
            format!(
                "cannot read the global admin token {}",
                token_path.display()
            )
        })?
        .trim()
        .to_owned();
    ConfigFile {
        api_url: Some(endpoints.global.api.clone()),
        token: Some(token),
    }
    .save(&layout.config())?;
    // endpoints.json last: whoever waits for it finds the config already in place.
    write_atomic(&layout.endpoints(), endpoints.to_json().as_bytes(), None)
}

fn print_status(sup: &Supervisor, layout: &Layout) {
    let rows: Vec<(&ProcessSpec, &ReadyFile, u32)> = sup
        .children
        .iter()
        .filter_map(|c| c.ready.as_ref().map(|r| (&c.spec, r, c.pid)))
        .collect();
    let zones = rows.iter().filter(|(s, _, _)| s.role == Role::Zone).count();
    println!("{}", status_table(&rows));
    println!(
        "Meridian is up: 1 global and {zones} zone(s), data in {}",
        layout.root.display()
    );
    println!("  endpoints: {}", layout.endpoints().display());
    println!("  logs:      {}", layout.root.join("logs").display());
    println!("Use it with:");
    println!(
        "  meshctl --config {} get meshes",
        layout.config().display()
    );
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
            if entry.file_name().to_string_lossy().ends_with(".ready.json") {
                remove_if_present(&entry.path());
            }
        }
    }
    remove_if_present(&layout.lock_file());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_follow_the_contract() {
        let layout = Layout::new("/d");
        let specs = process_specs(
            &layout,
            2,
            Path::new("/bin/global-cp"),
            Path::new("/bin/zone-cp"),
        );
        assert_eq!(specs.len(), 3);
        let args = |s: &ProcessSpec| -> Vec<String> {
            s.args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(specs[0].name, "global");
        assert_eq!(specs[0].binary, Path::new("/bin/global-cp"));
        assert_eq!(
            args(&specs[0]),
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
        assert_eq!(specs[2].name, "zone-2");
        assert_eq!(specs[2].role, Role::Zone);
        assert_eq!(
            args(&specs[2]),
            [
                "--zone",
                "zone-2",
                "--mode",
                "standalone",
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
        assert_eq!(specs[1].log_file, Path::new("/d/logs/zone-1.log"));
        assert_eq!(
            layout.admin_token("global"),
            Path::new("/d/global/admin-token")
        );
        assert_eq!(layout.endpoints(), Path::new("/d/endpoints.json"));
        assert_eq!(layout.config(), Path::new("/d/meshctl.yaml"));
    }

    #[test]
    fn endpoints_and_status_from_ready_files() {
        let layout = Layout::new("/d");
        let specs = process_specs(&layout, 1, Path::new("g"), Path::new("z"));
        let global = ReadyFile {
            api: "http://127.0.0.1:1".into(),
            diagnostics: "http://127.0.0.1:2".into(),
            kds: Some("127.0.0.1:3".into()),
            xds: None,
        };
        let zone = ReadyFile {
            api: "http://127.0.0.1:4".into(),
            diagnostics: "http://127.0.0.1:5".into(),
            kds: None,
            xds: Some("127.0.0.1:6".into()),
        };
        let endpoints = endpoints_of(&[(&specs[0], &global), (&specs[1], &zone)]).unwrap();
        assert_eq!(endpoints.global.kds, "127.0.0.1:3");
        assert_eq!(endpoints.zones["zone-1"].xds, "127.0.0.1:6");
        assert_eq!(endpoints.zones["zone-1"].api, "http://127.0.0.1:4");

        let err = endpoints_of(&[(&specs[1], &global)]).unwrap_err();
        assert!(err.to_string().contains("zone-1.ready.json"), "{err}");

        let table = status_table(&[(&specs[0], &global, 10), (&specs[1], &zone, 11)]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME     ROLE     API"), "{table}");
        assert!(lines[0].ends_with("KDS/XDS       PID"), "{table}");
        assert!(
            lines[1].contains("global   global   http://127.0.0.1:1"),
            "{table}"
        );
        assert!(lines[2].contains("127.0.0.1:6   11"), "{table}");
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
