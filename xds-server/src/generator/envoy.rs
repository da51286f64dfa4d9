//! Small builders for the Envoy messages every generator uses (addresses, `Any` packing, ADS
//! config sources, filters, TLS contexts over SDS), so the generators read as configuration.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, transport_socket, Address, AggregatedConfigSource,
    ApiVersion, ConfigSource, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, subject_alt_name_matcher, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, SdsSecretConfig, SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::Name;

/// Packs a message into an `Any` with its canonical type URL.
pub fn any<M: Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// `ip:port` as an Envoy socket address.
pub fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// A load assignment with the one endpoint `address:port`.
pub fn single_endpoint(cluster: &str, address: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket(address, port)),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }],
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

/// "Fetch this over the same ADS stream."
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    }
}

/// A network filter with a typed config.
pub fn network_filter<M: Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(config))),
    }
}

/// The TLS inspector listener filter (reads SNI without terminating TLS).
pub fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..ListenerFilter::default()
    }
}

/// A `tcp_proxy` network filter to `cluster`.
pub fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    tcp_proxy_filter_with(TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..TcpProxy::default()
    })
}

/// A `tcp_proxy` network filter from a prepared config.
pub fn tcp_proxy_filter_with(config: TcpProxy) -> Filter {
    network_filter("envoy.filters.network.tcp_proxy", &config)
}

/// An EDS cluster whose endpoints come over ADS.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Cluster::default()
    }
}

/// The SDS name of a proxy's own certificate in `mesh`.
pub fn identity_secret_name(mesh: &str) -> String {
    format!("identity_cert:{mesh}")
}

/// The SDS name of `mesh`'s CA bundle (the validation context).
pub fn ca_secret_name(mesh: &str) -> String {
    format!("mesh_ca:{mesh}")
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

/// `spiffe://<mesh>/<service>`
pub fn spiffe_id(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

fn uri_san(value: StringMatcher) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: subject_alt_name_matcher::SanType::Uri as i32,
        matcher: Some(value),
        oid: String::new(),
    }
}

/// The mesh's mTLS context: the proxy's identity certificate and the mesh CA over SDS, peers
/// whose URI SAN matches one of `peer_sans` (any identity of the mesh when empty).
fn mesh_tls_context(mesh: &str, peer_sans: &[String]) -> CommonTlsContext {
    let sans = if peer_sans.is_empty() {
        vec![uri_san(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Prefix(format!(
                "spiffe://{mesh}/"
            ))),
            ..StringMatcher::default()
        })]
    } else {
        peer_sans
            .iter()
            .map(|s| {
                uri_san(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(s.clone())),
                    ..StringMatcher::default()
                })
            })
            .collect()
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(&identity_secret_name(mesh))],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..CertificateValidationContext::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(&ca_secret_name(mesh))),
                    ..Default::default()
                },
            ),
        ),
        ..CommonTlsContext::default()
    }
}

fn tls_socket<M: Name>(context: &M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(context))),
    }
}

/// The inbound side of mesh mTLS: a client certificate from the mesh CA is required.
pub fn downstream_mtls(mesh: &str) -> TransportSocket {
    tls_socket(&DownstreamTlsContext {
        common_tls_context: Some(mesh_tls_context(mesh, &[])),
        require_client_certificate: Some(BoolValue { value: true }),
        ..DownstreamTlsContext::default()
    })
}

/// The outbound side of mesh mTLS to `service`: present our identity, expect the service's.
pub fn upstream_mtls(mesh: &str, service: &str, sni: &str) -> TransportSocket {
    tls_socket(&UpstreamTlsContext {
        common_tls_context: Some(mesh_tls_context(mesh, &[spiffe_id(mesh, service)])),
        sni: sni.to_string(),
        ..UpstreamTlsContext::default()
    })
}
