//! Listener-level templates for either direction: the TcpProxy and the HTTP connection manager
//! with what MeshTimeout, MeshRetry (TCP) and MeshAccessLog set on them. The caller fills in
//! the rest (stat prefix, cluster specifier, codec, route configuration, HTTP filters).
//!
//! - TcpProxy: `idle_timeout` (`idleTimeout`; Envoy's unset default is 1h, so it is always
//!   written), `max_connect_attempts` (MeshRetry `tcp.maxConnectAttempt`, outbound), access logs.
//! - HCM: `stream_idle_timeout` (`http.streamIdleTimeout`, also on each route),
//!   `request_headers_timeout` (`http.requestHeadersTimeout`, 0 = disabled), common HTTP protocol
//!   options with `idle_timeout` 0 (MeshTimeout's idle timeout lives on the cluster, as in Kuma)
//!   and `max_connection_duration` (`http.maxConnectionDuration`), access logs.

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::UInt32Value;

use super::convert::pb_duration;
use super::matched::TrafficPolicies;

/// The TcpProxy template for `p`'s direction, logging to `access_log`.
pub fn tcp_proxy_settings(p: &impl TrafficPolicies, access_log: Vec<AccessLog>) -> TcpProxy {
    let t = p.timeouts();
    TcpProxy {
        idle_timeout: Some(pb_duration(t.idle)),
        max_connect_attempts: p.max_connect_attempts().map(|value| UInt32Value { value }),
        access_log,
        ..TcpProxy::default()
    }
}

/// The HTTP connection manager template for `p`'s direction, logging to `access_log`.
pub fn http_connection_manager_settings(
    p: &impl TrafficPolicies,
    access_log: Vec<AccessLog>,
) -> HttpConnectionManager {
    let t = p.timeouts();
    HttpConnectionManager {
        stream_idle_timeout: Some(pb_duration(t.stream_idle)),
        request_headers_timeout: Some(pb_duration(t.request_headers)),
        common_http_protocol_options: Some(HttpProtocolOptions {
            idle_timeout: Some(pb_duration(std::time::Duration::ZERO)),
            max_connection_duration: (!t.max_connection_duration.is_zero())
                .then(|| pb_duration(t.max_connection_duration)),
            ..HttpProtocolOptions::default()
        }),
        access_log,
        ..HttpConnectionManager::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{dataplane, policies};
    use crate::policy::{access_logs, AccessLogContext, Direction, Protocol, ProxyPolicies};
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    fn secs(seconds: i64) -> Option<PbDuration> {
        Some(PbDuration { seconds, nanos: 0 })
    }

    const POLICIES: &str = r#"
type: MeshTimeout
name: t
mesh: default
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default: {idleTimeout: 20s, http: {streamIdleTimeout: 10s, requestHeadersTimeout: 2s, maxConnectionDuration: 5m}}
---
type: MeshTimeout
name: in
mesh: default
spec:
  from:
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 40s}
---
type: MeshRetry
name: r
mesh: default
spec:
  to:
    - targetRef: {kind: Mesh}
      default: {tcp: {maxConnectAttempt: 4}}
---
type: MeshAccessLog
name: al
mesh: default
spec:
  to:
    - targetRef: {kind: Mesh}
      default: {backends: [{type: File, file: {path: /dev/stdout}}]}
"#;

    #[test]
    fn tcp_proxy_outbound_and_inbound() {
        let p = ProxyPolicies::compute(&dataplane(), &policies(POLICIES));
        let out = p.outbound("backend");
        let ctx = AccessLogContext {
            mesh: "default".into(),
            zone: String::new(),
            source_service: "web".into(),
            source_ip: "10.0.0.1".into(),
            destination_service: "backend".into(),
            direction: Direction::Outbound,
            protocol: Protocol::Tcp,
        };
        let logs = access_logs(out.access_log.as_ref().unwrap(), &ctx).unwrap();
        let tcp = tcp_proxy_settings(&out, logs.logs);
        assert_eq!(tcp.idle_timeout, secs(20));
        assert_eq!(tcp.max_connect_attempts, Some(UInt32Value { value: 4 }));
        assert_eq!(tcp.access_log.len(), 1);

        let inbound = tcp_proxy_settings(&p.inbound(), Vec::new());
        assert_eq!(inbound.idle_timeout, secs(40));
        assert_eq!(inbound.max_connect_attempts, None);
        // No policy at all: Kuma's default idle timeouts.
        let bare = ProxyPolicies::compute(&dataplane(), &[]);
        assert_eq!(
            tcp_proxy_settings(&bare.outbound("x"), Vec::new()).idle_timeout,
            secs(3600)
        );
        assert_eq!(
            tcp_proxy_settings(&bare.inbound(), Vec::new()).idle_timeout,
            secs(7200)
        );
    }

    #[test]
    fn connection_manager_timeouts() {
        let p = ProxyPolicies::compute(&dataplane(), &policies(POLICIES));
        let hcm = http_connection_manager_settings(&p.outbound("backend"), Vec::new());
        assert_eq!(hcm.stream_idle_timeout, secs(10));
        assert_eq!(hcm.request_headers_timeout, secs(2));
        let common = hcm.common_http_protocol_options.unwrap();
        assert_eq!(common.idle_timeout, secs(0));
        assert_eq!(common.max_connection_duration, secs(300));

        let inbound = http_connection_manager_settings(&p.inbound(), Vec::new());
        assert_eq!(inbound.stream_idle_timeout, secs(3600));
        assert_eq!(inbound.request_headers_timeout, secs(0));
        assert_eq!(
            inbound
                .common_http_protocol_options
                .unwrap()
                .max_connection_duration,
            None
        );
    }
}
