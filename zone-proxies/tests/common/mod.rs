//! Shared pieces of the data-path tests: upstream servers (TCP echo, HTTP naming itself) that
//! can be stopped and restarted on the same port, an HTTP client, and a throwaway PKI.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A server that stops (listener and connections) when dropped or stopped.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// A server run by `task`, listening on `addr`.
    pub fn new(addr: SocketAddr, task: JoinHandle<()>) -> Server {
        Server { addr, task }
    }

    /// Stops it and waits until its port refuses connections.
    pub async fn stop(self) {
        self.task.abort();
        let addr = self.addr;
        drop(self);
        test_support::eventually(
            "the server's port to close",
            Duration::from_secs(5),
            || async move { TcpStream::connect(addr).await.is_err().then_some(()) },
        )
        .await
        .unwrap();
    }
}

/// A TCP server echoing everything back.
pub async fn echo_server_on(addr: SocketAddr) -> Server {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            conns.spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Server { addr, task }
}

pub async fn echo_server() -> Server {
    echo_server_on("127.0.0.1:0".parse().unwrap()).await
}

/// An HTTP/1.1 + HTTP/2 server answering every request with its `name` and the status held in
/// the returned cell (200 to start with), after `delay`.
pub async fn http_server_on(
    addr: SocketAddr,
    name: &str,
    delay: Duration,
) -> (Server, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(200));
    let name: Arc<str> = name.into();
    let cell = status.clone();
    let server = serve_http(addr, move |req| {
        let (name, status) = (name.clone(), cell.clone());
        async move {
            let _ = req.into_body().collect().await;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut res = http::Response::new(Full::new(Bytes::from(name.to_string())));
            *res.status_mut() = http::StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap();
            res
        }
    })
    .await;
    (server, status)
}

/// An HTTP/1.1 and HTTP/2 server on `addr` answering every request with `handler`.
pub async fn serve_http<F, Fut, B>(addr: SocketAddr, handler: F) -> Server
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    Server { addr, task }
}

/// An HTTP/1.1 and HTTP/2 server answering its `name` to every request, except
/// `grpc.health.v1.Health/Check`, answered with the serving status held in the returned cell
/// (1 SERVING, 2 NOT_SERVING), `grpc-status: 0` in the trailers. The status is the same for
/// every `service` asked about.
pub async fn grpc_health_server(name: &str) -> (Server, Arc<AtomicU16>) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let serving = Arc::new(AtomicU16::new(1));
    let name: Arc<str> = name.into();
    let cell = serving.clone();
    let server = serve_http(localhost(), move |req| {
        let (name, serving) = (name.clone(), cell.clone());
        async move {
            let health = req.uri().path() == "/grpc.health.v1.Health/Check";
            let _ = req.into_body().collect().await;
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = if health {
                // HealthCheckResponse { status = 1 } in a gRPC frame.
                let status = serving.load(Ordering::Relaxed) as u8;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                vec![
                    Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 8, status]))),
                    Ok(Frame::trailers(trailers)),
                ]
            } else {
                vec![Ok(Frame::data(Bytes::from(name.to_string())))]
            };
            let mut res = http::Response::new(StreamBody::new(futures::stream::iter(frames)));
            if health {
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    "application/grpc".parse().unwrap(),
                );
            }
            res
        }
    })
    .await;
    (server, serving)
}

/// An HTTP server answering every request with the path and query it received.
pub async fn path_server() -> Server {
    serve_http("127.0.0.1:0".parse().unwrap(), |req| async move {
        let path = req.uri().path_and_query().map(|p| p.to_string());
        http::Response::new(Full::new(Bytes::from(path.unwrap_or_default())))
    })
    .await
}

pub async fn http_server(name: &str) -> (Server, Arc<AtomicU16>) {
    http_server_on("127.0.0.1:0".parse().unwrap(), name, Duration::ZERO).await
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `http://addr/path`: (status, body).
pub async fn get(
    client: &TestClient,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let uri: http::Uri = format!("http://{addr}{path}").parse()?;
    let res = tokio::time::timeout(Duration::from_secs(10), client.get(uri)).await??;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits (5 s at most) until a GET of `/` at `addr` is answered with `body`; panics naming
/// `what` otherwise.
pub async fn until_answered_by(client: &TestClient, addr: SocketAddr, body: &str, what: &str) {
    test_support::eventually(what, Duration::from_secs(5), || async {
        (get(client, addr, "/").await.ok()?.1 == body).then_some(())
    })
    .await
    .unwrap();
}

/// Sends `msg` on `stream` and reads the echo.
pub async fn echo(
    stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
    msg: &[u8],
) -> anyhow::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await??;
    Ok(buf)
}

/// Reads from `stream` until the end of an HTTP/1.1 request head (`\r\n\r\n`); false if the
/// peer closed or failed first. Bytes past the head are read and discarded.
pub async fn read_request_head(stream: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Whether the peer closed `stream` (EOF or reset) within 5 s.
pub async fn closed(stream: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A mesh CA issuing workload certificates with SPIFFE URI SANs.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(mesh: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, mesh);
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (chain PEM, key PEM) for `spiffe://<mesh>/<service>`.
    pub fn workload(&self, spiffe: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(spiffe.try_into().unwrap())];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn identity_secret(&self, spiffe: &str) -> zone_proxies::config::Secret {
        let (chain_pem, key_pem) = self.workload(spiffe);
        zone_proxies::config::Secret::Certificate { chain_pem, key_pem }
    }

    pub fn ca_secret(&self) -> zone_proxies::config::Secret {
        zone_proxies::config::Secret::TrustedCa {
            ca_pem: self.ca_pem.clone(),
        }
    }
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The value of one sample (`name{labels}`) in Prometheus text; 0 when absent.
pub fn stat(text: &str, sample: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}
