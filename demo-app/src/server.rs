//! The demo service. Every answer but `/health` and bad input carries the instance's identity as
//! JSON, including the 503s, so a client can tell which instance failed as well as which
//! answered.
//!
//! - `GET /`: 200 with `{"service", "zone", "instance", "version"?}`.
//! - `GET /health`: 200, never failed on purpose (health checks see the process, not the faults).
//! - `GET /status/{code}`: answers `code` (200 to 599).
//! - `GET /delay/{ms}`: waits `ms` milliseconds (at most `MAX_DELAY`), then answers 200.
//! - `fail_percent`: that share of requests (all paths but `/health`) answer 503 at once.
//!
//! Connections speak HTTP/1.1 or HTTP/2 (prior knowledge), as a sidecar may use either.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The longest wait `/delay/{ms}` accepts, so a typo cannot pin a connection for hours.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// Who an instance is: the body of `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub service: String,
    pub zone: String,
    pub instance: String,
    /// Set for route-split demos (`v1`, `v2`); absent from the JSON when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What `serve` needs besides its listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub identity: Identity,
    /// Percentage (0 to 100) of requests answered 503 on purpose.
    pub fail_percent: u8,
    /// After shutdown, how long in-flight requests get to finish before connections are dropped.
    pub drain_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("fail percent {0} is out of range: it must be 0 to 100")]
    FailPercent(u8),
    #[error("identity.{field} is empty")]
    EmptyIdentity { field: &'static str },
    #[error("the identity cannot be encoded as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The state every request reads: the identity pre-encoded once, and the failure share.
struct App {
    identity_json: Bytes,
    fail_percent: u8,
}

/// Serves `listener` until `shutdown` completes, then stops accepting and lets in-flight requests
/// finish (idle keep-alive connections close at once) for at most `config.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let app = Arc::new(App::new(&config)?);
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        // Per-connection failures (a peer that reset before accept) and
                        // resource exhaustion (EMFILE) are not the listener's end: note, pause
                        // briefly so exhaustion does not spin, and go on.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(app.answer(request).await) }
                });
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout = ?config.drain_timeout,
            "requests still in flight after the drain timeout; dropping them"
        );
    }
    Ok(())
}

impl App {
    fn new(config: &ServerConfig) -> Result<App, ServeError> {
        if config.fail_percent > 100 {
            return Err(ServeError::FailPercent(config.fail_percent));
        }
        let identity = &config.identity;
        for (field, value) in [
            ("service", &identity.service),
            ("zone", &identity.zone),
            ("instance", &identity.instance),
        ] {
            if value.is_empty() {
                return Err(ServeError::EmptyIdentity { field });
            }
        }
        Ok(App {
            identity_json: Bytes::from(serde_json::to_vec(identity)?),
            fail_percent: config.fail_percent,
        })
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path == "/health" {
            return plain(StatusCode::OK, "ok\n".into());
        }
        if self.fail_percent > 0 && rand::thread_rng().gen_range(0..100u8) < self.fail_percent {
            return self.identity(StatusCode::SERVICE_UNAVAILABLE);
        }
        if path == "/" {
            return self.identity(StatusCode::OK);
        }
        if let Some(code) = path.strip_prefix("/status/") {
            return match parse_status(code) {
                Ok(status) => self.identity(status),
                Err(message) => plain(StatusCode::BAD_REQUEST, message),
            };
        }
        if let Some(millis) = path.strip_prefix("/delay/") {
            return match parse_delay(millis) {
                Ok(delay) => {
                    tokio::time::sleep(delay).await;
                    self.identity(StatusCode::OK)
                }
                Err(message) => plain(StatusCode::BAD_REQUEST, message),
            };
        }
        plain(
            StatusCode::NOT_FOUND,
            format!("{path}: not found; try /, /health, /status/{{code}} or /delay/{{ms}}\n"),
        )
    }

    /// The identity with `status`; statuses that forbid a body (204, 304) get none.
    fn identity(&self, status: StatusCode) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
            *response.body_mut() = Full::new(self.identity_json.clone());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
        }
        response
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The `{code}` of `/status/{code}`: a final HTTP status, 200 to 599.
fn parse_status(code: &str) -> Result<StatusCode, String> {
    code.parse::<u16>()
        .ok()
        .filter(|n| (200..=599).contains(n))
        .and_then(|n| StatusCode::from_u16(n).ok())
        .ok_or_else(|| format!("/status/{code}: {code:?} is not an HTTP status from 200 to 599\n"))
}

/// The `{ms}` of `/delay/{ms}`: whole milliseconds, at most `MAX_DELAY`.
fn parse_delay(millis: &str) -> Result<Duration, String> {
    millis
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
        .filter(|delay| *delay <= MAX_DELAY)
        .ok_or_else(|| {
            format!(
                "/delay/{millis}: {millis:?} is not a whole number of milliseconds from 0 to {}\n",
                MAX_DELAY.as_millis()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_outside_final_statuses_are_refused_with_the_path() {
        assert_eq!(parse_status("503"), Ok(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(parse_status("200"), Ok(StatusCode::OK));
        for bad in ["", "abc", "100", "199", "600", "-1", "70000"] {
            let message = parse_status(bad).unwrap_err();
            assert!(message.starts_with(&format!("/status/{bad}:")), "{message}");
        }
    }

    #[test]
    fn delays_are_whole_milliseconds_up_to_the_cap() {
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_delay("300000"), Ok(MAX_DELAY));
        for bad in ["", "1.5", "-3", "300001", "ten"] {
            let message = parse_delay(bad).unwrap_err();
            assert!(message.starts_with(&format!("/delay/{bad}:")), "{message}");
        }
    }

    #[test]
    fn identity_json_omits_an_unset_version() {
        let mut identity = Identity {
            service: "backend".into(),
            zone: "zone-2".into(),
            instance: "backend-1".into(),
            version: None,
        };
        assert_eq!(
            serde_json::to_string(&identity).unwrap(),
            r#"{"service":"backend","zone":"zone-2","instance":"backend-1"}"#
        );
        identity.version = Some("v2".into());
        assert_eq!(
            serde_json::to_string(&identity).unwrap(),
            r#"{"service":"backend","zone":"zone-2","instance":"backend-1","version":"v2"}"#
        );
    }

    #[test]
    fn bad_configuration_is_refused_naming_the_field() {
        let mut config = ServerConfig {
            identity: Identity {
                service: "backend".into(),
                zone: String::new(),
                instance: "b-1".into(),
                version: None,
            },
            fail_percent: 0,
            drain_timeout: Duration::from_secs(1),
        };
        let error = App::new(&config).err().unwrap();
        assert_eq!(error.to_string(), "identity.zone is empty");
        config.identity.zone = "zone-1".into();
        config.fail_percent = 101;
        let error = App::new(&config).err().unwrap();
        assert_eq!(
            error.to_string(),
            "fail percent 101 is out of range: it must be 0 to 100"
        );
    }
}
