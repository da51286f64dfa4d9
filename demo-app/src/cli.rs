//! The command line: `demo-app serve` and `demo-app call`, every flag also read from a
//! `DEMO_APP_*` variable so a supervisor can configure instances through the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use http::Uri;

use crate::client::CallConfig;
use crate::server::{Identity, ServerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "demo-app",
    about = "Meridian's demo service, and an open-loop client that calls it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve `/` (who this instance is), `/health`, `/status/{code}` and `/delay/{ms}`.
    Serve(ServeArgs),
    /// Call a URL at a fixed rate and report outcomes, latency and which zones answered.
    Call(CallArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (the bound address is printed).
    #[arg(long, env = "DEMO_APP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Service name reported in every answer.
    #[arg(long, env = "DEMO_APP_SERVICE")]
    pub service: String,
    /// Zone reported in every answer.
    #[arg(long, env = "DEMO_APP_ZONE")]
    pub zone: String,
    /// Instance id reported in every answer (default: `<service>-<process id>`).
    #[arg(long, env = "DEMO_APP_INSTANCE")]
    pub instance: Option<String>,
    /// Version reported in every answer, for route-split demos (`v1`, `v2`).
    #[arg(long, env = "DEMO_APP_VERSION")]
    pub version: Option<String>,
    /// Percentage of requests (all paths but /health) answered 503 on purpose.
    #[arg(
        long,
        env = "DEMO_APP_FAIL_PERCENT",
        default_value_t = 0,
        value_parser = clap::value_parser!(u8).range(0..=100)
    )]
    pub fail_percent: u8,
    /// On SIGTERM, how long in-flight requests get to finish: `500ms`, `5s`.
    #[arg(long, env = "DEMO_APP_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// URL to GET, `http://host:port/path`.
    #[arg(long, env = "DEMO_APP_TARGET")]
    pub target: Uri,
    /// Requests per second (open loop: sent on schedule whatever the answers do).
    #[arg(long, env = "DEMO_APP_RATE")]
    pub rate: f64,
    /// How long to send: `10s`, `2m`.
    #[arg(long, env = "DEMO_APP_DURATION", value_parser = parse_duration)]
    pub duration: Duration,
    /// Most requests in flight; a request due beyond it is counted as not sent.
    #[arg(long, env = "DEMO_APP_CONCURRENCY", default_value_t = 100)]
    pub concurrency: usize,
    /// Longest wait for a complete answer, connecting included: `500ms`, `2s`.
    #[arg(long, env = "DEMO_APP_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print a report for each period this long (`1s`), besides the final one.
    #[arg(long, env = "DEMO_APP_REPORT_EVERY", value_parser = parse_duration)]
    pub report_every: Option<Duration>,
    /// Print reports as JSON, one object per line (the last has `"kind": "final"`).
    #[arg(long, env = "DEMO_APP_JSON")]
    pub json: bool,
}

impl ServeArgs {
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            identity: Identity {
                service: self.service.clone(),
                zone: self.zone.clone(),
                instance: self
                    .instance
                    .clone()
                    .unwrap_or_else(|| format!("{}-{}", self.service, std::process::id())),
                version: self.version.clone(),
            },
            fail_percent: self.fail_percent,
            drain_timeout: self.drain_timeout,
        }
    }
}

impl CallArgs {
    pub fn call_config(&self) -> CallConfig {
        CallConfig {
            target: self.target.clone(),
            rate: self.rate,
            duration: self.duration,
            concurrency: self.concurrency,
            timeout: self.timeout,
            report_every: self.report_every,
        }
    }
}

/// A duration as Meridian's other flags write them (`<n><unit>`: `ms`, `s`, `m`, `h`, ...).
fn parse_duration(text: &str) -> Result<Duration, String> {
    mesh_api::core::common::parse_kuma_duration(text.trim())
        .ok_or_else(|| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_flags_fill_the_identity() {
        let cli = Cli::try_parse_from([
            "demo-app",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--service",
            "backend",
            "--zone",
            "zone-2",
            "--version",
            "v2",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve")
        };
        let config = args.server_config();
        assert_eq!(config.identity.zone, "zone-2");
        assert_eq!(config.identity.version.as_deref(), Some("v2"));
        assert_eq!(
            config.identity.instance,
            format!("backend-{}", std::process::id())
        );
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let error = Cli::try_parse_from([
            "demo-app",
            "serve",
            "--service",
            "b",
            "--zone",
            "z",
            "--fail-percent",
            "150",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("--fail-percent"), "{error}");
        let error = Cli::try_parse_from([
            "demo-app",
            "call",
            "--target",
            "http://127.0.0.1:1/",
            "--rate",
            "10",
            "--duration",
            "ten seconds",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("--duration"), "{error}");
        assert!(error.contains("is not a duration"), "{error}");
    }
}
