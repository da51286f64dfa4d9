//! [`FaultRelay`]s run as a service of their own (the `fault-relay` binary, the container tier's
//! relay image): a [`RelaySet`] of links given as `LISTEN=TARGET`, each named by its listen port,
//! and a small HTTP/1.0 control port to change their faults from outside:
//!
//! - `GET /ready`: `200 ready` (the image's health check).
//! - `GET /links`: one line per link, `PORT TARGET FAULT accepted=N active=N bytes=N`.
//! - `PUT /links/PORT` with a [`Fault`] in its text form as the body (`pass`, `blackhole`,
//!   `reset`, `degrade latency=300ms jitter=20ms loss=5 rate=100000`): `200 PORT FAULT`; `404`
//!   for a port that is no link, `400` for a body that is no fault.
//!
//! [`set_fault`] is the client of `PUT /links/PORT`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::relay::{Fault, FaultRelay};

/// The control port's default (the image's health check asks it).
pub const DEFAULT_CONTROL_PORT: u16 = 9900;

/// The longest request head or body the control port reads.
const MAX_REQUEST: usize = 8 * 1024;

/// How long a control connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One link: where it listens and where it forwards (`HOST:PORT`, resolved when it starts).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    pub listen: SocketAddr,
    pub target: String,
}

impl std::str::FromStr for LinkSpec {
    type Err = anyhow::Error;

    /// `LISTEN=TARGET`: LISTEN is `IP:PORT` or a port (on every interface), TARGET `HOST:PORT`.
    fn from_str(text: &str) -> anyhow::Result<LinkSpec> {
        let (listen, target) = text
            .split_once('=')
            .with_context(|| format!("link {text:?}: expected LISTEN=TARGET"))?;
        let listen = match listen.parse::<u16>() {
            Ok(port) => SocketAddr::from(([0, 0, 0, 0], port)),
            Err(_) => listen.parse().with_context(|| {
                format!("link {text:?}: listen {listen:?} is neither IP:PORT nor a port")
            })?,
        };
        let port_ok = target
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        anyhow::ensure!(port_ok, "link {text:?}: target {target:?} is not HOST:PORT");
        Ok(LinkSpec {
            listen,
            target: target.to_string(),
        })
    }
}

/// Running links by listen port.
#[derive(Debug)]
pub struct RelaySet {
    links: BTreeMap<u16, FaultRelay>,
}

impl RelaySet {
    /// Starts every link; a target given by name is looked up until it resolves or `resolve_for`
    /// has passed (a container's peers may start after it). Link `i` draws from `seed ^ i`.
    pub async fn start(
        specs: &[LinkSpec],
        seed: u64,
        resolve_for: Duration,
    ) -> anyhow::Result<RelaySet> {
        let mut links = BTreeMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let port = spec.listen.port();
            anyhow::ensure!(port != 0, "link to {}: listen on a fixed port", spec.target);
            anyhow::ensure!(
                !links.contains_key(&port),
                "port {port} is given to two links"
            );
            let target = resolve(&spec.target, resolve_for).await?;
            let listener = TcpListener::bind(spec.listen)
                .await
                .with_context(|| format!("link to {}: binding {}", spec.target, spec.listen))?;
            links.insert(
                port,
                FaultRelay::serve(listener, target, seed ^ (i as u64 + 1)),
            );
        }
        Ok(RelaySet { links })
    }

    /// The link listening on `port`.
    pub fn link(&self, port: u16) -> Option<&FaultRelay> {
        self.links.get(&port)
    }

    /// `PORT TARGET FAULT accepted=N active=N bytes=N`, one line per link.
    pub fn describe(&self) -> String {
        self.links
            .iter()
            .map(|(port, r)| {
                format!(
                    "{port} {} {} accepted={} active={} bytes={}\n",
                    r.target(),
                    r.fault(),
                    r.accepted(),
                    r.active(),
                    r.bytes()
                )
            })
            .collect()
    }
}

async fn resolve(target: &str, resolve_for: Duration) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = target.parse() {
        return Ok(addr);
    }
    let deadline = Instant::now() + resolve_for;
    loop {
        match tokio::net::lookup_host(target).await {
            Ok(mut addrs) => {
                if let Some(addr) = addrs.next() {
                    return Ok(addr);
                }
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!("target {target} not resolved within {resolve_for:?}")
                });
            }
            Err(_) => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "target {target} has no address within {resolve_for:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Answers control requests on `listener` until the task is dropped.
pub async fn serve_control(listener: TcpListener, set: Arc<RelaySet>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let set = set.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &set)).await;
        });
    }
}

/// A request: method, path and body.
struct Request {
    method: String,
    path: String,
    body: String,
}

async fn read_request(stream: &mut TcpStream) -> anyhow::Result<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        anyhow::ensure!(
            buf.len() <= MAX_REQUEST,
            "request head over {MAX_REQUEST} bytes"
        );
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the end of the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split_whitespace();
    let (method, path) = match (start.next(), start.next()) {
        (Some(m), Some(p)) => (m.to_string(), p.to_string()),
        _ => anyhow::bail!("bad request line"),
    };
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .transpose()
        .context("bad Content-Length")?
        .unwrap_or(0);
    anyhow::ensure!(length <= MAX_REQUEST, "body over {MAX_REQUEST} bytes");
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the end of the body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Request {
        method,
        path,
        body: String::from_utf8(body).context("body is not UTF-8")?,
    })
}

async fn answer(mut stream: TcpStream, set: &RelaySet) {
    let (status, text) = match read_request(&mut stream).await {
        Err(e) => (400, format!("{e:#}\n")),
        Ok(r) => route(&r, set),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let response = format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(r: &Request, set: &RelaySet) -> (u16, String) {
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/ready") => (200, "ready\n".into()),
        ("GET", "/links") => (200, set.describe()),
        (method, path) if path.starts_with("/links/") => {
            if method != "PUT" {
                return (405, format!("{method} {path}: use PUT\n"));
            }
            let port = &path["/links/".len()..];
            let Some(link) = port.parse::<u16>().ok().and_then(|p| set.link(p)) else {
                return (404, format!("no link listens on port {port:?}\n"));
            };
            match r.body.trim().parse::<Fault>() {
                Ok(fault) => {
                    link.set(fault.clone());
                    (200, format!("{port} {fault}\n"))
                }
                Err(e) => (400, format!("{e:#}\n")),
            }
        }
        (_, path) => (404, format!("no {path} (try /ready, /links)\n")),
    }
}

/// Sets link `port`'s fault through the control port at `control` (`HOST:PORT`).
pub async fn set_fault(control: &str, port: u16, fault: &Fault) -> anyhow::Result<()> {
    let body = fault.to_string();
    let exchange = async {
        let mut stream = TcpStream::connect(control).await?;
        let request = format!(
            "PUT /links/{port} HTTP/1.0\r\nHost: {control}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| format!("fault relay {control}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("fault relay {control}"))?;
    let status = response.split_whitespace().nth(1).unwrap_or_default();
    anyhow::ensure!(
        status == "200",
        "fault relay {control}: setting link {port} to {body}: {}",
        response
            .split_once("\r\n\r\n")
            .map_or(response.as_str(), |(_, b)| b)
            .trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::tests::echo;
    use crate::relay::Degradation;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn link_specs_parse_and_bad_ones_are_named() {
        let spec: LinkSpec = "5701=10.0.0.11:5683".parse().unwrap();
        assert_eq!(spec.listen, "0.0.0.0:5701".parse().unwrap());
        assert_eq!(spec.target, "10.0.0.11:5683");
        let spec: LinkSpec = "127.0.0.1:7=global-1:5683".parse().unwrap();
        assert_eq!(spec.listen, "127.0.0.1:7".parse().unwrap());
        for bad in ["5701", "x=a:1", "5701=a", "5701=:1", "5701=a:port"] {
            let error = bad.parse::<LinkSpec>().unwrap_err().to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn the_control_port_sets_a_links_fault() {
        let port = free_port();
        let spec = LinkSpec {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            target: echo().await.to_string(),
        };
        let set = Arc::new(RelaySet::start(&[spec], 1, Duration::ZERO).await.unwrap());
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control_addr = control.local_addr().unwrap().to_string();
        let server = tokio::spawn(serve_control(control, set.clone()));

        let slow = Fault::Degrade(Degradation {
            latency: Duration::from_millis(300),
            loss_percent: 5.0,
            ..Degradation::default()
        });
        set_fault(&control_addr, port, &slow).await.unwrap();
        assert_eq!(set.link(port).unwrap().fault(), slow);
        set_fault(&control_addr, port, &Fault::Pass).await.unwrap();
        assert_eq!(set.link(port).unwrap().fault(), Fault::Pass);
        assert!(set.describe().starts_with(&format!("{port} ")));

        let error = set_fault(&control_addr, port + 1, &Fault::Blackhole)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("no link listens on port"), "{error}");
        server.abort();
    }
}
