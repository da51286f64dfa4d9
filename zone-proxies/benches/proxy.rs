//! Throughput and latency through one zone proxy against a direct connection, in one run:
//! HTTP/1.1 keep-alive requests to a local hyper upstream (requests/s with 16 connections,
//! p50/p99 latency with 16 and with 1 connection), and TCP throughput (256 MiB one way).
//! `cargo bench -p zone-proxies --bench proxy`; `BENCH_SECS` sets each HTTP phase's length
//! (default 3), `BENCH_WORKERS` the tokio worker threads shared by load, proxy and upstreams
//! (default 2).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zone_proxies::config::ProxyConfig;
use zone_proxies::testing::*;

async fn http_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |_req: http::Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

/// A server that reads everything, then answers one byte.
async fn sink_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(b"!").await;
            });
        }
    });
    addr
}

struct HttpResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn http_load(addr: SocketAddr, connections: usize, duration: Duration) -> HttpResult {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let req = http::Request::get("/")
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let start = Instant::now();
                let res = sender.send_request(req).await.unwrap();
                assert!(res.status().is_success());
                res.into_body().collect().await.unwrap();
                latencies.push(start.elapsed().as_micros() as u32);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64;
    HttpResult {
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

async fn tcp_throughput(addr: SocketAddr, bytes: usize) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
    sent as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let duration = Duration::from_secs(secs);
    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let http = http_upstream().await;
        let sink = sink_upstream().await;
        let dp = RunningDataplane::start(
            ProxyConfig::default()
                .with_cluster(static_cluster("http", &[http]))
                .with_cluster(static_cluster("sink", &[sink]))
                .with_listener(listener(
                    "http",
                    "127.0.0.1:0".parse().unwrap(),
                    vec![http_chain("http", http_manager("http", route_table("r", vec![forward_route("all", "/", &[("http", 1)])])))],
                ))
                .with_listener(listener("tcp", "127.0.0.1:0".parse().unwrap(), vec![tcp_chain("tcp", &[("sink", 1)])])),
        );
        let proxy_http = dp.addr("http").await;
        let proxy_tcp = dp.addr("tcp").await;
        // Warm up both paths (connections, pools, caches).
        http_load(http, 4, Duration::from_millis(300)).await;
        http_load(proxy_http, 4, Duration::from_millis(300)).await;

        println!("zone-proxies bench: {secs} s per HTTP phase, {workers} tokio workers, loopback");
        println!("{:<34} {:>12} {:>10} {:>10}", "phase", "req/s", "p50 us", "p99 us");
        for connections in [16usize, 1] {
            let direct = http_load(http, connections, duration).await;
            let proxied = http_load(proxy_http, connections, duration).await;
            for (name, r) in [("direct", &direct), ("through proxy", &proxied)] {
                println!(
                    "{:<34} {:>12.0} {:>10.0} {:>10.0}",
                    format!("http/1.1 {connections} conn, {name}"),
                    r.rps,
                    r.p50_us,
                    r.p99_us
                );
            }
            println!(
                "  ratio proxy/direct: throughput {:.2}, added p50 {:.0} us, added p99 {:.0} us",
                proxied.rps / direct.rps,
                proxied.p50_us - direct.p50_us,
                proxied.p99_us - direct.p99_us
            );
        }
        let bytes = 256 << 20;
        let direct = tcp_throughput(sink, bytes).await;
        let proxied = tcp_throughput(proxy_tcp, bytes).await;
        println!("tcp 256 MiB one way: direct {direct:.0} MiB/s, through proxy {proxied:.0} MiB/s, ratio {:.2}", proxied / direct);
        let stats = dp.stats.render();
        let opened = stats
            .lines()
            .find_map(|l| l.strip_prefix("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"http\"} "))
            .unwrap_or("?");
        println!("upstream HTTP connections the proxy opened: {opened}");
        dp.stop().await.unwrap();
    });
}
