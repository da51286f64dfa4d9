use clap::Parser;
use control_plane::process;
use global_cp::{Config, GlobalListeners};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    process::init_tracing();
    let config = Config::parse();
    let listeners = GlobalListeners::bind(&config).await?;
    let addresses = listeners.describe()?;
    tracing::info!(%addresses, data_dir = %config.data_dir.display(), "global control plane starting");
    global_cp::run(config, listeners, process::shutdown_signal()).await
}
