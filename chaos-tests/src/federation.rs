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
    running: Running,
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
            running,
        })
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

    /// Stops the global (its data stays in `dir`).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.stop().await
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
    running: Running,
}

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
            running,
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

    /// Stops the zone CP (its data stays in `dir`).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.stop().await
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
    /// Stops the proxy (draining) and returns how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the proxy task panicked")??;
        Ok(())
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
        let kind = match mode {
            zone_proxies::ProxyMode::Sidecar => "dataplane",
            zone_proxies::ProxyMode::Ingress => "ingress",
            zone_proxies::ProxyMode::Egress => "egress",
        };
        let token_file = self.dir.join(format!("{kind}-{mesh}-{name}.token"));
        std::fs::write(&token_file, self.proxy_token(kind, mesh, name).await?)?;
        let mut options =
            zone_proxies::xds::client::ClientOptions::new(&self.xds_url, mode.node_id(mesh, name));
        options.token_file = Some(token_file);
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin = admin_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(zone_proxies::run::run_proxy(
            zone_proxies::run::ConfigSource::Ads(options),
            admin_listener,
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
