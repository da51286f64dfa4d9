//! The process tier's scenarios (issue [7]) with short faults, each asserting its invariants:
//! success rate, failover time, every zone online and every proxy back within 30 s of the end of
//! faults, every acknowledged write at the global and in every zone, no process ended unless the
//! scenario killed it, on a one-node and on a three-node global. Scenarios exposing a known,
//! unfixed component defect are left to `chaos-tests run` (and the committed report). Needs `global-cp` and `zone-cp` built
//! (`cargo build --workspace --bins`). `CHAOS_OUTAGE_SECS` (default 5) sets the long faults'
//! length, `CHAOS_SEED` replays a run.

use std::time::Duration;

use chaos_tests::report;
use chaos_tests::scenario::{process_tier, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_tier_scenarios_hold_their_invariants() {
    let outage = std::env::var("CHAOS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default()
        });
    eprintln!("seed {seed} (replay with CHAOS_SEED={seed}), faults of {outage} s");
    let mut failed = Vec::new();
    // One at a time: each runs a whole federation.
    for scenario in process_tier(Duration::from_secs(outage)) {
        if let Some(defect) = scenario.known_defect {
            eprintln!("skipping {}: known defect: {defect}", scenario.name);
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(&scenario, seed, dir.path()).await.unwrap();
        eprint!("{}", report::table(&outcome));
        if !outcome.passed() {
            failed.push(format!(
                "{}: {}",
                outcome.name,
                outcome.violations.join("; ")
            ));
        }
    }
    assert!(failed.is_empty(), "seed {seed}:\n{}", failed.join("\n"));
}
