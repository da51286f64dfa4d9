//! Kuma's values for what no policy (or no field of an applying policy) configures, in one
//! place. Each says where Kuma sets it (paths in kumahq/kuma). A zero duration means "disabled"
//! (Envoy's convention for these timeouts).

use std::time::Duration;

use super::matched::Timeouts;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Outbound timeouts: connect 5s, idle 1h, request 15s, stream idle 30m; request headers, max
/// stream duration and max connection duration disabled. Kuma:
/// `pkg/plugins/policies/core/defaults/consts.go` (`DefaultConnectTimeout`, `DefaultIdleTimeout`,
/// `DefaultRequestTimeout`, `DefaultStreamIdleTimeout`, `DefaultRequestHeadersTimeout`,
/// `DefaultMaxStreamDuration`, `DefaultMaxConnectionDuration`), used by the MeshTimeout plugin
/// for every field a MeshTimeout leaves out and by the default `mesh-timeout-all` `to` policy.
pub const OUTBOUND_TIMEOUTS: Timeouts = Timeouts {
    connect: secs(5),
    idle: secs(3600),
    request: secs(15),
    stream_idle: secs(30 * 60),
    request_headers: Duration::ZERO,
    max_stream_duration: Duration::ZERO,
    max_connection_duration: Duration::ZERO,
};

/// Inbound timeouts: twice the outbound ones (connect 10s, idle 2h, stream idle 1h) and no
/// request timeout or max stream duration, so that the caller's side always times out first.
/// Kuma: `pkg/defaults/mesh/meshtimeout.go` (`DefaultInboundTimeout` and the default inbound
/// `rules` MeshTimeout, `factor = 2`).
pub const INBOUND_TIMEOUTS: Timeouts = Timeouts {
    connect: secs(10),
    idle: secs(2 * 3600),
    request: Duration::ZERO,
    stream_idle: secs(3600),
    request_headers: Duration::ZERO,
    max_stream_duration: Duration::ZERO,
    max_connection_duration: Duration::ZERO,
};

/// Circuit-breaker thresholds (default priority) when no MeshCircuitBreaker sets them: 1024
/// connections, pending requests and requests, 3 concurrent retries. Kuma:
/// `pkg/defaults/mesh/meshcircuitbreaker.go` (the default `mesh-circuit-breaker-all` policy);
/// they equal Envoy's own defaults. Written explicitly so the configuration says what applies.
pub const MAX_CONNECTIONS: u32 = 1024;
/// See [`MAX_CONNECTIONS`].
pub const MAX_PENDING_REQUESTS: u32 = 1024;
/// See [`MAX_CONNECTIONS`].
pub const MAX_REQUESTS: u32 = 1024;
/// See [`MAX_CONNECTIONS`].
pub const MAX_RETRIES: u32 = 3;

/// Active health-check interval when a MeshHealthCheck does not set one. Kuma:
/// `pkg/plugins/policies/meshhealthcheck/plugin/xds/configurer.go` (`defaultInterval`).
pub const HEALTH_CHECK_INTERVAL: Duration = secs(60);
/// Health-check timeout; same file (`defaultTimeout`).
pub const HEALTH_CHECK_TIMEOUT: Duration = secs(15);
/// Failed checks before a host is unhealthy; same file (`defaultUnhealthyThreshold`).
pub const HEALTH_CHECK_UNHEALTHY_THRESHOLD: u32 = 5;
/// Passed checks before a host is healthy again; same file (`defaultHealthyThreshold`).
pub const HEALTH_CHECK_HEALTHY_THRESHOLD: u32 = 1;
/// Path of an HTTP health check; same file (`defaultHTTPPath`).
pub const HEALTH_CHECK_HTTP_PATH: &str = "/";

/// `retry_on` of an HTTP retry policy whose MeshRetry lists no `retryOn`. Kuma:
/// `pkg/plugins/policies/meshretry/plugin/xds/configurer.go` (`HttpRetryOnDefault`). Without any
/// MeshRetry no retry policy is set at all (Kuma's plugin adds none).
pub const HTTP_RETRY_ON: &str = "gateway-error,connect-failure,refused-stream";
/// `retry_on` of a gRPC retry policy without `retryOn`; same file (`GrpcRetryOnDefault`).
pub const GRPC_RETRY_ON: &str =
    "cancelled,connect-failure,gateway-error,refused-stream,reset,resource-exhausted,unavailable";
/// Base back-off of a gRPC retry whose `backOff` has no `baseInterval`. Kuma:
/// `pkg/defaults/mesh/meshretry.go` (`DefaultBaseInterval`), used by the MeshRetry configurer.
pub const RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// The endpoint overprovisioning factor without `crossZone.failoverThreshold` (Envoy's own
/// default, 1.4x, is replaced by Kuma's 2x). Kuma:
/// `pkg/plugins/policies/meshloadbalancingstrategy/plugin/v1alpha1/locality_aware.go`
/// (`defaultOverprovisioningFactor`).
pub const OVERPROVISIONING_FACTOR: u32 = 200;

/// Access-log line for TCP traffic when a backend has no `format`. Kuma:
/// `pkg/plugins/policies/meshaccesslog/plugin/xds/configurer.go` (`defaultNetworkAccessLogFormat`).
pub const TCP_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, received: %BYTES_RECEIVED% bytes";
/// Access-log line for HTTP traffic when a backend has no `format`; same file
/// (`defaultHttpAccessLogFormat`).
pub const HTTP_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] %KUMA_MESH% \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%KUMA_SOURCE_SERVICE%\" \"%KUMA_DESTINATION_SERVICE%\" \"%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%\" \"%UPSTREAM_HOST%\"";
