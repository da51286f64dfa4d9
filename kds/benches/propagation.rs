//! KDS propagation benchmark: a global and N zones (1, 10, 50) in one process, each on its own
//! sled store in a temporary directory, over real gRPC on loopback. With 1,000 policies already
//! synced, it times each of 100 policy writes at the global from the moment the write returned to
//! the moment the resource is in every zone's store (observed through each zone store's watch, not
//! by polling), and reports p50/p99/max, for changes written back-to-back (each one as soon as the
//! previous one arrived everywhere, so the 5 ms coalescing window throttles them) and for lone
//! changes (20 ms apart). Then, with 10,000 policies present, it counts the bytes
//! of encoded KDS messages one policy change puts on the wire, next to the initial full sync.
//!
//! Run: `cargo bench -p kds --bench propagation` (`-- --quick` for N = 1 and 10 only).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use kds::{AllowAllZonesForTests, KdsClientConfig, KdsServer, KdsTuning, ZoneStatusRegistry};
use mesh_api::{Resource, ResourceType};
use mesh_store::{ChangeKind, ListQuery, ResourceStore, SledStore, SledStoreOptions};
use tokio::sync::{mpsc, oneshot};

const BASE_POLICIES: usize = 1_000;
const CHANGES: usize = 100;
const WIRE_POLICIES: usize = 10_000;
const SETUP_DEADLINE: Duration = Duration::from_secs(600);

fn policy(name: &str, idle_seconds: u32) -> Resource {
    let yaml = format!(
        "type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: {idle_seconds}s\n"
    );
    mesh_api::parse_documents(&yaml)
        .remove(0)
        .expect("valid policy")
        .resource
}

fn open(dir: &tempfile::TempDir, name: &str) -> anyhow::Result<Arc<SledStore>> {
    let options = SledStoreOptions {
        cache_capacity: 16 * 1024 * 1024,
        ..SledStoreOptions::default()
    };
    Ok(Arc::new(SledStore::open_with(
        dir.path().join(name),
        options,
    )?))
}

async fn fill(store: &Arc<SledStore>, count: usize) -> anyhow::Result<()> {
    let results: Vec<_> = futures::stream::iter(0..count)
        .map(|i| {
            let store = store.clone();
            async move { store.create(policy(&format!("p{i}"), 5)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

struct Federation {
    global: Arc<SledStore>,
    status: ZoneStatusRegistry,
    zones: Vec<Arc<SledStore>>,
    stops: Vec<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

async fn start(zones: usize, policies: usize) -> anyhow::Result<Federation> {
    let dir = tempfile::tempdir()?;
    let global = open(&dir, "global")?;
    fill(&global, policies).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let status = ZoneStatusRegistry::new();
    let server = KdsServer::with_tuning(
        global.clone(),
        Arc::new(AllowAllZonesForTests),
        KdsTuning::default(),
        status.clone(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(kds::serve(listener, None, server, async {
        let _ = stopped.await;
    }));
    let mut stops = vec![stop];
    let mut stores = Vec::new();
    for z in 0..zones {
        let store = open(&dir, &format!("zone-{z}"))?;
        let config =
            KdsClientConfig::new(format!("zone-{z}"), format!("http://{addr}"), store.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(kds::run(config, async {
            let _ = stopped.await;
        }));
        stops.push(stop);
        stores.push(store);
    }
    // Wait for the initial sync (setup only; the measurements below use watches).
    for store in &stores {
        test_support::eventually("initial sync", SETUP_DEADLINE, || async {
            let page = store
                .list(&ListQuery::all(ResourceType::MeshTimeout))
                .await
                .ok()?;
            (page.total == policies).then_some(())
        })
        .await?;
    }
    Ok(Federation {
        global,
        status,
        zones: stores,
        stops,
        _dir: dir,
    })
}

impl Federation {
    fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn propagation(
    zones: usize,
    pause: Duration,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let fed = start(zones, BASE_POLICIES).await?;
    // Each zone's watch reports when a benchmark policy lands in its store.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    for store in &fed.zones {
        let mut watch = store.watch(store.revision())?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = watch.next().await {
                if event.kind == ChangeKind::Created {
                    if let Some(i) = event.resource.meta.name.strip_prefix("bench-") {
                        if let Ok(i) = i.parse::<usize>() {
                            let _ = tx.send((i, Instant::now()));
                        }
                    }
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        // Pacing between changes (not a wait for a condition): with a pause longer than the
        // coalescing window each change is a lone change; without, changes follow each other.
        tokio::time::sleep(pause).await;
        fed.global.create(policy(&format!("bench-{i}"), 7)).await?;
        let written = Instant::now();
        let mut seen = 0;
        let mut last = written;
        while seen < zones {
            let (n, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .context("change did not reach every zone")?
                .context("watchers ended")?;
            if n == i {
                seen += 1;
                last = last.max(at);
            }
        }
        latencies.push(last.saturating_duration_since(written));
    }
    latencies.sort();
    let result = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        *latencies.last().context("no samples")?,
    );
    fed.stop();
    Ok(result)
}

async fn wire_bytes() -> anyhow::Result<(u64, u64, u64, u64)> {
    let fed = start(1, WIRE_POLICIES).await?;
    let initial = fed.status.zone("zone-0").context("zone status")?;
    let key = mesh_api::ResourceKey::new(ResourceType::MeshTimeout, Some("default"), "p42");
    let mut changed = policy("p42", 9);
    changed.meta.version = fed.global.get(&key).await?.context("p42")?.meta.version;
    let mut watch = fed.zones[0].watch(fed.zones[0].revision())?;
    fed.global.update(changed).await?;
    while let Some(event) = watch.next().await {
        if event?.resource.meta.name == "p42" {
            break;
        }
    }
    let after = fed.status.zone("zone-0").context("zone status")?;
    fed.stop();
    Ok((
        initial.bytes_sent,
        initial.messages_sent,
        after.bytes_sent - initial.bytes_sent,
        after.messages_sent - initial.messages_sent,
    ))
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sizes: &[usize] = if quick { &[1, 10] } else { &[1, 10, 50] };
        println!(
            "KDS propagation: write at the global -> present in every zone's store \
             ({BASE_POLICIES} policies present, {CHANGES} changes, one at a time)"
        );
        println!(
            "{:>6} | {:>14} | {:>9} | {:>9} | {:>9}",
            "zones", "changes", "p50 ms", "p99 ms", "max ms"
        );
        println!("{:-<6}-+-{:-<14}-+-{:-<9}-+-{:-<9}-+-{:-<9}", "", "", "", "", "");
        for &zones in sizes {
            for (label, pause) in [
                ("back-to-back", Duration::ZERO),
                ("20 ms apart", Duration::from_millis(20)),
            ] {
                let (p50, p99, max) = propagation(zones, pause).await?;
                println!(
                    "{zones:>6} | {label:>14} | {:>9} | {:>9} | {:>9}",
                    ms(p50),
                    ms(p99),
                    ms(max)
                );
            }
        }
        let (full_bytes, full_messages, change_bytes, change_messages) = wire_bytes().await?;
        println!();
        println!("KDS bytes on the wire with {WIRE_POLICIES} policies present (encoded responses, global -> zone):");
        println!("  initial full sync: {full_bytes} bytes in {full_messages} messages");
        println!("  one policy change: {change_bytes} bytes in {change_messages} message(s)");
        Ok(())
    })
}
