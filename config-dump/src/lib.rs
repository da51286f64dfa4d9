//! Envoy configuration as JSON, for inspection (`GET /meshes/{mesh}/dataplanes/{name}/xds`,
//! `meshctl inspect dataplane`). envoy-types' prost structs have no JSON form, so the build script
//! compiles Envoy's own .proto files (shipped in envoy-types) into a descriptor set, and
//! [`EnvoyJson`] renders any encoded Envoy message by reflection (prost-reflect) in canonical
//! proto3 JSON: lowerCamelCase field names, defaults omitted, enums by name, durations as `"5s"`,
//! and every `Any` (top level and nested `typed_config`) as `{"@type": ..., fields}`.
//! [`config_dump`] turns a proxy's `Snapshot` into one document grouped by xDS type, with
//! private keys replaced by `"[redacted]"` ([`dump_resources`] does the same for any list of
//! resources, as the zone proxy's admin `/config_dump` serves them). The other way,
//! [`EnvoyJson::json_to_any`] and [`resources_of_dump`] read such JSON back into messages (a zone
//! proxy's `--static` file).
//!
//! The `snapshot` feature (default) adds [`config_dump`] and the xds-server dependency it needs;
//! the zone proxy goes without, so it does not link the control plane.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};
#[cfg(feature = "snapshot")]
use xds_server::snapshot::Snapshot;

/// `Any.type_url` of a Listener (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// `Any.type_url` of a RouteConfiguration (RDS).
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// `Any.type_url` of a Cluster (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// `Any.type_url` of a ClusterLoadAssignment (EDS).
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// `Any.type_url` of an SDS Secret.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The keys of a config dump, in xDS order, with the type each holds. Resources of any other
/// type go under `"other"`.
pub const SECTIONS: [(&str, &str); 5] = [
    ("listeners", LISTENER_TYPE),
    ("routes", ROUTE_TYPE),
    ("clusters", CLUSTER_TYPE),
    ("endpoints", ENDPOINT_TYPE),
    ("secrets", SECRET_TYPE),
];

/// What replaces secret material in a dump.
pub const REDACTED: &str = "[redacted]";

/// Why a message could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The type URL names no message of Envoy's API (as compiled into this crate).
    #[error("unknown type URL {type_url:?}: not an Envoy message known to the config dump")]
    UnknownType { type_url: String },
    /// The type URL is not `<prefix>/<full.message.Name>`.
    #[error("malformed type URL {type_url:?}: expected type.googleapis.com/<message name>")]
    MalformedTypeUrl { type_url: String },
    /// The bytes do not decode as the named message.
    #[error("resource {name:?} of type {type_url}: does not decode: {source}")]
    Decode {
        type_url: String,
        name: String,
        source: prost::DecodeError,
    },
    /// JSON that is not the proto3 JSON form of the message its `@type` names. `at` is where in
    /// the document (`listeners[2]`).
    #[error("{at}: {message}")]
    Parse { at: String, message: String },
    /// The message decoded but could not be written as JSON (a nested `Any` of an unknown type,
    /// an out-of-range timestamp).
    #[error("resource {name:?} of type {type_url}: {message}")]
    Json {
        type_url: String,
        name: String,
        message: String,
    },
}

/// Renders Envoy messages as proto3 JSON, by reflection over Envoy's compiled descriptors.
#[derive(Debug, Clone)]
pub struct EnvoyJson {
    pool: DescriptorPool,
}

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

impl EnvoyJson {
    /// The shared instance; the descriptors are decoded on first use.
    pub fn get() -> &'static EnvoyJson {
        static POOL: OnceLock<EnvoyJson> = OnceLock::new();
        POOL.get_or_init(|| EnvoyJson {
            // The bytes were produced by protox at build time: failing to decode them is a
            // broken build, not a runtime condition.
            pool: DescriptorPool::decode(DESCRIPTORS)
                .expect("config-dump: the descriptor set built by build.rs decodes"),
        })
    }

    /// Whether `type_url` names a message this renderer knows.
    pub fn knows(&self, type_url: &str) -> bool {
        message_name(type_url).is_some_and(|n| self.pool.get_message_by_name(n).is_some())
    }

    /// `any` as JSON: `{"@type": type_url, ...fields}`. `name` only labels errors.
    pub fn any_to_json(&self, name: &str, any: &Any) -> Result<Value, DumpError> {
        let message = message_name(&any.type_url).ok_or_else(|| DumpError::MalformedTypeUrl {
            type_url: any.type_url.clone(),
        })?;
        if self.pool.get_message_by_name(message).is_none() {
            return Err(DumpError::UnknownType {
                type_url: any.type_url.clone(),
            });
        }
        let any_descriptor = self
            .pool
            .get_message_by_name("google.protobuf.Any")
            .ok_or_else(|| DumpError::UnknownType {
                type_url: "type.googleapis.com/google.protobuf.Any".into(),
            })?;
        // Decoding the Any itself and serializing it gives the Any JSON form (`@type` first);
        // prost-reflect resolves the payload, and every nested Any, through the pool.
        let dynamic = DynamicMessage::decode(any_descriptor, any.encode_to_vec().as_slice())
            .map_err(|source| DumpError::Decode {
                type_url: any.type_url.clone(),
                name: name.to_owned(),
                source,
            })?;
        dynamic
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .map_err(|e| DumpError::Json {
                type_url: any.type_url.clone(),
                name: name.to_owned(),
                message: e.to_string(),
            })
    }

    /// The message `value` (`{"@type": type_url, ...fields}`, the form [`Self::any_to_json`]
    /// writes) as an `Any`. `at` names the value in errors (`listeners[0]`). A value redacted in
    /// a dump (`"[redacted]"`) is refused, naming its field: the key it stood for is not there.
    pub fn json_to_any(&self, at: &str, value: &Value) -> Result<Any, DumpError> {
        let parse = |message: String| DumpError::Parse {
            at: at.to_owned(),
            message,
        };
        if let Some(field) = redacted_field(value, String::new()) {
            return Err(parse(format!(
                "{field} is {REDACTED:?}: a config dump carries no private material; put the \
                 real value there (for a key: {{\"inlineString\": PEM}} or {{\"filename\": path}})"
            )));
        }
        let type_url = value
            .get("@type")
            .and_then(Value::as_str)
            .ok_or_else(|| parse("no \"@type\" naming the message".to_owned()))?;
        if !self.knows(type_url) {
            return Err(DumpError::UnknownType {
                type_url: type_url.to_owned(),
            });
        }
        let any_descriptor = self
            .pool
            .get_message_by_name("google.protobuf.Any")
            .ok_or_else(|| DumpError::UnknownType {
                type_url: "type.googleapis.com/google.protobuf.Any".into(),
            })?;
        let dynamic = DynamicMessage::deserialize(any_descriptor, value)
            .map_err(|e| parse(format!("not a valid {type_url}: {e}")))?;
        Any::decode(dynamic.encode_to_vec().as_slice())
            .map_err(|e| parse(format!("re-encoding as Any: {e}")))
    }
}

/// The path of the first string equal to [`REDACTED`] in `value`, if any.
fn redacted_field(value: &Value, at: String) -> Option<String> {
    match value {
        Value::String(s) if s == REDACTED => Some(at),
        Value::Object(map) => map.iter().find_map(|(key, field)| {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            redacted_field(field, path)
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| redacted_field(item, format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Every resource of a config dump (the document [`config_dump`] or [`dump_resources`] writes:
/// the [`SECTIONS`] keys and `"other"`, each a list), in document order. Errors name the entry
/// (`secrets[0]`).
pub fn resources_of_dump(dump: &Value) -> Result<Vec<Any>, DumpError> {
    let json = EnvoyJson::get();
    let object = dump.as_object().ok_or_else(|| DumpError::Parse {
        at: "the document".into(),
        message: "not a JSON object of resource lists (listeners, routes, clusters, ...)".into(),
    })?;
    let mut resources = Vec::new();
    for (key, value) in object {
        let known = SECTIONS.iter().any(|(k, _)| k == key) || key == "other";
        if !known {
            continue; // "version", and whatever a later dump adds beside the resources
        }
        let items = value.as_array().ok_or_else(|| DumpError::Parse {
            at: key.clone(),
            message: "not a list of resources".into(),
        })?;
        for (i, item) in items.iter().enumerate() {
            resources.push(json.json_to_any(&format!("{key}[{i}]"), item)?);
        }
    }
    Ok(resources)
}

/// `resources` as a config dump: `{"version", "listeners", "routes", "clusters", "endpoints",
/// "secrets"}` (each a list in the order given; `"other"` too when there are resources of other
/// types), private keys redacted. `name` labels a resource in errors.
pub fn dump_resources<'a>(
    version: &str,
    resources: impl IntoIterator<Item = (&'a str, &'a Any)>,
) -> Result<Value, DumpError> {
    let json = EnvoyJson::get();
    let mut sections: Vec<Vec<Value>> = vec![Vec::new(); SECTIONS.len()];
    let mut other = Vec::new();
    for (name, resource) in resources {
        let rendered = json.any_to_json(name, resource)?;
        match SECTIONS.iter().position(|(_, t)| *t == resource.type_url) {
            Some(i) => sections[i].push(rendered),
            None => other.push(rendered),
        }
    }
    let mut dump = Map::new();
    dump.insert("version".into(), Value::String(version.to_owned()));
    for ((key, _), items) in SECTIONS.iter().zip(sections) {
        dump.insert((*key).into(), Value::Array(items));
    }
    if !other.is_empty() {
        dump.insert("other".into(), Value::Array(other));
    }
    let mut dump = Value::Object(dump);
    redact(&mut dump);
    Ok(dump)
}

/// The message name of a type URL (what follows its last `/`).
fn message_name(type_url: &str) -> Option<&str> {
    type_url
        .rsplit_once('/')
        .map(|(_, name)| name)
        .filter(|n| !n.is_empty())
}

/// `snapshot` as Envoy JSON: `{"version", "listeners", "routes", "clusters", "endpoints",
/// "secrets"}` (each a list of resources in name order; `"other"` too when the snapshot holds
/// other types), private keys redacted.
#[cfg(feature = "snapshot")]
pub fn config_dump(snapshot: &Snapshot) -> Result<Value, DumpError> {
    let sections = SECTIONS.iter().flat_map(|(_, type_url)| {
        snapshot
            .of_type(type_url)
            .map(|(name, r)| (name.as_str(), &r.resource))
    });
    let other = snapshot
        .resources
        .iter()
        .filter(|(type_url, _)| !SECTIONS.iter().any(|(_, t)| t == type_url))
        .flat_map(|(_, resources)| {
            resources
                .iter()
                .map(|(name, r)| (name.as_str(), &r.resource))
        });
    dump_resources(&snapshot.version, sections.chain(other))
}

/// Replaces secret material wherever it appears (a Secret's `tlsCertificate`, or certificates
/// inlined in a listener's or cluster's TLS context): `privateKey` and `password` of TLS
/// certificates, generic secrets and session ticket keys.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let secret = matches!(key.as_str(), "privateKey" | "password")
                    || (key == "secret" && field.is_object())
                    || key == "sessionTicketKeys";
                if secret {
                    *field = Value::String(REDACTED.into());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(all(test, feature = "snapshot"))]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy, TcpProxy,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        secret, Secret, TlsCertificate,
    };
    use serde_json::json;

    use super::*;

    const TCP_PROXY: &str =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

    fn any(type_url: &str, message: &impl prost::Message) -> Any {
        Any {
            type_url: type_url.into(),
            value: message.encode_to_vec(),
        }
    }

    fn listener(typed_config: Any) -> Listener {
        Listener {
            name: "inbound:10.0.0.1:15000".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(typed_config)),
                }],
                ..FilterChain::default()
            }],
            ..Listener::default()
        }
    }

    #[test]
    fn a_listener_renders_with_its_nested_typed_config() {
        let tcp = TcpProxy {
            stat_prefix: "localhost:8080".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                "localhost:8080".into(),
            )),
            ..TcpProxy::default()
        };
        let value = EnvoyJson::get()
            .any_to_json("l", &any(LISTENER_TYPE, &listener(any(TCP_PROXY, &tcp))))
            .unwrap();
        assert_eq!(
            value,
            json!({
                "@type": LISTENER_TYPE,
                "name": "inbound:10.0.0.1:15000",
                "filterChains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typedConfig": {
                        "@type": TCP_PROXY,
                        "statPrefix": "localhost:8080",
                        "cluster": "localhost:8080"
                    }
                }]}]
            })
        );
    }

    #[test]
    fn an_unknown_type_url_is_named() {
        let err = EnvoyJson::get()
            .any_to_json(
                "x",
                &any("type.googleapis.com/acme.v1.Widget", &TcpProxy::default()),
            )
            .unwrap_err();
        assert!(matches!(err, DumpError::UnknownType { .. }), "{err:?}");
        assert!(err.to_string().contains("acme.v1.Widget"), "{err}");
        // A nested one names the resource and the type it could not resolve.
        let err = EnvoyJson::get()
            .any_to_json(
                "inbound:10.0.0.1:15000",
                &any(
                    LISTENER_TYPE,
                    &listener(any(
                        "type.googleapis.com/acme.v1.Widget",
                        &TcpProxy::default(),
                    )),
                ),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("inbound:10.0.0.1:15000") && err.contains("acme.v1.Widget"),
            "{err}"
        );
        let err = EnvoyJson::get()
            .any_to_json("x", &any("no-slash", &TcpProxy::default()))
            .unwrap_err();
        assert!(matches!(err, DumpError::MalformedTypeUrl { .. }), "{err:?}");
    }

    #[test]
    fn a_snapshot_dumps_by_type_with_private_keys_redacted() {
        let mut snapshot = Snapshot::default();
        snapshot.insert(
            LISTENER_TYPE,
            "l",
            &listener(any(TCP_PROXY, &TcpProxy::default())),
        );
        let inline = |s: &str| DataSource {
            specifier: Some(data_source::Specifier::InlineString(s.into())),
            ..DataSource::default()
        };
        let secret = Secret {
            name: "identity".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline("-----BEGIN CERTIFICATE-----")),
                private_key: Some(inline("-----BEGIN PRIVATE KEY-----")),
                ..TlsCertificate::default()
            })),
        };
        snapshot.insert(SECRET_TYPE, "identity", &secret);
        let snapshot = snapshot.seal();
        let dump = config_dump(&snapshot).unwrap();
        assert_eq!(dump["version"], json!(snapshot.version));
        assert_eq!(dump["listeners"][0]["name"], "inbound:10.0.0.1:15000");
        for key in ["routes", "clusters", "endpoints"] {
            assert_eq!(dump[key], json!([]), "{key}");
        }
        let cert = &dump["secrets"][0]["tlsCertificate"];
        assert_eq!(cert["privateKey"], REDACTED);
        assert_eq!(
            cert["certificateChain"]["inlineString"],
            "-----BEGIN CERTIFICATE-----"
        );
        assert!(!dump.to_string().contains("PRIVATE KEY"), "{dump}");
        assert!(dump.get("other").is_none());
    }

    #[test]
    fn resources_of_other_types_are_kept() {
        let mut snapshot = Snapshot::default();
        snapshot.insert(TCP_PROXY, "odd", &TcpProxy::default());
        let dump = config_dump(&snapshot.seal()).unwrap();
        assert_eq!(dump["other"], json!([{"@type": TCP_PROXY}]));
    }

    #[test]
    fn type_urls_are_the_servers() {
        use xds_server::snapshot as server;
        assert_eq!(LISTENER_TYPE, server::LISTENER_TYPE);
        assert_eq!(ROUTE_TYPE, server::ROUTE_TYPE);
        assert_eq!(CLUSTER_TYPE, server::CLUSTER_TYPE);
        assert_eq!(ENDPOINT_TYPE, server::ENDPOINT_TYPE);
        assert_eq!(SECRET_TYPE, server::SECRET_TYPE);
    }

    #[test]
    fn a_dump_reads_back_into_the_same_messages() {
        let mut snapshot = Snapshot::default();
        snapshot.insert(
            LISTENER_TYPE,
            "l",
            &listener(any(TCP_PROXY, &TcpProxy::default())),
        );
        let snapshot = snapshot.seal();
        let dump = config_dump(&snapshot).unwrap();
        let resources = resources_of_dump(&dump).unwrap();
        let original: Vec<&Any> = snapshot
            .of_type(LISTENER_TYPE)
            .map(|(_, r)| &r.resource)
            .collect();
        assert_eq!(resources.iter().collect::<Vec<_>>(), original);
    }

    #[test]
    fn bad_json_is_named_by_its_place() {
        let dump = json!({"listeners": [{"@type": LISTENER_TYPE, "name": "l", "bogus": 1}]});
        let err = resources_of_dump(&dump).unwrap_err().to_string();
        assert!(
            err.starts_with("listeners[0]: ") && err.contains("bogus"),
            "{err}"
        );
        let dump = json!({"secrets": [{"@type": SECRET_TYPE, "name": "s",
            "tlsCertificate": {"privateKey": REDACTED}}]});
        let err = resources_of_dump(&dump).unwrap_err().to_string();
        assert!(
            err.contains("secrets[0]") && err.contains("tlsCertificate.privateKey"),
            "{err}"
        );
        let err = resources_of_dump(&json!({"listeners": [{"name": "l"}]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("@type"), "{err}");
    }
}
