use clap::Parser;
use control_plane::process;
use zone_cp::{Config, ZoneListeners};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    process::init_tracing();
    let config = Config::parse();
    config.validate()?;
    let listeners = ZoneListeners::bind(&config).await?;
    let addresses = listeners.describe()?;
    tracing::info!(zone = %config.zone, %addresses, data_dir = %config.data_dir.display(), "zone control plane starting");
    let ready_file = config.ready_file.clone();
    let run = zone_cp::run(config, listeners, process::shutdown_signal());
    if let Some(path) = ready_file {
        process::write_ready_file(&path, &addresses)?;
    }
    run.await
}
