use anyhow::Context;
use clap::Parser;
use demo_app::cli::{Cli, Command};
use demo_app::Report;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("--listen {}: cannot listen", args.listen))?;
            // Supervisors and tests read the bound address (port 0 picks one) from this line.
            println!("listening on {}", listener.local_addr()?);
            demo_app::serve(listener, args.server_config(), shutdown_signal()).await?;
        }
        Command::Call(args) => {
            let print = |report: &Report| {
                if args.json {
                    println!("{}", report.to_json_line());
                } else {
                    println!("{}", report.to_text().trim_end());
                }
            };
            let report = demo_app::call(args.call_config(), shutdown_signal(), print).await?;
            print(&report);
        }
    }
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
