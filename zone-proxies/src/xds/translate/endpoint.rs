//! EDS: a `ClusterLoadAssignment` -> [`LoadAssignment`] (also a STATIC or STRICT_DNS cluster's
//! inline `load_assignment`): localities with zone, priority and weight, endpoints with address
//! (an IP, or a host name resolved when connecting), weight, health and their
//! `envoy.transport_socket_match` metadata (cross-zone endpoints carry their zone there).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::value::Kind;

use super::{each, FieldError, FieldResult, InlineSecrets, ResourceHandler};
use crate::config::{Endpoint, EndpointAddress, EndpointHealth, LoadAssignment, LocalityEndpoints};

/// Envoy's default overprovisioning factor (percent).
const OVERPROVISIONING_FACTOR: u32 = 140;
/// The endpoint metadata namespace transport socket matches look at.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// The EDS handler.
#[derive(Debug)]
pub struct EndpointHandler;

impl ResourceHandler for EndpointHandler {
    const TYPE_URL: &'static str = super::super::ENDPOINT_TYPE;
    const KIND: &'static str = "cluster load assignment";
    type Proto = ClusterLoadAssignment;
    type Model = LoadAssignment;

    fn name(proto: &ClusterLoadAssignment) -> &str {
        &proto.cluster_name
    }

    fn translate(
        c: &ClusterLoadAssignment,
        _: &mut InlineSecrets,
    ) -> FieldResult<Option<LoadAssignment>> {
        load_assignment(c).map(Some)
    }
}

/// A load assignment, from EDS or inline in a cluster.
pub fn load_assignment(c: &ClusterLoadAssignment) -> FieldResult<LoadAssignment> {
    let mut overprovisioning_factor = OVERPROVISIONING_FACTOR;
    if let Some(policy) = &c.policy {
        if !policy.drop_overloads.is_empty() {
            return Err(FieldError::new("drop_overloads is not supported")
                .at("drop_overloads")
                .at("policy"));
        }
        if let Some(f) = &policy.overprovisioning_factor {
            if f.value == 0 {
                return Err(FieldError::new("must be positive")
                    .at("overprovisioning_factor")
                    .at("policy"));
            }
            overprovisioning_factor = f.value;
        }
    }
    if !c.named_endpoints.is_empty() {
        return Err(FieldError::new("named endpoints are not supported").at("named_endpoints"));
    }
    let localities = each(&c.endpoints, "endpoints", locality)?;
    Ok(LoadAssignment {
        cluster_name: c.cluster_name.clone(),
        localities,
        overprovisioning_factor,
    })
}

fn locality(l: &LocalityLbEndpoints) -> FieldResult<LocalityEndpoints> {
    if l.lb_config.is_some() {
        return Err(FieldError::new("endpoint lists and LEDS are not supported").at("lb_config"));
    }
    let endpoints = each(&l.lb_endpoints, "lb_endpoints", endpoint)?;
    Ok(LocalityEndpoints {
        zone: l
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
        priority: l.priority,
        weight: l.load_balancing_weight.as_ref().map(|w| w.value),
        endpoints,
    })
}

fn endpoint(e: &LbEndpoint) -> FieldResult<Endpoint> {
    let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
        return Err(FieldError::new(
            "only inline endpoints are supported (not endpoint_name)",
        ));
    };
    let address = endpoint
        .address
        .as_ref()
        .and_then(|a| a.address.as_ref())
        .ok_or_else(|| FieldError::new("missing").at("address").at("endpoint"))?;
    let address::Address::SocketAddress(s) = address else {
        return Err(FieldError::new("only socket addresses are supported")
            .at("address")
            .at("endpoint"));
    };
    let port = match s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
        _ => None,
    }
    .filter(|p| *p != 0)
    .ok_or_else(|| {
        FieldError::new("a port_value from 1 to 65535 is required")
            .at("socket_address")
            .at("address")
            .at("endpoint")
    })?;
    let address = match s.address.parse::<IpAddr>() {
        Ok(ip) => EndpointAddress::Socket(SocketAddr::new(ip, port)),
        Err(_) if !s.address.is_empty() => EndpointAddress::Host(s.address.clone(), port),
        Err(_) => {
            return Err(FieldError::new("empty")
                .at("address")
                .at("socket_address")
                .at("address")
                .at("endpoint"))
        }
    };
    let health = match HealthStatus::try_from(e.health_status) {
        Ok(HealthStatus::Healthy) | Ok(HealthStatus::Degraded) => EndpointHealth::Healthy,
        Ok(HealthStatus::Unhealthy) | Ok(HealthStatus::Timeout) => EndpointHealth::Unhealthy,
        Ok(HealthStatus::Draining) => EndpointHealth::Draining,
        _ => EndpointHealth::Unknown,
    };
    let mut metadata = BTreeMap::new();
    if let Some(fields) = e
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
    {
        for (key, value) in &fields.fields {
            metadata.insert(key.clone(), struct_value_text(value.kind.as_ref()));
        }
    }
    Ok(Endpoint {
        address,
        weight: e
            .load_balancing_weight
            .as_ref()
            .map_or(1, |w| w.value.max(1)),
        health,
        metadata,
    })
}

/// A metadata value as the text transport socket matches compare (strings as they are).
pub fn struct_value_text(kind: Option<&Kind>) -> String {
    match kind {
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::NumberValue(n)) => n.to_string(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}
