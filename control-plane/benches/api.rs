//! REST API benchmark: a real control plane (sled store, durable writes) on loopback, driven by
//! 1 and 16 concurrent HTTP clients. Prints writes/s (PUT of a MeshTimeout, each a new resource or
//! an update) and reads/s (GET by name), with p50/p99 latency. Run with
//! `cargo bench -p control-plane --bench api` (optionally `-- --seconds N`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::server::{Listeners, Server, ServerConfig};
use control_plane::CpMode;
use tokio::net::TcpListener;

struct Figures {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(idx).copied().unwrap_or_default()
    }
}

fn timeout_doc(name: &str, seconds: usize) -> String {
    format!(
        "type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: {seconds}s\n"
    )
}

async fn drive(
    clients: usize,
    duration: Duration,
    work: Arc<dyn Fn(reqwest::Client, usize, usize) -> futures_like::BoxFut + Send + Sync>,
) -> Figures {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                work(client.clone(), c, i).await;
                latencies.push(t.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    Figures {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

mod futures_like {
    pub type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let duration = Duration::from_secs(seconds);
    let dir = tempfile::tempdir()?;
    let server = Server::open(ServerConfig {
        data_dir: dir.path().to_path_buf(),
        mode: CpMode::Global,
    })
    .await?;
    let token = Arc::new(server.token.as_str().to_owned());
    let api = TcpListener::bind("127.0.0.1:0").await?;
    let diagnostics = TcpListener::bind("127.0.0.1:0").await?;
    let base = Arc::new(format!("http://{}", api.local_addr()?));
    tokio::spawn(server.serve(Listeners { api, diagnostics }, std::future::pending()));

    println!(
        "REST API benchmark: {seconds} s per row, sled store, durable (fsync'd) writes, loopback"
    );
    println!(
        "{:<8} {:>8} {:>12} {:>10} {:>10}",
        "op", "clients", "ops/s", "p50", "p99"
    );
    for clients in [1usize, 16] {
        let (b, t) = (base.clone(), token.clone());
        let write: Arc<
            dyn Fn(reqwest::Client, usize, usize) -> futures_like::BoxFut + Send + Sync,
        > = Arc::new(move |client, c, i| {
            let (b, t) = (b.clone(), t.clone());
            Box::pin(async move {
                // 50 names per client: the first pass creates, later passes update.
                let name = format!("bench-{c}-{}", i % 50);
                let resp = client
                    .put(format!("{b}/meshes/default/meshtimeouts/{name}"))
                    .bearer_auth(t.as_str())
                    .header("content-type", "application/yaml")
                    .body(timeout_doc(&name, i % 100 + 1))
                    .send()
                    .await
                    .expect("PUT");
                assert!(resp.status().is_success(), "PUT {name}: {}", resp.status());
            })
        });
        let mut w = drive(clients, duration, write).await;
        println!(
            "{:<8} {:>8} {:>12.0} {:>10.2?} {:>10.2?}",
            "write",
            clients,
            w.rate(),
            w.percentile(0.5),
            w.percentile(0.99)
        );
        let b = base.clone();
        let read: Arc<dyn Fn(reqwest::Client, usize, usize) -> futures_like::BoxFut + Send + Sync> =
            Arc::new(move |client, _c, i| {
                let b = b.clone();
                Box::pin(async move {
                    let name = format!("bench-0-{}", i % 50);
                    let resp = client
                        .get(format!("{b}/meshes/default/meshtimeouts/{name}"))
                        .send()
                        .await
                        .expect("GET");
                    assert!(resp.status().is_success(), "GET {name}: {}", resp.status());
                    let _ = resp.bytes().await;
                })
            });
        let mut r = drive(clients, duration, read).await;
        println!(
            "{:<8} {:>8} {:>12.0} {:>10.2?} {:>10.2?}",
            "read",
            clients,
            r.rate(),
            r.percentile(0.5),
            r.percentile(0.99)
        );
    }
    Ok(())
}
