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
    let ready_file = config.ready_file.clone();
    let run = global_cp::run(config, listeners, process::shutdown_signal());
    // The ready file is written once the listeners are bound; the API answers from then on.
    if let Some(path) = ready_file {
        process::write_ready_file(&path, &addresses)?;
    }
    run.await
}
