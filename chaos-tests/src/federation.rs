//! A whole federation in one process, on real code: a global control plane (`global_cp::run`)
//! and zone control planes (`zone_cp::run` in zone mode, KDS over TLS with zone tokens), every
//! listener on 127.0.0.1:0, data in a directory the caller owns. Tests and scenarios drive it
//! through the same REST API as `meshctl` ([`meshctl::client::ApiClient`]) and stop or restart
//! each control plane on its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use meshctl::client::ApiClient;
use meshctl::inspect::ZoneOverview;
use serde_json::Value;

/// How long a control plane gets to become ready, and the federation to converge.
pub const STARTUP: Duration = Duration::from_secs(60);

/// The future that completes when a control plane is asked to stop.
type Stopped = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A control plane task and the means to stop it.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Spawns the control plane `run` makes, given the future that stops it.
    fn spawn<F>(run: impl FnOnce(Stopped) -> F) -> Running
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        Running { stop, task }
    }

    /// Stops the task gracefully and returns its outcome.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the control plane task panicked")?
    }
}

/// The global control plane.
pub struct GlobalCp {
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT` of the REST API.
    pub api_url: String,
    /// `https://127.0.0.1:PORT` zones dial for KDS.
    pub kds_url: String,
    /// The CA file zones verify the KDS server with.
    pub kds_ca: PathBuf,
    /// The REST API with the admin token.
    pub api: ApiClient,
    /// The Raft node id of a node of a multi-node global ([`GlobalCp::start_cluster`]).
    pub node_id: Option<u64>,
    runner: GlobalRunner,
}

/// How the global runs: a task of this process, or a `global-cp` child process that a test can
/// kill outright (the in-process control planes leave detached tasks behind, so only a process
/// shows what a crash does).
/// A control plane running in-process, or as a child process with what it needs to start
/// again on the same addresses (`restart`).
enum Runner<R> {
    Task(Running),
    Process {
        child: Option<Box<tokio::process::Child>>,
        restart: R,
    },
}

impl<R> Runner<R> {
    /// The child's process id while it runs.
    fn pid(&self) -> Option<u32> {
        match self {
            Runner::Process { child, .. } => child.as_ref().and_then(|c| c.id()),
            Runner::Task(_) => None,
        }
    }

    /// `None` while it runs (or was killed on purpose); how it ended if it exited on its own.
    fn exited(&mut self, what: &str) -> Option<String> {
        match self {
            Runner::Process {
                child: Some(child), ..
            } => child.try_wait().ok().flatten().map(|s| s.to_string()),
            Runner::Process { child: None, .. } => None,
            Runner::Task(running) => running
                .task
                .is_finished()
                .then(|| format!("the in-process {what} ended")),
        }
    }
}

/// A global's runner; a process restarts on its bound addresses with the same extra arguments
/// (a cluster node's `--node-id`, `--peers`, ...).
type GlobalRunner = Runner<(GlobalAddresses, Vec<std::ffi::OsString>)>;

/// The addresses a global process listens on (from its ready file).
#[derive(Debug, Clone, Copy)]
struct GlobalAddresses {
    api: std::net::SocketAddr,
    diagnostics: std::net::SocketAddr,
    kds: std::net::SocketAddr,
}

impl GlobalAddresses {
    fn from_ready_file(ready: &Value) -> anyhow::Result<GlobalAddresses> {
        let addr = |key: &str| -> anyhow::Result<std::net::SocketAddr> {
            let text = ready[key]
                .as_str()
                .with_context(|| format!("no {key} in the global's ready file: {ready}"))?;
            let text = text.strip_prefix("http://").unwrap_or(text);
            text.parse()
                .with_context(|| format!("{key} {text:?} in the global's ready file"))
        };
        Ok(GlobalAddresses {
            api: addr("api")?,
            diagnostics: addr("diagnostics")?,
            kds: addr("kds")?,
        })
    }
}

impl GlobalCp {
    /// Starts a global with its data in `dir` and waits until it is ready.
    pub async fn start(dir: &Path) -> anyhow::Result<GlobalCp> {
        let ready = dir.join("ready.json");
        let data = dir.join("data");
        let _ = std::fs::remove_file(&ready);
        let config = global_cp::Config::try_parse_from([
            "global-cp",
            "--data-dir",
            path_str(&data)?,
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
            "--kds-addr",
            "127.0.0.1:0",
            "--ready-file",
            path_str(&ready)?,
        ])?;
        let listeners = global_cp::GlobalListeners::bind(&config).await?;
        let api_url = format!("http://{}", listeners.api.local_addr()?);
        let kds_url = format!("https://{}", listeners.kds.local_addr()?);
        let running = Running::spawn(|shutdown| global_cp::run(config, listeners, shutdown));
        let endpoints: Value = test_support::eventually("the global's ready file", STARTUP, || {
            let ready = ready.clone();
            async move {
                std::fs::read(&ready)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            }
        })
        .await?;
        let kds_ca = PathBuf::from(
            endpoints["kdsCa"]
                .as_str()
                .context("no kdsCa in the global's ready file")?,
        );
        let token = read_token(&data.join("admin-token"))?;
        Ok(GlobalCp {
            dir: dir.to_path_buf(),
            api: ApiClient::new(&api_url, Some(token))?,
            api_url,
            kds_url,
            kds_ca,
            node_id: None,
            runner: GlobalRunner::Task(running),
        })
    }

    /// Starts a global as a `global-cp` child process (the binary built beside the test or the
    /// running binary, see [`component_bin`]) with its data in `dir`, and waits until it is ready. Its
    /// output goes to `dir/global-cp.log`. Unlike [`GlobalCp::start`], it can be [killed](Self::kill)
    /// and [restarted](Self::restart).
    pub async fn start_process(dir: &Path) -> anyhow::Result<GlobalCp> {
        GlobalCp::start_process_with(dir, Vec::new()).await
    }

    /// [`GlobalCp::start_process`] with extra command-line arguments.
    pub async fn start_process_with(
        dir: &Path,
        extra: Vec<std::ffi::OsString>,
    ) -> anyhow::Result<GlobalCp> {
        let unbound = "127.0.0.1:0".parse()?;
        let addresses = GlobalAddresses {
            api: unbound,
            diagnostics: unbound,
            kds: unbound,
        };
        let (child, ready) = spawn_global(dir, addresses, &extra).await?;
        let addresses = GlobalAddresses::from_ready_file(&ready)?;
        let kds_ca = PathBuf::from(
            ready["kdsCa"]
                .as_str()
                .context("no kdsCa in the global's ready file")?,
        );
        let api_url = format!("http://{}", addresses.api);
        let token = read_token(&dir.join("data").join("admin-token"))?;
        Ok(GlobalCp {
            dir: dir.to_path_buf(),
            api: ApiClient::new(&api_url, Some(token))?,
            api_url,
            kds_url: format!("https://{}", addresses.kds),
            kds_ca,
            node_id: ready["nodeId"].as_u64(),
            runner: GlobalRunner::Process {
                child: Some(Box::new(child)),
                restart: (addresses, extra),
            },
        })
    }

    /// Starts a global of `raft_listen.len()` nodes as `global-cp` child processes, node `i + 1`
    /// in `dir/node-<i+1>`, listening for its peers on `raft_listen[i]` (every node's `--peers`
    /// names those addresses) and dialling peer `j` at `routes[i][j]` when given (`--raft-route`:
    /// a relay of that one direction, so a node can be cut off both ways). The nodes share one
    /// KDS identity (`dir/kds`) and one admin token, as `meshctl up --global-nodes` makes them;
    /// `extra` arguments go to every node. Returns once every node is ready, a leader is agreed
    /// and the default mesh exists.
    pub async fn start_cluster(
        dir: &Path,
        raft_listen: &[std::net::SocketAddr],
        routes: &[std::collections::BTreeMap<u64, std::net::SocketAddr>],
        extra: &[std::ffi::OsString],
    ) -> anyhow::Result<Vec<GlobalCp>> {
        anyhow::ensure!(
            raft_listen.len() == routes.len() && !raft_listen.is_empty(),
            "one listen address and one route table per node"
        );
        let ids: Vec<u64> = (1..=raft_listen.len() as u64).collect();
        let certs = dir.join("raft-certs");
        global_cp::cluster::ensure_certs(&certs, &ids)?;
        let kds = dir.join("kds");
        kds::tls::KdsServerTls::load_or_generate(&kds, &[])?;
        // One admin token for every node (copied with its 0600 mode, which the nodes check).
        std::fs::create_dir_all(dir.join("token"))?;
        control_plane::auth::AdminToken::load_or_create(&dir.join("token"))?;
        let token_file = dir
            .join("token")
            .join(control_plane::auth::ADMIN_TOKEN_FILE);
        let peers = ids
            .iter()
            .zip(raft_listen)
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for ((id, listen), routes) in ids.iter().zip(raft_listen).zip(routes) {
            let node_dir = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(node_dir.join("data"))?;
            std::fs::copy(
                &token_file,
                node_dir
                    .join("data")
                    .join(control_plane::auth::ADMIN_TOKEN_FILE),
            )?;
            let mut args: Vec<std::ffi::OsString> = vec![
                "--node-id".into(),
                id.to_string().into(),
                "--peers".into(),
                peers.clone().into(),
                "--raft-listen".into(),
                listen.to_string().into(),
                "--raft-tls-dir".into(),
                certs.clone().into(),
                "--kds-tls-dir".into(),
                kds.clone().into(),
            ];
            if !routes.is_empty() {
                let routes: Vec<String> =
                    routes.iter().map(|(to, a)| format!("{to}={a}")).collect();
                args.extend(["--raft-route".into(), routes.join(",").into()]);
            }
            args.extend_from_slice(extra);
            nodes.push(GlobalCp::start_process_with(&node_dir, args).await?);
        }
        test_support::eventually("an agreed leader and the default mesh", STARTUP, || async {
            leader_of(&nodes).await?;
            for node in &nodes {
                node.api
                    .get(&["meshes".to_string(), "default".to_string()])
                    .await
                    .ok()?;
            }
            Some(())
        })
        .await?;
        Ok(nodes)
    }

    /// The leader's id as this node sees it (`GET /`), when it knows one.
    pub async fn leader_id(&self) -> Option<u64> {
        let index = tokio::time::timeout(Duration::from_secs(2), self.api.get(&[]))
            .await
            .ok()?
            .ok()?;
        index["cluster"]["leaderId"].as_u64()
    }

    /// Stops the global process with SIGTERM (it drains) and waits until it is gone; start it
    /// again with [`GlobalCp::restart`].
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        let GlobalRunner::Process { child, .. } = &mut self.runner else {
            anyhow::bail!("the global runs in-process: use GlobalCp::start_process");
        };
        let mut child = child.take().context("the global is not running")?;
        if let Some(pid) = child.id() {
            meshctl::process::send_signal(pid, meshctl::process::Signal::Term)
                .context("asking the global to stop")?;
        }
        let status = tokio::time::timeout(STARTUP, child.wait())
            .await
            .context("the global did not stop after SIGTERM")??;
        anyhow::ensure!(status.success(), "the global exited with {status}");
        Ok(())
    }

    /// Kills the global process with SIGKILL (no shutdown of any kind) and waits until it is
    /// gone. Only for a global started with [`GlobalCp::start_process`].
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let GlobalRunner::Process { child, .. } = &mut self.runner else {
            anyhow::bail!(
                "the global runs in-process: start it with GlobalCp::start_process to kill it"
            );
        };
        let mut child = child.take().context("the global is not running")?;
        child.start_kill().context("killing the global")?;
        child
            .wait()
            .await
            .context("waiting for the killed global")?;
        Ok(())
    }

    /// Starts the killed global again on the same data directory and addresses (zones keep
    /// dialling the KDS address they were given), and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let GlobalRunner::Process {
            child,
            restart: (addresses, extra),
        } = &mut self.runner
        else {
            anyhow::bail!(
                "the global runs in-process: start it with GlobalCp::start_process to restart it"
            );
        };
        anyhow::ensure!(child.is_none(), "the global is still running");
        let (started, _) = spawn_global(&self.dir, *addresses, extra).await?;
        *child = Some(Box::new(started));
        Ok(())
    }

    /// The process id of a global started with [`GlobalCp::start_process`], while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.runner.pid()
    }

    /// `None` while the global runs (or was killed by [`GlobalCp::kill`]); how it ended if it
    /// exited on its own.
    pub fn exited(&mut self) -> Option<String> {
        self.runner.exited("global")
    }

    /// Applies YAML documents (Kuma's universal form) as `meshctl apply` does.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        meshctl::apply::apply_text(&self.api, yaml, "the test").await
    }

    /// Issues a token for zone `zone`.
    pub async fn zone_token(&self, zone: &str) -> anyhow::Result<String> {
        self.api.generate_zone_token(zone, "24h").await
    }

    /// Waits until the global reports every zone of `zones` online.
    pub async fn wait_online(&self, zones: &[&str]) -> anyhow::Result<()> {
        let expected: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
        test_support::eventually("every zone online at the global", STARTUP, || async {
            let (_, items) = self.api.zones_overview().await.ok()?;
            let overview = ZoneOverview::from_items(&items).ok()?;
            meshctl::up::not_online(&expected, &overview)
                .is_empty()
                .then_some(())
        })
        .await
    }

    /// Stops the global (its data stays in `dir`): a process gets SIGTERM and drains.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self.runner {
            GlobalRunner::Task(running) => running.stop().await,
            GlobalRunner::Process { child: None, .. } => Ok(()),
            GlobalRunner::Process {
                child: Some(mut child),
                ..
            } => {
                if let Some(pid) = child.id() {
                    meshctl::process::send_signal(pid, meshctl::process::Signal::Term)
                        .context("asking the global to stop")?;
                }
                let status = tokio::time::timeout(STARTUP, child.wait())
                    .await
                    .context("the global did not stop after SIGTERM")??;
                anyhow::ensure!(status.success(), "the global exited with {status}");
                Ok(())
            }
        }
    }
}

/// The leader every node of `nodes` that answers agrees on, as an index into `nodes`.
pub async fn leader_of(nodes: &[GlobalCp]) -> Option<usize> {
    let mut seen = None;
    for node in nodes {
        if node.pid().is_none() {
            continue;
        }
        let leader = node.leader_id().await?;
        if seen.is_some_and(|s| s != leader) {
            return None;
        }
        seen = Some(leader);
    }
    let leader = seen?;
    nodes
        .iter()
        .position(|n| n.node_id == Some(leader) && n.pid().is_some())
}

/// Spawns `global-cp` on `addresses` with its data in `dir/data` and `extra` arguments, and
/// waits for its ready file.
async fn spawn_global(
    dir: &Path,
    addresses: GlobalAddresses,
    extra: &[std::ffi::OsString],
) -> anyhow::Result<(tokio::process::Child, Value)> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--data-dir".into(),
        dir.join("data").into(),
        "--api-addr".into(),
        addresses.api.to_string().into(),
        "--diagnostics-addr".into(),
        addresses.diagnostics.to_string().into(),
        "--kds-addr".into(),
        addresses.kds.to_string().into(),
    ];
    args.extend_from_slice(extra);
    spawn_ready("global-cp", &args, dir).await
}

/// Where the workspace's binaries are: beside the running executable (`cargo run`) or one level
/// up (a test binary in `target/<profile>/deps`).
pub fn component_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let bin = d.join(name);
        if bin.is_file() {
            return Ok(bin);
        }
        if d.file_name().is_some_and(|n| n != "deps") {
            break;
        }
        dir = d.parent();
    }
    anyhow::bail!(
        "binary {name} not found beside {}: build it first (`cargo build -p {name}`)",
        exe.display()
    )
}

/// Spawns control plane binary `program` with `args` plus `--ready-file dir/ready.json`, output
/// to `dir/<program>.log`, and waits for its ready file. Binding a port it held before can fail
/// for a moment (another socket took it as an ephemeral port), so a process that exits before it
/// is ready is started again, until [`STARTUP`].
async fn spawn_ready(
    program: &str,
    args: &[std::ffi::OsString],
    dir: &Path,
) -> anyhow::Result<(tokio::process::Child, Value)> {
    let ready = dir.join("ready.json");
    let log_path = dir.join(format!("{program}.log"));
    std::fs::create_dir_all(dir)?;
    let bin = component_bin(program)?;
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut child = tokio::process::Command::new(&bin)
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        loop {
            if let Some(endpoints) = std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                return Ok((child, endpoints));
            }
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{program} exited with {status} before it was ready (see {})",
                    log_path.display()
                );
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{program} not ready within {STARTUP:?} (see {})",
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A zone control plane federated to a [`GlobalCp`].
pub struct ZoneCp {
    pub name: String,
    pub dir: PathBuf,
    pub api_url: String,
    /// `http://127.0.0.1:PORT` proxies dial for ADS.
    pub xds_url: String,
    /// The REST API with the admin token.
    pub api: ApiClient,
    runner: ZoneRunner,
}

/// How a zone CP runs: a task of this process, or a `zone-cp` child process that can be killed,
/// paused, wiped and restarted (on the same addresses: its proxies keep dialling them).
/// (A process restarts with the arguments it was started with, the listen addresses replaced by
/// the bound ones.)
type ZoneRunner = Runner<Vec<std::ffi::OsString>>;

impl ZoneCp {
    /// Starts zone `name` with its data in `dir/<name>`, federated to `global`, and waits until
    /// its API answers and the default mesh has arrived from the global.
    pub async fn start(dir: &Path, global: &GlobalCp, name: &str) -> anyhow::Result<ZoneCp> {
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, global.zone_token(name).await?)?;
        let data = dir.join(name);
        let config = zone_cp::Config::try_parse_from([
            "zone-cp",
            "--zone",
            name,
            "--mode",
            "zone",
            "--data-dir",
            path_str(&data)?,
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
            "--global-kds-address",
            &global.kds_url,
            "--kds-ca-file",
            path_str(&global.kds_ca)?,
            "--zone-token-file",
            path_str(&token_file)?,
        ])?;
        let listeners = zone_cp::ZoneListeners::bind(&config).await?;
        let api_url = format!("http://{}", listeners.api.local_addr()?);
        let xds_url = format!("http://{}", listeners.xds.local_addr()?);
        let running = Running::spawn(|shutdown| zone_cp::run(config, listeners, shutdown));
        let token_path = data.join("admin-token");
        let token = test_support::eventually("the zone's admin token", STARTUP, || {
            let path = token_path.clone();
            async move { read_token(&path).ok() }
        })
        .await?;
        let zone = ZoneCp {
            name: name.to_string(),
            dir: data,
            api: ApiClient::new(&api_url, Some(token))?,
            api_url,
            xds_url,
            runner: ZoneRunner::Task(running),
        };
        zone.wait_for("the default mesh from the global", &["meshes", "default"])
            .await?;
        Ok(zone)
    }

    /// Applies YAML documents to this zone's API (Dataplanes, ZoneIngresses).
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        meshctl::apply::apply_text(&self.api, yaml, &format!("the test (zone {})", self.name)).await
    }

    /// Waits until `GET /<segments...>` answers, and returns the resource.
    pub async fn wait_for(&self, what: &str, segments: &[&str]) -> anyhow::Result<Value> {
        let segments: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
        test_support::eventually(
            &format!("{what} in zone {}", self.name),
            STARTUP,
            || async { self.api.get(&segments).await.ok() },
        )
        .await
    }

    /// The token proxy `name` presents: `kind` is `dataplane` (with its mesh), `ingress` or
    /// `egress`.
    pub async fn proxy_token(&self, kind: &str, mesh: &str, name: &str) -> anyhow::Result<String> {
        self.api
            .generate_dataplane_token(kind, mesh, name, "24h")
            .await
    }

    /// Starts zone `name` as a `zone-cp` child process with its data in `dir/<name>` (output in
    /// `dir/<name>-cp/zone-cp.log`), federated to the global at `kds_url` (the global's KDS
    /// address or a relay to it), and waits until the default mesh has arrived from the global.
    pub async fn start_process(
        dir: &Path,
        global: &GlobalCp,
        kds_url: &str,
        name: &str,
    ) -> anyhow::Result<ZoneCp> {
        let token_file = dir.join(format!("{name}.token"));
        std::fs::write(&token_file, global.zone_token(name).await?)?;
        let data = dir.join(name);
        let run_dir = dir.join(format!("{name}-cp"));
        let mut args: Vec<std::ffi::OsString> = vec![
            "--zone".into(),
            name.into(),
            "--mode".into(),
            "zone".into(),
            "--data-dir".into(),
            data.clone().into(),
            "--global-kds-address".into(),
            kds_url.into(),
            "--kds-ca-file".into(),
            global.kds_ca.clone().into(),
            "--zone-token-file".into(),
            token_file.into(),
        ];
        let unbound = [
            ("--api-addr", "127.0.0.1:0".to_string()),
            ("--diagnostics-addr", "127.0.0.1:0".to_string()),
            ("--xds-addr", "127.0.0.1:0".to_string()),
        ];
        let mut first = args.clone();
        for (flag, value) in &unbound {
            first.push(flag.into());
            first.push(value.into());
        }
        let (child, ready) = spawn_ready("zone-cp", &first, &run_dir).await?;
        let field = |key: &str| -> anyhow::Result<String> {
            let text = ready[key]
                .as_str()
                .with_context(|| format!("no {key} in zone {name}'s ready file: {ready}"))?;
            Ok(text.strip_prefix("http://").unwrap_or(text).to_string())
        };
        let (api, diagnostics, xds) = (field("api")?, field("diagnostics")?, field("xds")?);
        for (flag, value) in [
            ("--api-addr", &api),
            ("--diagnostics-addr", &diagnostics),
            ("--xds-addr", &xds),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        let api_url = format!("http://{api}");
        let token = wait_token(&data.join("admin-token")).await?;
        let zone = ZoneCp {
            name: name.to_string(),
            dir: data,
            api: ApiClient::new(&api_url, Some(token))?,
            api_url,
            xds_url: format!("http://{xds}"),
            runner: ZoneRunner::Process {
                child: Some(Box::new(child)),
                restart: args,
            },
        };
        zone.wait_for("the default mesh from the global", &["meshes", "default"])
            .await?;
        Ok(zone)
    }

    /// The process id of a zone started with [`ZoneCp::start_process`], while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.runner.pid()
    }

    /// `None` while the zone CP runs (or was killed by [`ZoneCp::kill`]); how it ended if it
    /// exited on its own.
    pub fn exited(&mut self) -> Option<String> {
        self.runner.exited("zone CP")
    }

    /// Kills the zone process with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let ZoneRunner::Process { child, .. } = &mut self.runner else {
            anyhow::bail!(
                "zone {} runs in-process: use ZoneCp::start_process",
                self.name
            );
        };
        let mut child = child
            .take()
            .with_context(|| format!("zone {} is not running", self.name))?;
        child.start_kill().context("killing the zone CP")?;
        child
            .wait()
            .await
            .context("waiting for the killed zone CP")?;
        Ok(())
    }

    /// Stops the zone process with SIGTERM (it drains) and waits until it is gone.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        let ZoneRunner::Process { child, .. } = &mut self.runner else {
            anyhow::bail!(
                "zone {} runs in-process: use ZoneCp::start_process",
                self.name
            );
        };
        let mut child = child
            .take()
            .with_context(|| format!("zone {} is not running", self.name))?;
        if let Some(pid) = child.id() {
            meshctl::process::send_signal(pid, meshctl::process::Signal::Term)
                .with_context(|| format!("asking zone {} to stop", self.name))?;
        }
        let status = tokio::time::timeout(STARTUP, child.wait())
            .await
            .with_context(|| format!("zone {} did not stop after SIGTERM", self.name))??;
        anyhow::ensure!(status.success(), "zone {} exited with {status}", self.name);
        Ok(())
    }

    /// Starts the stopped zone process again on the same addresses and data directory (wiped or
    /// not), and waits until its API answers with its (possibly new) admin token.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let ZoneRunner::Process {
            child,
            restart: args,
        } = &mut self.runner
        else {
            anyhow::bail!(
                "zone {} runs in-process: use ZoneCp::start_process",
                self.name
            );
        };
        anyhow::ensure!(child.is_none(), "zone {} is still running", self.name);
        let run_dir = self
            .dir
            .parent()
            .context("the zone's data dir has no parent")?
            .join(format!("{}-cp", self.name));
        let (started, _) = spawn_ready("zone-cp", args, &run_dir).await?;
        *child = Some(Box::new(started));
        // The ready file comes before the store is open: a wiped zone writes a new token then.
        let token = wait_token(&self.dir.join("admin-token")).await?;
        self.api = ApiClient::new(&self.api_url, Some(token))?;
        Ok(())
    }

    /// Stops the zone CP (its data stays in `dir`): a task stops gracefully, a process gets
    /// SIGTERM and drains.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self.runner {
            ZoneRunner::Task(running) => running.stop().await,
            ZoneRunner::Process { child: None, .. } => Ok(()),
            ZoneRunner::Process {
                child: Some(child), ..
            } => {
                let mut zone = ZoneCp {
                    runner: ZoneRunner::Process {
                        child: Some(child),
                        restart: Vec::new(),
                    },
                    ..self
                };
                zone.terminate().await
            }
        }
    }
}

/// A global and its zones.
pub struct Federation {
    pub global: GlobalCp,
    pub zones: Vec<ZoneCp>,
}

impl Federation {
    /// Starts a global in `dir/global` and zones `zones` beside it, and waits until the global
    /// reports them all online.
    pub async fn start(dir: &Path, zones: &[&str]) -> anyhow::Result<Federation> {
        let global = GlobalCp::start(&dir.join("global")).await?;
        Federation::start_zones(dir, global, zones).await
    }

    /// The same with the global as a child process ([`GlobalCp::start_process`]), for tests
    /// that kill it.
    pub async fn start_with_global_process(
        dir: &Path,
        zones: &[&str],
    ) -> anyhow::Result<Federation> {
        let global = GlobalCp::start_process(&dir.join("global")).await?;
        Federation::start_zones(dir, global, zones).await
    }

    async fn start_zones(
        dir: &Path,
        global: GlobalCp,
        zones: &[&str],
    ) -> anyhow::Result<Federation> {
        let mut started = Vec::new();
        for zone in zones {
            started.push(ZoneCp::start(dir, &global, zone).await?);
        }
        global.wait_online(zones).await?;
        Ok(Federation {
            global,
            zones: started,
        })
    }

    /// The zone named `name`.
    pub fn zone(&self, name: &str) -> &ZoneCp {
        self.zones
            .iter()
            .find(|z| z.name == name)
            .unwrap_or_else(|| panic!("no zone {name} in this federation"))
    }

    /// Stops every zone, then the global.
    pub async fn stop(self) -> anyhow::Result<()> {
        for zone in self.zones {
            zone.stop().await?;
        }
        self.global.stop().await
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Waits until the admin token at `path` is written.
async fn wait_token(path: &Path) -> anyhow::Result<String> {
    test_support::eventually(
        &format!("the admin token {}", path.display()),
        STARTUP,
        || async { read_token(path).ok() },
    )
    .await
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "{} is empty", path.display());
    Ok(token.to_string())
}

/// A zone proxy (sidecar, ingress or egress) running in-process against a zone CP, as
/// `zone-proxy run` runs it.
pub struct ProxyProcess {
    pub name: String,
    /// The admin server (`/ready`, `/config_dump`, `/stats/prometheus`).
    pub admin: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), zone_proxies::run::RunError>>,
}

impl ProxyProcess {
    /// Whether the proxy ended on its own (it runs until stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the proxy (draining) and returns how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the proxy task panicked")??;
        Ok(())
    }

    /// The proxy's statistics (`/stats/prometheus`).
    pub async fn stats(&self) -> anyhow::Result<String> {
        let (status, text) = http_get(&format!("http://{}/stats/prometheus", self.admin)).await?;
        anyhow::ensure!(
            status == 200,
            "{}: /stats/prometheus answered {status}",
            self.name
        );
        Ok(text)
    }

    /// The proxy's configuration as JSON (`/config_dump`).
    pub async fn config_dump(&self) -> anyhow::Result<String> {
        let (status, text) = http_get(&format!("http://{}/config_dump", self.admin)).await?;
        anyhow::ensure!(
            status == 200,
            "{}: /config_dump answered {status}",
            self.name
        );
        Ok(text)
    }

    /// Waits until the proxy has a complete configuration (`/ready` answers 200).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/ready", self.admin);
        test_support::eventually(&format!("proxy {} ready", self.name), STARTUP, || async {
            let status = http_get(&url).await.ok()?.0;
            (status == 200).then_some(())
        })
        .await
    }
}

impl ZoneCp {
    /// Starts the proxy of Dataplane `mesh`/`name` (`Sidecar`), or of the zone's ZoneIngress or
    /// ZoneEgress `name`, with a token issued by this zone CP; the resource must exist (apply it
    /// first).
    pub async fn start_proxy(
        &self,
        mode: zone_proxies::ProxyMode,
        mesh: &str,
        name: &str,
    ) -> anyhow::Result<ProxyProcess> {
        self.start_proxy_defined(mode, mesh, name, None).await
    }

    /// The same, the proxy also sending `definition` (its resource as YAML) for the zone CP to
    /// register at every connect, as `zone-proxy run` with definition flags does: a zone CP that
    /// lost its store gets it back from the proxy.
    pub async fn start_proxy_defined(
        &self,
        mode: zone_proxies::ProxyMode,
        mesh: &str,
        name: &str,
        definition: Option<&str>,
    ) -> anyhow::Result<ProxyProcess> {
        let kind = match mode {
            zone_proxies::ProxyMode::Sidecar => "dataplane",
            zone_proxies::ProxyMode::Ingress => "ingress",
            zone_proxies::ProxyMode::Egress => "egress",
        };
        // Beside the zone's data, not in it: the proxy keeps its token when the zone CP loses its
        // store.
        let tokens = self
            .dir
            .parent()
            .context("the zone's data dir has no parent")?
            .join(format!("{}-proxies", self.name));
        std::fs::create_dir_all(&tokens)?;
        let token_file = tokens.join(format!("{kind}-{mesh}-{name}.token"));
        std::fs::write(&token_file, self.proxy_token(kind, mesh, name).await?)?;
        let mut options =
            zone_proxies::xds::client::ClientOptions::new(&self.xds_url, mode.node_id(mesh, name));
        options.token_file = Some(token_file);
        if let Some(yaml) = definition {
            let planned = meshctl::apply::plan(yaml, &format!("proxy {name}'s definition"))?;
            let resource = planned
                .first()
                .with_context(|| format!("proxy {name}'s definition holds no resource"))?;
            options.definition = Some(resource.body.to_string());
        }
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = admin_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(zone_proxies::run::run_proxy(
            zone_proxies::run::ConfigSource::Ads(options),
            admin_listener,
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(ProxyProcess {
            name: format!("{}/{name}", self.name),
            admin,
            stop,
            task,
        })
    }
}

/// A demo-app instance serving in-process on a loopback port.
pub struct DemoService {
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoService {
    /// Serves `service` of `zone` (instance `instance`, `version` if given) on a new port.
    pub async fn start(
        service: &str,
        zone: &str,
        instance: &str,
        version: Option<&str>,
    ) -> anyhow::Result<DemoService> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = demo_app::server::ServerConfig {
            identity: demo_app::server::Identity {
                service: service.to_string(),
                zone: zone.to_string(),
                instance: instance.to_string(),
                version: version.map(str::to_string),
            },
            fail_percent: 0,
            drain_timeout: Duration::from_secs(1),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = demo_app::server::serve(listener, config, async move {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("demo service {addr}: {e}");
            }
        });
        Ok(DemoService { addr, stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A TCP echo server on a new loopback port: what it reads on a connection it writes back.
pub struct EchoService {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoService {
    pub async fn start() -> anyhow::Result<EchoService> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(EchoService { addr, task })
    }

    /// Stops accepting and closes every connection.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The value of sample `name{labels}` (e.g. `envoy_cluster_upstream_cx_total{envoy_cluster_name="x"}`)
/// in Prometheus text; `None` when the sample is absent.
pub fn stat(text: &str, sample: &str) -> Option<i64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A loopback port free now (bound, then released), for resources that must name their port
/// before the proxy binds it (a Dataplane's inbound, a ZoneIngress).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET url` over plain HTTP/1.1: the status and the body.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(url)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}
