//! MeshSpec: a mesh's mTLS backends, observability backends, outbound passthrough, routing
//! switches and Dataplane constraints, modelled on Kuma's `Mesh` protobuf message. Free-form
//! backend `conf` blocks are kept as JSON (as Kuma keeps a `google.protobuf.Struct`) and decoded
//! on demand into the typed config structs below.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::common::{
    is_dns_name, is_rfc1123_subdomain, parse_kuma_duration, typed_conf, validate_tags, DataSource,
    TagRules, TagValues,
};
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// How many mTLS backends a mesh may declare (as in Kuma).
pub const MAX_MTLS_BACKENDS: usize = 1;

/// The `spec` of a Mesh.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking: Option<MeshNetworking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
    /// Default policies not to create with the mesh; `*` means all of them.
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub skip_creating_initial_policies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_services: Option<MeshServices>,
}

impl MeshSpec {
    /// The enabled mTLS backend, if mTLS is on.
    pub fn enabled_mtls_backend(&self) -> Option<&CaBackend> {
        let mtls = self.mtls.as_ref()?;
        if mtls.enabled_backend.is_empty() {
            return None;
        }
        mtls.backends
            .iter()
            .find(|b| b.name == mtls.enabled_backend)
    }

    /// Whether traffic to destinations outside the mesh may pass through (default true).
    pub fn outbound_passthrough(&self) -> bool {
        self.networking
            .as_ref()
            .and_then(|n| n.outbound.as_ref())
            .and_then(|o| o.passthrough)
            .unwrap_or(true)
    }

    /// Whether the named initial policy should not be created (`*` skips all).
    pub fn skips_initial_policy(&self, policy: &str) -> bool {
        self.skip_creating_initial_policies
            .iter()
            .any(|p| p == "*" || p == policy)
    }
}

/// `mtls`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Mtls {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub enabled_backend: String,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub backends: Vec<CaBackend>,
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub skip_validation: bool,
}

/// Whether a CA backend requires mTLS or also accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MtlsMode {
    #[default]
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

impl MtlsMode {
    fn is_strict(&self) -> bool {
        *self == MtlsMode::Strict
    }
}

/// The CA backend types Meridian knows.
pub const CA_BACKEND_TYPES: &[&str] = &["builtin", "provided"];

/// One entry of `mtls.backends`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CaBackend {
    pub name: String,
    /// `builtin` or `provided`.
    #[serde(rename = "type")]
    pub backend_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp_cert: Option<DpCert>,
    /// Type-specific configuration; see [`CaBackend::builtin_config`] and
    /// [`CaBackend::provided_config`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
    #[serde(skip_serializing_if = "MtlsMode::is_strict")]
    pub mode: MtlsMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_chain: Option<RootChain>,
}

impl CaBackend {
    /// `conf` of a `builtin` backend.
    pub fn builtin_config(&self) -> Result<BuiltinCaConfig, serde_json::Error> {
        typed_conf(&self.conf)
    }

    /// `conf` of a `provided` backend.
    pub fn provided_config(&self) -> Result<ProvidedCaConfig, serde_json::Error> {
        typed_conf(&self.conf)
    }
}

/// `dpCert`: how Dataplane certificates are issued.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DpCert {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// Protobuf duration (`"10s"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
}

/// `dpCert.rotation`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rotation {
    /// Certificate lifetime in Kuma's format (`1d`, `10y`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expiration: String,
}

/// `rootChain`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RootChain {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
}

/// `conf` of a builtin CA backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BuiltinCaConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<BuiltinCaCert>,
}

/// `conf.caCert` of a builtin CA backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BuiltinCaCert {
    #[serde(
        rename = "RSAbits",
        deserialize_with = "crate::lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub rsa_bits: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expiration: String,
}

/// `conf` of a provided CA backend: the CA certificate and key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProvidedCaConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<DataSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<DataSource>,
}

/// `tracing`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tracing {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default_backend: String,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub backends: Vec<TracingBackend>,
}

/// One tracing backend (`zipkin` or `datadog`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TracingBackend {
    pub name: String,
    /// Percentage of requests traced, 0 to 100.
    #[serde(
        deserialize_with = "crate::lenient::opt_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub sampling: Option<f64>,
    #[serde(rename = "type")]
    pub backend_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

/// `conf` of a zipkin tracing backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZipkinConfig {
    pub url: String,
    #[serde(rename = "traceId128bit", deserialize_with = "crate::lenient::bool")]
    pub trace_id_128bit: bool,
    pub api_version: String,
    #[serde(deserialize_with = "crate::lenient::opt_bool")]
    pub shared_span_context: Option<bool>,
}

/// `conf` of a datadog tracing backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DatadogConfig {
    pub address: String,
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub split_service: bool,
}

/// `logging`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Logging {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default_backend: String,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub backends: Vec<LoggingBackend>,
}

/// One access-log backend (`file` or `tcp`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoggingBackend {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub format: String,
    #[serde(rename = "type")]
    pub backend_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

/// `conf` of a file logging backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileLoggingConfig {
    pub path: String,
}

/// `conf` of a TCP logging backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpLoggingConfig {
    pub address: String,
}

/// `metrics`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Metrics {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub enabled_backend: String,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub backends: Vec<MetricsBackend>,
}

/// One metrics backend (only `prometheus`). Also used by a Dataplane's `metrics`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MetricsBackend {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "type")]
    pub backend_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conf: Option<Value>,
}

impl MetricsBackend {
    /// `conf` of a prometheus backend.
    pub fn prometheus_config(&self) -> Result<PrometheusConfig, serde_json::Error> {
        typed_conf(&self.conf)
    }
}

/// `conf` of a prometheus metrics backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrometheusConfig {
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    pub path: String,
    #[serde(deserialize_with = "crate::lenient::string_map")]
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "skipMTLS", deserialize_with = "crate::lenient::opt_bool")]
    pub skip_mtls: Option<bool>,
    #[serde(deserialize_with = "crate::lenient::nullable")]
    pub aggregate: Vec<PrometheusAggregate>,
    pub envoy: Option<PrometheusEnvoy>,
    pub tls: Option<PrometheusTls>,
}

/// `conf.aggregate[]`: application metrics merged into the proxy's endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrometheusAggregate {
    pub name: String,
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    pub path: String,
    #[serde(deserialize_with = "crate::lenient::opt_bool")]
    pub enabled: Option<bool>,
    pub address: String,
}

/// `conf.envoy`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrometheusEnvoy {
    pub filter_regex: String,
    #[serde(deserialize_with = "crate::lenient::opt_bool")]
    pub used_only: Option<bool>,
}

/// `conf.tls`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrometheusTls {
    pub mode: PrometheusTlsMode,
}

/// How the prometheus endpoint is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PrometheusTlsMode {
    #[default]
    #[serde(rename = "activeMTLSBackend")]
    ActiveMtlsBackend,
    #[serde(rename = "providedTLS")]
    ProvidedTls,
    Disabled,
}

/// `networking`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshNetworking {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<MeshOutbound>,
}

/// `networking.outbound`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshOutbound {
    /// Whether traffic to non-mesh destinations may leave (Kuma's default: true).
    #[serde(
        deserialize_with = "crate::lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub passthrough: Option<bool>,
}

/// `routing`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Routing {
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub locality_aware_load_balancing: bool,
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub zone_egress: bool,
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub default_forbid_mesh_external_service_access: bool,
}

/// `constraints`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Constraints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane_proxy: Option<DataplaneProxyConstraints>,
}

/// `constraints.dataplaneProxy`: tags a Dataplane must (requirements) or must not (restrictions)
/// match to join the mesh.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataplaneProxyConstraints {
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub requirements: Vec<ConstraintRule>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub restrictions: Vec<ConstraintRule>,
}

/// One requirement or restriction: a tag selector.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConstraintRule {
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
}

/// `meshServices`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshServices {
    pub mode: MeshServicesMode,
}

/// Whether MeshServices are generated and used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MeshServicesMode {
    #[default]
    Disabled,
    Everywhere,
    ReachableBackends,
    Exclusive,
}

fn validate_mtls(path: &FieldPath, mtls: &Mtls, v: &mut Violations) {
    let backends = path.field("backends");
    if mtls.backends.len() > MAX_MTLS_BACKENDS {
        v.add(
            &backends,
            format!("cannot have more than {MAX_MTLS_BACKENDS} backends"),
        );
    }
    let mut used = HashSet::new();
    for (i, backend) in mtls.backends.iter().enumerate() {
        let at = backends.index(i);
        if backend.name.is_empty() {
            v.add(&at.field("name"), "cannot be empty");
        } else if !used.insert(backend.name.as_str()) {
            v.add(
                &at.field("name"),
                format!(
                    "{:?} name is already used for another backend",
                    backend.name
                ),
            );
        }
        if let Some(rotation) = backend.dp_cert.as_ref().and_then(|d| d.rotation.as_ref()) {
            if parse_kuma_duration(&rotation.expiration).is_none() {
                v.add(
                    &at.field("dpCert").field("rotation").field("expiration"),
                    "has to be a valid format",
                );
            }
        }
        match backend.backend_type.as_str() {
            "builtin" => {
                if !backend.name.is_empty()
                    && (!is_dns_name(&backend.name) || !is_rfc1123_subdomain(&backend.name))
                {
                    v.add(
                        &at.field("name"),
                        format!("{:?} name must be valid dns name", backend.name),
                    );
                }
                match backend.builtin_config() {
                    Err(e) => v.add(
                        &at.field("conf"),
                        format!("could not convert backend config: {e}"),
                    ),
                    Ok(cfg) => {
                        if let Some(ca) = cfg.ca_cert {
                            if !ca.expiration.is_empty()
                                && parse_kuma_duration(&ca.expiration).is_none()
                            {
                                v.add(
                                    &at.field("conf").field("caCert").field("expiration"),
                                    "has to be a valid format",
                                );
                            }
                        }
                    }
                }
            }
            "provided" => match backend.provided_config() {
                Err(e) => v.add(
                    &at.field("conf"),
                    format!("could not convert backend config: {e}"),
                ),
                Ok(cfg) => {
                    let conf = at.field("conf");
                    for (name, source) in [("cert", &cfg.cert), ("key", &cfg.key)] {
                        match source {
                            None => v.add(&conf.field(name), "has to be defined"),
                            Some(ds) => ds.validate(&conf.field(name), v),
                        }
                    }
                }
            },
            other => v.add(
                &at.field("type"),
                format!(
                    "unknown backend type {other:?}. Available backends: \"builtin\", \"provided\""
                ),
            ),
        }
    }
    if !mtls.enabled_backend.is_empty() && !used.contains(mtls.enabled_backend.as_str()) {
        v.add(
            &path.field("enabledBackend"),
            "has to be set to one of the backends in the mesh",
        );
    }
}

fn validate_logging(path: &FieldPath, logging: &Logging, v: &mut Violations) {
    let mut used = HashSet::new();
    for (i, backend) in logging.backends.iter().enumerate() {
        let at = path.field("backends").index(i);
        if backend.name.is_empty() {
            v.add(&at.field("name"), "cannot be empty");
        }
        let conf = at.field("conf");
        match backend.backend_type.as_str() {
            "file" => match typed_conf::<FileLoggingConfig>(&backend.conf) {
                Err(e) => v.add(&conf, format!("could not parse config: {e}")),
                Ok(cfg) if cfg.path.is_empty() => v.add(&conf.field("path"), "cannot be empty"),
                Ok(_) => {}
            },
            "tcp" => match typed_conf::<TcpLoggingConfig>(&backend.conf) {
                Err(e) => v.add(&conf, format!("could not parse config: {e}")),
                Ok(cfg) if cfg.address.is_empty() => {
                    v.add(&conf.field("address"), "cannot be empty")
                }
                Ok(cfg) => {
                    if !is_host_port(&cfg.address) {
                        v.add(&conf.field("address"), "has to be in format of HOST:PORT");
                    }
                }
            },
            _ => v.add(
                &at.field("type"),
                "unknown backend type. Available backends: \"tcp\", \"file\"",
            ),
        }
        if !backend.name.is_empty() && !used.insert(backend.name.as_str()) {
            v.add(
                &at.field("name"),
                format!(
                    "{:?} name is already used for another backend",
                    backend.name
                ),
            );
        }
    }
    if !logging.default_backend.is_empty() && !used.contains(logging.default_backend.as_str()) {
        v.add(
            &path.field("defaultBackend"),
            "has to be set to one of the logging backend in mesh",
        );
    }
}

/// `host:port` with both parts present (IPv6 hosts in brackets).
pub(crate) fn is_host_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !host.is_empty() && !port.is_empty() && (!host.contains(':') || address.starts_with('['))
}

fn validate_tracing(path: &FieldPath, tracing: &Tracing, v: &mut Violations) {
    let mut used = HashSet::new();
    for (i, backend) in tracing.backends.iter().enumerate() {
        let at = path.field("backends").index(i);
        if backend.name.is_empty() {
            v.add(&at.field("name"), "cannot be empty");
        }
        if let Some(sampling) = backend.sampling {
            if !(0.0..=100.0).contains(&sampling) {
                v.add(&at.field("sampling"), "has to be in [0.0 - 100.0] range");
            }
        }
        let conf = at.field("conf");
        match backend.backend_type.as_str() {
            "zipkin" => match typed_conf::<ZipkinConfig>(&backend.conf) {
                Err(e) => v.add(&conf, format!("could not parse config: {e}")),
                Ok(cfg) => validate_zipkin(&conf, &cfg, v),
            },
            "datadog" => match typed_conf::<DatadogConfig>(&backend.conf) {
                Err(e) => v.add(&conf, format!("could not parse config: {e}")),
                Ok(cfg) => {
                    if cfg.address.is_empty() {
                        v.add(&conf.field("address"), "cannot be empty");
                    }
                    crate::core::common::validate_port(&conf.field("port"), cfg.port, v);
                }
            },
            _ => v.add(
                &at.field("type"),
                "unknown backend type. Available backends: \"zipkin\", \"datadog\"",
            ),
        }
        if !backend.name.is_empty() && !used.insert(backend.name.as_str()) {
            v.add(
                &at.field("name"),
                format!(
                    "{:?} name is already used for another backend",
                    backend.name
                ),
            );
        }
    }
    if !tracing.default_backend.is_empty() && !used.contains(tracing.default_backend.as_str()) {
        v.add(
            &path.field("defaultBackend"),
            "has to be set to one of the tracing backend in mesh",
        );
    }
}

fn validate_zipkin(conf: &FieldPath, cfg: &ZipkinConfig, v: &mut Violations) {
    if !matches!(
        cfg.api_version.as_str(),
        "" | "httpJsonV1" | "httpJson" | "httpProto"
    ) {
        v.add(
            &conf.field("apiVersion"),
            "has invalid value. Allowed values: httpJsonV1, httpJson, httpProto",
        );
    }
    let url = conf.field("url");
    if cfg.url.is_empty() {
        v.add(&url, "cannot be empty");
        return;
    }
    match url_authority(&cfg.url) {
        None => v.add(&url, "invalid URL"),
        Some(authority) => {
            let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
                !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!host.contains(':') || host.ends_with(']'))
            });
            if !has_port {
                v.add(&url, "port has to be explicitly specified");
            }
        }
    }
}

/// The `host[:port]` part of an absolute `scheme://host[:port]/...` URL.
fn url_authority(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.is_empty() || authority.contains(' ') {
        return None;
    }
    Some(authority)
}

fn validate_metrics(path: &FieldPath, metrics: &Metrics, v: &mut Violations) {
    let mut used = HashSet::new();
    for (i, backend) in metrics.backends.iter().enumerate() {
        let at = path.field("backends").index(i);
        if !used.insert(backend.name.as_str()) {
            v.add(
                &at.field("name"),
                format!(
                    "{:?} name is already used for another backend",
                    backend.name
                ),
            );
        }
        validate_metrics_backend(&at, backend, v);
    }
    if !metrics.enabled_backend.is_empty() && !used.contains(metrics.enabled_backend.as_str()) {
        v.add(
            &path.field("enabledBackend"),
            "has to be set to one of the backends in the mesh",
        );
    }
}

/// A prometheus backend, in a Mesh or in a Dataplane's `metrics` (at `path`).
pub(crate) fn validate_metrics_backend(
    path: &FieldPath,
    backend: &MetricsBackend,
    v: &mut Violations,
) {
    if backend.backend_type != "prometheus" {
        v.add(
            &path.field("type"),
            "unknown backend type. Available backends: \"prometheus\"",
        );
        return;
    }
    let conf = path.field("conf");
    let cfg = match backend.prometheus_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            v.add(&conf, format!("could not parse config: {e}"));
            return;
        }
    };
    if let (Some(skip), Some(tls)) = (cfg.skip_mtls, &cfg.tls) {
        let equal = (!skip && tls.mode == PrometheusTlsMode::ActiveMtlsBackend)
            || (skip && tls.mode == PrometheusTlsMode::Disabled);
        if !equal {
            v.add(
                &conf,
                "skipMTLS and tls configuration cannot be defined together",
            );
            return;
        }
    }
    let mut names = HashSet::new();
    for (i, aggregate) in cfg.aggregate.iter().enumerate() {
        if !names.insert(aggregate.name.as_str()) {
            v.add(
                &conf.field("aggregate").index(i).field("name"),
                format!(
                    "duplicate entry: {}, values have to be unique",
                    aggregate.name
                ),
            );
        }
    }
}

fn validate_constraints(path: &FieldPath, constraints: &Constraints, v: &mut Violations) {
    let Some(dpp) = &constraints.dataplane_proxy else {
        return;
    };
    let dpp_path = path.field("dataplaneProxy");
    let rules = TagRules {
        values: TagValues::Selector,
        require_at_least_one: true,
        ..TagRules::default()
    };
    for (name, list) in [
        ("requirements", &dpp.requirements),
        ("restrictions", &dpp.restrictions),
    ] {
        for (i, rule) in list.iter().enumerate() {
            validate_tags(
                &dpp_path.field(name).index(i).field("tags"),
                &rule.tags,
                rules,
                v,
            );
        }
    }
}

impl Validate for MeshSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(mtls) = &self.mtls {
            validate_mtls(&path.field("mtls"), mtls, v);
        }
        if let Some(logging) = &self.logging {
            validate_logging(&path.field("logging"), logging, v);
        }
        if let Some(tracing) = &self.tracing {
            validate_tracing(&path.field("tracing"), tracing, v);
        }
        if let Some(metrics) = &self.metrics {
            validate_metrics(&path.field("metrics"), metrics, v);
        }
        if let Some(constraints) = &self.constraints {
            validate_constraints(&path.field("constraints"), constraints, v);
        }
        let zone_egress = self.routing.as_ref().is_some_and(|r| r.zone_egress);
        let mtls_enabled = self
            .mtls
            .as_ref()
            .is_some_and(|m| !m.enabled_backend.is_empty());
        if zone_egress && !mtls_enabled {
            v.add(&path.field("mtls"), "has to be set when zoneEgress enabled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceMeta;

    fn violations(yaml: &str) -> Vec<(String, String)> {
        let spec: MeshSpec = serde_yaml::from_str(yaml).unwrap();
        let meta = ResourceMeta::default();
        let mut v = Violations::new();
        spec.validate(
            &ValidationContext { meta: &meta },
            &FieldPath::root(),
            &mut v,
        );
        v.into_vec()
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect()
    }

    #[test]
    fn valid_builtin_mesh_has_no_violations() {
        let yaml = "mtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 1d\n    conf:\n      caCert:\n        RSAbits: 2048\n        expiration: 10y\nrouting:\n  zoneEgress: true\n";
        assert_eq!(violations(yaml), vec![]);
        let spec: MeshSpec = serde_yaml::from_str(yaml).unwrap();
        let backend = spec.enabled_mtls_backend().unwrap();
        let ca = backend.builtin_config().unwrap().ca_cert.unwrap();
        assert_eq!(ca.rsa_bits, Some(2048));
    }

    #[test]
    fn enabled_backend_must_exist_and_names_be_unique() {
        let found = violations(
            "mtls:\n  enabledBackend: nope\n  backends:\n  - name: a\n    type: builtin\n  - name: a\n    type: vault\n",
        );
        let fields: Vec<_> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "mtls.backends",
                "mtls.backends[1].name",
                "mtls.backends[1].type",
                "mtls.enabledBackend"
            ]
        );
    }

    #[test]
    fn observability_backends_are_checked() {
        let found = violations(
            "logging:\n  defaultBackend: x\n  backends:\n  - name: t\n    type: tcp\n    conf:\n      address: nope\ntracing:\n  backends:\n  - name: z\n    type: zipkin\n    sampling: 101\n    conf:\n      url: http://zipkin/api\nmetrics:\n  backends:\n  - name: p\n    type: statsd\n",
        );
        let fields: Vec<_> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "logging.backends[0].conf.address",
                "logging.defaultBackend",
                "tracing.backends[0].sampling",
                "tracing.backends[0].conf.url",
                "metrics.backends[0].type"
            ]
        );
    }

    #[test]
    fn zone_egress_requires_mtls_and_passthrough_defaults_to_true() {
        assert_eq!(
            violations("routing:\n  zoneEgress: true\n"),
            vec![(
                "mtls".into(),
                "has to be set when zoneEgress enabled".into()
            )]
        );
        let spec: MeshSpec =
            serde_yaml::from_str("networking:\n  outbound:\n    passthrough: false\n").unwrap();
        assert!(!spec.outbound_passthrough());
        assert!(MeshSpec::default().outbound_passthrough());
    }

    #[test]
    fn provided_backend_needs_cert_and_key() {
        let found = violations(
            "mtls:\n  backends:\n  - name: p\n    type: provided\n    conf:\n      cert:\n        secret: c\n",
        );
        assert_eq!(
            found,
            vec![(
                "mtls.backends[0].conf.key".into(),
                "has to be defined".into()
            )]
        );
    }

    #[test]
    fn serializes_without_empty_fields() {
        let spec: MeshSpec =
            serde_yaml::from_str("mtls:\n  backends:\n  - name: a\n    type: builtin\n").unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"mtls": {"backends": [{"name": "a", "type": "builtin"}]}})
        );
    }
}
