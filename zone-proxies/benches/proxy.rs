//! Issue [4]'s Measure, side by side in one run on loopback with one Rust load generator
//! (raw HTTP/1.1 keep-alive connections, each driven from its own task): direct to a local
//! upstream (raw HTTP/1.1 too, answering `ok`); Meridian, one
//! plaintext HTTP hop; Meridian, sidecar -> zone ingress -> sidecar with mTLS (certificates from
//! a `mesh-ca` builtin CA, SNI passthrough at the ingress, SPIFFE SANs checked on both ends);
//! HAProxy, the same L7 hop (skipped, with a message, when `haproxy` is not installed).
//!
//! Each proxy runs as a child process (this binary re-executed in a proxy role, the real
//! `dataplane::run` via `zone_proxies::testing::RunningDataplane`), so its CPU is its own, as
//! HAProxy's is, and its resident memory (VmRSS) is a process figure, idle and right after the
//! saturation phase. Per target: requests/s at saturation (closed loop, `BENCH_CONNS`
//! connections, default 16) with the proxy's CPU per request and this process's (the
//! generator's and the upstream's: what the proxy costs its peers), then latency at a fixed 1,000 req/s (open loop: a dedicated OS
//! thread paces request `i` to `start + i/rate` and hands it to the first free connection of
//! 8; latency from when it was due, p50/p99 over all requests, and how late sends were). Ratios
//! to direct and to HAProxy follow, then TCP throughput (256 MiB one way) direct and through
//! Meridian.
//!
//! `BENCH_CALLGRIND=<requests>` measures instead the user-space instructions per request of
//! Meridian's one-hop proxy and HAProxy under `valgrind --tool=callgrind`, each sent the same
//! keep-alive requests on one connection by the same client: each proxy runs twice, with 1,000
//! and with 1,000 + `<requests>` requests, and the difference divided by `<requests>` is the
//! cost of a request without start-up and shutdown (docs/benchmarks.md; `callgrind_annotate`
//! on the profiles, kept in `BENCH_CALLGRIND_DIR`, shows where it goes).
//!
//! The targets take turns: each phase is split into `BENCH_ROUNDS` (default 3) slices run
//! round-robin over the targets, so a change in a shared machine's load is spread over all.
//!
//! `cargo bench -p zone-proxies --bench proxy`; `BENCH_SECS` sets each phase's length (default
//! 3), `BENCH_PROXY_THREADS` the proxies' threads (Meridian's tokio workers and HAProxy's
//! `nbthread`, default 1), `BENCH_WORKERS` the load generator's and upstream's tokio workers
//! (default 2), `BENCH_RATE` the fixed rate (default 1000), `BENCH_PROXY_RUNTIME` how
//! Meridian's proxies run: `workers` (default) as `zone-proxy run --concurrency N` does, a
//! control runtime plus `BENCH_PROXY_THREADS` single-threaded worker runtimes that accept and
//! serve the connections; `multi`, one multi-threaded tokio runtime with that many workers
//! (what `zone-proxy` did before); `current`, everything on one single-threaded runtime; and
//! `BENCH_BASELINE_EXE` another build of this bench whose
//! one-hop proxy is measured in the same run (a before/after comparison on a shared machine),
//! with `BENCH_BASELINE_RUNTIME` as its `BENCH_PROXY_RUNTIME`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zone_proxies::config::{DownstreamTls, ProxyConfig, Secret, UpstreamTls, ValueMatch};
use zone_proxies::testing::*;
use zone_proxies::workers::Workers;

/// The allocator the `zone-proxy` binary uses (the proxy children are this binary).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable that makes this binary a proxy child: `plain`, or `mtls`.
const ROLE: &str = "ZONE_PROXY_BENCH_ROLE";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---- upstreams ---------------------------------------------------------------------------

/// The upstream's answer to every request. The date is fixed so that every proxy forwards the
/// same bytes (one that added a missing `date` would do work the others do not).
const UPSTREAM_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\nok";

/// An HTTP/1.1 upstream answering `ok` to every request (bodiless ones, as the generator
/// sends): one task per connection reading into one buffer and answering every complete
/// request head in it with one write. Raw, not hyper: with both CPUs saturated, what the
/// generator's process spends per request moves the proxies' throughput as much as their
/// own cost does, so it is kept small.
async fn http_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut read = Vec::with_capacity(4096);
                let mut write = Vec::with_capacity(4096);
                loop {
                    let mut heads = 0;
                    while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        read.drain(..end + 4);
                        heads += 1;
                    }
                    if heads > 0 {
                        write.clear();
                        for _ in 0..heads {
                            write.extend_from_slice(UPSTREAM_RESPONSE);
                        }
                        if s.write_all(&write).await.is_err() {
                            return;
                        }
                    }
                    match s.read_buf(&mut read).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
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

// ---- proxy children -------------------------------------------------------------------------

/// The configuration of the mTLS path, in the order the child starts it: the backend's inbound
/// sidecar (mTLS terminated, HTTP to the app), zone-2's ingress (SNI passthrough), the
/// frontend's outbound sidecar (HTTP listener, mTLS to the ingress with the backend's SNI).
struct MeshPki {
    ca_pem: String,
    frontend: Secret,
    backend: Secret,
}

fn mesh_pki() -> MeshPki {
    use mesh_api::core::mesh::CaBackend;
    use mesh_ca::{MeshCa, WorkloadIdentity};
    let backend = CaBackend {
        name: "ca-1".into(),
        backend_type: "builtin".into(),
        conf: Some(serde_json::json!({"caCert": {"RSAbits": 2048, "expiration": "1y"}})),
        ..CaBackend::default()
    };
    let ca = MeshCa::generate("default", &backend).expect("mesh CA");
    let issue = |service: &str| {
        let identity = WorkloadIdentity {
            services: vec![service.to_string()],
            ..Default::default()
        };
        let cert = ca
            .issue(&identity, Duration::from_secs(3600), SystemTime::now())
            .expect("workload certificate");
        Secret::Certificate {
            chain_pem: cert.cert_chain_pem,
            key_pem: cert.key_pem,
        }
    };
    MeshPki {
        ca_pem: ca.cert_pem().to_string(),
        frontend: issue("frontend"),
        backend: issue("backend"),
    }
}

const CERT: &str = "identity_cert:default";
const CA: &str = "mesh_ca:default";
const SNI: &str = "backend.0.zone-2.default.mesh";

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn one_route(cluster: &str) -> zone_proxies::config::HttpManager {
    http_manager(
        cluster,
        route_table("r", vec![forward_route("all", "/", &[(cluster, 1)])]),
    )
}

async fn start_mtls_path(app: SocketAddr) -> (Vec<RunningDataplane>, SocketAddr) {
    let pki = mesh_pki();
    let ca = Secret::TrustedCa {
        ca_pem: pki.ca_pem.clone(),
    };
    let mut inbound_chain = http_chain("inbound", one_route("app"));
    inbound_chain.tls = Some(DownstreamTls {
        certificate: CERT.into(),
        trusted_ca: Some(CA.into()),
        require_client_certificate: true,
        match_san: vec![ValueMatch::Prefix("spiffe://default/".into())],
    });
    let inbound = start_dataplane(
        ProxyConfig::default()
            .with_secret(CERT, pki.backend.clone())
            .with_secret(CA, ca.clone())
            .with_cluster(static_cluster("app", &[app]))
            .with_listener(listener("inbound", localhost(), vec![inbound_chain])),
    );
    let inbound_addr = inbound.addr("inbound").await;

    let mut ingress_chain = tcp_chain(SNI, &[("backend-local", 1)]);
    ingress_chain.server_names = vec![SNI.into()];
    let mut ingress_listener = listener("ingress", localhost(), vec![ingress_chain]);
    ingress_listener.inspect_tls = true;
    let ingress = start_dataplane(
        ProxyConfig::default()
            .with_cluster(static_cluster("backend-local", &[inbound_addr]))
            .with_listener(ingress_listener),
    );
    let ingress_addr = ingress.addr("ingress").await;

    let mut cluster = static_cluster("backend", &[ingress_addr]);
    cluster.tls = Some(UpstreamTls {
        sni: SNI.into(),
        certificate: Some(CERT.into()),
        trusted_ca: Some(CA.into()),
        match_san: vec![ValueMatch::Exact("spiffe://default/backend".into())],
        alpn: Vec::new(),
    });
    let outbound = start_dataplane(
        ProxyConfig::default()
            .with_secret(CERT, pki.frontend.clone())
            .with_secret(CA, ca)
            .with_cluster(cluster)
            .with_listener(listener(
                "outbound",
                localhost(),
                vec![http_chain("outbound", one_route("backend"))],
            )),
    );
    let outbound_addr = outbound.addr("outbound").await;
    (vec![inbound, ingress, outbound], outbound_addr)
}

/// The proxy child's worker threads, when it runs as `zone-proxy run` does.
static WORKERS: std::sync::OnceLock<Arc<Workers>> = std::sync::OnceLock::new();

/// A data plane of the proxy child, on its worker threads if it has them.
fn start_dataplane(config: ProxyConfig) -> RunningDataplane {
    match WORKERS.get() {
        Some(workers) => RunningDataplane::start_on_workers(config, workers.clone()),
        None => RunningDataplane::start(config),
    }
}

/// Runs as a proxy child: `ready <http addr> <tcp addr or ->` on stdout, then serves until
/// stdin closes (the parent went away or is done).
fn child(role: &str) {
    let threads = env_or("BENCH_PROXY_THREADS", 1usize);
    let rt = match std::env::var("BENCH_PROXY_RUNTIME").as_deref() {
        Ok("multi") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap(),
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        Ok("workers") | Err(_) => {
            let workers = Workers::start(threads).unwrap();
            WORKERS.set(Arc::new(workers)).unwrap();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        }
        Ok(other) => panic!("BENCH_PROXY_RUNTIME={other}: expected workers, multi or current"),
    };
    let upstream: SocketAddr = std::env::var("BENCH_UPSTREAM").unwrap().parse().unwrap();
    rt.block_on(async move {
        let (_dataplanes, http, tcp) = match role {
            "plain" => {
                let sink: SocketAddr = std::env::var("BENCH_SINK").unwrap().parse().unwrap();
                let dp = start_dataplane(
                    ProxyConfig::default()
                        .with_cluster(static_cluster("http", &[upstream]))
                        .with_cluster(static_cluster("sink", &[sink]))
                        .with_listener(listener(
                            "http",
                            localhost(),
                            vec![http_chain("http", one_route("http"))],
                        ))
                        .with_listener(listener(
                            "tcp",
                            localhost(),
                            vec![tcp_chain("tcp", &[("sink", 1)])],
                        )),
                );
                let (http, tcp) = (dp.addr("http").await, dp.addr("tcp").await);
                (vec![dp], http, Some(tcp))
            }
            "mtls" => {
                let (dps, http) = start_mtls_path(upstream).await;
                (dps, http, None)
            }
            other => panic!("{ROLE}={other}: expected plain or mtls"),
        };
        let tcp = tcp.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        println!("ready {http} {tcp}");
        std::io::stdout().flush().unwrap();
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await
        .unwrap();
    });
}

/// Which CPUs the proxies and the load generator run on during the saturation phase: with
/// `BENCH_PIN=1` (the default on a machine of two or more CPUs) every proxy process,
/// Meridian's and HAProxy's, is confined to the last `BENCH_PROXY_THREADS` CPUs and the load
/// generator and upstream to the others, so a proxy at saturation is limited by its own CPUs
/// rather than by where the scheduler put the generator's threads that moment, and its CPU
/// time per request is its own. `BENCH_PIN=0` leaves scheduling to the kernel.
#[derive(Clone, Debug)]
struct Pinning {
    proxies: Vec<usize>,
    generator: Vec<usize>,
}

impl Pinning {
    fn from_env(proxy_threads: usize) -> Option<Pinning> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let wanted = std::env::var("BENCH_PIN").map_or(cpus >= 2, |v| v == "1");
        if !wanted || proxy_threads >= cpus {
            return None;
        }
        Some(Pinning {
            proxies: (cpus - proxy_threads..cpus).collect(),
            generator: (0..cpus - proxy_threads).collect(),
        })
    }

    fn describe(pinning: Option<&Pinning>) -> String {
        match pinning {
            Some(p) => format!(
                "proxies on CPUs {:?}, generator on {:?}",
                p.proxies, p.generator
            ),
            None => "no CPU pinning".into(),
        }
    }
}

/// `cpus` as `taskset -c` takes them.
fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Confines this process's main thread, and so the threads it starts afterwards, to `cpus`
/// (util-linux's `taskset`, so the bench needs no unsafe code).
fn pin_this_thread(cpus: &[usize]) {
    let status = Command::new("taskset")
        .args(["-p", "-c", &cpu_list(cpus), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "taskset -p failed ({status:?}); BENCH_PIN=0 runs without pinning"
    );
}

/// Lets every thread of process `pid` run on any CPU again.
fn unpin(pid: u32) {
    let cpus: Vec<usize> =
        (0..std::thread::available_parallelism().map_or(1, usize::from)).collect();
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu_list(&cpus), &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}

/// `program` as a command, under `taskset` on the proxies' CPUs when pinning.
fn proxy_command(program: impl AsRef<std::ffi::OsStr>, pinning: Option<&Pinning>) -> Command {
    match pinning {
        Some(p) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu_list(&p.proxies)).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The unit of `/proc/<pid>/stat`'s CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A proxy process of the bench: killed when dropped.
struct ProxyProcess {
    child: Child,
    http: SocketAddr,
    tcp: Option<SocketAddr>,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time process `pid` has used, all its threads, user and system, in clock ticks
/// (`/proc/<pid>/stat`).
/// A process's CPU time in clock ticks: user space and kernel.
#[derive(Clone, Copy, Default)]
struct CpuTicks {
    user: u64,
    system: u64,
}

impl CpuTicks {
    fn total(self) -> u64 {
        self.user + self.system
    }

    fn since(self, before: CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    fn add(&mut self, other: CpuTicks) {
        self.user += other.user;
        self.system += other.system;
    }
}

fn cpu_ticks_of(pid: u32) -> CpuTicks {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the
    // 13th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut fields = after_name
        .split_whitespace()
        .skip(11)
        .map(|f| f.parse().unwrap_or(0));
    CpuTicks {
        user: fields.next().unwrap_or(0),
        system: fields.next().unwrap_or(0),
    }
}

impl ProxyProcess {
    /// CPU time the process has used, user and system, in clock ticks.
    fn cpu_ticks(&self) -> CpuTicks {
        cpu_ticks_of(self.child.id())
    }

    /// Resident memory in MiB (`VmRSS`).
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

fn spawn_meridian(
    exe: &std::path::Path,
    role: &str,
    upstream: SocketAddr,
    sink: SocketAddr,
    runtime: Option<String>,
    pinning: Option<&Pinning>,
) -> ProxyProcess {
    let mut command = proxy_command(exe, pinning);
    if let Some(runtime) = runtime {
        command.env("BENCH_PROXY_RUNTIME", runtime);
    }
    let mut child = command
        .env(ROLE, role)
        .env("BENCH_UPSTREAM", upstream.to_string())
        .env("BENCH_SINK", sink.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing the bench as a proxy");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("ready"), "proxy child said {line:?}");
    let http = words.next().unwrap().parse().unwrap();
    let tcp = words.next().and_then(|w| w.parse().ok());
    ProxyProcess { child, http, tcp }
}

/// HAProxy's configuration: HTTP mode, keep-alive both sides, connection reuse.
fn haproxy_config(port: SocketAddr, upstream: SocketAddr, threads: usize) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n\
         defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend bench\n  bind {port}\n  default_backend upstream\n\
         backend upstream\n  http-reuse always\n  server s1 {upstream}\n"
    )
}

/// HAProxy on a free port, in HTTP mode with keep-alive both sides and connection reuse, or
/// `None` when the binary is not installed.
async fn spawn_haproxy(
    upstream: SocketAddr,
    threads: usize,
    dir: &std::path::Path,
    pinning: Option<&Pinning>,
) -> Option<ProxyProcess> {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("HAProxy skipped: no `haproxy` binary on PATH (apt-get install -y haproxy)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, haproxy_config(port, upstream, threads)).unwrap();
    let mut command = proxy_command("haproxy", pinning);
    let child = command
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let mut process = ProxyProcess {
        child,
        http: port,
        tcp: None,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(port).await.is_err() {
        if let Ok(Some(status)) = process.child.try_wait() {
            println!("HAProxy skipped: it exited ({status}) instead of listening on {port}");
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(process)
}

// ---- load -----------------------------------------------------------------------------------

/// The generator's request.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";

/// A keep-alive HTTP/1.1 client connection of the load generator, driven from its own task
/// (no connection task, no channel): one `write` per request, the response head parsed with
/// `httparse`, its content-length body read.
struct Connection {
    stream: TcpStream,
    read: Vec<u8>,
}

async fn connection(addr: SocketAddr) -> Connection {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    Connection {
        stream,
        read: Vec::with_capacity(4096),
    }
}

/// One GET of `/`; panics on anything but a 2xx answer.
async fn get(conn: &mut Connection) {
    conn.stream.write_all(REQUEST).await.unwrap();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response.parse(&conn.read).unwrap() {
            let status = response.code.unwrap_or(0);
            assert!((200..300).contains(&status), "status {status}");
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .expect("a content-length");
            if conn.read.len() >= head + length {
                conn.read.drain(..head + length);
                return;
            }
        }
        let n = conn.stream.read_buf(&mut conn.read).await.unwrap();
        assert!(n > 0, "the connection closed before a whole response");
    }
}

/// Requests/s with `connections` closed-loop connections.
async fn saturation(addr: SocketAddr, connections: usize, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut conn = connection(addr).await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                get(&mut conn).await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / duration.as_secs_f64()
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    /// How late requests were handed to a connection after they were due: p50, p99, max (µs).
    lag_us: [f64; 3],
    /// Requests sent more than 1 ms after they were due.
    late: u64,
    sent: u64,
}

/// Latencies and send lags (ns) of one fixed-rate phase.
#[derive(Default)]
struct Samples {
    latencies: Vec<u64>,
    lags: Vec<u64>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

impl Samples {
    fn extend(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.lags.extend(other.lags);
    }

    fn summary(mut self) -> Latency {
        self.latencies.sort_unstable();
        self.lags.sort_unstable();
        let (all, lags) = (&self.latencies, &self.lags);
        Latency {
            p50_us: percentile(all, 0.50),
            p99_us: percentile(all, 0.99),
            lag_us: [
                percentile(lags, 0.50),
                percentile(lags, 0.99),
                percentile(lags, 1.0),
            ],
            late: lags.iter().filter(|&&l| l > 1_000_000).count() as u64,
            sent: all.len() as u64,
        }
    }
}

/// Waits on this OS thread until `due`: sleeps until shortly before, then spins (a sleep
/// alone wakes tens of microseconds late).
fn wait_until(due: Instant) {
    const SPIN: Duration = Duration::from_micros(100);
    let now = Instant::now();
    if due > now + SPIN {
        std::thread::sleep(due - now - SPIN);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

/// Open loop at `rate` req/s on 8 connections: a dedicated OS thread paces the schedule
/// (request `i` is due at `start + i/rate`) and hands each due time to whichever connection
/// is free, through one channel (no allocation per request). Latency runs from when the
/// request was due, not from when it was sent, so a generator or connection running late
/// counts against the target (no coordinated omission); how late each send was is recorded
/// too.
async fn fixed_rate(addr: SocketAddr, rate: u64, duration: Duration) -> Samples {
    const CONNECTIONS: usize = 8;
    let total = ((rate as f64 * duration.as_secs_f64()) as u64).max(1);
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        conns.push(connection(addr).await);
    }
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    let mut tasks = Vec::new();
    for mut conn in conns {
        let due_rx = due_rx.clone();
        let per_connection = total as usize / CONNECTIONS * 2;
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples {
                latencies: Vec::with_capacity(per_connection),
                lags: Vec::with_capacity(per_connection),
            };
            loop {
                let next = due_rx.lock().await.recv().await;
                let Some(due) = next else {
                    return samples;
                };
                let sent = Instant::now();
                samples
                    .lags
                    .push(sent.saturating_duration_since(due).as_nanos() as u64);
                get(&mut conn).await;
                samples.latencies.push(due.elapsed().as_nanos() as u64);
            }
        }));
    }
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            wait_until(due);
            if due_tx.send(due).is_err() {
                return;
            }
        }
    });
    let mut samples = Samples::default();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    pacer.join().unwrap();
    samples
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

struct Row {
    name: &'static str,
    rps: f64,
    /// The proxy process's CPU time (user and system) per request at saturation.
    cpu_us_per_request: Option<f64>,
    /// Of which in user space (the rest is the kernel's: sockets, TCP, loopback).
    user_us_per_request: Option<f64>,
    /// This process's (the load generator's and the upstream's) CPU time per request at
    /// saturation: with both CPUs busy, what a proxy costs its peers shows here.
    generator_us_per_request: f64,
    latency: Latency,
    rss_idle: Option<f64>,
    rss_load: Option<f64>,
}

// ---- instructions per request (callgrind) -----------------------------------------------------

/// The total instructions a process run under callgrind executed, from its output file.
fn callgrind_total(out: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(out)
        .unwrap_or_else(|e| panic!("callgrind output {}: {e}", out.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {}", out.display()))
}

/// Sends `requests` keep-alive requests one after the other on one connection.
async fn sequential(addr: SocketAddr, requests: u64) {
    let mut conn = connection(addr).await;
    for _ in 0..requests {
        get(&mut conn).await;
    }
}

/// Waits until `addr` accepts connections (a proxy starting under valgrind takes seconds).
async fn wait_listening(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the proxy under valgrind exited ({status}) before listening on {addr}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One run of a proxy under callgrind serving `requests`: its total instructions.
async fn callgrind_run(
    kind: &str,
    requests: u64,
    upstream: SocketAddr,
    threads: usize,
    dir: &std::path::Path,
) -> u64 {
    let out = dir.join(format!("{kind}-{requests}.callgrind"));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .stderr(Stdio::null());
    let (mut child, addr) = match kind {
        "meridian" => {
            let mut child = command
                .arg(std::env::current_exe().unwrap())
                .env(ROLE, "plain")
                .env("BENCH_PROXY_THREADS", threads.to_string())
                .env("BENCH_UPSTREAM", upstream.to_string())
                .env("BENCH_SINK", upstream.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("valgrind");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let addr: SocketAddr = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_else(|| panic!("proxy child said {line:?}"))
                .parse()
                .unwrap();
            (child, addr)
        }
        _ => {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let config = dir.join("haproxy-callgrind.cfg");
            std::fs::write(&config, haproxy_config(addr, upstream, threads)).unwrap();
            let child = command
                .arg("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("valgrind");
            (child, addr)
        }
    };
    wait_listening(addr, &mut child).await;
    sequential(addr, requests).await;
    // A clean exit writes the profile: Meridian's child stops when its stdin closes, HAProxy
    // on SIGTERM.
    if kind == "meridian" {
        drop(child.stdin.take());
    } else {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }
    let status = child.wait().unwrap();
    assert!(
        out.exists(),
        "{kind} under callgrind wrote no profile ({status})"
    );
    callgrind_total(&out)
}

/// `BENCH_CALLGRIND`: user-space instructions per request, Meridian's one hop against
/// HAProxy's, by the difference of two runs of each.
async fn instructions_per_request(requests: u64, threads: usize) {
    const BASE: u64 = 1_000;
    let upstream = http_upstream().await;
    let dir = std::env::var_os("BENCH_CALLGRIND_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tempfile::tempdir().unwrap().keep());
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "callgrind: {requests} keep-alive requests on one connection (after {BASE}), each proxy {threads} thread(s); profiles in {}",
        dir.display()
    );
    let mut per_request = Vec::new();
    for kind in ["meridian", "haproxy"] {
        let base = callgrind_run(kind, BASE, upstream, threads, &dir).await;
        let full = callgrind_run(kind, BASE + requests, upstream, threads, &dir).await;
        let each = full.saturating_sub(base) as f64 / requests as f64;
        println!(
            "  {kind:<9} {each:>8.0} instructions/request (totals {base} and {full}; start-up and shutdown about {:.0})",
            base as f64 - each * BASE as f64
        );
        per_request.push(each);
    }
    println!(
        "  meridian / haproxy: {:.2} x (user space only: the kernel's share, most of a request's CPU, is not counted)",
        per_request[0] / per_request[1]
    );
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return child(&role);
    }
    if let Some(requests) = std::env::var("BENCH_CALLGRIND")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let threads: usize = env_or("BENCH_PROXY_THREADS", 1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(env_or("BENCH_WORKERS", 2))
            .enable_all()
            .build()
            .unwrap();
        return rt.block_on(instructions_per_request(requests, threads));
    }
    let secs: u64 = env_or("BENCH_SECS", 3);
    let duration = Duration::from_secs(secs);
    let workers: usize = env_or("BENCH_WORKERS", 2);
    let proxy_threads: usize = env_or("BENCH_PROXY_THREADS", 1);
    let connections: usize = env_or("BENCH_CONNS", 16);
    let rate: u64 = env_or("BENCH_RATE", 1000);
    let rounds: u32 = env_or("BENCH_ROUNDS", 3u32).max(1);
    let pinning = Pinning::from_env(proxy_threads);
    if let Some(p) = &pinning {
        // Before the runtime starts: its threads inherit the main thread's CPUs.
        pin_this_thread(&p.generator);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    rt.block_on(async move {
        let upstream = http_upstream().await;
        let sink = sink_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let pinned = pinning.as_ref();
        let plain = spawn_meridian(&exe, "plain", upstream, sink, None, pinned);
        let mtls = spawn_meridian(&exe, "mtls", upstream, sink, None, pinned);
        // Another build of this bench (e.g. the previous commit's) measured in the same run.
        // `BENCH_BASELINE_RUNTIME` gives it another runtime (the same build twice compares
        // runtimes).
        let baseline = std::env::var_os("BENCH_BASELINE_EXE").map(|path| {
            let runtime = std::env::var("BENCH_BASELINE_RUNTIME").ok();
            spawn_meridian(std::path::Path::new(&path), "plain", upstream, sink, runtime, pinned)
        });
        let haproxy = spawn_haproxy(upstream, proxy_threads, dir.path(), pinned).await;
        println!(
            "zone-proxies bench: {secs} s per phase in {rounds} rounds, saturation {connections} connections, fixed rate {rate} req/s; \
             load generator + upstream {workers} tokio workers, each proxy {proxy_threads} thread(s), Meridian's runtime {}; {}; loadavg {}",
            std::env::var("BENCH_PROXY_RUNTIME").unwrap_or_else(|_| "workers".into()),
            Pinning::describe(pinned),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );

        let mut targets: Vec<(&'static str, SocketAddr, Option<&ProxyProcess>)> = vec![
            ("direct", upstream, None),
            ("meridian 1 hop", plain.http, Some(&plain)),
        ];
        if let Some(b) = &baseline {
            targets.push(("meridian 1 hop, baseline", b.http, Some(b)));
        }
        targets.extend([
            ("meridian sidecar>ingress>sidecar mTLS", mtls.http, Some(&mtls)),
        ]);
        if let Some(h) = &haproxy {
            targets.push(("haproxy 1 hop", h.http, Some(h)));
        }
        // The targets take turns, `BENCH_ROUNDS` short phases each, so a change in the shared
        // machine's load falls on all of them rather than on whichever ran at that moment.
        let rss_idle: Vec<Option<f64>> = targets
            .iter()
            .map(|(_, _, p)| p.map(ProxyProcess::rss_mib))
            .collect();
        for (_, addr, _) in &targets {
            // Warm up: connections, pools, TLS sessions.
            saturation(*addr, 4, Duration::from_millis(300)).await;
        }
        let slice = duration / rounds;
        let mut rps = vec![0.0; targets.len()];
        // The proxy process's CPU time over its saturation phases, and the requests it served.
        let mut cpu_ticks = vec![CpuTicks::default(); targets.len()];
        let mut generator_ticks = vec![0u64; targets.len()];
        let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
        for _ in 0..rounds {
            for (i, (_, addr, process)) in targets.iter().enumerate() {
                let before = process.map(ProxyProcess::cpu_ticks);
                let generator_before = cpu_ticks_of(std::process::id());
                rps[i] += saturation(*addr, connections, slice).await / rounds as f64;
                generator_ticks[i] += cpu_ticks_of(std::process::id())
                    .since(generator_before)
                    .total();
                if let (Some(p), Some(before)) = (process, before) {
                    cpu_ticks[i].add(p.cpu_ticks().since(before));
                }
            }
        }
        let ticks_per_s = clock_ticks_per_second();
        let rss_load: Vec<Option<f64>> = targets
            .iter()
            .map(|(_, _, p)| p.map(ProxyProcess::rss_mib))
            .collect();
        if pinning.is_some() {
            // Latency at a fixed rate is measured unpinned: each hop would otherwise cross
            // CPUs, and the wake-up across them is what would be measured.
            for process in targets.iter().filter_map(|(_, _, p)| *p) {
                unpin(process.child.id());
            }
            unpin(std::process::id());
        }
        for _ in 0..rounds {
            for (i, (_, addr, _)) in targets.iter().enumerate() {
                samples[i].extend(fixed_rate(*addr, rate, slice).await);
            }
        }
        let rows: Vec<Row> = targets
            .iter()
            .zip(samples)
            .enumerate()
            .map(|(i, ((name, _, _), samples))| Row {
                name,
                rps: rps[i],
                cpu_us_per_request: targets[i].2.map(|_| {
                    cpu_ticks[i].total() as f64 / ticks_per_s * 1e6
                        / (rps[i] * duration.as_secs_f64())
                }),
                user_us_per_request: targets[i].2.map(|_| {
                    cpu_ticks[i].user as f64 / ticks_per_s * 1e6 / (rps[i] * duration.as_secs_f64())
                }),
                generator_us_per_request: generator_ticks[i] as f64 / ticks_per_s * 1e6
                    / (rps[i] * duration.as_secs_f64()),
                latency: samples.summary(),
                rss_idle: rss_idle[i],
                rss_load: rss_load[i],
            })
            .collect();

        println!(
            "{:<40} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>16} {:>10} {:>9} {:>9}",
            "target", "req/s", "CPU us/rq", "user us/rq", "gen us/rq", "p50 us", "p99 us", "lag p50/p99/max", "late>1ms", "RSS idle", "RSS load"
        );
        let mib = |v: Option<f64>| v.map(|m| format!("{m:.1} MiB")).unwrap_or_else(|| "-".into());
        for r in &rows {
            let [lag50, lag99, lag_max] = r.latency.lag_us;
            println!(
                "{:<40} {:>9.0} {:>8} {:>9} {:>9.1} {:>9.0} {:>9.0} {:>16} {:>10} {:>9} {:>9}",
                r.name,
                r.rps,
                r.cpu_us_per_request.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
                r.user_us_per_request.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
                r.generator_us_per_request,
                r.latency.p50_us,
                r.latency.p99_us,
                format!("{lag50:.0}/{lag99:.0}/{lag_max:.0}"),
                format!("{}/{}", r.latency.late, r.latency.sent),
                mib(r.rss_idle),
                mib(r.rss_load)
            );
        }
        println!(
            "  (user: the proxy's CPU per request in user space, the rest being the kernel's; \
             gen: the load generator's and upstream's CPU per request at saturation; latency from when each \
             request was due; direct is the generator's and upstream's own share, so 'added' below is target \
             minus direct; lag: how late sends were, us)"
        );
        let direct = &rows[0];
        let haproxy_row = rows.iter().find(|r| r.name.starts_with("haproxy"));
        for r in rows.iter().skip(1) {
            let added_p50 = r.latency.p50_us - direct.latency.p50_us;
            let added_p99 = r.latency.p99_us - direct.latency.p99_us;
            let mut line = format!(
                "{}: throughput {:.2} x direct, added p50 {added_p50:.0} us, added p99 {added_p99:.0} us",
                r.name,
                r.rps / direct.rps
            );
            if let Some(h) = haproxy_row.filter(|h| h.name != r.name) {
                let h50 = h.latency.p50_us - direct.latency.p50_us;
                let h99 = h.latency.p99_us - direct.latency.p99_us;
                line += &format!(
                    "; vs haproxy: throughput {:.2} x, CPU per request {:.2} x (user space {:.2} x), \
                     generator CPU per request {:.2} x, added p50 {:.2} x, added p99 {:.2} x",
                    r.rps / h.rps,
                    r.cpu_us_per_request.unwrap_or(f64::NAN) / h.cpu_us_per_request.unwrap_or(f64::NAN),
                    r.user_us_per_request.unwrap_or(f64::NAN) / h.user_us_per_request.unwrap_or(f64::NAN),
                    r.generator_us_per_request / h.generator_us_per_request,
                    added_p50 / h50,
                    added_p99 / h99
                );
            }
            println!("  {line}");
        }

        let bytes = 256 << 20;
        let direct_tcp = tcp_throughput(sink, bytes).await;
        let proxied_tcp = tcp_throughput(plain.tcp.unwrap(), bytes).await;
        println!(
            "tcp 256 MiB one way: direct {direct_tcp:.0} MiB/s, through meridian {proxied_tcp:.0} MiB/s, ratio {:.2}",
            proxied_tcp / direct_tcp
        );
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("loadavg after: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        drop((plain, mtls, haproxy, baseline));
    });
}
