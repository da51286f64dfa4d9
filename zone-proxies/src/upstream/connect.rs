//! Connecting to an endpoint: TCP (no delay), then TLS when the endpoint's transport says so
//! (SNI and client certificate from the cluster's `tls` or the matching `tls_by_metadata`
//! entry). The connection counts against the cluster's `max_connections` circuit breaker and
//! its `upstream_cx_active` gauge from the start of connecting until dropped (also when the
//! connect itself is abandoned).

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::EndpointAddress;
use crate::stats::ClusterStats;

use super::cluster::{connect_timeout, Host, UpstreamCluster};
use super::lb::PickContext;
use super::outlier::Outcome;

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cluster {0:?} has no endpoints")]
    NoHealthyUpstream(String),
    #[error("cluster {0:?}: too many connections (circuit breaker max_connections)")]
    Overflow(String),
    #[error("connecting to {address:?}: {source}")]
    Io {
        address: EndpointAddress,
        source: io::Error,
    },
    #[error("connecting to {0:?}: timed out")]
    Timeout(EndpointAddress),
    #[error("TLS to {address:?}: {source}")]
    Tls {
        address: EndpointAddress,
        source: io::Error,
    },
    #[error("{0}")]
    TlsContext(String),
}

/// A plaintext or TLS connection to an endpoint.
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An upstream connection, counted in its cluster's statistics while it lives.
pub struct UpstreamConn {
    pub io: UpstreamIo,
    pub host: Arc<Host>,
    /// The ALPN protocol the server chose (TLS only).
    pub alpn: Option<Vec<u8>>,
    _slot: ConnectionSlot,
}

/// One connection's place under the cluster's `max_connections`, from the moment connecting
/// starts; given back when dropped, so a connect abandoned half-way (the request's per-try
/// timeout fired, the client went away) does not keep its place for ever.
struct ConnectionSlot(Arc<ClusterStats>);

impl ConnectionSlot {
    /// Takes a place, or `None` when the cluster is at `max` connections (unless
    /// `over_limit_ok`). Either way, being at the limit counts in `upstream_cx_overflow`.
    fn take(stats: &Arc<ClusterStats>, max: i64, over_limit_ok: bool) -> Option<ConnectionSlot> {
        if stats.upstream_cx_active.fetch_add(1, Ordering::Relaxed) >= max {
            stats.upstream_cx_overflow.fetch_add(1, Ordering::Relaxed);
            if !over_limit_ok {
                stats.upstream_cx_active.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
        }
        Some(ConnectionSlot(stats.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.upstream_cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for UpstreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConn")
            .field("host", &self.host.address)
            .finish()
    }
}

async fn tcp(address: &EndpointAddress) -> io::Result<TcpStream> {
    let stream = match address {
        EndpointAddress::Socket(addr) => TcpStream::connect(addr).await?,
        EndpointAddress::Host(name, port) => TcpStream::connect((name.as_str(), *port)).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl UpstreamCluster {
    /// Connects to `host` (one attempt). Failures are recorded for outlier detection.
    pub async fn connect_host(&self, host: &Arc<Host>) -> Result<UpstreamConn, ConnectError> {
        self.connect_host_with(host, false).await
    }

    /// [`Self::connect_host`], over the cluster's `max_connections` when `over_limit_ok` (an
    /// HTTP pool's first connection, as Envoy allows).
    pub async fn connect_host_with(
        &self,
        host: &Arc<Host>,
        over_limit_ok: bool,
    ) -> Result<UpstreamConn, ConnectError> {
        let stats = self.shared.stats.clone();
        let max = self.config.circuit_breakers.max_connections as i64;
        let Some(slot) = ConnectionSlot::take(&stats, max, over_limit_ok) else {
            return Err(ConnectError::Overflow(self.name().to_string()));
        };
        let address = host.address.clone();
        let result = async {
            let stream = match tokio::time::timeout(connect_timeout(self), tcp(&address)).await {
                Err(_) => return Err(ConnectError::Timeout(address.clone())),
                Ok(Err(source)) => {
                    return Err(ConnectError::Io {
                        address: address.clone(),
                        source,
                    })
                }
                Ok(Ok(s)) => s,
            };
            match self.tls_for(host) {
                None => Ok((UpstreamIo::Plain(stream), None)),
                Some(Err(reason)) => Err(ConnectError::TlsContext(reason.clone())),
                Some(Ok(tls)) => {
                    let connector = TlsConnector::from(tls.config.clone());
                    let handshake = connector.connect(tls.sni.clone(), stream);
                    match tokio::time::timeout(connect_timeout(self), handshake).await {
                        Err(_) => Err(ConnectError::Timeout(address.clone())),
                        Ok(Err(source)) => Err(ConnectError::Tls {
                            address: address.clone(),
                            source,
                        }),
                        Ok(Ok(s)) => {
                            let alpn = s.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                            Ok((UpstreamIo::Tls(Box::new(s)), alpn))
                        }
                    }
                }
            }
        }
        .await;
        match result {
            Ok((io, alpn)) => {
                stats.upstream_cx_total.fetch_add(1, Ordering::Relaxed);
                Ok(UpstreamConn {
                    io,
                    host: host.clone(),
                    alpn,
                    _slot: slot,
                })
            }
            Err(e) => {
                drop(slot);
                stats
                    .upstream_cx_connect_fail
                    .fetch_add(1, Ordering::Relaxed);
                self.record_outcome(host, Outcome::ConnectFailure);
                tracing::debug!(cluster = %self.name(), error = %e, "upstream connect failed");
                Err(e)
            }
        }
    }

    /// Picks and connects, moving on to another endpoint after a failure, up to `attempts`
    /// tries (TCP proxying: a byte stream can be retried only before any byte is sent).
    pub async fn connect_any(
        &self,
        hash: Option<u64>,
        attempts: u32,
    ) -> Result<UpstreamConn, ConnectError> {
        let mut tried: Vec<Arc<Host>> = Vec::new();
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let Some(host) = self.pick(PickContext {
                hash,
                exclude: &tried,
            }) else {
                self.stats()
                    .upstream_cx_none_healthy
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::NoHealthyUpstream(self.name().to_string()));
            };
            match self.connect_host(&host).await {
                Ok(conn) => return Ok(conn),
                Err(e @ ConnectError::Overflow(_)) => return Err(e),
                Err(e) => {
                    last = Some(e);
                    tried.push(host);
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::NoHealthyUpstream(self.name().to_string())))
    }
}

impl AsyncRead for UpstreamConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
