//! `fault-relay [--control ADDR] [--seed N] LISTEN=TARGET...`: runs a `FaultRelay` per link and
//! takes fault commands on the control port (default `0.0.0.0:9900`; see
//! `test_support::relay_control` for the protocol). The container tier's relay image runs it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use test_support::relay_control::{serve_control, LinkSpec, RelaySet, DEFAULT_CONTROL_PORT};

const USAGE: &str = "usage: fault-relay [--control IP:PORT] [--seed N] LISTEN=TARGET...";

/// How long a target named by host name may take to resolve (its container may start later).
const RESOLVE_FOR: Duration = Duration::from_secs(120);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut control = SocketAddr::from(([0, 0, 0, 0], DEFAULT_CONTROL_PORT));
    let mut seed: u64 = rand::random();
    let mut specs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--control" => {
                let value = args.next().context(USAGE)?;
                control = value
                    .parse()
                    .with_context(|| format!("--control {value:?}: expected IP:PORT"))?;
            }
            "--seed" => {
                let value = args.next().context(USAGE)?;
                seed = value
                    .parse()
                    .with_context(|| format!("--seed {value:?}: expected a number"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            spec => specs.push(spec.parse::<LinkSpec>()?),
        }
    }
    anyhow::ensure!(!specs.is_empty(), "no link given\n{USAGE}");
    let set = Arc::new(RelaySet::start(&specs, seed, RESOLVE_FOR).await?);
    let listener = tokio::net::TcpListener::bind(control)
        .await
        .with_context(|| format!("binding the control port {control}"))?;
    eprintln!(
        "fault-relay: seed {seed}, control on {control}\n{}",
        set.describe().trim_end()
    );
    tokio::select! {
        () = serve_control(listener, set) => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        () = terminated() => Ok(()),
    }
}

/// SIGTERM (`docker stop`).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
