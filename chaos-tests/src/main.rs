//! `chaos-tests run [--tier process] [SCENARIO...]`: runs the failover scenarios, prints a table
//! per scenario and writes `docs/chaos-report.md` and `docs/chaos-report.json`. Needs the
//! `global-cp` and `zone-cp` binaries built beside it (`cargo build -p global-cp -p zone-cp`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chaos_tests::report::{self, RunInfo};
use chaos_tests::scenario;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Meridian's failover scenarios with measured outcomes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs scenarios (all of the tier when none is named) and writes the report.
    Run {
        /// `process` (child processes, in-process proxies) or `container` (the compose
        /// federation; needs docker, docker-compose, nsenter and tc, run as root).
        #[arg(long, default_value = "process")]
        tier: String,
        /// How long the long faults (global down, zone cut, slow link, zone absent) last.
        #[arg(long, env = "CHAOS_OUTAGE_SECS", default_value_t = 60)]
        outage: u64,
        /// Seeds every relay's jitter and loss (printed, to replay a run); from the clock if unset.
        #[arg(long, env = "CHAOS_SEED")]
        seed: Option<u64>,
        /// Where the reports go (`chaos-report.md`, `chaos-report.json`).
        #[arg(long, default_value_os_t = test_support::workspace_root().join("docs"))]
        report_dir: PathBuf,
        /// Print only, write no report.
        #[arg(long)]
        no_report: bool,
        /// Keep each scenario's data and logs (`<dir>/<scenario>/`) instead of a temporary
        /// directory.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Scenario names.
        scenarios: Vec<String>,
    },
    /// Lists the scenarios.
    List,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::List => {
            for s in scenario::process_tier(Duration::from_secs(60)) {
                println!("{:<30} {}", s.name, s.fault);
            }
            Ok(())
        }
        Command::Run {
            tier,
            outage,
            seed,
            report_dir,
            no_report,
            keep,
            scenarios,
        } => {
            anyhow::ensure!(
                tier == "process" || tier == "container",
                "tier {tier:?}: the tiers are `process` and `container`"
            );
            let outage = Duration::from_secs(outage);
            if tier == "container" {
                return run_container(outage, seed, &report_dir, no_report, scenarios).await;
            }
            let all = scenario::process_tier(outage);
            for name in &scenarios {
                anyhow::ensure!(
                    all.iter().any(|s| s.name == name),
                    "no scenario {name:?}; `chaos-tests list` names them"
                );
            }
            let seed = seed_or_clock(seed);
            println!("seed {seed} (replay with --seed {seed})");
            let mut outcomes = Vec::new();
            for s in all
                .iter()
                .filter(|s| scenarios.is_empty() || scenarios.iter().any(|n| n == s.name))
            {
                let temp = tempfile::tempdir()?;
                let dir = match &keep {
                    Some(keep) => keep.join(s.name),
                    None => temp.path().to_path_buf(),
                };
                std::fs::create_dir_all(&dir)?;
                println!("running {} ...", s.name);
                let outcome = scenario::run(s, seed, &dir).await?;
                print!("{}", report::table(&outcome));
                outcomes.push(outcome);
            }
            let info = RunInfo {
                date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                commit: commit(),
                tier,
                outage,
            };
            if !no_report {
                std::fs::create_dir_all(&report_dir)?;
                let md = report_dir.join("chaos-report.md");
                std::fs::write(&md, report::markdown(&info, &outcomes))
                    .with_context(|| format!("writing {}", md.display()))?;
                let json = report_dir.join("chaos-report.json");
                std::fs::write(
                    &json,
                    serde_json::to_string_pretty(&report::json(&info, &outcomes))?,
                )
                .with_context(|| format!("writing {}", json.display()))?;
                println!("wrote {} and {}", md.display(), json.display());
            }
            let failed = outcomes.iter().filter(|o| !o.passed()).count();
            if failed > 0 {
                println!("{failed} of {} scenarios failed", outcomes.len());
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// The container tier: one compose federation for the run, each scenario healed before the
/// next; the project is taken down at the end, on error and on Ctrl-C.
async fn run_container(
    outage: Duration,
    seed: Option<u64>,
    report_dir: &std::path::Path,
    no_report: bool,
    names: Vec<String>,
) -> anyhow::Result<()> {
    use chaos_tests::container;
    let all = scenario::process_tier(outage);
    for name in &names {
        anyhow::ensure!(
            all.iter().any(|s| s.name == name),
            "no scenario {name:?}; `chaos-tests list` names them"
        );
    }
    // The relay container's jitter and loss draw from the seed (netem's loss is the kernel's).
    let seed = seed_or_clock(seed);
    println!("seed {seed} (replay with --seed {seed})");
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect();
    let netem = container::netem_available().await;
    let relays = container::Relays::needed_by(&chosen, netem);
    let opts = container::Options {
        profile: std::env::var("PROFILE").unwrap_or_else(|_| "debug".to_string()),
        tag: "chaos".to_string(),
        skip_cargo: std::env::var_os("SKIP_CARGO").is_some(),
        up_deadline: Duration::from_secs(300),
        relays: relays.clone(),
        zone_grace_period: container::zone_grace_for(&chosen)?,
        seed,
    };
    let mut outcomes = Vec::new();
    let mut skipped = Vec::new();
    let work = async {
        println!("building images and bringing the compose federation up ({relays:?}) ...");
        let fed = container::Federation::up(&opts).await?;
        for s in &chosen {
            if let Some(why) = container::unsupported(s, &relays, netem) {
                println!("skipping {}: {why}", s.name);
                skipped.push((s.name, why));
                continue;
            }
            println!("running {} ...", s.name);
            let outcome = container::run(&fed, s, seed).await?;
            print!("{}", report::table(&outcome));
            outcomes.push(outcome);
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = work => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the compose project was taken down"),
    }
    let info = RunInfo {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        commit: commit(),
        tier: "container".to_string(),
        outage,
    };
    if !no_report {
        let (md, json) = container::report_paths(report_dir);
        let text = container::markdown(&report::markdown(&info, &outcomes), &skipped);
        std::fs::write(&md, text).with_context(|| format!("writing {}", md.display()))?;
        std::fs::write(
            &json,
            serde_json::to_string_pretty(&report::json(&info, &outcomes))?,
        )
        .with_context(|| format!("writing {}", json.display()))?;
        println!("wrote {} and {}", md.display(), json.display());
    }
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    if failed > 0 {
        println!("{failed} of {} scenarios failed", outcomes.len());
        std::process::exit(1);
    }
    Ok(())
}

/// The seed given, or one from the clock.
fn seed_or_clock(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    })
}

/// The workspace's commit, `-dirty` when it has changes.
fn commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(test_support::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}
