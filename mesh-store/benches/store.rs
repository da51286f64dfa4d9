//! A bounded benchmark of [`SledStore`]: creates/s and gets/s with 1 and 16 concurrent tasks, with
//! p50/p99 latency, on a temporary directory. Run: `cargo bench -p mesh-store --bench store`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_store::{ResourceStore, SledStore};

/// How long each phase runs.
const PHASE: Duration = Duration::from_millis(1500);

fn resource(name: &str) -> mesh_api::Resource {
    let mut r = mesh_api::Resource::new(
        name,
        Some("default"),
        mesh_api::Spec::empty(mesh_api::ResourceType::MeshTimeout),
    );
    r.meta.labels.insert("kuma.io/origin".into(), "zone".into());
    r
}

fn key(name: &str) -> mesh_api::ResourceKey {
    mesh_api::ResourceKey::new(mesh_api::ResourceType::MeshTimeout, Some("default"), name)
}

struct Outcome {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(what: &str, tasks: usize, mut outcome: Outcome) {
    outcome.latencies.sort();
    println!(
        "{what:<7} tasks={tasks:<2} ops={:<7} {:>10.0} ops/s   p50={:>8.1}us   p99={:>8.1}us",
        outcome.ops,
        outcome.ops as f64 / outcome.elapsed.as_secs_f64(),
        percentile(&outcome.latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&outcome.latencies, 0.99).as_secs_f64() * 1e6,
    );
}

async fn creates(store: &Arc<SledStore>, tasks: usize, phase: &str) -> Outcome {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let phase = phase.to_owned();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while started.elapsed() < PHASE {
                let name = format!("{phase}-{t}-{i}");
                let begin = Instant::now();
                store.create(resource(&name)).await.expect("create");
                latencies.push(begin.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("task"));
    }
    Outcome {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

async fn gets(store: &Arc<SledStore>, tasks: usize, names: Arc<Vec<String>>) -> Outcome {
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let names = names.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // xorshift: a cheap, deterministic spread over the keys.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
            while started.elapsed() < PHASE {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let name = &names[(x % names.len() as u64) as usize];
                let begin = Instant::now();
                let got = store.get(&key(name)).await.expect("get");
                latencies.push(begin.elapsed());
                assert!(got.is_some());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("task"));
    }
    Outcome {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SledStore::open(dir.path()).expect("open"));
        println!(
            "mesh-store benchmark: sled store in {}, {} worker threads, {:?} per phase",
            dir.path().display(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            PHASE
        );
        for tasks in [1, 16] {
            let outcome = creates(&store, tasks, &format!("c{tasks}")).await;
            report("create", tasks, outcome);
        }
        let names: Vec<String> = store
            .list(&mesh_store::ListQuery::all(
                mesh_api::ResourceType::MeshTimeout,
            ))
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|r| r.meta.name)
            .collect();
        println!("(gets over the {} resources created above)", names.len());
        let names = Arc::new(names);
        for tasks in [1, 16] {
            let outcome = gets(&store, tasks, names.clone()).await;
            report("get", tasks, outcome);
        }
    });
}
