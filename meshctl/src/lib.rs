//! meshctl, Meridian's command-line interface: a kumactl-like client of the REST API served by
//! `global-cp` and `zone-cp` (`apply`, `get`, `delete`, `version`, `generate zone-token`,
//! `generate dataplane-token` (against a zone CP),
//! `inspect zones`, `inspect dataplane` (against a zone CP)), plus `meshctl up`, which runs a whole local federation (one global, N zones
//! connected to it over KDS) as child processes. `generate compose` writes a docker-compose federation
//! ([`generate`]), `install control-plane` prints Kubernetes manifests ([`install`]), `export`
//! writes the global's resources for a restore ([`export`]). `main.rs` only parses the command line and calls
//! [`run`].

pub mod apply;
pub mod client;
pub mod config;
pub mod endpoints;
pub mod export;
mod fsutil;
pub mod generate;
pub mod inspect;
pub mod install;
pub mod members;
pub mod output;
pub mod process;
pub mod types;
pub mod up;
mod yaml_value;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use mesh_api::{Scope, DEFAULT_MESH};

use crate::client::ApiClient;
use crate::config::Settings;

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Manage a Meridian service mesh.")]
pub struct Cli {
    /// URL of the control plane's REST API [default from --config, else http://127.0.0.1:5681].
    #[arg(long, global = true, env = "MESHCTL_API_URL")]
    pub api_url: Option<String>,
    /// Admin token sent as `Authorization: Bearer` (writes and config dumps need it).
    #[arg(long, global = true, env = "MESHCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// YAML config file with `apiUrl` and `token` (as `meshctl up` writes it).
    #[arg(long, global = true, env = "MESHCTL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from YAML (universal or Kubernetes form).
    Apply(ApplyArgs),
    /// Show resources of a type, or one resource.
    Get(GetArgs),
    /// Delete a resource.
    Delete(DeleteArgs),
    /// Print the client's version and the server's, when reachable.
    Version,
    /// Generate credentials (on the global control plane).
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Show the state of the federation (zones, from the global control plane) or of a
    /// dataplane (its Envoy configuration, policies and xDS status, from its zone control plane).
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Run a local federation: one global-cp (or a Raft cluster of them) and N zone-cp, until
    /// Ctrl-C.
    Up(up::UpArgs),
    /// The global control plane's cluster (point `--api-url` at any global node).
    #[command(subcommand)]
    Global(GlobalCommand),
    /// Write every resource the global owns (meshes, secrets, policies, zones) as YAML that
    /// `meshctl apply -f` restores into a fresh global. Needs the admin token (secrets).
    Export(ExportArgs),
    /// Print Kubernetes manifests (for `kubectl apply -f -`).
    #[command(subcommand)]
    Install(InstallCommand),
}

/// What `install` prints.
#[derive(Debug, Subcommand)]
pub enum InstallCommand {
    /// A global control plane (a Raft StatefulSet) or a zone control plane.
    ControlPlane(install::ControlPlaneArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Write to this file (mode 0600: it holds secrets) instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// What `global` manages.
#[derive(Debug, Subcommand)]
pub enum GlobalCommand {
    /// The global's Raft members: list (the default), add or remove. Needs the admin token.
    Members(MembersArgs),
    /// Save a consistent backup of the global's replicated state (every resource) to a file,
    /// from any node (`GET /global/backup`). Needs the admin token.
    Backup {
        /// Where to write the backup (JSON); `-` for standard output.
        #[arg(long)]
        output: PathBuf,
    },
    /// Seed a new global node's data dir from a backup, offline (runs `global-cp restore`):
    /// `global-cp --data-dir DIR` then starts as a one-node cluster holding that state.
    Restore {
        /// The backup file.
        #[arg(long)]
        input: PathBuf,
        /// The new node's data dir (must hold no Raft state).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id.
        #[arg(long, default_value_t = 1)]
        node_id: u64,
        /// The new node's peer address, as members added later will dial it.
        #[arg(long, default_value = "127.0.0.1:5683")]
        peer_address: String,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MembersArgs {
    #[command(subcommand)]
    pub command: Option<MembersCommand>,
    /// Output format of the list.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Each member's id, peer address and suffrage, and which one leads.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Add a node (started with `global-cp --join` and a peer certificate from the cluster's
    /// CA): a learner until it has caught up, then a voter.
    Add {
        /// The new node's id (`global-cp --node-id`).
        #[arg(long)]
        id: u64,
        /// Its peer (Raft) listener, `host:port`.
        #[arg(long)]
        address: String,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// File with one or more YAML documents, or `-` for standard input.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Check the documents and print them as YAML without contacting the server.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `generate` makes.
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Issue the token a zone control plane presents to the global's KDS (`zone-cp
    /// --zone-token-file`); printed alone on standard output. Needs the admin token.
    ZoneToken(ZoneTokenArgs),
    /// Issue the token a proxy presents on its ADS stream to a zone control plane (point
    /// `--api-url` at the zone CP); printed alone on standard output. Needs the admin token.
    DataplaneToken(DataplaneTokenArgs),
    /// Write a docker-compose project for a federation (global, N zones, ingresses, egresses and
    /// the demo), with its tokens and TLS material under `DIR/secrets` (runs the federation once
    /// locally to make them).
    Compose(generate::ComposeArgs),
}

#[derive(Debug, clap::Args)]
pub struct DataplaneTokenArgs {
    /// The Dataplane's mesh (not for an ingress or egress, which serve every mesh).
    #[arg(long, default_value = "")]
    pub mesh: String,
    /// The Dataplane's (or ZoneIngress's, ZoneEgress's) name.
    #[arg(long)]
    pub name: String,
    /// What the proxy runs as: a service's sidecar, or the zone's ingress or egress.
    #[arg(long, value_parser = ["dataplane", "ingress", "egress"], default_value = "dataplane")]
    pub proxy_type: String,
    /// How long the token is valid, as a duration (`30m`, `24h`, `8760h`).
    #[arg(long, default_value = "24h")]
    pub valid_for: String,
}

#[derive(Debug, clap::Args)]
pub struct ZoneTokenArgs {
    /// Name of the zone the token is bound to.
    #[arg(long)]
    pub zone: String,
    /// How long the token is valid, as a duration (`30m`, `24h`, `8760h`).
    #[arg(long, default_value = "24h")]
    pub valid_for: String,
}

/// What `inspect` shows.
#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Each zone's KDS connection as the global sees it: status, last connection, updates.
    Zones(InspectZonesArgs),
    /// One dataplane as its zone control plane sees it (point `--api-url` at the zone CP): its
    /// Envoy configuration (JSON; needs the admin token), the policies that apply to it (JSON),
    /// or its xDS insight (online, ACKed versions, last NACK).
    Dataplane(InspectDataplaneArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectDataplaneArgs {
    /// The Dataplane's name.
    pub name: String,
    /// The Dataplane's mesh.
    #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
    pub mesh: String,
    /// What to show.
    #[arg(long = "type", value_enum, default_value_t = DataplaneView::ConfigDump)]
    pub view: DataplaneView,
}

/// What `inspect dataplane` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataplaneView {
    /// The Envoy configuration (`GET .../dataplanes/NAME/xds`), as JSON.
    ConfigDump,
    /// The policies that apply and their merged configuration (`.../_policies`), as JSON.
    Policies,
    /// Online or not, and per xDS type the last ACKed version and NACK (`dataplanes+insights`).
    Insight,
}

#[derive(Debug, clap::Args)]
pub struct InspectZonesArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Output formats of `get` and `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Resource type: plural (`meshtrafficpermissions`), singular, or Kind.
    pub rtype: String,
    /// Name of one resource; all of them when omitted.
    pub name: Option<String>,
    /// Mesh of mesh-scoped resources.
    #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
    pub mesh: String,
    /// List a mesh-scoped type across every mesh.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_meshes: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Resource type: plural, singular, or Kind.
    pub rtype: String,
    /// Name of the resource.
    pub name: String,
    /// Mesh of a mesh-scoped resource.
    #[arg(short = 'm', long, default_value = DEFAULT_MESH)]
    pub mesh: String,
}

/// Runs a parsed command line. Errors are for the caller to print; the exit code is 0 on success.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // One thread: `up` spawns its children from it (see `process::terminate_with_parent`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli))
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    Settings::load(
        cli.api_url.as_deref(),
        cli.token.as_deref(),
        cli.config.as_deref(),
    )
}

fn client(cli: &Cli) -> anyhow::Result<ApiClient> {
    let settings = settings(cli)?;
    ApiClient::new(&settings.api_url, settings.token)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Apply(args) if args.dry_run => apply::dry_run(&args.file)?,
        Command::Apply(args) => apply::apply(&client(&cli)?, &args.file).await?,
        Command::Get(args) => get(&client(&cli)?, args).await?,
        Command::Delete(args) => delete(&client(&cli)?, args).await?,
        Command::Version => version(&cli).await,
        Command::Generate(GenerateCommand::ZoneToken(args)) => {
            zone_token(&client(&cli)?, args).await?
        }
        Command::Generate(GenerateCommand::DataplaneToken(args)) => {
            if args.proxy_type == "dataplane" && args.mesh.is_empty() {
                anyhow::bail!("generate dataplane-token: --mesh is required for a dataplane (only an ingress or egress serves every mesh)");
            }
            let client = client(&cli)?;
            let token = client
                .generate_dataplane_token(&args.proxy_type, &args.mesh, &args.name, &args.valid_for)
                .await
                .with_context(|| {
                    format!(
                        "cannot generate a token for {} {}{} on the zone CP at {}",
                        args.proxy_type,
                        if args.mesh.is_empty() {
                            String::new()
                        } else {
                            format!("{}/", args.mesh)
                        },
                        args.name,
                        client.base()
                    )
                })?;
            println!("{token}");
        }
        Command::Generate(GenerateCommand::Compose(args)) => generate::run(args).await?,
        Command::Inspect(InspectCommand::Zones(args)) => {
            inspect_zones(&client(&cli)?, args).await?
        }
        Command::Inspect(InspectCommand::Dataplane(args)) => {
            inspect_dataplane(&client(&cli)?, args).await?
        }
        Command::Up(args) => return up::run(args).await,
        Command::Export(args) => export(&client(&cli)?, args).await?,
        Command::Install(InstallCommand::ControlPlane(args)) => {
            print!("{}", install::manifests(args)?)
        }
        Command::Global(GlobalCommand::Members(args)) => {
            let client = client(&cli)?;
            match &args.command {
                None => members::list(&client, args.output).await?,
                Some(MembersCommand::List { output }) => members::list(&client, *output).await?,
                Some(MembersCommand::Add { id, address }) => {
                    members::add(&client, *id, address).await?
                }
                Some(MembersCommand::Remove { id }) => members::remove(&client, *id).await?,
            }
        }
        Command::Global(GlobalCommand::Backup { output }) => {
            members::backup(&client(&cli)?, output).await?
        }
        Command::Global(GlobalCommand::Restore {
            input,
            data_dir,
            node_id,
            peer_address,
        }) => members::restore(input, data_dir, *node_id, peer_address)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(client: &ApiClient, args: &GetArgs) -> anyhow::Result<()> {
    let rtype = types::resolve_type(&args.rtype)?;
    let mesh = types::scoped_mesh(rtype, &args.mesh);
    let now = chrono::Utc::now();
    match &args.name {
        Some(name) => {
            let item = client
                .get(&types::resource_segments(rtype, mesh, name))
                .await
                .with_context(|| format!("cannot get {}", types::describe(rtype, mesh, name)))?;
            match args.output {
                OutputFormat::Table => {
                    print!("{}", output::render_table(rtype, &[item], now))
                }
                OutputFormat::Json => print!("{}", output::to_json(&item)),
                OutputFormat::Yaml => print!("{}", output::to_yaml(&item)),
            }
        }
        None => {
            let mesh = if args.all_meshes { None } else { mesh };
            let what = match (rtype.scope(), mesh) {
                (Scope::Mesh, Some(mesh)) => format!("{} in mesh {mesh}", rtype.plural()),
                _ => rtype.plural().to_owned(),
            };
            let (total, items) = client
                .list_all(&types::collection_segments(rtype, mesh))
                .await
                .with_context(|| format!("cannot list {what}"))?;
            match args.output {
                OutputFormat::Table => print!("{}", output::render_table(rtype, &items, now)),
                OutputFormat::Json => {
                    print!("{}", output::to_json(&output::list_document(total, items)))
                }
                OutputFormat::Yaml => {
                    print!("{}", output::to_yaml(&output::list_document(total, items)))
                }
            }
        }
    }
    Ok(())
}

async fn export(client: &ApiClient, args: &ExportArgs) -> anyhow::Result<()> {
    let (text, count) = export::export(client).await?;
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            fsutil::write_atomic(path, text.as_bytes(), Some(0o600))?;
            eprintln!("exported {count} resource(s) to {}", path.display());
        }
    }
    Ok(())
}

async fn zone_token(client: &ApiClient, args: &ZoneTokenArgs) -> anyhow::Result<()> {
    let token = client
        .generate_zone_token(&args.zone, &args.valid_for)
        .await
        .with_context(|| {
            format!(
                "cannot generate a token for zone {:?} on the global at {}",
                args.zone,
                client.base()
            )
        })?;
    println!("{token}");
    Ok(())
}

async fn inspect_zones(client: &ApiClient, args: &InspectZonesArgs) -> anyhow::Result<()> {
    let (total, items) = client
        .zones_overview()
        .await
        .with_context(|| format!("cannot list the zones of the global at {}", client.base()))?;
    match args.output {
        OutputFormat::Table => {
            let zones = inspect::ZoneOverview::from_items(&items).with_context(|| {
                format!(
                    "unexpected zone overview from the global at {}",
                    client.base()
                )
            })?;
            print!(
                "{}",
                inspect::render_zones_table(&zones, chrono::Utc::now())
            );
        }
        OutputFormat::Json => print!("{}", output::to_json(&output::list_document(total, items))),
        OutputFormat::Yaml => print!("{}", output::to_yaml(&output::list_document(total, items))),
    }
    Ok(())
}

async fn inspect_dataplane(client: &ApiClient, args: &InspectDataplaneArgs) -> anyhow::Result<()> {
    let what = match args.view {
        DataplaneView::ConfigDump => "the Envoy configuration of",
        DataplaneView::Policies => "the policies of",
        DataplaneView::Insight => "the insight of",
    };
    let value = client
        .get(&inspect::dataplane_segments(
            args.view, &args.mesh, &args.name,
        ))
        .await
        .with_context(|| {
            format!(
                "cannot get {what} dataplane {} (mesh {}) from {}",
                args.name,
                args.mesh,
                client.base()
            )
        })?;
    match args.view {
        // As the API returns it: Envoy's field order (`@type` first), not `get`'s resource order.
        DataplaneView::ConfigDump | DataplaneView::Policies => {
            println!("{}", serde_json::to_string_pretty(&value)?)
        }
        DataplaneView::Insight => print!(
            "{}",
            inspect::render_dataplane_insight(&value, chrono::Utc::now()).with_context(|| {
                format!("unexpected dataplane insight from {}", client.base())
            })?
        ),
    }
    Ok(())
}

async fn delete(client: &ApiClient, args: &DeleteArgs) -> anyhow::Result<()> {
    let rtype = types::resolve_type(&args.rtype)?;
    let mesh = types::scoped_mesh(rtype, &args.mesh);
    client
        .delete(&types::resource_segments(rtype, mesh, &args.name))
        .await
        .with_context(|| format!("cannot delete {}", types::describe(rtype, mesh, &args.name)))?;
    println!("deleted {rtype} {}", args.name);
    Ok(())
}

async fn version(cli: &Cli) {
    println!("Client: meshctl {}", env!("CARGO_PKG_VERSION"));
    let server = async {
        let client = client(cli)?;
        let info = client.server_info().await?;
        anyhow::Ok((client.base().to_string(), info))
    };
    match server.await {
        Ok((url, info)) => {
            let field = |k: &str| {
                info.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned()
            };
            let zone = info
                .get("zone")
                .and_then(|v| v.as_str())
                .map(|z| format!(", zone {z}"))
                .unwrap_or_default();
            println!(
                "Server: {} {} (mode {}{zone}) at {url}",
                field("product"),
                field("version"),
                field("mode")
            );
        }
        Err(e) => println!("Server: not reachable ({e:#})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere_and_mesh_defaults_to_default() {
        let cli = Cli::try_parse_from([
            "meshctl",
            "get",
            "meshtrafficpermissions",
            "--api-url",
            "http://x:1",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.api_url.as_deref(), Some("http://x:1"));
        let Command::Get(get) = cli.command else {
            panic!("not get")
        };
        assert_eq!(get.mesh, "default");
        assert_eq!(get.output, OutputFormat::Json);
        assert_eq!(get.name, None);

        let cli = Cli::try_parse_from([
            "meshctl",
            "--config",
            "/c.yaml",
            "apply",
            "-f",
            "-",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("/c.yaml")));
        assert!(matches!(
            cli.command,
            Command::Apply(ApplyArgs { dry_run: true, .. })
        ));

        let cli =
            Cli::try_parse_from(["meshctl", "up", "--zones", "2", "--data-dir", "/tmp/x"]).unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(up.zones, 2);
        assert_eq!(up.online_timeout, 30);
        assert!(Cli::try_parse_from(["meshctl", "up", "--zones", "1000"]).is_err());
        assert!(Cli::try_parse_from(["meshctl", "get", "meshes", "-o", "xml"]).is_err());
    }

    #[test]
    fn generate_zone_token_needs_a_zone_and_defaults_to_a_day() {
        let cli =
            Cli::try_parse_from(["meshctl", "generate", "zone-token", "--zone", "zone-1"]).unwrap();
        let Command::Generate(GenerateCommand::ZoneToken(args)) = cli.command else {
            panic!("not generate zone-token")
        };
        assert_eq!(args.zone, "zone-1");
        assert_eq!(args.valid_for, "24h");
        let cli = Cli::try_parse_from([
            "meshctl",
            "generate",
            "zone-token",
            "--valid-for",
            "8760h",
            "--zone",
            "east",
            "--api-url",
            "http://g:5681",
        ])
        .unwrap();
        assert_eq!(cli.api_url.as_deref(), Some("http://g:5681"));
        let Command::Generate(GenerateCommand::ZoneToken(args)) = cli.command else {
            panic!("not generate zone-token")
        };
        assert_eq!(
            (args.zone.as_str(), args.valid_for.as_str()),
            ("east", "8760h")
        );
        assert!(Cli::try_parse_from(["meshctl", "generate", "zone-token"]).is_err());
        let cli = Cli::try_parse_from([
            "meshctl",
            "generate",
            "dataplane-token",
            "--mesh",
            "default",
            "--name",
            "web-1",
        ])
        .unwrap();
        let Command::Generate(GenerateCommand::DataplaneToken(args)) = cli.command else {
            panic!("not generate dataplane-token")
        };
        assert_eq!(
            (
                args.mesh.as_str(),
                args.name.as_str(),
                args.valid_for.as_str()
            ),
            ("default", "web-1", "24h")
        );
        assert!(Cli::try_parse_from(["meshctl", "generate", "dataplane-token"]).is_err());
        let cli = Cli::try_parse_from([
            "meshctl",
            "generate",
            "dataplane-token",
            "--proxy-type",
            "ingress",
            "--name",
            "ingress-1",
        ])
        .unwrap();
        let Command::Generate(GenerateCommand::DataplaneToken(args)) = cli.command else {
            panic!("not generate dataplane-token")
        };
        assert_eq!(args.proxy_type, "ingress");
    }

    #[test]
    fn inspect_zones_takes_an_output_format() {
        let cli = Cli::try_parse_from(["meshctl", "inspect", "zones"]).unwrap();
        let Command::Inspect(InspectCommand::Zones(args)) = cli.command else {
            panic!("not inspect zones")
        };
        assert_eq!(args.output, OutputFormat::Table);
        for (flag, want) in [
            ("json", OutputFormat::Json),
            ("yaml", OutputFormat::Yaml),
            ("table", OutputFormat::Table),
        ] {
            let cli = Cli::try_parse_from(["meshctl", "inspect", "zones", "-o", flag]).unwrap();
            let Command::Inspect(InspectCommand::Zones(args)) = cli.command else {
                panic!("not inspect zones")
            };
            assert_eq!(args.output, want);
        }
        assert!(Cli::try_parse_from(["meshctl", "inspect", "zones", "-o", "wide"]).is_err());
        assert!(Cli::try_parse_from(["meshctl", "inspect"]).is_err());
    }

    #[test]
    fn inspect_dataplane_defaults_to_the_config_dump_of_mesh_default() {
        let cli = Cli::try_parse_from(["meshctl", "inspect", "dataplane", "web-1"]).unwrap();
        let Command::Inspect(InspectCommand::Dataplane(args)) = cli.command else {
            panic!("not inspect dataplane")
        };
        assert_eq!(
            (args.name.as_str(), args.mesh.as_str(), args.view),
            ("web-1", "default", DataplaneView::ConfigDump)
        );
        for (flag, want) in [
            ("config-dump", DataplaneView::ConfigDump),
            ("policies", DataplaneView::Policies),
            ("insight", DataplaneView::Insight),
        ] {
            let cli = Cli::try_parse_from([
                "meshctl",
                "inspect",
                "dataplane",
                "web-1",
                "-m",
                "demo",
                "--type",
                flag,
            ])
            .unwrap();
            let Command::Inspect(InspectCommand::Dataplane(args)) = cli.command else {
                panic!("not inspect dataplane")
            };
            assert_eq!((args.mesh.as_str(), args.view), ("demo", want));
        }
        assert!(Cli::try_parse_from(["meshctl", "inspect", "dataplane"]).is_err());
        assert!(
            Cli::try_parse_from(["meshctl", "inspect", "dataplane", "x", "--type", "stats"])
                .is_err()
        );
    }
}
