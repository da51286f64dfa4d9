//! Active health checks: per cluster, one task per host probes it every `interval` (TCP: a
//! connection opens; HTTP: a GET of `path`, HTTP/1.1 or HTTP/2 as the check's codec says, with
//! its added headers and `Host` (default: the cluster's name), answers with an expected
//! status; gRPC: the
//! `grpc.health.v1.Health/Check` call over cleartext HTTP/2 answers SERVING; within `timeout`)
//! and marks it failed after `unhealthy_threshold` consecutive failures, healthy again after
//! `healthy_threshold` consecutive successes; a host's very first check, when it passes, makes
//! it healthy at once (a new host starts failed and waits for it, as in Envoy, where the first
//! check of a host skips the healthy threshold). Tasks end when the cluster's hosts or checks
//! change (a new checker takes over) or the cluster goes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::{EndpointAddress, HealthCheck, HealthCheckKind};
use crate::stats::ClusterStats;

use super::cluster::Host;

/// The running checks of one cluster; dropping it stops them.
pub struct HealthChecker {
    checks: Vec<HealthCheck>,
    hosts: Vec<Arc<Host>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl HealthChecker {
    pub fn spawn(
        cluster: &str,
        checks: &[HealthCheck],
        hosts: &[Arc<Host>],
        stats: &Arc<ClusterStats>,
    ) -> HealthChecker {
        let mut tasks = Vec::new();
        if tokio::runtime::Handle::try_current().is_ok() {
            for host in hosts {
                for check in checks {
                    tasks.push(tokio::spawn(check_loop(
                        cluster.to_string(),
                        check.clone(),
                        host.clone(),
                        stats.clone(),
                    )));
                }
            }
        }
        HealthChecker {
            checks: checks.to_vec(),
            hosts: hosts.to_vec(),
            tasks,
        }
    }

    /// Whether this checker already runs `checks` on exactly `hosts`.
    pub fn runs_for(&self, checks: &[HealthCheck], hosts: &[Arc<Host>]) -> bool {
        self.checks == checks
            && self.hosts.len() == hosts.len()
            && self.hosts.iter().zip(hosts).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

async fn check_loop(
    cluster: String,
    check: HealthCheck,
    host: Arc<Host>,
    stats: Arc<ClusterStats>,
) {
    let mut interval = tokio::time::interval(check.interval.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut failures, mut successes) = (0u32, 0u32);
    loop {
        interval.tick().await;
        stats.health_check_attempt.fetch_add(1, Ordering::Relaxed);
        let ok = matches!(
            tokio::time::timeout(check.timeout, probe(&cluster, &check.kind, &host.address)).await,
            Ok(Ok(true))
        );
        let first = host.first_health_check();
        if ok {
            stats.health_check_success.fetch_add(1, Ordering::Relaxed);
            failures = 0;
            successes += 1;
            if host.health_check_failed() && (first || successes >= check.healthy_threshold.max(1))
            {
                tracing::info!(%cluster, host = ?host.address, "health check: healthy");
                host.set_health_check_failed(false);
            }
        } else {
            stats.health_check_failure.fetch_add(1, Ordering::Relaxed);
            successes = 0;
            failures += 1;
            if !host.health_check_failed() && failures >= check.unhealthy_threshold.max(1) {
                tracing::info!(%cluster, host = ?host.address, "health check: unhealthy");
                host.set_health_check_failed(true);
            }
        }
    }
}

async fn connect(address: &EndpointAddress) -> std::io::Result<TcpStream> {
    match address {
        EndpointAddress::Socket(addr) => TcpStream::connect(addr).await,
        EndpointAddress::Host(name, port) => TcpStream::connect((name.as_str(), *port)).await,
    }
}

/// One probe: `Ok(true)` healthy.
async fn probe(
    cluster: &str,
    kind: &HealthCheckKind,
    address: &EndpointAddress,
) -> std::io::Result<bool> {
    let mut stream = connect(address).await?;
    match kind {
        HealthCheckKind::Tcp => Ok(true),
        HealthCheckKind::TcpPayload { send, receive } => {
            stream.write_all(send).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !contains_in_order(&buf, receive) {
                // Bounded: the caller's timeout, and a peer sending too much fails.
                let n = stream.read(&mut chunk).await?;
                if n == 0 || buf.len() > 64 * 1024 {
                    return Ok(false);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(true)
        }
        HealthCheckKind::Grpc {
            service_name,
            authority,
        } => {
            let authority = if authority.is_empty() {
                cluster
            } else {
                authority
            };
            Ok(grpc_check(stream, authority, service_name)
                .await
                .unwrap_or(false))
        }
        HealthCheckKind::Http {
            path,
            host,
            request_headers,
            http2,
            expected_statuses,
        } => {
            let authority = if host.is_empty() { cluster } else { host };
            let Some(status) = http_status(stream, *http2, authority, path, request_headers).await
            else {
                return Ok(false);
            };
            let expected = if expected_statuses.is_empty() {
                &[(200, 201)][..]
            } else {
                expected_statuses
            };
            Ok(expected
                .iter()
                .any(|(lo, hi)| status >= *lo && status < *hi))
        }
    }
}

/// Whether every block of `blocks` occurs in `buf`, in order, without overlapping.
fn contains_in_order(buf: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut rest = buf;
    for block in blocks.iter().filter(|b| !b.is_empty()) {
        match rest
            .windows(block.len())
            .position(|w| w == block.as_slice())
        {
            Some(at) => rest = &rest[at + block.len()..],
            None => return false,
        }
    }
    true
}

/// One `GET path` on `stream`, HTTP/1.1 or HTTP/2 with prior knowledge, with the check's
/// headers: the response's status, `None` when the exchange fails.
async fn http_status(
    stream: TcpStream,
    http2: bool,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
) -> Option<u16> {
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::client::conn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let uri = if http2 {
        format!("http://{authority}{path}")
    } else {
        path.to_owned()
    };
    let mut request = http::Request::get(uri).header(http::header::USER_AGENT, HEALTH_CHECK_AGENT);
    if !http2 {
        request = request.header(http::header::HOST, authority);
    }
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Empty::<Bytes>::new()).ok()?;
    let io = TokioIo::new(stream);
    // Each connection is driven here and dropped with the probe (nothing else uses it).
    let (response, driver) = if http2 {
        let (mut sender, connection) = conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .ok()?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender.send_request(request).await, driver)
    } else {
        let (mut sender, connection) = conn::http1::handshake(io).await.ok()?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender.send_request(request).await, driver)
    };
    driver.abort();
    Some(response.ok()?.status().as_u16())
}

/// The `User-Agent` of HTTP and gRPC health checks.
const HEALTH_CHECK_AGENT: &str = "meridian-health-check";

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// One `grpc.health.v1.Health/Check` call on `stream` (HTTP/2 with prior knowledge): `Some(true)`
/// when it answers `grpc-status: 0` and SERVING; `None` when the exchange fails.
async fn grpc_check(stream: TcpStream, authority: &str, service: &str) -> Option<bool> {
    use bytes::{BufMut, Bytes, BytesMut};
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // HealthCheckRequest { string service = 1; } in a gRPC frame (uncompressed, length prefix).
    let mut message = BytesMut::new();
    if !service.is_empty() {
        prost::encoding::string::encode(1, &service.to_owned(), &mut message);
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).ok()?);
    frame.put(message);
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .ok()?;
    // The connection is driven here and dropped with the probe (nothing else uses it).
    let driver = tokio::spawn(connection);
    let request = http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, HEALTH_CHECK_AGENT)
        .body(Full::new(frame.freeze()))
        .ok()?;
    let result = async {
        let response = sender.send_request(request).await.ok()?;
        if response.status() != http::StatusCode::OK {
            return Some(false);
        }
        let trailers_only = response.headers().get("grpc-status").cloned();
        let collected = response.into_body().collect().await.ok()?;
        let status = trailers_only.or_else(|| collected.trailers()?.get("grpc-status").cloned());
        if status.as_ref().map(|s| s.as_bytes()) != Some(b"0") {
            return Some(false);
        }
        Some(serving_status(&collected.to_bytes()) == Some(SERVING))
    }
    .await;
    driver.abort();
    result
}

/// The `status` of the HealthCheckResponse in a gRPC response body (one uncompressed message).
fn serving_status(body: &[u8]) -> Option<u64> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let (&compressed, rest) = body.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut message = rest.get(4..4 + len)?;
    // An absent field is proto3's default, UNKNOWN (0).
    let mut status = 0;
    while !message.is_empty() {
        let (tag, wire_type) = decode_key(&mut message).ok()?;
        if tag == 1 && wire_type == WireType::Varint {
            status = decode_varint(&mut message).ok()?;
        } else {
            skip_field(wire_type, tag, &mut message, DecodeContext::default()).ok()?;
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_blocks_match_in_order_not_contiguous() {
        let blocks = vec![b"po".to_vec(), b"ng".to_vec()];
        assert!(contains_in_order(b"xxpoyyngzz", &blocks));
        assert!(contains_in_order(b"pong", &blocks));
        assert!(!contains_in_order(b"ngpo", &blocks));
        assert!(!contains_in_order(b"pn", &blocks));
        assert!(contains_in_order(b"", &[]));
    }

    #[test]
    fn the_serving_status_is_read_from_the_grpc_frame() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x01]), Some(SERVING));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0x02]), Some(2));
        // Empty message: UNKNOWN.
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        // Compressed or truncated frames are not understood.
        assert_eq!(serving_status(&[1, 0, 0, 0, 0]), None);
        assert_eq!(serving_status(&[0, 0, 0, 0, 5, 0x08]), None);
    }
}
