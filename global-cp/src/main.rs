use clap::Parser;
use control_plane::process;
use global_cp::{Config, GlobalListeners};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    process::init_tracing();
    let config = Config::parse();
    if let Some(global_cp::Command::RaftCerts { out, ids }) = &config.command {
        global_cp::cluster::ensure_certs(out, ids)?;
        println!("peer TLS material for nodes {ids:?} in {}", out.display());
        return Ok(());
    }
    if let Some(global_cp::Command::Restore {
        input,
        data_dir,
        node_id,
        peer_address,
    }) = &config.command
    {
        let restored = global_cp::cluster::restore(input, data_dir, *node_id, peer_address)?;
        println!(
            "restored {} resources (revision {}) from {} into {}: start `global-cp --data-dir {}` \
             (a one-node cluster, node {node_id})",
            restored.resources,
            restored.revision,
            input.display(),
            data_dir.display(),
            data_dir.display()
        );
        return Ok(());
    }
    let listeners = GlobalListeners::bind(&config).await?;
    let addresses = listeners.describe()?;
    tracing::info!(%addresses, data_dir = %config.data_dir.display(), "global control plane starting");
    global_cp::run(config, listeners, process::shutdown_signal()).await
}
