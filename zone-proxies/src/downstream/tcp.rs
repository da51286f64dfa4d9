//! Envoy's tcp_proxy: one cluster picked by weight, a connection to one of its endpoints (the
//! next endpoint after a connect failure, three attempts), bytes copied both ways until either
//! side closes or nothing moves for the idle timeout. One access log entry per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::access_log::timestamp;
use crate::runtime::{Runtime, TcpRuntime};
use crate::upstream::cluster::now_ms;
use crate::upstream::lb::hash_key;

use super::ConnContext;

/// Connect attempts before a TCP connection is given up (Envoy's default max_connect_attempts is 1;
/// Meridian tries other endpoints so one dead endpoint does not fail connections).
const CONNECT_ATTEMPTS: u32 = 3;

/// Per direction; tokio's default (8 KiB) costs a quarter of loopback throughput in syscalls.
const COPY_BUFFER: usize = 64 * 1024;

/// A stream that notes when bytes last moved, for the idle timeout.
struct Activity<S> {
    inner: S,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Proxies `downstream` per `tcp` until the connection ends.
pub async fn proxy<S: AsyncRead + AsyncWrite + Unpin>(
    downstream: S,
    ctx: &ConnContext,
    tcp: &TcpRuntime,
    rt: &Runtime,
) {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let Some(cluster_name) = crate::upstream::pick_weighted(&tcp.config.clusters) else {
        return;
    };
    let Some(cluster) = rt.clusters.get(cluster_name).cloned() else {
        tracing::debug!(cluster = cluster_name, "tcp_proxy: unknown cluster");
        return;
    };
    let hash = hash_key(ctx.peer.ip().to_string().as_bytes());
    let (mut sent, mut received, mut flags, mut upstream_host) = (0u64, 0u64, "-", None);
    match cluster.connect_any(Some(hash), CONNECT_ATTEMPTS).await {
        Err(e) => {
            tracing::debug!(cluster = cluster_name, error = %e, "tcp_proxy: no upstream connection");
            flags = match e {
                crate::upstream::ConnectError::NoHealthyUpstream(_) => "UH",
                crate::upstream::ConnectError::Overflow(_) => "UO",
                _ => "UF",
            };
        }
        Ok(upstream) => {
            upstream_host = Some(format!("{:?}", upstream.host.address));
            let last = Arc::new(AtomicU64::new(now_ms()));
            let mut down = Activity {
                inner: downstream,
                last: last.clone(),
            };
            let mut up = Activity {
                inner: upstream,
                last: last.clone(),
            };
            let copy = tokio::io::copy_bidirectional_with_sizes(
                &mut down,
                &mut up,
                COPY_BUFFER,
                COPY_BUFFER,
            );
            tokio::pin!(copy);
            let idle = tcp.config.idle_timeout.filter(|d| !d.is_zero());
            loop {
                let wake = match idle {
                    Some(idle) => {
                        let idle_ms = idle.as_millis() as u64;
                        let due = last.load(Ordering::Relaxed) + idle_ms;
                        let now = now_ms();
                        if now >= due {
                            flags = "DT";
                            break;
                        }
                        Duration::from_millis(due - now)
                    }
                    None => Duration::from_secs(3600),
                };
                tokio::select! {
                    result = &mut copy => {
                        if let Ok((to_up, to_down)) = result {
                            sent = to_up;
                            received = to_down;
                        }
                        break;
                    }
                    _ = tokio::time::sleep(wake) => {}
                }
            }
            let stats = cluster.stats();
            stats
                .upstream_cx_tx_bytes_total
                .fetch_add(sent, Ordering::Relaxed);
            stats
                .upstream_cx_rx_bytes_total
                .fetch_add(received, Ordering::Relaxed);
        }
    }
    for log in &tcp.access_logs {
        log.log(serde_json::json!({
            "start_time": timestamp(start_time),
            "kind": "tcp",
            "listener": &*ctx.listener,
            "downstream_remote_address": ctx.peer.to_string(),
            "downstream_peer_identity": ctx.identity.spiffe_id(),
            "requested_server_name": ctx.sni,
            "upstream_cluster": cluster_name,
            "upstream_host": upstream_host,
            "bytes_sent": sent,
            "bytes_received": received,
            "duration_ms": started.elapsed().as_millis() as u64,
            "response_flags": flags,
        }));
    }
}
