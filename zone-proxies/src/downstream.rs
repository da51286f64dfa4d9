//! The downstream side: one accepted connection from its first byte to its handler. The
//! listener's TLS inspector reads the ClientHello's SNI ([`sni`]), the first matching filter
//! chain takes the connection, TLS is terminated when the chain says so (the client certificate
//! verified against the mesh CA and the chain's SAN matchers, the peer's SPIFFE identity kept),
//! network [`rbac`] decides on that identity (deny: the connection is closed), and the chain's
//! handler runs: a TCP proxy ([`tcp`]; SNI passthrough is a TCP proxy on a chain without TLS)
//! or the HTTP connection manager ([`crate::http`]).

pub mod rbac;
pub mod sni;
pub mod tcp;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::dataplane::DrainState;
use crate::matcher::host_pattern_matches;
use crate::runtime::{ChainRuntime, Handler, Runtime};
use crate::stats::ListenerStats;
use crate::tls::PeerIdentity;

use self::rbac::Verdict;
use self::sni::{read_client_hello, Hello};

/// A byte stream a handler can run on (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// How long a client has to send its ClientHello (Envoy's listener filter timeout).
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// What is known about a downstream connection once its chain is chosen.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub listener: Arc<str>,
    /// The filter chain that took the connection.
    pub chain: Arc<str>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub sni: Option<String>,
    /// Verified client identity when this proxy terminated mTLS.
    pub identity: PeerIdentity,
    pub tls_terminated: bool,
    /// ALPN chosen on the terminated TLS (`h2` makes HTTP start in HTTP/2).
    pub alpn: Option<Vec<u8>>,
}

/// A stream that first yields bytes already read from it (the ClientHello the inspector read).
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a connection as active on its listener while alive.
struct ActiveGuard(Arc<ListenerStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn choose_chain<'a>(
    chains: &'a [ChainRuntime],
    default: Option<&'a ChainRuntime>,
    sni: Option<&str>,
) -> Option<&'a ChainRuntime> {
    chains
        .iter()
        .find(|c| {
            c.server_names.is_empty()
                || sni.is_some_and(|name| {
                    c.server_names.iter().any(|p| host_pattern_matches(p, name))
                })
        })
        .or(default)
}

/// Serves one accepted connection of listener `name` until it ends (or the dataplane closes it).
pub async fn serve_connection(
    name: Arc<str>,
    mut stream: TcpStream,
    peer: SocketAddr,
    runtime: watch::Receiver<Arc<Runtime>>,
    drain: watch::Receiver<DrainState>,
) {
    let rt = runtime.borrow().clone();
    let Some(listener) = rt.listeners.get(&*name).cloned() else {
        return;
    };
    let stats = listener.stats.clone();
    stats.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
    stats.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(stats.clone());
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);

    let mut first = Vec::new();
    let sni = if listener.config.inspect_tls {
        match tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(&mut stream, &mut first)).await
        {
            Ok(Ok(Hello::Tls { sni })) => sni,
            Ok(Ok(Hello::NotTls)) => None,
            Ok(Err(_)) | Err(_) => return,
        }
    } else {
        None
    };
    let Some(chain) = choose_chain(
        &listener.chains,
        listener.default_chain.as_ref(),
        sni.as_deref(),
    ) else {
        stats.no_filter_chain_match.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(listener = %name, ?sni, %peer, "no filter chain matches");
        return;
    };
    // Before the TLS handshake: a connection over the rate costs nothing more.
    if let Some(bucket) = &chain.connection_rate_limit {
        if !bucket.try_acquire() {
            stats.cx_rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %name, chain = %chain.name, %peer, "connection rate limited");
            return;
        }
    }
    let mut ctx = ConnContext {
        listener: name.clone(),
        chain: chain.name.as_str().into(),
        peer,
        local,
        sni,
        identity: PeerIdentity::default(),
        tls_terminated: false,
        alpn: None,
    };
    let io: Box<dyn IoObj> = match &chain.tls {
        // Nothing read ahead (no TLS inspection): the socket itself, one layer fewer on every
        // read and write.
        None if first.is_empty() => Box::new(stream),
        None => Box::new(Prefixed::new(Bytes::from(first), stream)),
        Some(Err(reason)) => {
            tracing::warn!(listener = %name, chain = %chain.name, %reason, "TLS context unavailable; closing");
            return;
        }
        Some(Ok(tls)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
            let stream = Prefixed::new(Bytes::from(first), stream);
            let tls_stream = match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    stats.tls_handshake_error.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(listener = %name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    stats.tls_handshake_error.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let session = tls_stream.get_ref().1;
            ctx.identity = PeerIdentity::from_certificates(session.peer_certificates());
            ctx.alpn = session.alpn_protocol().map(|p| p.to_vec());
            ctx.tls_terminated = true;
            if !tls.match_san.is_empty()
                && !ctx
                    .identity
                    .uri_sans
                    .iter()
                    .any(|san| tls.match_san.iter().any(|m| m.matches(san)))
            {
                stats.tls_handshake_error.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %name, %peer, identity = ?ctx.identity, "client certificate SAN not accepted");
                return;
            }
            Box::new(tls_stream)
        }
    };
    if let Some(rbac) = &chain.rbac {
        if let Verdict::Denied { policy } = rbac.check(&ctx.identity) {
            stats.rbac_denied.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %name, %peer, identity = ?ctx.identity.spiffe_id(), ?policy, "RBAC denied the connection");
            return;
        }
    }
    match &chain.handler {
        Handler::Tcp(tcp) => tcp::proxy(io, &ctx, tcp, &rt).await,
        Handler::Http(http) => {
            crate::http::serve(io, Arc::new(ctx), http.clone(), runtime, drain).await
        }
    }
}

/// [`Io`] as a trait object.
pub trait IoObj: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> IoObj for T {}
