//! `meshctl install control-plane`: Kubernetes manifests for a control plane, printed as one
//! multi-document YAML stream for `kubectl apply -f -`, as `kumactl install control-plane` does
//! (issue [6]).
//!
//! `--mode global` is a Raft cluster: a StatefulSet of `--replicas` nodes (node id = the pod's
//! ordinal, from the `apps.kubernetes.io/pod-index` label, Kubernetes 1.28+) with a headless
//! Service through which the nodes dial each other's peer port, a Service for the REST API and one
//! for KDS (a LoadBalancer: zones in other clusters dial it), a PodDisruptionBudget keeping a
//! quorum, and a volume per node. `--mode zone` is one zone control plane (a Deployment of one
//! replica on a volume: the zone's store is a single writer) with its API/xDS Service.
//!
//! Secrets are referenced, never generated: the manifests name the Secrets an operator creates
//! first (docs/rollout.md shows the commands), so `meshctl install` output can be committed.
//! The control planes read files only (they do not call the Kubernetes API); their
//! ServiceAccount has no token mounted and a Role that reads only their own Secrets.

use serde_yaml::{Mapping, Value};

use crate::yaml_value::{list, map, n, s};

/// Arguments of `meshctl install control-plane`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// What to install: the global control plane or a zone's.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The zone's name (`--mode zone`).
    #[arg(long)]
    pub zone: Option<String>,
    /// The global's KDS address(es) the zone dials, `grpcs://host:5685` (or `https://`),
    /// comma-separated for several global nodes (`--mode zone`).
    #[arg(long)]
    pub kds_global_address: Option<String>,
    /// Namespace of every namespaced resource.
    #[arg(long, default_value = "meridian-system")]
    pub namespace: String,
    /// Image repository prefix: `<prefix>/global-cp:<tag>`, `<prefix>/zone-cp:<tag>`.
    #[arg(long, default_value = "meridian")]
    pub image_repository: String,
    #[arg(long, default_value = "latest")]
    pub image_tag: String,
    /// Nodes of the global's Raft cluster (`--mode global`): 3 or 5 across availability zones.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub replicas: u32,
    /// Extra names the global's KDS certificate must cover (the KDS Service's external DNS
    /// name), comma-separated (`--mode global`).
    #[arg(long, default_value = "")]
    pub kds_hostnames: String,
    /// Size of each control plane's data volume.
    #[arg(long, default_value = "1Gi")]
    pub storage_size: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Global,
    Zone,
}

/// A flag combination `install control-plane` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error("--mode zone needs --{0}")]
    ZoneNeeds(&'static str),
    #[error("--{0} is for --mode zone only")]
    ZoneOnly(&'static str),
    #[error("--zone {0:?}: a zone name is a DNS label (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)")]
    ZoneName(String),
    #[error("--kds-global-address {0:?}: expected grpcs://HOST:PORT or https://HOST:PORT")]
    KdsAddress(String),
    #[error("--namespace {0:?}: a namespace is a DNS label")]
    Namespace(String),
}

/// Ports, as in the images and the compose project.
const API_PORT: u16 = 5681;
const DIAGNOSTICS_PORT: u16 = 5680;
const KDS_PORT: u16 = 5685;
const RAFT_PORT: u16 = 5683;
const XDS_PORT: u16 = 5678;
/// The images' user (deploy/docker/Dockerfile.in).
const UID: u64 = 10001;

/// The Secrets the manifests reference (created by the operator; docs/rollout.md).
pub const ADMIN_TOKEN_SECRET: &str = "meridian-admin-token";
pub const GLOBAL_KDS_SECRET: &str = "meridian-global-kds";
pub const GLOBAL_RAFT_SECRET: &str = "meridian-global-raft-tls";
pub const ZONE_TOKEN_SECRET: &str = "meridian-zone-token";
pub const KDS_CA_SECRET: &str = "meridian-kds-ca";

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// `grpcs://host:port` (Kuma's spelling) or `https://host:port`, comma-separated, as zone-cp's
/// `--global-kds-address` takes them (`https://`).
pub fn kds_addresses(text: &str) -> Result<String, InstallError> {
    text.split(',')
        .map(|a| {
            let a = a.trim();
            let rest = a
                .strip_prefix("grpcs://")
                .or_else(|| a.strip_prefix("https://"))
                .ok_or_else(|| InstallError::KdsAddress(a.to_owned()))?;
            match rest.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(format!("https://{rest}"))
                }
                _ => Err(InstallError::KdsAddress(a.to_owned())),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.join(","))
}

/// The manifests for `args`, one YAML stream.
pub fn manifests(args: &ControlPlaneArgs) -> Result<String, InstallError> {
    if !is_dns_label(&args.namespace) {
        return Err(InstallError::Namespace(args.namespace.clone()));
    }
    let docs = match args.mode {
        Mode::Global => {
            if args.zone.is_some() {
                return Err(InstallError::ZoneOnly("zone"));
            }
            if args.kds_global_address.is_some() {
                return Err(InstallError::ZoneOnly("kds-global-address"));
            }
            global(args)
        }
        Mode::Zone => {
            let zone = args
                .zone
                .as_deref()
                .ok_or(InstallError::ZoneNeeds("zone"))?;
            if !is_dns_label(zone) {
                return Err(InstallError::ZoneName(zone.to_owned()));
            }
            let address = args
                .kds_global_address
                .as_deref()
                .ok_or(InstallError::ZoneNeeds("kds-global-address"))?;
            zone_cp(args, zone, &kds_addresses(address)?)
        }
    };
    let mut out = format!(
        "# Generated by `meshctl install control-plane --mode {}`: Meridian's {} control plane.\n\
         # Create the Secrets it references first (docs/rollout.md).\n",
        match args.mode {
            Mode::Global => "global",
            Mode::Zone => "zone",
        },
        match args.mode {
            Mode::Global => "global",
            Mode::Zone => "zone",
        },
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).expect("YAML of plain values"));
    }
    Ok(out)
}

fn metadata(name: &str, namespace: Option<&str>, component: &str) -> Value {
    let labels = map([
        ("app.kubernetes.io/name", s("meridian")),
        ("app.kubernetes.io/component", s(component)),
    ]);
    match namespace {
        Some(ns) => map([("name", s(name)), ("namespace", s(ns)), ("labels", labels)]),
        None => map([("name", s(name)), ("labels", labels)]),
    }
}

fn selector(component: &str) -> Value {
    map([
        ("app.kubernetes.io/name", s("meridian")),
        ("app.kubernetes.io/component", s(component)),
    ])
}

fn namespace(args: &ControlPlaneArgs) -> Value {
    map([
        ("apiVersion", s("v1")),
        ("kind", s("Namespace")),
        ("metadata", metadata(&args.namespace, None, "namespace")),
    ])
}

/// The ServiceAccount, and a Role (with its binding) that reads only `secrets`.
fn identity(args: &ControlPlaneArgs, name: &str, component: &str, secrets: &[&str]) -> Vec<Value> {
    let ns = Some(args.namespace.as_str());
    vec![
        map([
            ("apiVersion", s("v1")),
            ("kind", s("ServiceAccount")),
            ("metadata", metadata(name, ns, component)),
            ("automountServiceAccountToken", Value::Bool(false)),
        ]),
        map([
            ("apiVersion", s("rbac.authorization.k8s.io/v1")),
            ("kind", s("Role")),
            ("metadata", metadata(name, ns, component)),
            (
                "rules",
                list([map([
                    ("apiGroups", list([s("")])),
                    ("resources", list([s("secrets")])),
                    ("resourceNames", list(secrets.iter().map(|x| s(*x)))),
                    ("verbs", list([s("get")])),
                ])]),
            ),
        ]),
        map([
            ("apiVersion", s("rbac.authorization.k8s.io/v1")),
            ("kind", s("RoleBinding")),
            ("metadata", metadata(name, ns, component)),
            (
                "roleRef",
                map([
                    ("apiGroup", s("rbac.authorization.k8s.io")),
                    ("kind", s("Role")),
                    ("name", s(name)),
                ]),
            ),
            (
                "subjects",
                list([map([
                    ("kind", s("ServiceAccount")),
                    ("name", s(name)),
                    ("namespace", s(args.namespace.clone())),
                ])]),
            ),
        ]),
    ]
}

fn port(name: &str, number: u16) -> Value {
    map([
        ("name", s(name)),
        ("port", n(number.into())),
        ("targetPort", n(number.into())),
        ("protocol", s("TCP")),
    ])
}

fn container_port(name: &str, number: u16) -> Value {
    map([
        ("name", s(name)),
        ("containerPort", n(number.into())),
        ("protocol", s("TCP")),
    ])
}

fn service(
    args: &ControlPlaneArgs,
    name: &str,
    component: &str,
    kind: &str,
    ports: Vec<Value>,
) -> Value {
    let mut spec = Mapping::new();
    spec.insert(s("selector"), selector(component));
    spec.insert(s("ports"), Value::Sequence(ports));
    match kind {
        "Headless" => {
            spec.insert(s("clusterIP"), s("None"));
            // Peers must reach each other before they are ready: readiness needs a leader.
            spec.insert(s("publishNotReadyAddresses"), Value::Bool(true));
        }
        other => {
            spec.insert(s("type"), s(other));
        }
    }
    map([
        ("apiVersion", s("v1")),
        ("kind", s("Service")),
        ("metadata", metadata(name, Some(&args.namespace), component)),
        ("spec", Value::Mapping(spec)),
    ])
}

fn config_map(
    args: &ControlPlaneArgs,
    name: &str,
    component: &str,
    data: Vec<(&str, String)>,
) -> Value {
    let mut m = Mapping::new();
    for (k, v) in data {
        m.insert(s(k), s(v));
    }
    map([
        ("apiVersion", s("v1")),
        ("kind", s("ConfigMap")),
        ("metadata", metadata(name, Some(&args.namespace), component)),
        ("data", Value::Mapping(m)),
    ])
}

fn secret_volume(name: &str, secret: &str) -> Value {
    map([
        ("name", s(name)),
        (
            "secret",
            map([("secretName", s(secret)), ("defaultMode", n(0o400))]),
        ),
    ])
}

fn mount(name: &str, path: &str, sub_path: Option<&str>, read_only: bool) -> Value {
    let mut m = Mapping::new();
    m.insert(s("name"), s(name));
    m.insert(s("mountPath"), s(path));
    if let Some(sub) = sub_path {
        m.insert(s("subPath"), s(sub));
    }
    if read_only {
        m.insert(s("readOnly"), Value::Bool(true));
    }
    Value::Mapping(m)
}

fn http_probe(path: &str, period: u64) -> Value {
    map([
        (
            "httpGet",
            map([("path", s(path)), ("port", s("diagnostics"))]),
        ),
        ("periodSeconds", n(period)),
        ("failureThreshold", n(3)),
    ])
}

/// The control plane's container.
fn container(
    args: &ControlPlaneArgs,
    binary: &str,
    config: &str,
    env: Vec<Value>,
    ports: Vec<Value>,
    mounts: Vec<Value>,
) -> Value {
    map([
        ("name", s(binary)),
        (
            "image",
            s(format!(
                "{}/{binary}:{}",
                args.image_repository, args.image_tag
            )),
        ),
        ("imagePullPolicy", s("IfNotPresent")),
        (
            "envFrom",
            list([map([("configMapRef", map([("name", s(config))]))])]),
        ),
        ("env", Value::Sequence(env)),
        ("ports", Value::Sequence(ports)),
        ("volumeMounts", Value::Sequence(mounts)),
        ("readinessProbe", http_probe("/ready", 2)),
        ("livenessProbe", http_probe("/healthy", 10)),
        (
            "resources",
            map([
                (
                    "requests",
                    map([("cpu", s("100m")), ("memory", s("128Mi"))]),
                ),
                ("limits", map([("memory", s("1Gi"))])),
            ]),
        ),
        (
            "securityContext",
            map([
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("capabilities", map([("drop", list([s("ALL")]))])),
            ]),
        ),
    ])
}

fn pod_security() -> Value {
    map([
        ("runAsNonRoot", Value::Bool(true)),
        ("runAsUser", n(UID)),
        ("runAsGroup", n(UID)),
        ("fsGroup", n(UID)),
        ("seccompProfile", map([("type", s("RuntimeDefault"))])),
    ])
}

fn global(args: &ControlPlaneArgs) -> Vec<Value> {
    const NAME: &str = "meridian-global-cp";
    const PEERS: &str = "meridian-global-peers";
    const COMPONENT: &str = "global-cp";
    let ns = args.namespace.as_str();
    // Node ids are the pods' ordinals; each dials the others through the headless Service.
    let peers = (0..args.replicas)
        .map(|i| format!("{i}={NAME}-{i}.{PEERS}.{ns}.svc:{RAFT_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut hostnames = vec![
        format!("meridian-global-kds.{ns}.svc"),
        format!("meridian-global-kds.{ns}.svc.cluster.local"),
    ];
    hostnames.extend(
        args.kds_hostnames
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned),
    );
    let config = config_map(
        args,
        NAME,
        COMPONENT,
        vec![
            ("MERIDIAN_DATA_DIR", "/var/lib/meridian/global".to_owned()),
            ("MERIDIAN_PEERS", peers),
            ("MERIDIAN_RAFT_TLS_DIR", "/etc/meridian/raft".to_owned()),
            ("MERIDIAN_KDS_TLS_DIR", "/etc/meridian/kds".to_owned()),
            ("MERIDIAN_KDS_HOSTNAMES", hostnames.join(",")),
        ],
    );
    let env = vec![map([
        ("name", s("MERIDIAN_NODE_ID")),
        (
            "valueFrom",
            map([(
                "fieldRef",
                map([(
                    "fieldPath",
                    s("metadata.labels['apps.kubernetes.io/pod-index']"),
                )]),
            )]),
        ),
    ])];
    let container = container(
        args,
        "global-cp",
        NAME,
        env,
        vec![
            container_port("api", API_PORT),
            container_port("diagnostics", DIAGNOSTICS_PORT),
            container_port("kds", KDS_PORT),
            container_port("raft", RAFT_PORT),
        ],
        vec![
            mount("data", "/var/lib/meridian/global", None, false),
            // One admin token for every node (a file in the data dir; the Secret's key over it).
            mount(
                "admin-token",
                "/var/lib/meridian/global/admin-token",
                Some("admin-token"),
                true,
            ),
            mount("kds", "/etc/meridian/kds", None, true),
            mount("raft", "/etc/meridian/raft", None, true),
        ],
    );
    let pod_labels = selector(COMPONENT);
    let spread = map([
        ("maxSkew", n(1)),
        ("topologyKey", s("topology.kubernetes.io/zone")),
        ("whenUnsatisfiable", s("ScheduleAnyway")),
        ("labelSelector", map([("matchLabels", pod_labels.clone())])),
    ]);
    let statefulset = map([
        ("apiVersion", s("apps/v1")),
        ("kind", s("StatefulSet")),
        ("metadata", metadata(NAME, Some(ns), COMPONENT)),
        (
            "spec",
            map([
                ("serviceName", s(PEERS)),
                ("replicas", n(args.replicas.into())),
                // Every node must run for the first election: start them together.
                ("podManagementPolicy", s("Parallel")),
                ("selector", map([("matchLabels", pod_labels.clone())])),
                (
                    "template",
                    map([
                        ("metadata", map([("labels", pod_labels.clone())])),
                        (
                            "spec",
                            map([
                                ("serviceAccountName", s(NAME)),
                                ("automountServiceAccountToken", Value::Bool(false)),
                                ("securityContext", pod_security()),
                                ("topologySpreadConstraints", list([spread])),
                                ("terminationGracePeriodSeconds", n(30)),
                                ("containers", list([container])),
                                (
                                    "volumes",
                                    list([
                                        secret_volume("admin-token", ADMIN_TOKEN_SECRET),
                                        secret_volume("kds", GLOBAL_KDS_SECRET),
                                        secret_volume("raft", GLOBAL_RAFT_SECRET),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ),
                (
                    "volumeClaimTemplates",
                    list([map([
                        ("metadata", map([("name", s("data"))])),
                        (
                            "spec",
                            map([
                                ("accessModes", list([s("ReadWriteOnce")])),
                                (
                                    "resources",
                                    map([(
                                        "requests",
                                        map([("storage", s(args.storage_size.clone()))]),
                                    )]),
                                ),
                            ]),
                        ),
                    ])]),
                ),
            ]),
        ),
    ]);
    let quorum = args.replicas / 2 + 1;
    let pdb = map([
        ("apiVersion", s("policy/v1")),
        ("kind", s("PodDisruptionBudget")),
        ("metadata", metadata(NAME, Some(ns), COMPONENT)),
        (
            "spec",
            map([
                ("minAvailable", n(quorum.into())),
                ("selector", map([("matchLabels", pod_labels)])),
            ]),
        ),
    ]);
    let mut docs = vec![namespace(args)];
    docs.extend(identity(
        args,
        NAME,
        COMPONENT,
        &[ADMIN_TOKEN_SECRET, GLOBAL_KDS_SECRET, GLOBAL_RAFT_SECRET],
    ));
    docs.extend([
        config,
        service(
            args,
            PEERS,
            COMPONENT,
            "Headless",
            vec![port("raft", RAFT_PORT)],
        ),
        service(
            args,
            NAME,
            COMPONENT,
            "ClusterIP",
            vec![port("api", API_PORT), port("diagnostics", DIAGNOSTICS_PORT)],
        ),
        // Zones in other clusters dial KDS: an address outside the cluster.
        service(
            args,
            "meridian-global-kds",
            COMPONENT,
            "LoadBalancer",
            vec![port("kds", KDS_PORT)],
        ),
        statefulset,
        pdb,
    ]);
    docs
}

fn zone_cp(args: &ControlPlaneArgs, zone: &str, kds: &str) -> Vec<Value> {
    const NAME: &str = "meridian-zone-cp";
    const COMPONENT: &str = "zone-cp";
    let ns = args.namespace.as_str();
    let config = config_map(
        args,
        NAME,
        COMPONENT,
        vec![
            ("MERIDIAN_ZONE", zone.to_owned()),
            ("MERIDIAN_MODE", "zone".to_owned()),
            ("MERIDIAN_DATA_DIR", "/var/lib/meridian/zone".to_owned()),
            ("MERIDIAN_GLOBAL_KDS_ADDRESS", kds.to_owned()),
            (
                "MERIDIAN_KDS_CA_FILE",
                "/etc/meridian/kds-ca/ca.crt".to_owned(),
            ),
            (
                "MERIDIAN_ZONE_TOKEN_FILE",
                "/etc/meridian/zone-token/zone.token".to_owned(),
            ),
        ],
    );
    let container = container(
        args,
        "zone-cp",
        NAME,
        Vec::new(),
        vec![
            container_port("api", API_PORT),
            container_port("diagnostics", DIAGNOSTICS_PORT),
            container_port("xds", XDS_PORT),
        ],
        vec![
            mount("data", "/var/lib/meridian/zone", None, false),
            mount(
                "admin-token",
                "/var/lib/meridian/zone/admin-token",
                Some("admin-token"),
                true,
            ),
            mount("kds-ca", "/etc/meridian/kds-ca", None, true),
            mount("zone-token", "/etc/meridian/zone-token", None, true),
        ],
    );
    let pod_labels = selector(COMPONENT);
    let deployment = map([
        ("apiVersion", s("apps/v1")),
        ("kind", s("Deployment")),
        ("metadata", metadata(NAME, Some(ns), COMPONENT)),
        (
            "spec",
            map([
                // One writer of the zone's store (a volume mounted by one pod at a time).
                ("replicas", n(1)),
                ("strategy", map([("type", s("Recreate"))])),
                ("selector", map([("matchLabels", pod_labels.clone())])),
                (
                    "template",
                    map([
                        ("metadata", map([("labels", pod_labels)])),
                        (
                            "spec",
                            map([
                                ("serviceAccountName", s(NAME)),
                                ("automountServiceAccountToken", Value::Bool(false)),
                                ("securityContext", pod_security()),
                                ("terminationGracePeriodSeconds", n(30)),
                                ("containers", list([container])),
                                (
                                    "volumes",
                                    list([
                                        map([
                                            ("name", s("data")),
                                            (
                                                "persistentVolumeClaim",
                                                map([("claimName", s(NAME))]),
                                            ),
                                        ]),
                                        secret_volume("admin-token", ADMIN_TOKEN_SECRET),
                                        secret_volume("kds-ca", KDS_CA_SECRET),
                                        secret_volume("zone-token", ZONE_TOKEN_SECRET),
                                    ]),
                                ),
                            ]),
                        ),
                    ]),
                ),
            ]),
        ),
    ]);
    let pvc = map([
        ("apiVersion", s("v1")),
        ("kind", s("PersistentVolumeClaim")),
        ("metadata", metadata(NAME, Some(ns), COMPONENT)),
        (
            "spec",
            map([
                ("accessModes", list([s("ReadWriteOnce")])),
                (
                    "resources",
                    map([("requests", map([("storage", s(args.storage_size.clone()))]))]),
                ),
            ]),
        ),
    ]);
    let mut docs = vec![namespace(args)];
    docs.extend(identity(
        args,
        NAME,
        COMPONENT,
        &[ADMIN_TOKEN_SECRET, KDS_CA_SECRET, ZONE_TOKEN_SECRET],
    ));
    docs.extend([
        config,
        pvc,
        service(
            args,
            NAME,
            COMPONENT,
            "ClusterIP",
            vec![
                port("api", API_PORT),
                port("diagnostics", DIAGNOSTICS_PORT),
                port("xds", XDS_PORT),
            ],
        ),
        deployment,
    ]);
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: Mode) -> ControlPlaneArgs {
        ControlPlaneArgs {
            mode,
            zone: None,
            kds_global_address: None,
            namespace: "meridian-system".into(),
            image_repository: "meridian".into(),
            image_tag: "t".into(),
            replicas: 3,
            kds_hostnames: "kds.example.com".into(),
            storage_size: "1Gi".into(),
        }
    }

    fn docs(text: &str) -> Vec<Value> {
        text.split("\n---\n")
            .skip(1)
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect()
    }

    fn kinds(docs: &[Value]) -> Vec<&str> {
        docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
    }

    #[test]
    fn the_global_is_a_statefulset_whose_nodes_dial_each_other_through_a_headless_service() {
        let d = docs(&manifests(&args(Mode::Global)).unwrap());
        assert_eq!(
            kinds(&d),
            [
                "Namespace",
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ConfigMap",
                "Service",
                "Service",
                "Service",
                "StatefulSet",
                "PodDisruptionBudget"
            ]
        );
        let config = &d[4]["data"];
        assert_eq!(
            config["MERIDIAN_PEERS"],
            s(
                "0=meridian-global-cp-0.meridian-global-peers.meridian-system.svc:5683,\
               1=meridian-global-cp-1.meridian-global-peers.meridian-system.svc:5683,\
               2=meridian-global-cp-2.meridian-global-peers.meridian-system.svc:5683"
            )
        );
        assert!(config["MERIDIAN_KDS_HOSTNAMES"]
            .as_str()
            .unwrap()
            .ends_with(",kds.example.com"));
        let headless = &d[5]["spec"];
        assert_eq!(headless["clusterIP"], s("None"));
        assert_eq!(d[8]["spec"]["serviceName"], d[5]["metadata"]["name"]);
        assert_eq!(d[8]["spec"]["replicas"], n(3));
        assert_eq!(d[9]["spec"]["minAvailable"], n(2));
        let container = &d[8]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], s("meridian/global-cp:t"));
        assert_eq!(container["env"][0]["name"], s("MERIDIAN_NODE_ID"));
    }

    #[test]
    fn a_zone_is_a_deployment_dialling_the_global_kds_over_https() {
        let mut a = args(Mode::Zone);
        a.zone = Some("eu-west".into());
        a.kds_global_address = Some("grpcs://kds.example.com:5685".into());
        a.kds_hostnames = String::new();
        let d = docs(&manifests(&a).unwrap());
        assert_eq!(
            kinds(&d),
            [
                "Namespace",
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ConfigMap",
                "PersistentVolumeClaim",
                "Service",
                "Deployment"
            ]
        );
        assert_eq!(d[4]["data"]["MERIDIAN_ZONE"], s("eu-west"));
        assert_eq!(
            d[4]["data"]["MERIDIAN_GLOBAL_KDS_ADDRESS"],
            s("https://kds.example.com:5685")
        );
        assert_eq!(d[7]["spec"]["replicas"], n(1));
    }

    #[test]
    fn wrong_flag_combinations_are_refused_by_name() {
        let mut zone = args(Mode::Zone);
        assert_eq!(manifests(&zone), Err(InstallError::ZoneNeeds("zone")));
        zone.zone = Some("Zone_1".into());
        assert_eq!(
            manifests(&zone),
            Err(InstallError::ZoneName("Zone_1".into()))
        );
        zone.zone = Some("zone-1".into());
        assert_eq!(
            manifests(&zone),
            Err(InstallError::ZoneNeeds("kds-global-address"))
        );
        zone.kds_global_address = Some("kds.example.com:5685".into());
        assert_eq!(
            manifests(&zone),
            Err(InstallError::KdsAddress("kds.example.com:5685".into()))
        );
        let mut global = args(Mode::Global);
        global.zone = Some("zone-1".into());
        assert_eq!(manifests(&global), Err(InstallError::ZoneOnly("zone")));
        assert_eq!(
            kds_addresses("grpcs://a:5685, https://b:5685").unwrap(),
            "https://a:5685,https://b:5685"
        );
    }
}
