//! The client's highest sustainable rate against the demo server on loopback, both in this
//! process on the same cores: each step calls `/` at a fixed rate for 2 s (at most 256 in
//! flight) and prints what was sent, the share of the scheduled requests answered 2xx, and
//! latency. The knee is where `sent/s` falls behind the schedule or requests go `not sent`.
//! Run with `cargo bench -p demo-app --bench loopback`.

use std::time::Duration;

use demo_app::{call, serve, CallConfig, Identity, ServerConfig};

const STEP: Duration = Duration::from_secs(2);
const RATES: [f64; 6] = [1_000.0, 2_000.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0];
const CONCURRENCY: usize = 256;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let target = format!("http://{}/", listener.local_addr()?).parse()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            ServerConfig {
                identity: Identity {
                    service: "backend".into(),
                    zone: "zone-1".into(),
                    instance: "backend-1".into(),
                    version: None,
                },
                fail_percent: 0,
                drain_timeout: Duration::from_secs(1),
            },
            async {
                let _ = stopped.await;
            },
        ));
        println!(
            "{:>8} {:>10} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9}",
            "rate", "sent/s", "ok %", "not sent", "other", "p50 ms", "p99 ms", "max ms"
        );
        for rate in RATES {
            let report = call(
                CallConfig {
                    target: http::Uri::clone(&target),
                    rate,
                    duration: STEP,
                    concurrency: CONCURRENCY,
                    timeout: Duration::from_secs(2),
                    report_every: None,
                },
                std::future::pending(),
                |_| {},
            )
            .await?;
            let latency = report.latency.clone().unwrap_or(demo_app::Latency {
                count: 0,
                p50_ms: f64::NAN,
                p90_ms: f64::NAN,
                p99_ms: f64::NAN,
                max_ms: f64::NAN,
            });
            println!(
                "{:>8} {:>10.0} {:>10.1} {:>9} {:>7} {:>9.3} {:>9.3} {:>9.3}",
                rate,
                report.sent_per_sec,
                100.0 * report.ok as f64 / report.scheduled as f64,
                report.failures.not_sent,
                report.failed - report.failures.not_sent,
                latency.p50_ms,
                latency.p99_ms,
                latency.max_ms
            );
        }
        let _ = stop.send(());
        server.await??;
        anyhow::Ok(())
    })
}
