//! The resource a proxy registers itself with (issue [4], point 1): its Dataplane, ZoneIngress or
//! ZoneEgress, read from `--dataplane-file` (YAML or JSON, universal or Kubernetes form) or built
//! from flags for the common cases, then parsed and validated with `mesh-api` before the proxy
//! connects. The ADS client sends it as JSON in the first request's node metadata; the zone CP
//! creates or updates it, and deletes it when the proxy goes away (`xds_server::registration`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_api::core::dataplane::{DataplaneSpec, Inbound, Networking, Outbound};
use mesh_api::core::zone_egress::{ZoneEgressNetworking, ZoneEgressSpec};
use mesh_api::core::zone_ingress::{ZoneIngressNetworking, ZoneIngressSpec};
use mesh_api::{Resource, ResourceType, Spec};

use crate::ProxyMode;

/// The node metadata field the definition travels in (Kuma's name; the zone CP reads the same).
pub const RESOURCE_METADATA_FIELD: &str = "dataplane.resource";

/// The tag naming a Dataplane inbound's service.
const SERVICE_TAG: &str = "kuma.io/service";

/// `zone-proxy run`'s definition flags: a file, or the common case spelled out.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DefinitionArgs {
    /// The proxy's resource (Dataplane, ZoneIngress or ZoneEgress; YAML or JSON, universal or
    /// Kubernetes form), registered with the zone CP when the proxy connects.
    #[arg(long, env = "MERIDIAN_DATAPLANE_FILE", conflicts_with_all = ["service", "address"])]
    pub dataplane_file: Option<PathBuf>,
    /// Sidecar: the service of its one inbound (the `kuma.io/service` tag).
    #[arg(long, requires = "address")]
    pub service: Option<String>,
    /// The proxy's address (sidecar: the Dataplane's `networking.address`).
    #[arg(long)]
    pub address: Option<String>,
    /// Sidecar: the port the inbound listens on.
    #[arg(long, requires = "service")]
    pub inbound_port: Option<u32>,
    /// Sidecar: the port the service itself listens on (default: --inbound-port).
    #[arg(long, requires = "service")]
    pub service_port: Option<u32>,
    /// Sidecar: an inbound tag `k=v` (repeatable; `kuma.io/protocol=http` for HTTP).
    #[arg(long = "tag", value_parser = parse_pair, requires = "service")]
    pub tags: Vec<(String, String)>,
    /// Sidecar: an outbound `service=port`, listening on 127.0.0.1:port (repeatable; without
    /// transparent proxying these are the only services it reaches).
    #[arg(long = "outbound", value_parser = parse_pair, requires = "service")]
    pub outbounds: Vec<(String, String)>,
    /// Ingress, egress: the port it listens on.
    #[arg(long)]
    pub port: Option<u32>,
    /// Ingress: the address other zones reach it at (default: --address).
    #[arg(long)]
    pub advertised_address: Option<String>,
    /// Ingress: the port other zones reach it at (default: --port).
    #[arg(long)]
    pub advertised_port: Option<u32>,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not `key=value`")),
    }
}

/// Why the definition cannot be used; every variant names where it came from.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("--dataplane-file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--dataplane-file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{origin}: {error}")]
    Invalid {
        origin: String,
        error: mesh_api::ValidationError,
    },
    #[error("{origin}: a {rtype} cannot run as --mode {mode}")]
    WrongMode {
        origin: String,
        rtype: ResourceType,
        mode: String,
    },
    #[error("{origin}: {field} is {defined:?}, but --{flag} says {given:?}")]
    Disagrees {
        origin: String,
        field: &'static str,
        flag: &'static str,
        defined: String,
        given: String,
    },
    #[error("{origin}: {message}")]
    Flags {
        origin: &'static str,
        message: String,
    },
}

const FLAGS: &str = "definition flags";

/// A checked definition: the resource, and the JSON the node metadata carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub resource: Resource,
    pub json: String,
}

impl Definition {
    /// The resource's name.
    pub fn name(&self) -> &str {
        &self.resource.meta.name
    }

    /// The resource's mesh (a Dataplane's), else `default` (unused by ingresses and egresses).
    pub fn mesh(&self) -> &str {
        self.resource
            .meta
            .mesh
            .as_deref()
            .unwrap_or(mesh_api::DEFAULT_MESH)
    }
}

/// The definition `args` describe for a proxy of `mode` named `name` (if given) in `mesh`, or
/// `None` when they describe none (the resource is then expected to exist in the zone CP).
pub fn definition(
    mode: ProxyMode,
    name: Option<&str>,
    mesh: &str,
    args: &DefinitionArgs,
) -> Result<Option<Definition>, DefinitionError> {
    let (resource, origin) = if let Some(path) = &args.dataplane_file {
        let resource = read_file(path)?;
        let origin = format!("--dataplane-file {}", path.display());
        if let Some(given) = name.filter(|n| *n != resource.meta.name) {
            return Err(DefinitionError::Disagrees {
                origin,
                field: "name",
                flag: "name",
                defined: resource.meta.name.clone(),
                given: given.to_owned(),
            });
        }
        (resource, origin)
    } else {
        match from_flags(mode, name, mesh, args)? {
            Some(resource) => (resource, FLAGS.to_owned()),
            None => return Ok(None),
        }
    };
    let expected = match mode {
        ProxyMode::Sidecar => ResourceType::Dataplane,
        ProxyMode::Ingress => ResourceType::ZoneIngress,
        ProxyMode::Egress => ResourceType::ZoneEgress,
    };
    if resource.resource_type() != expected {
        return Err(DefinitionError::WrongMode {
            origin,
            rtype: resource.resource_type(),
            mode: format!("{mode:?}").to_lowercase(),
        });
    }
    mesh_api::validate_resource(&resource).map_err(|error| DefinitionError::Invalid {
        origin: origin.clone(),
        error,
    })?;
    let json = mesh_api::to_universal(&resource).to_string();
    Ok(Some(Definition { resource, json }))
}

fn read_file(path: &Path) -> Result<Resource, DefinitionError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut documents = mesh_api::parse_documents(&text);
    if documents.len() != 1 {
        return Err(DefinitionError::Parse {
            path: shown,
            message: format!("must hold one resource, holds {}", documents.len()),
        });
    }
    match documents.remove(0) {
        Ok(parsed) => {
            for warning in &parsed.warnings {
                tracing::warn!(file = %shown, field = %warning, "unknown field in the definition");
            }
            Ok(parsed.resource)
        }
        // One document: its `resource[0]: ` prefix says nothing.
        Err(e) => Err(DefinitionError::Parse {
            path: shown,
            message: e.message,
        }),
    }
}

fn from_flags(
    mode: ProxyMode,
    name: Option<&str>,
    mesh: &str,
    args: &DefinitionArgs,
) -> Result<Option<Resource>, DefinitionError> {
    let flags = |message: &str| DefinitionError::Flags {
        origin: FLAGS,
        message: message.to_owned(),
    };
    let described = match mode {
        ProxyMode::Sidecar => args.service.is_some(),
        ProxyMode::Ingress | ProxyMode::Egress => args.address.is_some() || args.port.is_some(),
    };
    if !described {
        return Ok(None);
    }
    let name = name.ok_or_else(|| flags("--name is required to define the proxy by flags"))?;
    let address = args.address.clone().unwrap_or_default();
    let spec = match mode {
        ProxyMode::Sidecar => {
            if args.port.is_some() || args.advertised_address.is_some() {
                return Err(flags(
                    "--port and --advertised-* are for ingresses and egresses",
                ));
            }
            let service = args.service.clone().unwrap_or_default();
            let port = args
                .inbound_port
                .ok_or_else(|| flags("--inbound-port is required with --service"))?;
            let mut tags: BTreeMap<String, String> = args.tags.iter().cloned().collect();
            tags.insert(SERVICE_TAG.to_owned(), service);
            let mut outbound = Vec::new();
            for (service, port) in &args.outbounds {
                let port = port.parse().map_err(|_| {
                    flags(&format!(
                        "--outbound {service}={port}: the port is not a number"
                    ))
                })?;
                outbound.push(Outbound {
                    port,
                    tags: [(SERVICE_TAG.to_owned(), service.clone())].into(),
                    ..Outbound::default()
                });
            }
            Spec::Dataplane(DataplaneSpec {
                networking: Some(Networking {
                    address,
                    inbound: vec![Inbound {
                        port,
                        service_port: args.service_port.unwrap_or(port),
                        tags,
                        ..Inbound::default()
                    }],
                    outbound,
                    ..Networking::default()
                }),
                ..DataplaneSpec::default()
            })
        }
        ProxyMode::Ingress => {
            let port = args
                .port
                .ok_or_else(|| flags("--port is required for an ingress"))?;
            Spec::ZoneIngress(ZoneIngressSpec {
                networking: Some(ZoneIngressNetworking {
                    advertised_address: args
                        .advertised_address
                        .clone()
                        .unwrap_or_else(|| address.clone()),
                    advertised_port: args.advertised_port.unwrap_or(port),
                    address,
                    port,
                    ..ZoneIngressNetworking::default()
                }),
                ..ZoneIngressSpec::default()
            })
        }
        ProxyMode::Egress => {
            if args.advertised_address.is_some() || args.advertised_port.is_some() {
                return Err(flags("an egress has no advertised address or port"));
            }
            let port = args
                .port
                .ok_or_else(|| flags("--port is required for an egress"))?;
            Spec::ZoneEgress(ZoneEgressSpec {
                networking: Some(ZoneEgressNetworking {
                    address,
                    port,
                    ..ZoneEgressNetworking::default()
                }),
                ..ZoneEgressSpec::default()
            })
        }
    };
    let mesh = (mode == ProxyMode::Sidecar).then_some(mesh);
    Ok(Some(Resource::new(name, mesh, spec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar_flags() -> DefinitionArgs {
        DefinitionArgs {
            service: Some("frontend".into()),
            address: Some("127.0.0.1".into()),
            inbound_port: Some(15000),
            service_port: Some(8080),
            tags: vec![("kuma.io/protocol".into(), "http".into())],
            outbounds: vec![("backend".into(), "10001".into())],
            ..DefinitionArgs::default()
        }
    }

    #[test]
    fn flags_make_a_valid_dataplane() {
        let def = definition(
            ProxyMode::Sidecar,
            Some("fe-1"),
            "default",
            &sidecar_flags(),
        )
        .unwrap()
        .unwrap();
        assert_eq!((def.name(), def.mesh()), ("fe-1", "default"));
        let json: serde_json::Value = serde_json::from_str(&def.json).unwrap();
        assert_eq!(json["networking"]["inbound"][0]["servicePort"], 8080);
        assert_eq!(json["networking"]["outbound"][0]["port"], 10001);
        assert_eq!(
            json["networking"]["inbound"][0]["tags"]["kuma.io/service"],
            "frontend"
        );
    }

    #[test]
    fn no_flags_no_definition() {
        let none = DefinitionArgs::default();
        assert!(definition(ProxyMode::Sidecar, Some("x"), "default", &none)
            .unwrap()
            .is_none());
    }

    #[test]
    fn invalid_flags_name_the_field() {
        let mut args = sidecar_flags();
        args.inbound_port = Some(70000);
        let err = definition(ProxyMode::Sidecar, Some("fe-1"), "default", &args).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("networking.inbound[0].port"), "{text}");
    }

    #[test]
    fn an_ingress_by_flags() {
        let args = DefinitionArgs {
            address: Some("127.0.0.1".into()),
            port: Some(10001),
            ..DefinitionArgs::default()
        };
        let def = definition(ProxyMode::Ingress, Some("zone-1-ingress"), "default", &args)
            .unwrap()
            .unwrap();
        assert_eq!(def.resource.resource_type(), ResourceType::ZoneIngress);
        assert!(
            def.json.contains("\"advertisedPort\":10001"),
            "{}",
            def.json
        );
    }
}
