//! `meshctl generate compose`: a docker-compose project for a federation (issue [6]): one global,
//! N zones, each zone with its control plane, a zone ingress and a zone egress, and the demo
//! (`frontend` in zone-1, `backend` in every other zone, each `demo-app` behind its sidecar).
//!
//! Networks: `control` carries control-plane traffic (zones to the global's KDS); `zone-K` is
//! zone-K's own network (its CP, proxies and apps); `interzone` is joined only by the ingresses
//! and egresses, so cross-zone traffic leaves through a zone's egress (the mesh has
//! `routing.zoneEgress`) and enters through the other zone's ingress. Proxies register themselves
//! with their zone CP from flags; their addresses are fixed (a resource names an IP), so every
//! network has a fixed subnet ([`Subnets`]).
//!
//! Secrets (unless `--no-secrets`) are made at generation time under `DIR/secrets/`, which the
//! written `.gitignore` keeps out of version control: `meshctl up --no-demo` runs the federation
//! once on loopback (with `global` among the KDS certificate's names), the default mesh gets
//! builtin mTLS, `routing.zoneEgress` and an allow-all MeshTrafficPermission, every zone gets its
//! zone token and every proxy its dataplane token; then it stops. The containers then run on those
//! data directories (bind mounts): same admin tokens, KDS CA, signing keys and mesh CA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_yaml::{Mapping, Value};

use crate::client::ApiClient;
use crate::config::Settings;
use crate::endpoints::Endpoints;
use crate::fsutil::write_atomic;
use crate::process::{self, Signal};
use crate::yaml_value::{map, s, strings};

/// Arguments of `meshctl generate compose`.
#[derive(Debug, Clone, clap::Args)]
pub struct ComposeArgs {
    /// Number of zones (zone-1 .. zone-N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub zones: u32,
    /// Nodes of the global control plane: 1 (service `global`) or a Raft cluster of 3, 5 or 7
    /// (services `global-1` ..), one vote lost per node down up to a minority.
    #[arg(long, default_value_t = 1, value_parser = parse_global_nodes)]
    pub global_nodes: u32,
    /// The directory to write (docker-compose.yaml, .env, .gitignore, secrets/).
    #[arg(long)]
    pub out: PathBuf,
    /// Tag of the meridian/* images (as deploy/build-images.sh built them).
    #[arg(long, default_value = "latest")]
    pub image_tag: String,
    /// The first two octets of the /16 the project's networks are carved from (another prefix
    /// when a network of this machine already uses 10.231).
    #[arg(long, default_value = SUBNET_PREFIX, value_parser = parse_subnet_prefix)]
    pub subnet_prefix: String,
    /// Write only the project files, no secrets (for the checked-in example).
    #[arg(long)]
    pub no_secrets: bool,
    /// Seconds the bootstrap federation gets to come up.
    #[arg(long, default_value_t = 120)]
    pub bootstrap_timeout: u64,
}

/// `--global-nodes`: one node, or an odd number up to 7 (an even cluster tolerates no more failures
/// than the odd one below it).
fn parse_global_nodes(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n @ (1 | 3 | 5 | 7)) => Ok(n),
        _ => Err(format!("{text:?}: expected 1, 3, 5 or 7")),
    }
}

/// The user the images run as (deploy/docker/Dockerfile.in).
pub const IMAGE_UID: u32 = 10001;

/// Ports inside the containers.
pub const KDS_PORT: u16 = 5685;
pub const API_PORT: u16 = 5681;
pub const XDS_PORT: u16 = 5678;
/// The global nodes' Raft peer listener.
pub const RAFT_PORT: u16 = 5683;
pub const INGRESS_PORT: u16 = 10001;
pub const EGRESS_PORT: u16 = 10002;
pub const INBOUND_PORT: u16 = 20001;
pub const APP_PORT: u16 = 8080;
/// frontend's outbound to backend, on the loopback of frontend's network namespace.
pub const OUTBOUND_PORT: u16 = 10080;

/// The mesh the demo runs in, its mTLS, cross-zone traffic through the egresses, and a permission
/// letting every service call every other.
const MESH_YAML: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\nrouting:\n  zoneEgress: true\n---\ntype: MeshTrafficPermission\nname: allow-all\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Allow\n";

/// The mesh CA's certificate Secret: the global has made the CA once it exists.
const CA_CERT_SECRET: &str = "default.ca-builtin-cert-ca-1";

/// Tokens are valid for ten years: the project is a test bed, regenerate it to rotate.
const TOKEN_VALIDITY: &str = "87600h";

/// How long a service may take to become healthy before its health check's failures count.
pub const HEALTH_START_PERIOD: &str = "90s";

/// How long a proxy gets to drain after SIGTERM before Docker kills it: more than zone-proxy's
/// 25 s drain timeout (Docker's default, 10 s, would cut the drain short).
pub const PROXY_STOP_GRACE: &str = "30s";

/// The fixed subnets under a `/16` prefix `P` (`--subnet-prefix`, default [`SUBNET_PREFIX`]):
/// `P.0.0/24` control, `P.1.0/24` interzone, `P.(10+K).0/24` zone-K. Fixed addresses are below
/// .128; Docker assigns the others from .128 up.
#[derive(Debug, Clone, Copy)]
pub struct Subnets<'a>(pub &'a str);

/// The default `--subnet-prefix`.
pub const SUBNET_PREFIX: &str = "10.231";

impl Subnets<'_> {
    pub fn control(&self) -> String {
        format!("{}.0.0/24", self.0)
    }

    pub fn interzone(&self) -> String {
        format!("{}.1.0/24", self.0)
    }

    pub fn zone(&self, k: u32) -> String {
        format!("{}.{}.0/24", self.0, 10 + k)
    }

    /// Host `host` of zone-K's subnet.
    pub fn zone_ip(&self, k: u32, host: u8) -> String {
        format!("{}.{}.{host}", self.0, 10 + k)
    }

    /// Global node `id` on the control network (a fixed address: `global-init` reaches node 1
    /// without a DNS lookup, which once failed at start under load).
    pub fn global_ip(&self, id: u32) -> String {
        format!("{}.0.{}", self.0, 10 + id)
    }

    /// Zone-K's ingress on the interzone network.
    pub fn ingress_ip(&self, k: u32) -> String {
        format!("{}.1.{}", self.0, 10 + k)
    }
}

/// `--subnet-prefix`: two octets, `A.B`.
fn parse_subnet_prefix(text: &str) -> Result<String, String> {
    let octets: Vec<&str> = text.split('.').collect();
    if octets.len() == 2 && octets.iter().all(|o| o.parse::<u8>().is_ok()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?}: expected the first two octets of a /16, e.g. 10.231"
        ))
    }
}

/// A zone's name.
pub fn zone_name(k: u32) -> String {
    format!("zone-{k}")
}

/// The services of zone `k` the demo puts there: frontend in zone-1, backend elsewhere (both in
/// zone-1 when it is the only zone).
pub fn demo_services(k: u32, zones: u32) -> Vec<&'static str> {
    let mut services = Vec::new();
    if k == 1 {
        services.push("frontend");
    }
    if k >= 2 || zones == 1 {
        services.push("backend");
    }
    services
}

/// Every proxy of the project: (zone index, name, token type).
pub fn proxies(zones: u32) -> Vec<(u32, String, &'static str)> {
    let mut out = Vec::new();
    for k in 1..=zones {
        let zone = zone_name(k);
        out.push((k, format!("{zone}-ingress"), "ingress"));
        out.push((k, format!("{zone}-egress"), "egress"));
        for service in demo_services(k, zones) {
            out.push((k, format!("{service}-{zone}"), "dataplane"));
        }
    }
    out
}

fn image(tag: &str, bin: &str) -> Value {
    s(format!("meridian/{bin}:{tag}"))
}

/// The user the services run as: the owner of `secrets/`, from `.env` (see [`write_project`]).
fn user() -> Value {
    s("${MERIDIAN_UID:-10001}:${MERIDIAN_GID:-10001}")
}

fn healthy(service: &str) -> Value {
    map([(service, map([("condition", s("service_healthy"))]))])
}

/// The global's services: `global`, or `global-1` .. `global-N` (their names are also their
/// host names on the control network).
pub fn global_services(global_nodes: u32) -> Vec<String> {
    (1..=global_nodes)
        .map(|id| crate::up::global_name(global_nodes, id))
        .collect()
}

/// `--peers` of a global cluster in the project: `1=global-1:5683,...`.
pub fn compose_peers(global_nodes: u32) -> String {
    (1..=global_nodes)
        .map(|id| {
            format!(
                "{id}={}:{RAFT_PORT}",
                crate::up::global_name(global_nodes, id)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The one-shot service that restores the global's resources into a fresh cluster.
pub const GLOBAL_INIT: &str = "global-init";

/// The global's resources as generation left them (`meshctl export`), which [`GLOBAL_INIT`]
/// applies, and the meshctl config it applies them with (node 1's API and the admin token).
pub const GLOBAL_RESOURCES: &str = "global-resources.yaml";
pub const GLOBAL_INIT_CONFIG: &str = "global-init.yaml";

/// `docker-compose.yaml` for `zones` zones, a global of `global_nodes` nodes and images tagged
/// `tag`, on the default subnets.
pub fn compose_yaml(zones: u32, global_nodes: u32, tag: &str) -> String {
    compose_yaml_on(zones, global_nodes, tag, SUBNET_PREFIX)
}

/// [`compose_yaml`] on the subnets under `prefix` ([`Subnets`]).
pub fn compose_yaml_on(zones: u32, global_nodes: u32, tag: &str, prefix: &str) -> String {
    let subnets = Subnets(prefix);
    let mut services = Mapping::new();
    let mut networks = Mapping::new();
    // Docker hands out addresses from the upper half only (`ip_range`), so the fixed addresses
    // of the lower half never collide with a container's dynamic one.
    let net = |subnet: String| {
        let upper = format!("{}.128/25", subnet.rsplit_once('.').expect("a.b.c.0/24").0);
        map([(
            "ipam",
            map([(
                "config",
                Value::Sequence(vec![map([("subnet", s(subnet)), ("ip_range", s(upper))])]),
            )]),
        )])
    };
    networks.insert(s("control"), net(subnets.control()));
    networks.insert(s("interzone"), net(subnets.interzone()));

    let globals = global_services(global_nodes);
    // What a zone CP waits for: the global, or a cluster whose resources are restored.
    let zone_cp_depends = if global_nodes == 1 {
        services.insert(
            s("global"),
            map([
                ("image", image(tag, "global-cp")),
                ("user", user()),
                (
                    "command",
                    // Zones dial `global`: the KDS certificate must name it (the CA stays the one
                    // made at generation time; only the server certificate is reissued if needed).
                    strings([
                        "--data-dir",
                        "/var/lib/meridian/global",
                        "--kds-hostname",
                        "global",
                    ]),
                ),
                (
                    "volumes",
                    strings(["./secrets/global:/var/lib/meridian/global"]),
                ),
                // The API on an ephemeral host port (`docker-compose port global 5681`).
                ("ports", strings([format!("127.0.0.1::{API_PORT}")])),
                ("networks", strings(["control"])),
            ]),
        );
        healthy("global")
    } else {
        // A Raft cluster: every node shares the KDS identity (CA, server certificate naming every
        // node, zone-token signing keys) and the peers' certificates made at generation time, and
        // starts with fresh Raft state (the generation run's log names loopback peers).
        let peers = compose_peers(global_nodes);
        let hostnames = globals.join(",");
        for (i, name) in globals.iter().enumerate() {
            services.insert(
                s(name.clone()),
                map([
                    ("image", image(tag, "global-cp")),
                    ("user", user()),
                    (
                        "command",
                        strings([
                            "--data-dir",
                            "/var/lib/meridian/global",
                            "--node-id",
                            &(i + 1).to_string(),
                            "--peers",
                            &peers,
                            "--raft-tls-dir",
                            "/etc/meridian/raft",
                            "--kds-tls-dir",
                            "/var/lib/meridian/kds",
                            "--kds-hostname",
                            &hostnames,
                        ]),
                    ),
                    (
                        "volumes",
                        strings([
                            format!("./secrets/{name}:/var/lib/meridian/global"),
                            "./secrets/global-kds:/var/lib/meridian/kds".to_owned(),
                            "./secrets/global-raft-certs:/etc/meridian/raft:ro".to_owned(),
                        ]),
                    ),
                    ("ports", strings([format!("127.0.0.1::{API_PORT}")])),
                    (
                        "networks",
                        map([(
                            "control",
                            map([("ipv4_address", s(subnets.global_ip(i as u32 + 1)))]),
                        )]),
                    ),
                ]),
            );
        }
        let mut ready = Mapping::new();
        for name in &globals {
            ready.insert(s(name.clone()), map([("condition", s("service_healthy"))]));
        }
        // Re-applies the generation-time resources (the mesh, its CA, the permission) once the
        // nodes are up; zones start after it, so they never see the cluster without them.
        services.insert(
            s(GLOBAL_INIT),
            map([
                ("image", image(tag, "meshctl")),
                ("user", user()),
                (
                    "command",
                    strings([
                        "--config".to_owned(),
                        format!("/etc/meridian/{GLOBAL_INIT_CONFIG}"),
                        "apply".to_owned(),
                        "-f".to_owned(),
                        format!("/etc/meridian/{GLOBAL_RESOURCES}"),
                    ]),
                ),
                (
                    "volumes",
                    strings([
                        format!(
                            "./secrets/{GLOBAL_INIT_CONFIG}:/etc/meridian/{GLOBAL_INIT_CONFIG}:ro"
                        ),
                        format!("./secrets/{GLOBAL_RESOURCES}:/etc/meridian/{GLOBAL_RESOURCES}:ro"),
                    ]),
                ),
                ("networks", strings(["control"])),
                // Healthy nodes elect a leader within a second; a write waits up to 10 s for one.
                ("depends_on", Value::Mapping(ready)),
            ]),
        );
        map([(
            GLOBAL_INIT,
            map([("condition", s("service_completed_successfully"))]),
        )])
    };
    let kds_addresses = globals
        .iter()
        .map(|g| format!("https://{g}:{KDS_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    let kds_ca = if global_nodes == 1 {
        "./secrets/global/kds/ca.crt"
    } else {
        "./secrets/global-kds/ca.crt"
    };

    let xds_url = |zone: &str| format!("http://{zone}-cp:{XDS_PORT}");
    let proxy_base = |zone: &str, mode: &str, name: &str| -> Vec<String> {
        [
            "run",
            "--mode",
            mode,
            "--cp",
            &xds_url(zone),
            "--token-file",
            "/etc/meridian/token",
            "--name",
            name,
            "--mesh",
            "default",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    // Every zone proxy (ingress, egress, sidecar) is the same image, token mount, dependency on
    // its zone CP and stop grace; they differ in their arguments and networks.
    let proxy_service = |zone: &str, name: &str, args: Vec<String>, networks: Value| {
        map([
            ("image", image(tag, "zone-proxy")),
            ("user", user()),
            ("command", strings(args)),
            (
                "volumes",
                strings([format!(
                    "./secrets/tokens/{name}.token:/etc/meridian/token:ro"
                )]),
            ),
            ("networks", networks),
            ("depends_on", healthy(&format!("{zone}-cp"))),
            ("stop_grace_period", s(PROXY_STOP_GRACE)),
        ])
    };

    for k in 1..=zones {
        let zone = zone_name(k);
        networks.insert(s(zone.clone()), net(subnets.zone(k)));
        let cp = format!("{zone}-cp");
        services.insert(
            s(cp.clone()),
            map([
                ("image", image(tag, "zone-cp")),
                ("user", user()),
                (
                    "command",
                    strings([
                        "--zone",
                        &zone,
                        "--mode",
                        "zone",
                        "--data-dir",
                        "/var/lib/meridian/zone",
                        "--global-kds-address",
                        &kds_addresses,
                        "--kds-ca-file",
                        "/etc/meridian/kds-ca.crt",
                        "--zone-token-file",
                        "/etc/meridian/zone.token",
                    ]),
                ),
                (
                    "volumes",
                    strings([
                        format!("./secrets/{zone}:/var/lib/meridian/zone"),
                        format!("{kds_ca}:/etc/meridian/kds-ca.crt:ro"),
                        format!("./secrets/tokens/{zone}.token:/etc/meridian/zone.token:ro"),
                    ]),
                ),
                ("networks", strings(["control".to_owned(), zone.clone()])),
                ("depends_on", zone_cp_depends.clone()),
            ]),
        );

        // The zone's ingress and egress: one proxy image and set of settings, each listening
        // where its traffic comes from. The ingress is on the interzone network, where other
        // zones' egresses reach it; the egress is on the zone's network, where its sidecars
        // reach it.
        let edges = [
            (
                "ingress",
                subnets.ingress_ip(k),
                INGRESS_PORT,
                map([
                    (zone.as_str(), Value::Null),
                    (
                        "interzone",
                        map([("ipv4_address", s(subnets.ingress_ip(k)))]),
                    ),
                ]),
            ),
            (
                "egress",
                subnets.zone_ip(k, 4),
                EGRESS_PORT,
                map([
                    (
                        zone.as_str(),
                        map([("ipv4_address", s(subnets.zone_ip(k, 4)))]),
                    ),
                    ("interzone", Value::Null),
                ]),
            ),
        ];
        for (mode, address, port, networks) in edges {
            let name = format!("{zone}-{mode}");
            let mut args = proxy_base(&zone, mode, &name);
            args.extend([
                "--address".to_owned(),
                address,
                "--port".to_owned(),
                port.to_string(),
            ]);
            services.insert(s(name.clone()), proxy_service(&zone, &name, args, networks));
        }

        for (i, service) in demo_services(k, zones).into_iter().enumerate() {
            let name = format!("{service}-{zone}");
            let address = subnets.zone_ip(k, 10 + i as u8);
            let mut args = proxy_base(&zone, "sidecar", &name);
            args.extend([
                "--service".to_owned(),
                service.to_owned(),
                "--address".to_owned(),
                address.clone(),
                "--inbound-port".to_owned(),
                INBOUND_PORT.to_string(),
                "--service-port".to_owned(),
                APP_PORT.to_string(),
                "--tag".to_owned(),
                "kuma.io/protocol=http".to_owned(),
            ]);
            if service == "frontend" {
                args.extend(["--outbound".to_owned(), format!("backend={OUTBOUND_PORT}")]);
            }
            let networks = map([(zone.as_str(), map([("ipv4_address", s(address))]))]);
            services.insert(s(name.clone()), proxy_service(&zone, &name, args, networks));
            // The app shares its sidecar's network namespace: the sidecar's inbound forwards to
            // 127.0.0.1:8080 and the app reaches its outbounds on 127.0.0.1.
            services.insert(
                s(format!("{name}-app")),
                map([
                    ("image", image(tag, "demo-app")),
                    ("user", user()),
                    (
                        "command",
                        strings([
                            "serve",
                            "--listen",
                            &format!("127.0.0.1:{APP_PORT}"),
                            "--service",
                            service,
                            "--zone",
                            &zone,
                            "--instance",
                            &name,
                        ]),
                    ),
                    ("network_mode", s(format!("service:{name}"))),
                    ("depends_on", healthy(&name)),
                ]),
            );
        }
    }

    // The images' health checks (every 2 s, 3 failures) with a start period: a debug build on a
    // loaded machine has taken longer than the image's 3 s to be ready, and a dependency that
    // turns unhealthy fails `up` at once; failures within the period do not count.
    for (name, service) in services.iter_mut() {
        if name.as_str() != Some(GLOBAL_INIT) {
            if let Value::Mapping(service) = service {
                service.insert(
                    s("healthcheck"),
                    map([("start_period", s(HEALTH_START_PERIOD))]),
                );
            }
        }
    }

    let mut top = Mapping::new();
    top.insert(s("version"), s("2.4"));
    top.insert(s("services"), Value::Mapping(services));
    top.insert(s("networks"), Value::Mapping(networks));
    let body = serde_yaml::to_string(&Value::Mapping(top)).expect("YAML of plain values");
    let mut flag = if global_nodes == 1 {
        String::new()
    } else {
        format!(" --global-nodes {global_nodes}")
    };
    if prefix != SUBNET_PREFIX {
        flag.push_str(&format!(" --subnet-prefix {prefix}"));
    }
    format!(
        "# Generated by `meshctl generate compose --zones {zones}{flag}`: a Meridian federation of \
         {zones} zone(s).\n# Secrets live in ./secrets (not committed); see deploy/README.md.\n{body}"
    )
}

/// `.gitignore` of a generated project: nothing secret is committed.
pub const GITIGNORE: &str = "# Tokens, keys and the control planes' data: made by `meshctl generate compose`.\nsecrets/\n.env\n";

/// Writes the project files into `dir` (not the secrets).
pub fn write_project(
    dir: &Path,
    zones: u32,
    global_nodes: u32,
    tag: &str,
    subnet_prefix: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(
        &dir.join("docker-compose.yaml"),
        compose_yaml_on(zones, global_nodes, tag, subnet_prefix).as_bytes(),
        None,
    )?;
    write_atomic(&dir.join(".gitignore"), GITIGNORE.as_bytes(), None)?;
    Ok(())
}

/// Runs `meshctl generate compose`.
pub async fn run(args: &ComposeArgs) -> anyhow::Result<()> {
    write_project(
        &args.out,
        args.zones,
        args.global_nodes,
        &args.image_tag,
        &args.subnet_prefix,
    )?;
    if args.no_secrets {
        println!(
            "wrote {} (no secrets: run `meshctl generate compose --zones {} --global-nodes {} --out {}` \
             to make them)",
            args.out.join("docker-compose.yaml").display(),
            args.zones,
            args.global_nodes,
            args.out.display()
        );
        return Ok(());
    }
    let secrets = args.out.join("secrets");
    if secrets.exists() {
        anyhow::bail!(
            "{} exists: remove it (and `docker-compose down -v` the project) to make new secrets",
            secrets.display()
        );
    }
    bootstrap(
        &secrets,
        args.zones,
        args.global_nodes,
        &args.subnet_prefix,
        Duration::from_secs(args.bootstrap_timeout),
    )
    .await?;
    let (uid, gid) = own_for_containers(&secrets)?;
    write_atomic(
        &args.out.join(".env"),
        format!("MERIDIAN_UID={uid}\nMERIDIAN_GID={gid}\n").as_bytes(),
        None,
    )?;
    println!(
        "wrote {} and its secrets in {}\nbring it up with: cd {} && docker-compose up -d",
        args.out.join("docker-compose.yaml").display(),
        secrets.display(),
        args.out.display()
    );
    Ok(())
}

/// Runs the federation once (`meshctl up --no-demo`) with its data in `secrets`, prepares the
/// mesh and issues every token, then stops it. A multi-node global's resources are exported for
/// [`GLOBAL_INIT`] and its Raft state removed: the nodes' logs name the loopback peers of this
/// run, and a node resumes the membership in its log, so the containers start a new cluster.
async fn bootstrap(
    secrets: &Path,
    zones: u32,
    global_nodes: u32,
    subnet_prefix: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(secrets)
        .with_context(|| format!("cannot create {}", secrets.display()))?;
    let exe = std::env::current_exe().context("cannot locate meshctl itself")?;
    let log_path = secrets.join("bootstrap.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = tokio::process::Command::new(&exe);
    command
        .args([
            "up",
            "--no-demo",
            "--zones",
            &zones.to_string(),
            "--global-nodes",
            &global_nodes.to_string(),
            "--data-dir",
        ])
        .arg(secrets)
        // The containers dial the global by its service names: its KDS certificate must name them.
        .env(
            "MERIDIAN_KDS_HOSTNAMES",
            global_services(global_nodes).join(","),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    process::terminate_with_parent(&mut command);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {} up", exe.display()))?;
    let result = prepare(
        secrets,
        zones,
        global_nodes,
        subnet_prefix,
        timeout,
        &mut child,
    )
    .await;
    if let Some(pid) = child.id() {
        let _ = process::send_signal(pid, Signal::Term);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    result.with_context(|| format!("bootstrap failed; see {}", log_path.display()))?;
    match stopped {
        Ok(Ok(status)) if status.success() => {
            if global_nodes > 1 {
                for name in global_services(global_nodes) {
                    let raft = secrets.join(&name).join("raft");
                    std::fs::remove_dir_all(&raft)
                        .with_context(|| format!("cannot remove {}", raft.display()))?;
                }
                // Loopback peer addresses of the bootstrap run, meaningless in the project.
                remove_if_present(&secrets.join("global-peers"))?;
            }
            Ok(())
        }
        Ok(Ok(status)) => anyhow::bail!(
            "the bootstrap federation exited with {status}; see {}",
            log_path.display()
        ),
        Ok(Err(e)) => Err(e).context("cannot wait for the bootstrap federation"),
        Err(_) => anyhow::bail!(
            "the bootstrap federation did not stop within 30 s; see {}",
            log_path.display()
        ),
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

async fn prepare(
    secrets: &Path,
    zones: u32,
    global_nodes: u32,
    subnet_prefix: &str,
    timeout: Duration,
    child: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    // `meshctl up` writes endpoints.json once every zone is online.
    let endpoints_path = secrets.join(Endpoints::FILE);
    let endpoints = loop {
        if let Some(e) = Endpoints::read(&endpoints_path)? {
            break e;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("`meshctl up` exited early with {status}");
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the federation was not up within {timeout:?} ({} not written)",
                endpoints_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let settings = Settings::load(None, None, Some(&secrets.join("meshctl.yaml")))?;
    let global = ApiClient::new(&settings.api_url, settings.token.clone())?;
    crate::apply::apply_text(&global, MESH_YAML, "meshctl generate compose (mesh)").await?;
    // The mesh CA is made by the global; wait for it so it is in the data the containers get.
    let secret = [
        "meshes".to_owned(),
        "default".to_owned(),
        "secrets".to_owned(),
        CA_CERT_SECRET.to_owned(),
    ];
    while global.get(&secret).await.is_err() {
        if Instant::now() >= deadline {
            anyhow::bail!("the global made no mesh CA ({CA_CERT_SECRET}) within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let tokens = secrets.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    for k in 1..=zones {
        let zone = zone_name(k);
        let token = global
            .generate_zone_token(&zone, TOKEN_VALIDITY)
            .await
            .with_context(|| format!("cannot issue {zone}'s zone token"))?;
        write_atomic(
            &tokens.join(format!("{zone}.token")),
            token.as_bytes(),
            Some(0o600),
        )?;
    }
    let mut zone_clients = BTreeMap::new();
    for (zone, ep) in &endpoints.zones {
        let admin_path = secrets.join(zone).join("admin-token");
        let admin = std::fs::read_to_string(&admin_path)
            .with_context(|| format!("cannot read {}", admin_path.display()))?;
        let api = if ep.api.contains("://") {
            ep.api.clone()
        } else {
            format!("http://{}", ep.api)
        };
        zone_clients.insert(
            zone.clone(),
            ApiClient::new(&api, Some(admin.trim().to_owned()))?,
        );
    }
    for (k, name, kind) in proxies(zones) {
        let zone = zone_name(k);
        let api = zone_clients
            .get(&zone)
            .with_context(|| format!("endpoints.json lists no {zone}"))?;
        let mesh = if kind == "dataplane" { "default" } else { "" };
        let token = api
            .generate_dataplane_token(kind, mesh, &name, TOKEN_VALIDITY)
            .await
            .with_context(|| format!("cannot issue {name}'s dataplane token from {zone}"))?;
        write_atomic(
            &tokens.join(format!("{name}.token")),
            token.as_bytes(),
            Some(0o600),
        )?;
    }
    if global_nodes > 1 {
        let (text, _) = crate::export::export(&global).await?;
        write_atomic(
            &secrets.join(GLOBAL_RESOURCES),
            text.as_bytes(),
            Some(0o600),
        )?;
        let config = crate::config::ConfigFile {
            api_url: Some(format!(
                "http://{}:{API_PORT}",
                Subnets(subnet_prefix).global_ip(1)
            )),
            token: settings.token.clone(),
        };
        config.save(&secrets.join(GLOBAL_INIT_CONFIG))?;
    }
    Ok(())
}

/// Makes `secrets` usable by the containers' non-root user: when run as root, everything is
/// handed to the images' user ([`IMAGE_UID`]); otherwise the containers run as the caller
/// (`.env`'s MERIDIAN_UID/GID). Returns that uid and gid.
fn own_for_containers(secrets: &Path) -> anyhow::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(secrets)?;
    if meta.uid() != 0 {
        return Ok((meta.uid(), meta.gid()));
    }
    chown_tree(secrets, IMAGE_UID)?;
    Ok((IMAGE_UID, IMAGE_UID))
}

fn chown_tree(path: &Path, id: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(id), Some(id))
        .with_context(|| format!("cannot chown {}", path.display()))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(zones: u32) -> Value {
        serde_yaml::from_str(&compose_yaml(zones, 1, "t")).unwrap()
    }

    fn networks_of(service: &Value) -> Vec<String> {
        match &service["networks"] {
            Value::Sequence(s) => s.iter().map(|n| n.as_str().unwrap().to_owned()).collect(),
            Value::Mapping(m) => m.keys().map(|n| n.as_str().unwrap().to_owned()).collect(),
            Value::Null => Vec::new(),
            other => panic!("networks: {other:?}"),
        }
    }

    #[test]
    fn three_zones_have_every_service_and_network() {
        let d = doc(3);
        let services = d["services"].as_mapping().unwrap();
        let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
        for expected in [
            "global",
            "zone-1-cp",
            "zone-1-ingress",
            "zone-1-egress",
            "frontend-zone-1",
            "frontend-zone-1-app",
            "zone-2-cp",
            "backend-zone-2",
            "backend-zone-2-app",
            "zone-3-ingress",
            "backend-zone-3-app",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        assert!(!names.contains(&"backend-zone-1"));
        let nets: Vec<&str> = d["networks"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(nets, ["control", "interzone", "zone-1", "zone-2", "zone-3"]);
    }

    #[test]
    fn only_ingresses_and_egresses_join_interzone_and_only_control_planes_control() {
        let one: Value = doc(3);
        let three: Value = serde_yaml::from_str(&compose_yaml(3, 3, "t")).unwrap();
        for (name, service) in one["services"]
            .as_mapping()
            .unwrap()
            .iter()
            .chain(three["services"].as_mapping().unwrap())
        {
            let name = name.as_str().unwrap();
            let nets = networks_of(service);
            let proxy_edge = name.ends_with("-ingress") || name.ends_with("-egress");
            assert_eq!(nets.contains(&"interzone".to_owned()), proxy_edge, "{name}");
            let cp = name.starts_with("global") || name.ends_with("-cp");
            assert_eq!(nets.contains(&"control".to_owned()), cp, "{name}");
            if name.ends_with("-app") {
                let sidecar = name.trim_end_matches("-app");
                assert_eq!(service["network_mode"], s(format!("service:{sidecar}")));
            }
        }
    }

    #[test]
    fn addresses_in_commands_are_on_the_right_networks() {
        let d = doc(2);
        let args = |name: &str| -> Vec<String> {
            d["services"][name]["command"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        let after = |args: &[String], flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        let ingress = args("zone-2-ingress");
        assert_eq!(after(&ingress, "--address"), "10.231.1.12");
        assert_eq!(
            d["services"]["zone-2-ingress"]["networks"]["interzone"]["ipv4_address"],
            s("10.231.1.12")
        );
        // Dynamic addresses come from the upper half only, away from the fixed ones.
        let ipam = &d["networks"]["interzone"]["ipam"]["config"][0];
        assert_eq!(ipam["subnet"], s("10.231.1.0/24"));
        assert_eq!(ipam["ip_range"], s("10.231.1.128/25"));
        assert_eq!(
            d["networks"]["zone-2"]["ipam"]["config"][0]["ip_range"],
            s("10.231.12.128/25")
        );
        let egress = args("zone-1-egress");
        assert_eq!(after(&egress, "--address"), "10.231.11.4");
        let frontend = args("frontend-zone-1");
        assert_eq!(after(&frontend, "--outbound"), "backend=10080");
        assert_eq!(after(&frontend, "--cp"), "http://zone-1-cp:5678");
        assert_eq!(
            after(&args("zone-2-cp"), "--global-kds-address"),
            "https://global:5685"
        );
    }

    #[test]
    fn every_proxy_has_a_token_a_drain_grace_and_one_zone_holds_both_services() {
        let names: Vec<String> = proxies(1).into_iter().map(|(_, n, _)| n).collect();
        assert_eq!(
            names,
            [
                "zone-1-ingress",
                "zone-1-egress",
                "frontend-zone-1",
                "backend-zone-1"
            ]
        );
        let d = doc(1);
        for name in &names {
            let volumes = &d["services"][name.as_str()]["volumes"];
            assert_eq!(
                volumes[0],
                s(format!(
                    "./secrets/tokens/{name}.token:/etc/meridian/token:ro"
                ))
            );
            assert_eq!(
                d["services"][name.as_str()]["stop_grace_period"],
                s(PROXY_STOP_GRACE)
            );
        }
    }

    #[test]
    fn a_three_node_global_shares_its_identity_and_zones_dial_every_node_after_the_restore() {
        let d: Value = serde_yaml::from_str(&compose_yaml(2, 3, "t")).unwrap();
        let services = d["services"].as_mapping().unwrap();
        assert!(!services.contains_key(s("global")));
        let args = |name: &str| -> Vec<String> {
            d["services"][name]["command"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        let after = |args: &[String], flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        for id in 1..=3 {
            let name = format!("global-{id}");
            let a = args(&name);
            assert_eq!(after(&a, "--node-id"), id.to_string());
            assert_eq!(
                after(&a, "--peers"),
                "1=global-1:5683,2=global-2:5683,3=global-3:5683"
            );
            assert_eq!(after(&a, "--kds-hostname"), "global-1,global-2,global-3");
            let volumes = &d["services"][name.as_str()]["volumes"];
            assert_eq!(
                volumes[0],
                s(format!("./secrets/{name}:/var/lib/meridian/global"))
            );
            assert_eq!(volumes[1], s("./secrets/global-kds:/var/lib/meridian/kds"));
            assert_eq!(networks_of(&d["services"][name.as_str()]), ["control"]);
            assert_eq!(
                d["services"][name.as_str()]["networks"]["control"]["ipv4_address"],
                s(format!("10.231.0.{}", 10 + id))
            );
            assert_eq!(
                d["services"]["global-init"]["depends_on"][name.as_str()]["condition"],
                s("service_healthy")
            );
        }
        assert_eq!(
            after(&args("global-init"), "-f"),
            "/etc/meridian/global-resources.yaml"
        );
        assert_eq!(networks_of(&d["services"]["global-init"]), ["control"]);
        let zone = args("zone-2-cp");
        assert_eq!(
            after(&zone, "--global-kds-address"),
            "https://global-1:5685,https://global-2:5685,https://global-3:5685"
        );
        assert_eq!(
            d["services"]["zone-2-cp"]["depends_on"]["global-init"]["condition"],
            s("service_completed_successfully")
        );
        assert_eq!(
            d["services"]["zone-2-cp"]["volumes"][1],
            s("./secrets/global-kds/ca.crt:/etc/meridian/kds-ca.crt:ro")
        );
    }

    #[test]
    fn every_service_but_the_one_shot_init_gets_a_health_start_period() {
        let d: Value = serde_yaml::from_str(&compose_yaml(2, 3, "t")).unwrap();
        for (name, service) in d["services"].as_mapping().unwrap() {
            let expected = if name.as_str() == Some(GLOBAL_INIT) {
                Value::Null
            } else {
                map([("start_period", s(HEALTH_START_PERIOD))])
            };
            assert_eq!(service["healthcheck"], expected, "{name:?}");
        }
    }

    #[test]
    fn another_subnet_prefix_moves_every_network_and_fixed_address() {
        let d: Value = serde_yaml::from_str(&compose_yaml_on(2, 1, "t", "10.77")).unwrap();
        assert_eq!(
            d["networks"]["interzone"]["ipam"]["config"][0]["subnet"],
            s("10.77.1.0/24")
        );
        assert_eq!(
            d["services"]["zone-2-ingress"]["networks"]["interzone"]["ipv4_address"],
            s("10.77.1.12")
        );
        assert!(!serde_yaml::to_string(&d).unwrap().contains("10.231."));
        assert!(parse_subnet_prefix("10.77").is_ok());
        for bad in ["10", "10.77.1", "10.300", "a.b"] {
            assert!(parse_subnet_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn global_nodes_are_one_or_an_odd_number_up_to_seven() {
        for ok in ["1", "3", "5", "7"] {
            assert!(parse_global_nodes(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "2", "4", "9", "x"] {
            let error = parse_global_nodes(bad).unwrap_err();
            assert!(error.contains("expected 1, 3, 5 or 7"), "{error}");
        }
    }

    /// The checked-in example is what the generator writes (regenerate it with
    /// `meshctl generate compose --zones 3 --global-nodes 3 --no-secrets --out
    /// deploy/compose/example-3-zones`).
    #[test]
    fn the_checked_in_example_is_current() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/compose/example-3-zones/docker-compose.yaml");
        let text = std::fs::read_to_string(&example).unwrap();
        assert_eq!(
            text,
            compose_yaml(3, 3, "latest"),
            "{} is stale",
            example.display()
        );
    }
}
