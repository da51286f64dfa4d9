//! The demo `meshctl up` runs beside the control planes (unless `--no-demo`): per zone, one zone
//! ingress and one zone egress (`zone-proxy`), and demo services (`demo-app`) each behind its
//! sidecar: `backend` in every zone from zone-2 on (in zone-1 when it is the only zone), and
//! `frontend` in zone-1, whose sidecar has an outbound to `backend` on a local port. Every proxy
//! registers its own resource with its zone CP (flags; nothing is written through the REST API)
//! and presents a dataplane token that zone issued. Before they start, the default mesh gets
//! builtin mTLS and an allow-all MeshTrafficPermission through the global (when its mTLS is not
//! on yet), so a request to frontend's outbound is answered by backend in another zone, over
//! mTLS through that zone's ingress.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Layout, ProcessSpec, Role};
use crate::client::ApiClient;
use crate::endpoints::{DemoEndpoints, DemoProcessEndpoints};

/// The mesh the demo runs in.
pub const MESH: &str = "default";

/// The default mesh with builtin mTLS, and a permission letting every service call every other.
const MTLS_MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n---\ntype: MeshTrafficPermission\nname: allow-all\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Allow\n";

/// The Secret holding the mesh CA's certificate, which a zone has once KDS brought it.
const CA_CERT_SECRET: &str = "default.ca-builtin-cert-ca-1";

/// How long the dataplane tokens `meshctl up` issues are valid (issued again at each start).
const PROXY_TOKEN_VALIDITY: &str = "8760h";

/// One demo process: its command line and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoProcess {
    /// The process name, also the proxy's resource name (`zone-1-ingress`, `backend-zone-2`) or
    /// the app's (`backend-zone-2-app`).
    pub name: String,
    pub zone: String,
    pub role: Role,
    /// What the proxy's token is issued for (`ingress`, `egress`, `dataplane`); `None` for apps.
    pub token_type: Option<&'static str>,
    pub endpoints: DemoProcessEndpoints,
    pub args: Vec<OsString>,
    /// `GET` answers 2xx once it is ready (a proxy's admin `/ready`, an app's `/health`).
    pub ready_url: String,
}

/// Everything the demo starts, and the request that crosses zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPlan {
    pub processes: Vec<DemoProcess>,
    /// `http://127.0.0.1:PORT/`: frontend's outbound to backend.
    pub request: String,
    /// The zone that answers it.
    pub answered_by: String,
}

impl DemoPlan {
    /// What endpoints.json says about it.
    pub fn endpoints(&self) -> DemoEndpoints {
        DemoEndpoints {
            request: self.request.clone(),
            answered_by: self.answered_by.clone(),
            processes: self
                .processes
                .iter()
                .map(|p| (p.name.clone(), p.endpoints.clone()))
                .collect(),
        }
    }
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The demo for `zones` (in order, zone-1 first), each zone's xDS address in `xds`; `port` hands
/// out free loopback ports.
pub fn plan(
    layout: &Layout,
    zones: &[String],
    xds: &BTreeMap<String, String>,
    mut port: impl FnMut() -> anyhow::Result<u16>,
) -> anyhow::Result<DemoPlan> {
    let first = zones.first().context("the demo needs at least one zone")?;
    let mut processes = Vec::new();
    let mut request = None;
    let backend_zones: Vec<&String> = if zones.len() == 1 {
        vec![first]
    } else {
        zones[1..].iter().collect()
    };
    for zone in zones {
        let cp = xds
            .get(zone)
            .with_context(|| format!("no xDS address for {zone}"))?;
        let cp = if cp.contains("://") {
            cp.clone()
        } else {
            format!("http://{cp}")
        };
        let proxy = |name: &str, mode: &str, admin: u16, extra: Vec<String>| {
            let mut args: Vec<OsString> = [
                "run",
                "--mode",
                mode,
                "--cp",
                &cp,
                "--token-file",
                &layout.proxy_token(name).to_string_lossy(),
                "--name",
                name,
                "--mesh",
                MESH,
                "--admin",
                &loopback(admin),
                "--address",
                "127.0.0.1",
            ]
            .iter()
            .map(OsString::from)
            .collect();
            args.extend(extra.into_iter().map(OsString::from));
            args
        };
        for (role, mode) in [(Role::Ingress, "ingress"), (Role::Egress, "egress")] {
            let name = format!("{zone}-{mode}");
            let (listen, admin) = (port()?, port()?);
            processes.push(DemoProcess {
                args: proxy(
                    &name,
                    mode,
                    admin,
                    vec!["--port".into(), listen.to_string()],
                ),
                name,
                zone: zone.clone(),
                role,
                token_type: Some(mode),
                endpoints: DemoProcessEndpoints {
                    zone: zone.clone(),
                    role: role.label().to_owned(),
                    listen: loopback(listen),
                    admin: Some(loopback(admin)),
                    outbound: None,
                },
                ready_url: format!("http://{}/ready", loopback(admin)),
            });
        }
        let mut services = Vec::new();
        if zone == first {
            services.push("frontend");
        }
        if backend_zones.contains(&zone) {
            services.push("backend");
        }
        for service in services {
            let name = format!("{service}-{zone}");
            let app_name = format!("{name}-app");
            let (app, inbound, admin) = (port()?, port()?, port()?);
            processes.push(DemoProcess {
                name: app_name.clone(),
                zone: zone.clone(),
                role: Role::App,
                token_type: None,
                endpoints: DemoProcessEndpoints {
                    zone: zone.clone(),
                    role: Role::App.label().to_owned(),
                    listen: loopback(app),
                    admin: None,
                    outbound: None,
                },
                args: [
                    "serve",
                    "--listen",
                    &loopback(app),
                    "--service",
                    service,
                    "--zone",
                    zone,
                    "--instance",
                    &name,
                ]
                .iter()
                .map(OsString::from)
                .collect(),
                ready_url: format!("http://{}/health", loopback(app)),
            });
            let mut extra = vec![
                "--service".to_owned(),
                service.to_owned(),
                "--inbound-port".to_owned(),
                inbound.to_string(),
                "--service-port".to_owned(),
                app.to_string(),
                "--tag".to_owned(),
                "kuma.io/protocol=http".to_owned(),
            ];
            let mut outbound = None;
            if service == "frontend" {
                let port = port()?;
                extra.extend(["--outbound".to_owned(), format!("backend={port}")]);
                outbound = Some(loopback(port));
                request = Some(format!("http://{}/", loopback(port)));
            }
            processes.push(DemoProcess {
                args: proxy(&name, "sidecar", admin, extra),
                name,
                zone: zone.clone(),
                role: Role::Sidecar,
                token_type: Some("dataplane"),
                endpoints: DemoProcessEndpoints {
                    zone: zone.clone(),
                    role: Role::Sidecar.label().to_owned(),
                    listen: loopback(inbound),
                    admin: Some(loopback(admin)),
                    outbound,
                },
                ready_url: format!("http://{}/ready", loopback(admin)),
            });
        }
    }
    Ok(DemoPlan {
        processes,
        request: request.context("no frontend was planned")?,
        answered_by: backend_zones[0].clone(),
    })
}

/// A loopback port free now (bound, then released): the proxies must name their ports in their
/// resources before they bind them.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free loopback port")?
        .local_addr()?
        .port())
}

/// The process spec of a planned demo process.
pub fn spec(
    layout: &Layout,
    process: &DemoProcess,
    zone_proxy: &Path,
    demo_app: &Path,
) -> ProcessSpec {
    let binary = match process.role {
        Role::App => demo_app,
        _ => zone_proxy,
    };
    ProcessSpec {
        name: process.name.clone(),
        role: process.role,
        binary: binary.to_path_buf(),
        args: process.args.clone(),
        data_dir: layout.root.join("run"),
        ready_file: layout.ready_file(&process.name),
        log_file: layout.log_file(&process.name),
        pid_file: layout.pid_file(&process.name),
        ready_url: Some(process.ready_url.clone()),
    }
}

/// Turns on builtin mTLS on the default mesh through the global (unless it is on already: a
/// restart keeps what is there), then waits until every zone of `zones` holds the mesh CA.
pub async fn prepare_mesh(
    global: &ApiClient,
    zones: &[(String, ApiClient)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let segments = ["meshes".to_owned(), MESH.to_owned()];
    let mesh = global
        .get(&segments)
        .await
        .context("cannot read the default mesh from the global")?;
    let enabled = mesh["mtls"]["enabledBackend"]
        .as_str()
        .is_some_and(|b| !b.is_empty());
    if !enabled {
        crate::apply::apply_text(global, MTLS_MESH, "meshctl up (demo mesh)").await?;
    }
    let secret = [
        "meshes".to_owned(),
        MESH.to_owned(),
        "secrets".to_owned(),
        CA_CERT_SECRET.to_owned(),
    ];
    let deadline = Instant::now() + timeout;
    for (zone, api) in zones {
        let mut pause = Duration::from_millis(20);
        while api.get(&secret).await.is_err() {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{zone} did not receive the mesh CA ({CA_CERT_SECRET}) from the global within \
                     {timeout:?}"
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
    Ok(())
}

/// Issues each proxy's dataplane token from its zone CP and writes it where the proxy reads it
/// (mode 0600).
pub async fn issue_tokens(
    layout: &Layout,
    plan: &DemoPlan,
    zones: &BTreeMap<String, ApiClient>,
) -> anyhow::Result<()> {
    for process in &plan.processes {
        let Some(kind) = process.token_type else {
            continue;
        };
        let api = zones
            .get(&process.zone)
            .with_context(|| format!("no API client for {}", process.zone))?;
        let mesh = if kind == "dataplane" { MESH } else { "" };
        let token = api
            .generate_dataplane_token(kind, mesh, &process.name, PROXY_TOKEN_VALIDITY)
            .await
            .with_context(|| {
                format!(
                    "cannot get a dataplane token for {} from {}",
                    process.name, process.zone
                )
            })?;
        crate::fsutil::write_atomic(
            &layout.proxy_token(&process.name),
            token.as_bytes(),
            Some(0o600),
        )?;
    }
    Ok(())
}

/// The demo's status table.
pub fn status_table(rows: &[(&DemoProcess, u32)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(p, pid)| {
            vec![
                p.name.clone(),
                p.zone.clone(),
                p.role.label().to_owned(),
                p.endpoints.listen.clone(),
                p.endpoints.admin.clone().unwrap_or_default(),
                p.endpoints.outbound.clone().unwrap_or_default(),
                pid.to_string(),
            ]
        })
        .collect();
    crate::output::align(
        &["NAME", "ZONE", "ROLE", "LISTEN", "ADMIN", "OUTBOUND", "PID"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> impl FnMut() -> anyhow::Result<u16> {
        let mut next = 20000;
        move || {
            next += 1;
            Ok(next)
        }
    }

    #[test]
    fn two_zones_frontend_in_zone_1_backend_in_zone_2() {
        let layout = Layout::new("/d");
        let zones = super::super::zone_names(2);
        let xds = zones
            .iter()
            .map(|z| (z.clone(), "127.0.0.1:5678".to_owned()))
            .collect();
        let plan = plan(&layout, &zones, &xds, ports()).unwrap();
        let names: Vec<&str> = plan.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "zone-1-ingress",
                "zone-1-egress",
                "frontend-zone-1-app",
                "frontend-zone-1",
                "zone-2-ingress",
                "zone-2-egress",
                "backend-zone-2-app",
                "backend-zone-2",
            ]
        );
        assert_eq!(plan.answered_by, "zone-2");
        let frontend = &plan.processes[3];
        let outbound = frontend.endpoints.outbound.clone().unwrap();
        assert_eq!(plan.request, format!("http://{outbound}/"));
        let args: Vec<String> = frontend
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--cp" && w[1] == "http://127.0.0.1:5678"));
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--token-file" && w[1] == "/d/run/frontend-zone-1.token"));
        assert!(args.iter().any(|a| a.starts_with("backend=")), "{args:?}");
        let spec = spec(
            &layout,
            frontend,
            Path::new("/b/zone-proxy"),
            Path::new("/b/demo-app"),
        );
        assert_eq!(spec.binary, Path::new("/b/zone-proxy"));
        assert_eq!(spec.log_file, Path::new("/d/logs/frontend-zone-1.log"));
        let table = status_table(&[(frontend, 7)]);
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("frontend-zone-1   zone-1   sidecar"),
            "{table}"
        );
    }

    #[test]
    fn one_zone_serves_its_own_backend() {
        let zones = super::super::zone_names(1);
        let xds = [("zone-1".to_owned(), "127.0.0.1:1".to_owned())].into();
        let plan = plan(&Layout::new("/d"), &zones, &xds, ports()).unwrap();
        assert_eq!(plan.answered_by, "zone-1");
        assert!(plan.processes.iter().any(|p| p.name == "backend-zone-1"));
    }
}
