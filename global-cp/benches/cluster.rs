//! Issue [5]'s measurement of the global cluster: three `global-cp` child processes (the built
//! binary) on loopback, peers over mutual TLS.
//!
//! 1. Durable writes through the REST API: 1, 16 and 64 concurrent clients, each a closed loop
//!    of `PUT` of its own small policy (a MeshTimeout; the first creates it, the rest update
//!    it), sent to the leader's API, for `BENCH_SECONDS` (default 5) each: writes/s, p50, p99.
//!    A write is acknowledged once committed on two of three logs (flushed) and applied on the
//!    leader (flushed).
//! 2. Fail-over: `BENCH_TRIALS` (default 20) times, SIGKILL the leader, then write through the
//!    other two nodes in turn (each write started after the kill) until one is acknowledged:
//!    the time from the kill to that acknowledgement; the killed node is restarted on its data
//!    and caught up before the next trial. Median and max; per trial, also the node that took
//!    the write (after how many tries) and the leader and term agreed after it (a term more
//!    than one above the trial before's means an election failed in between).
//!
//! `cargo bench -p global-cp --bench cluster` (harness = false; prints its figures).

#[path = "../tests/process_cluster/mod.rs"]
mod process_cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use process_cluster::{put, ProcCluster, DEADLINE};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `clients` closed-loop writers through node `through` for `duration`.
async fn throughput(cluster: &ProcCluster, through: usize, clients: usize, duration: Duration) {
    let api = cluster.nodes[through].api.clone();
    let token = cluster.nodes[through].token.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (api, token, client, stop) = (api.clone(), token.clone(), client.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("bench-{clients}-{c}");
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let started = Instant::now();
                match put(&client, &api, &token, &name, &seq.to_string(), DEADLINE).await {
                    Ok(200 | 201) => latencies.push(started.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "| {clients} | {} | {:.0} | {} | {} | {errors} |",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
    );
}

/// One fail-over trial: who was killed, how long until a write was acknowledged, which node
/// took it after how many tries, and the leader and term agreed afterwards.
struct Trial {
    elapsed: Duration,
    killed: usize,
    through: usize,
    attempts: usize,
    leader: usize,
    term: u64,
}

/// Kills the leader; the time until a write started after the kill is acknowledged.
async fn fail_over(cluster: &mut ProcCluster, trial: u64) -> Trial {
    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let killed = Instant::now();
    cluster.kill(leader);
    let mut attempt = 0usize;
    loop {
        let through = others[attempt % 2];
        attempt += 1;
        let name = format!("failover-{trial}-{attempt}");
        if let Ok(200 | 201) = cluster
            .put(through, &name, "x", Duration::from_millis(1500))
            .await
        {
            let elapsed = killed.elapsed();
            let new_leader = cluster.leader().await;
            let term = cluster
                .index(new_leader)
                .await
                .and_then(|v| v["cluster"]["term"].as_u64())
                .unwrap_or(0);
            return Trial {
                elapsed,
                killed: leader,
                through,
                attempts: attempt,
                leader: new_leader,
                term,
            };
        }
        assert!(
            killed.elapsed() < DEADLINE,
            "no write {DEADLINE:?} after the kill"
        );
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let seconds = env_u64("BENCH_SECONDS", 5);
    let trials = env_u64("BENCH_TRIALS", 20);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(dir.path(), 3, false, &[]).await;
    println!(
        "three global-cp processes on 127.0.0.1 (mutual TLS between peers); load before: {}",
        load()
    );
    let leader = cluster.leader().await;
    println!(
        "\nwrites through the leader's REST API (node {}), {seconds} s per row:\n",
        leader + 1
    );
    println!("| clients | writes | writes/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|---|");
    for clients in [1, 16, 64] {
        throughput(&cluster, leader, clients, Duration::from_secs(seconds)).await;
    }

    println!(
        "\nfail-over: leader SIGKILLed, time to the first acknowledged write ({trials} trials)"
    );
    let mut times = Vec::new();
    for trial in 0..trials {
        let t = fail_over(&mut cluster, trial).await;
        println!(
            "trial {trial}: node {} killed, {} (acknowledged through node {} at try {}; then \
             node {} leads in term {})",
            t.killed + 1,
            ms(t.elapsed),
            t.through + 1,
            t.attempts,
            t.leader + 1,
            t.term
        );
        let killed = t.killed;
        times.push(t.elapsed);
        cluster.restart(killed).await;
        // Caught up (its local state equals a linearizable read) before the next kill.
        let leader = cluster.leader().await;
        let want = Some(cluster.consistent_names(leader).await);
        test_support::eventually("the restarted node to catch up", DEADLINE, || async {
            (cluster.names(killed, false).await == want).then_some(())
        })
        .await
        .unwrap();
    }
    times.sort();
    println!(
        "\nfail-over over {} trials: median {}, min {}, max {}; load after: {}",
        times.len(),
        ms(percentile(&times, 50.0)),
        ms(times[0]),
        ms(*times.last().unwrap()),
        load()
    );
    cluster.stop_all();
}
