//! Policy configuration -> Envoy pieces (issue [3] point 3). The generator asks
//! [`ProxyPolicies::compute`] which targetRef policies apply to one proxy (grouped by type, each
//! type through `mesh_api::matching::matched_policies`, so in Kuma's merge order) and reads typed
//! views of the result: [`ProxyPolicies::outbound`] for traffic to one `kuma.io/service`,
//! [`ProxyPolicies::inbound`] / [`ProxyPolicies::inbound_at`] for traffic into the proxy, and
//! [`ProxyPolicies::applied`] for the inspection endpoint. The functions of this module then turn
//! those views into Envoy protos, as Kuma's policy plugins do: [`configure_cluster`],
//! [`route_action_settings`], [`tcp_proxy_settings`], [`http_connection_manager_settings`],
//! [`inbound_http_filters`], [`inbound_rbac`] and [`access_logs`]. They are pure: no store, no
//! I/O, so the generator stays a thin assembler and each mapping is unit-tested here against the
//! protos it produces. Where a mesh has no policy of a kind, Kuma's defaults apply
//! ([`defaults`]).
//!
//! Errors: a merged conf that does not decode (validation should have stopped it) and a value
//! that cannot be mapped (a percentage that is not a number) are [`PolicyError`]s naming the
//! policy type and field; the conf is skipped, nothing panics. Numbers that validation bounds
//! (negative durations, counts beyond `u32`) saturate instead of failing.

mod access_log;
mod cluster;
mod convert;
pub mod defaults;
mod http_filters;
mod listener;
mod locality;
mod matched;
mod rbac;
mod route;
#[cfg(test)]
mod testing;

pub use access_log::{access_logs, AccessLogContext, AccessLogs, LogCluster, LogClusterKind};
pub use cluster::{configure_cluster, configure_inbound_cluster, HTTP_PROTOCOL_OPTIONS};
pub use http_filters::{
    inbound_http_filters, inbound_tcp_rate_limit, source_tags_header, SOURCE_TAGS_HEADER,
};
pub use listener::{http_connection_manager_settings, tcp_proxy_settings};
pub use locality::{AffinityGroup, CrossZoneRule, Locality, ZoneSelection};
pub use matched::{
    FaultSource, InboundPolicies, OutboundPolicies, PermissionSource, ProxyPolicies, Timeouts,
    TrafficPolicies,
};
pub use rbac::{inbound_rbac, InboundRbac, POLICY_NAME as RBAC_POLICY_NAME};
pub use route::{inbound_route_action_settings, route_action_settings};

use mesh_api::ResourceType;

/// Which way traffic flows through the proxy: what the defaults and access-log placeholders
/// depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Into the proxy's own service (inbound listeners, `localhost:<port>` clusters).
    Inbound,
    /// From the proxy's service to another service (outbound listeners, service clusters).
    Outbound,
}

impl Direction {
    /// Kuma's spelling in `%KUMA_TRAFFIC_DIRECTION%`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "INBOUND",
            Direction::Outbound => "OUTBOUND",
        }
    }
}

/// A service's protocol, from its `kuma.io/protocol` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Http2,
    Grpc,
    Kafka,
}

impl Protocol {
    /// Reads the tag as Kuma does (case-insensitively); absent or unknown means `tcp`.
    pub fn from_tag(tag: Option<&str>) -> Protocol {
        match tag.map(str::to_ascii_lowercase).as_deref() {
            Some("http") => Protocol::Http,
            Some("http2") => Protocol::Http2,
            Some("grpc") => Protocol::Grpc,
            Some("kafka") => Protocol::Kafka,
            _ => Protocol::Tcp,
        }
    }

    /// Whether traffic goes through an HTTP connection manager (http, http2, grpc).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Kafka => "kafka",
        }
    }
}

/// A policy configuration that could not be decoded or mapped to Envoy. `field` is the path in
/// the policy (`to[MeshService backend].default.http.requestTimeout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{policy} {field}: {message}")]
pub struct PolicyError {
    pub policy: ResourceType,
    pub field: String,
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(
        policy: ResourceType,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError {
            policy,
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_tags() {
        assert_eq!(Protocol::from_tag(None), Protocol::Tcp);
        assert_eq!(Protocol::from_tag(Some("HTTP")), Protocol::Http);
        assert_eq!(Protocol::from_tag(Some("http2")), Protocol::Http2);
        assert_eq!(Protocol::from_tag(Some("grpc")), Protocol::Grpc);
        assert_eq!(Protocol::from_tag(Some("kafka")), Protocol::Kafka);
        assert_eq!(Protocol::from_tag(Some("mongo")), Protocol::Tcp);
        assert!(Protocol::Grpc.is_http() && !Protocol::Kafka.is_http());
    }

    #[test]
    fn errors_name_policy_and_field() {
        let e = PolicyError::new(
            ResourceType::MeshTimeout,
            "to[Mesh].default.idleTimeout",
            "bad",
        );
        assert_eq!(
            e.to_string(),
            "MeshTimeout to[Mesh].default.idleTimeout: bad"
        );
    }
}
