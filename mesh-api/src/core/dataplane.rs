//! DataplaneSpec: a data plane proxy's networking (address, inbounds, outbounds, gateway mode,
//! transparent proxying, admin port), metrics and probes, modelled on Kuma's `Dataplane`
//! protobuf message, with Kuma's validation rules.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::core::common::{
    allowed_values_hint, is_known_protocol, is_rfc1123_subdomain, parse_proto_duration,
    validate_address, validate_port, validate_tags, TagRules, SUPPORTED_PROTOCOLS,
};
use crate::core::mesh::{validate_metrics_backend, MetricsBackend};
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};
use crate::{PROTOCOL_TAG, SERVICE_TAG};

/// The `spec` of a Dataplane.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataplaneSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networking: Option<Networking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsBackend>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
}

impl DataplaneSpec {
    /// The gateway section, if this proxy is a gateway.
    pub fn gateway(&self) -> Option<&Gateway> {
        self.networking.as_ref()?.gateway.as_ref()
    }

    /// A gateway run by some other proxy, fronted by Kuma's sidecar.
    pub fn is_delegated_gateway(&self) -> bool {
        self.gateway()
            .is_some_and(|g| g.gateway_type == GatewayType::Delegated)
    }

    /// A gateway Meridian configures itself (MeshGateway).
    pub fn is_builtin_gateway(&self) -> bool {
        self.gateway()
            .is_some_and(|g| g.gateway_type == GatewayType::Builtin)
    }

    /// The inbounds (empty when networking is absent).
    pub fn inbounds(&self) -> &[Inbound] {
        self.networking
            .as_ref()
            .map_or(&[], |n| n.inbound.as_slice())
    }

    /// The outbounds (empty when networking is absent).
    pub fn outbounds(&self) -> &[Outbound] {
        self.networking
            .as_ref()
            .map_or(&[], |n| n.outbound.as_slice())
    }

    /// Every service this proxy serves (its inbounds' `kuma.io/service`, or its gateway's).
    pub fn services(&self) -> Vec<&str> {
        let mut services: Vec<&str> = self
            .inbounds()
            .iter()
            .filter_map(|i| i.tags.get(SERVICE_TAG).map(String::as_str))
            .collect();
        if let Some(s) = self.gateway().and_then(|g| g.tags.get(SERVICE_TAG)) {
            services.push(s);
        }
        services
    }
}

/// `networking`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Networking {
    pub address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub advertised_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub inbound: Vec<Inbound>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub outbound: Vec<Outbound>,
    #[serde(
        alias = "transparent_proxying",
        skip_serializing_if = "Option::is_none"
    )]
    pub transparent_proxying: Option<TransparentProxying>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<EnvoyAdmin>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub listeners: Vec<Listener>,
}

/// An Envoy admin endpoint (`admin.port`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvoyAdmin {
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
}

/// Whether an inbound accepts traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InboundState {
    #[default]
    Ready,
    NotReady,
    Ignored,
}

impl InboundState {
    fn is_ready(&self) -> bool {
        *self == InboundState::Ready
    }
}

/// `networking.inbound[]`: a port the proxy receives traffic on for a local service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Inbound {
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    #[serde(
        deserialize_with = "crate::lenient::u32",
        skip_serializing_if = "is_zero"
    )]
    pub service_port: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_probe: Option<ServiceProbe>,
    #[serde(skip_serializing_if = "InboundState::is_ready")]
    pub state: InboundState,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Inbound {
    /// The port the application listens on (`servicePort`, else `port`).
    pub fn workload_port(&self) -> u32 {
        if self.service_port != 0 {
            self.service_port
        } else {
            self.port
        }
    }
}

/// `inbound[].health`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Health {
    #[serde(deserialize_with = "crate::lenient::bool")]
    pub ready: bool,
}

/// `inbound[].serviceProbe`: an active health check of the application.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceProbe {
    /// Protobuf duration (`"10s"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(
        alias = "unhealthy_threshold",
        deserialize_with = "crate::lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub unhealthy_threshold: Option<u32>,
    #[serde(
        alias = "healthy_threshold",
        deserialize_with = "crate::lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub healthy_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<serde_json::Value>,
}

/// `networking.outbound[]`: a local port through which the application reaches a service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Outbound {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_ref: Option<OutboundBackendRef>,
}

/// `outbound[].backendRef`: a MeshService, MeshExternalService or MeshMultiZoneService.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundBackendRef {
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(
        deserialize_with = "crate::lenient::u32",
        skip_serializing_if = "is_zero"
    )]
    pub port: u32,
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// The kinds an outbound or reachable backend may refer to.
pub const BACKEND_REF_KINDS: &[&str] =
    &["MeshExternalService", "MeshMultiZoneService", "MeshService"];

/// Whether a gateway is delegated (someone else's proxy) or built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum GatewayType {
    #[default]
    #[serde(rename = "DELEGATED")]
    Delegated,
    #[serde(rename = "BUILTIN")]
    Builtin,
}

impl GatewayType {
    fn is_delegated(&self) -> bool {
        *self == GatewayType::Delegated
    }
}

/// `networking.gateway`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gateway {
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "type", skip_serializing_if = "GatewayType::is_delegated")]
    pub gateway_type: GatewayType,
}

/// `networking.transparentProxying`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TransparentProxying {
    #[serde(
        alias = "redirect_port_inbound",
        deserialize_with = "crate::lenient::u32",
        skip_serializing_if = "is_zero"
    )]
    pub redirect_port_inbound: u32,
    #[serde(
        alias = "redirect_port_outbound",
        deserialize_with = "crate::lenient::u32",
        skip_serializing_if = "is_zero"
    )]
    pub redirect_port_outbound: u32,
    #[serde(
        alias = "direct_access_services",
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub direct_access_services: Vec<String>,
    #[serde(
        alias = "reachable_services",
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub reachable_services: Vec<String>,
    #[serde(alias = "ip_family_mode", skip_serializing_if = "String::is_empty")]
    pub ip_family_mode: String,
    #[serde(alias = "reachable_backends", skip_serializing_if = "Option::is_none")]
    pub reachable_backends: Option<ReachableBackends>,
}

/// `transparentProxying.reachableBackends`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReachableBackends {
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub refs: Vec<ReachableBackendRef>,
}

/// One reachable backend, by name (and namespace) or by labels.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReachableBackendRef {
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(
        deserialize_with = "crate::lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u32>,
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// `networking.listeners[]`: a zone proxy listener on a Dataplane.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    #[serde(rename = "type")]
    pub listener_type: ListenerType,
    pub address: String,
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// What a Dataplane listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ListenerType {
    #[default]
    Unspecified,
    ZoneIngress,
    ZoneEgress,
}

/// `probes`: virtual probe endpoints exposed by the proxy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Probes {
    #[serde(deserialize_with = "crate::lenient::u32")]
    pub port: u32,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<ProbeEndpoint>,
}

/// `probes.endpoints[]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProbeEndpoint {
    #[serde(alias = "inbound_port", deserialize_with = "crate::lenient::u32")]
    pub inbound_port: u32,
    #[serde(alias = "inbound_path")]
    pub inbound_path: String,
    pub path: String,
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Kuma's overlap rule: a wildcard address overlaps everything, otherwise the addresses are equal.
fn overlaps(a: IpAddr, b: &str) -> bool {
    match b.parse::<IpAddr>() {
        Ok(b) => a.is_unspecified() || b.is_unspecified() || a == b,
        Err(_) => false,
    }
}

fn uses_inbound_interface(networking: &Networking, port: u32) -> bool {
    networking.inbound.iter().any(|inbound| {
        let dp_ip = if inbound.address.is_empty() {
            &networking.address
        } else {
            &inbound.address
        };
        let workload_ip = if inbound.service_address.is_empty() {
            "127.0.0.1"
        } else {
            &inbound.service_address
        };
        (port == inbound.port && overlaps(LOOPBACK, dp_ip))
            || (port == inbound.workload_port() && overlaps(LOOPBACK, workload_ip))
    })
}

fn uses_outbound_interface(networking: &Networking, port: u32) -> bool {
    networking.outbound.iter().any(|outbound| {
        let ip = if outbound.address.is_empty() {
            "127.0.0.1"
        } else {
            &outbound.address
        };
        port == outbound.port && overlaps(LOOPBACK, ip)
    })
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn validate_networking(path: &FieldPath, n: &Networking, v: &mut Violations) {
    validate_address(path, &n.address, v);
    for (i, inbound) in n.inbound.iter().enumerate() {
        let at = path.field("inbound").index(i);
        validate_inbound(&at, inbound, &n.address, v);
        // Tags are optional (newer Kuma derives services elsewhere), but tagged inbounds must
        // name their service.
        if !inbound.tags.is_empty() && !inbound.tags.contains_key(SERVICE_TAG) {
            v.add(&at.field("tags").key(SERVICE_TAG), "tag has to exist");
        }
    }
    for (i, outbound) in n.outbound.iter().enumerate() {
        validate_outbound(&path.field("outbound").index(i), outbound, v);
    }
    if let Some(tp) = &n.transparent_proxying {
        validate_transparent_proxying(&path.field("transparentProxying"), tp, v);
    }
}

fn validate_inbound(path: &FieldPath, inbound: &Inbound, dp_address: &str, v: &mut Violations) {
    validate_port(&path.field("port"), inbound.port, v);
    if inbound.service_port != 0 {
        validate_port(&path.field("servicePort"), inbound.service_port, v);
    }
    let same_port = inbound.service_port == 0 || inbound.service_port == inbound.port;
    if !inbound.service_address.is_empty() {
        if !is_ip(&inbound.service_address) {
            v.add(
                &path.field("serviceAddress"),
                "serviceAddress has to be valid IP address",
            );
        }
        if inbound.service_address == dp_address && same_port {
            v.add(
                &path.field("serviceAddress"),
                "serviceAddress and servicePort has to differ from address and port",
            );
        }
    }
    if !inbound.address.is_empty() {
        if !is_ip(&inbound.address) {
            v.add(&path.field("address"), "address has to be valid IP address");
        }
        if inbound.address == inbound.service_address && same_port {
            v.add(
                &path.field("serviceAddress"),
                "serviceAddress and servicePort has to differ from address and port",
            );
        }
    }
    validate_tags(
        &path.field("tags"),
        &inbound.tags,
        TagRules {
            check_protocol: true,
            ..TagRules::default()
        },
        v,
    );
    if !inbound.protocol.is_empty() && !is_known_protocol(&inbound.protocol) {
        v.add(
            &path.field("protocol"),
            format!(
                "has an invalid value {:?}. {}",
                inbound.protocol,
                allowed_values_hint(SUPPORTED_PROTOCOLS)
            ),
        );
    }
    if let Some(probe) = &inbound.service_probe {
        let at = path.field("serviceProbe");
        for (name, value) in [("interval", &probe.interval), ("timeout", &probe.timeout)] {
            if let Some(value) = value {
                match parse_proto_duration(value) {
                    None => v.add(&at.field(name), "must have a valid value"),
                    Some(secs) if secs <= 0.0 => {
                        v.add(&at.field(name), "must have a positive value")
                    }
                    Some(_) => {}
                }
            }
        }
        for (name, value) in [
            ("unhealthyThreshold", probe.unhealthy_threshold),
            ("healthyThreshold", probe.healthy_threshold),
        ] {
            if value == Some(0) {
                v.add(&at.field(name), "must have a positive value");
            }
        }
    }
}

fn validate_outbound(path: &FieldPath, outbound: &Outbound, v: &mut Violations) {
    validate_port(&path.field("port"), outbound.port, v);
    if !outbound.address.is_empty() && !is_ip(&outbound.address) {
        v.add(&path.field("address"), "address has to be valid IP address");
    }
    match &outbound.backend_ref {
        Some(backend_ref) => {
            let at = path.field("backendRef");
            if !BACKEND_REF_KINDS.contains(&backend_ref.kind.as_str()) {
                v.add(
                    &at.field("kind"),
                    format!(
                        "invalid value. Available values are: {}",
                        BACKEND_REF_KINDS.join(",")
                    ),
                );
            }
            if backend_ref.name.is_empty() && backend_ref.labels.is_empty() {
                v.add(&at, "either 'name' or 'labels' should be specified");
            }
            // A MeshExternalService's port comes from its endpoints.
            if backend_ref.kind != "MeshExternalService" {
                validate_port(&at.field("port"), backend_ref.port, v);
            }
            if !outbound.tags.is_empty() {
                v.add(&at, "both backendRef and tags/service cannot be defined");
            }
        }
        None if outbound.tags.is_empty() => {
            v.add(
                &path.field("tags"),
                format!("mandatory tag {SERVICE_TAG:?} is missing"),
            );
        }
        None => validate_tags(
            &path.field("tags"),
            &outbound.tags,
            TagRules {
                require_service: true,
                ..TagRules::default()
            },
            v,
        ),
    }
}

fn validate_transparent_proxying(path: &FieldPath, tp: &TransparentProxying, v: &mut Violations) {
    for (name, port) in [
        ("redirectPortInbound", tp.redirect_port_inbound),
        ("redirectPortOutbound", tp.redirect_port_outbound),
    ] {
        if port > 65535 {
            v.add(&path.field(name), "port must be in the range [0, 65535]");
        }
    }
    let Some(backends) = &tp.reachable_backends else {
        return;
    };
    let refs = path.field("reachableBackends").field("refs");
    for (i, r) in backends.refs.iter().enumerate() {
        let at = refs.index(i);
        if !BACKEND_REF_KINDS.contains(&r.kind.as_str()) {
            v.add(
                &at.field("kind"),
                format!(
                    "invalid value. Available values are: {}",
                    BACKEND_REF_KINDS.join(",")
                ),
            );
        }
        if !r.name.is_empty() && !is_rfc1123_subdomain(&r.name) {
            v.add(
                &at.field("name"),
                "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            );
        }
        if r.name.is_empty() && r.namespace.is_empty() && r.labels.is_empty() {
            v.add(&at.field("name"), "name or labels are required");
        }
        if r.name.is_empty() && !r.namespace.is_empty() {
            v.add(
                &at.field("name"),
                "name is required, when namespace is defined",
            );
        }
        if (!r.name.is_empty() || !r.namespace.is_empty()) && !r.labels.is_empty() {
            v.add(
                &at.field("labels"),
                "labels cannot be defined when name is specified",
            );
        }
    }
}

fn validate_gateway(path: &FieldPath, gateway: &Gateway, v: &mut Violations) {
    let tags = path.field("tags");
    if let Some(protocol) = gateway.tags.get(PROTOCOL_TAG) {
        if !protocol.eq_ignore_ascii_case("tcp") {
            v.add(
                &tags.key(PROTOCOL_TAG),
                format!("other values than tcp are not allowed, provided value {protocol:?}"),
            );
        }
    }
    validate_tags(
        &tags,
        &gateway.tags,
        TagRules {
            require_service: !gateway.tags.is_empty(),
            ..TagRules::default()
        },
        v,
    );
}

fn validate_probes(path: &FieldPath, probes: &Probes, v: &mut Violations) {
    validate_port(&path.field("port"), probes.port, v);
    for (i, endpoint) in probes.endpoints.iter().enumerate() {
        let at = path.field("endpoints").index(i);
        validate_port(&at.field("inboundPort"), endpoint.inbound_port, v);
        if !is_request_uri(&endpoint.inbound_path) {
            v.add(&at.field("inboundPath"), "should be a valid URL Path");
        }
        if !is_request_uri(&endpoint.path) {
            v.add(&at.field("path"), "should be a valid URL Path");
        }
    }
}

/// An absolute path or absolute URL, as Go's `url.ParseRequestURI` accepts.
fn is_request_uri(s: &str) -> bool {
    (s.starts_with('/') || s.contains("://")) && !s.contains(char::is_whitespace)
}

fn validate_listeners(path: &FieldPath, n: &Networking, v: &mut Violations) {
    let mut names: Vec<&str> = n
        .inbound
        .iter()
        .filter(|i| !i.name.is_empty())
        .map(|i| i.name.as_str())
        .collect();
    let mut seen: Vec<(String, ListenerType)> = Vec::new();
    for (i, l) in n.listeners.iter().enumerate() {
        let at = path.index(i);
        if l.listener_type == ListenerType::Unspecified {
            v.add(&at.field("type"), "type must be ZoneIngress or ZoneEgress");
        }
        validate_address(&at, &l.address, v);
        validate_port(&at.field("port"), l.port, v);
        if !l.name.is_empty() {
            if names.contains(&l.name.as_str()) {
                v.add(
                    &at.field("name"),
                    format!(
                        "name {:?} must be unique across inbounds and listeners",
                        l.name
                    ),
                );
            }
            names.push(&l.name);
        }
        let key = format!("{}:{}", l.address, l.port);
        match seen.iter().find(|(k, _)| *k == key) {
            Some((_, t)) if *t == l.listener_type => v.add(
                &at,
                format!("address:port {key} is already used by another listener"),
            ),
            Some(_) => v.add(
                &at,
                format!("address:port {key} is used by listeners of different types"),
            ),
            None => seen.push((key.clone(), l.listener_type)),
        }
        let collides = n.inbound.iter().any(|inbound| {
            let addr = if inbound.address.is_empty() {
                &n.address
            } else {
                &inbound.address
            };
            format!("{addr}:{}", inbound.port) == key
        });
        if collides {
            v.add(
                &at,
                format!("address:port {key} collides with an inbound listener"),
            );
        }
    }
}

impl Validate for DataplaneSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        let net = path.field("networking");
        let Some(networking) = &self.networking else {
            v.add(&net, "must be defined");
            return;
        };
        if let Some(admin) = &networking.admin {
            let admin_port = net.field("admin").field("port");
            if uses_inbound_interface(networking, admin.port) {
                v.add(&admin_port, "must differ from inbound");
            }
            if uses_outbound_interface(networking, admin.port) {
                v.add(&admin_port, "must differ from outbound");
            }
        }
        match &networking.gateway {
            Some(gateway) if gateway.gateway_type == GatewayType::Delegated => {
                if !networking.inbound.is_empty() {
                    v.add(
                        &net.field("inbound"),
                        "inbound cannot be defined for delegated gateways",
                    );
                }
                if !networking.listeners.is_empty() {
                    v.add(
                        &net.field("listeners"),
                        "listeners cannot be defined for delegated gateways",
                    );
                }
                validate_gateway(&net.field("gateway"), gateway, v);
                validate_networking(&net, networking, v);
                if let Some(probes) = &self.probes {
                    validate_probes(&path.field("probes"), probes, v);
                }
            }
            Some(gateway) => {
                if !networking.inbound.is_empty() {
                    v.add(
                        &net.field("inbound"),
                        "inbound cannot be defined for builtin gateways",
                    );
                }
                if !networking.outbound.is_empty() {
                    v.add(
                        &net.field("outbound"),
                        "outbound cannot be defined for builtin gateways",
                    );
                }
                if !networking.listeners.is_empty() {
                    v.add(
                        &net.field("listeners"),
                        "listeners cannot be defined for builtin gateways",
                    );
                }
                if self.probes.is_some() {
                    v.add(
                        &path.field("probes"),
                        "probes cannot be defined for builtin gateways",
                    );
                }
                validate_gateway(&net.field("gateway"), gateway, v);
                validate_networking(&net, networking, v);
            }
            None => {
                validate_networking(&net, networking, v);
                if let Some(probes) = &self.probes {
                    validate_probes(&path.field("probes"), probes, v);
                }
                if let Some(metrics) = &self.metrics {
                    validate_metrics_backend(&path.field("metrics"), metrics, v);
                }
                validate_listeners(&net.field("listeners"), networking, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceMeta;

    fn violations(yaml: &str) -> Vec<(String, String)> {
        let spec: DataplaneSpec = serde_yaml::from_str(yaml).unwrap();
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

    fn fields(yaml: &str) -> Vec<String> {
        violations(yaml).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn valid_sidecar() {
        let yaml = "networking:\n  address: 10.0.0.1\n  inbound:\n  - port: 8080\n    servicePort: 80\n    tags:\n      kuma.io/service: web\n      kuma.io/protocol: http\n      port: 6000\n  outbound:\n  - port: 3000\n    tags:\n      kuma.io/service: db\n";
        assert_eq!(violations(yaml), vec![]);
        let spec: DataplaneSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(spec.inbounds()[0].tags["port"], "6000");
        assert_eq!(spec.services(), vec!["web"]);
    }

    #[test]
    fn address_rules() {
        assert_eq!(
            violations("networking:\n  address: 0.0.0.0\n"),
            vec![(
                "networking.address".into(),
                "must not be 0.0.0.0 or ::".into()
            )]
        );
        assert_eq!(fields("networking: {}\n"), vec!["networking.address"]);
        assert_eq!(fields("{}\n"), vec!["networking"]);
    }

    #[test]
    fn inbound_rules() {
        let found = fields(
            "networking:\n  address: 10.0.0.1\n  inbound:\n  - port: 70000\n    serviceAddress: nope\n    tags:\n      version: v1\n      kuma.io/protocol: smtp\n",
        );
        assert_eq!(
            found,
            vec![
                "networking.inbound[0].port",
                "networking.inbound[0].serviceAddress",
                r#"networking.inbound[0].tags["kuma.io/protocol"]"#,
                r#"networking.inbound[0].tags["kuma.io/service"]"#,
            ]
        );
    }

    #[test]
    fn gateways() {
        let builtin = "networking:\n  address: 10.0.0.1\n  gateway:\n    type: BUILTIN\n    tags:\n      kuma.io/service: gw\n  outbound:\n  - port: 1\n    tags:\n      kuma.io/service: x\n";
        assert_eq!(fields(builtin), vec!["networking.outbound"]);
        let spec: DataplaneSpec = serde_yaml::from_str(builtin).unwrap();
        assert!(spec.is_builtin_gateway());
        let delegated = "networking:\n  address: 10.0.0.1\n  gateway:\n    tags:\n      kuma.io/protocol: http\n";
        assert_eq!(
            fields(delegated),
            vec![
                r#"networking.gateway.tags["kuma.io/protocol"]"#,
                "networking.gateway.tags"
            ]
        );
    }

    #[test]
    fn outbound_backend_ref_and_admin_port() {
        let found = fields(
            "networking:\n  address: 10.0.0.1\n  admin:\n    port: 3000\n  outbound:\n  - port: 3000\n    backendRef:\n      kind: Service\n",
        );
        assert_eq!(
            found,
            vec![
                "networking.admin.port",
                "networking.outbound[0].backendRef.kind",
                "networking.outbound[0].backendRef",
                "networking.outbound[0].backendRef.port",
            ]
        );
    }

    #[test]
    fn reachable_backends() {
        let found = fields(
            "networking:\n  address: 10.0.0.1\n  transparentProxying:\n    reachableBackends:\n      refs:\n      - kind: MeshService\n        namespace: ns\n      - kind: Other\n        name: Bad_Name\n        labels:\n          a: b\n",
        );
        assert_eq!(
            found,
            vec![
                "networking.transparentProxying.reachableBackends.refs[0].name",
                "networking.transparentProxying.reachableBackends.refs[1].kind",
                "networking.transparentProxying.reachableBackends.refs[1].name",
                "networking.transparentProxying.reachableBackends.refs[1].labels",
            ]
        );
    }
}
