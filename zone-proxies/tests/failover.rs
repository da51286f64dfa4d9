//! Cross-zone failover with HTTP/1.1 upstreams under a blackhole (issue [4]): a client at 200
//! req/s through a sidecar whose backend cluster has priority 0 = zone-2's ingress and priority
//! 1 = zone-3's ingress, both reached over mTLS, zone-2's behind a `FaultRelay`. The link is
//! blackholed, then reset, then healed; with MeshRetry's shape (per-try timeout 300 ms),
//! outlier detection (2 consecutive failures) and a 1 s connect timeout, fewer than 0.1% of
//! the requests may fail, traffic must reach zone-3 within 1 s of the cut, and come back to
//! zone-2 once the link is healed.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use test_support::relay::{Fault, FaultRelay};
use tokio::sync::watch;
use tokio::time::Instant;
use zone_proxies::config::*;
use zone_proxies::testing::*;

const CERT: &str = "identity_cert:default";
const CA: &str = "mesh_ca:default";

/// A zone's ingress, reduced to what the sidecar sees: mTLS terminated (client SAN checked),
/// then HTTP to that zone's `backend`, which answers with the zone's name.
fn zone_ingress(pki: &Pki, app: SocketAddr) -> ProxyConfig {
    let mut chain = http_chain(
        "ingress",
        http_manager(
            "ingress",
            route_table("r", vec![forward_route("all", "/", &[("app", 1)])]),
        ),
    );
    chain.tls = Some(DownstreamTls {
        certificate: CERT.into(),
        trusted_ca: Some(CA.into()),
        require_client_certificate: true,
        match_san: vec![ValueMatch::Prefix("spiffe://default/".into())],
    });
    ProxyConfig::default()
        .with_secret(CERT, pki.identity_secret("spiffe://default/backend"))
        .with_secret(CA, pki.ca_secret())
        .with_cluster(static_cluster("app", &[app]))
        .with_listener(listener("ingress", localhost(), vec![chain]))
}

/// The frontend's outbound sidecar: `backend` with priority 0 = `zone2`, 1 = `zone3`, HTTP/1.1
/// over mTLS, with the retry and outlier settings of the cross-zone failover scenario.
fn sidecar(pki: &Pki, zone2: SocketAddr, zone3: SocketAddr) -> ProxyConfig {
    let mut cluster = eds_cluster("backend");
    cluster.discovery = Discovery::Static(Arc::new(assignment(
        "backend",
        &[(0, vec![zone2]), (1, vec![zone3])],
    )));
    cluster.connect_timeout = Duration::from_secs(1);
    // The requests that stall at the cut are those that find an idle connection to zone-2,
    // and their retries all come due together (at most `max_retries`, 3, at once): idle
    // connections left over from the start-up burst must have closed by then, as they do
    // after the idle timeout.
    cluster.idle_timeout = Some(Duration::from_secs(1));
    // Still, on a loaded machine a scheduling hiccup can leave a dozen connections idle at the
    // cut; their requests time out within a few milliseconds of each other and all retry at
    // once. Envoy's default of 3 retries in flight would answer the rest 504 (as it would for
    // Envoy); the budget here covers them.
    cluster.circuit_breakers.max_retries = 32;
    cluster.outlier_detection = Some(OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(1),
        max_ejection_percent: 100,
        consecutive_5xx: Some(2),
        consecutive_gateway_failure: Some(2),
    });
    cluster.tls = Some(UpstreamTls {
        sni: "backend".into(),
        certificate: Some(CERT.into()),
        trusted_ca: Some(CA.into()),
        match_san: vec![ValueMatch::Exact("spiffe://default/backend".into())],
        alpn: Vec::new(),
    });
    let mut route = forward_route("all", "/", &[("backend", 1)]);
    if let RouteAction::Forward(f) = &mut route.action {
        f.retry = Some(RetryPolicy {
            retry_on: RetryOn {
                five_xx: true,
                gateway_error: true,
                reset: true,
                connect_failure: true,
                ..Default::default()
            },
            num_retries: 5,
            per_try_timeout: Some(Duration::from_millis(300)),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            retriable_status_codes: Vec::new(),
        });
    }
    ProxyConfig::default()
        .with_secret(CERT, pki.identity_secret("spiffe://default/frontend"))
        .with_secret(CA, pki.ca_secret())
        .with_cluster(cluster)
        .with_listener(listener(
            "outbound",
            localhost(),
            vec![http_chain(
                "outbound",
                http_manager("outbound", route_table("r", vec![route])),
            )],
        ))
}

/// One request of the load: when it was sent, and the zone that answered or why it failed.
#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    result: Result<String, String>,
}

/// Open-loop load at `rate` req/s until `stop` turns true: request `i` is sent at
/// `start + i/rate` whatever the earlier ones are doing, each with a 5 s deadline.
fn load(
    addr: SocketAddr,
    rate: u32,
    answers: Arc<Mutex<Vec<Answer>>>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = client();
        let mut requests = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let (c, answers) = (c.clone(), answers.clone());
            requests.spawn(async move {
                let sent = Instant::now();
                let result = match get(&c, addr, "/").await {
                    Ok((200, zone)) => Ok(zone),
                    Ok((status, body)) => Err(format!("{status} {body}")),
                    Err(e) => Err(e.to_string()),
                };
                answers.lock().unwrap().push(Answer { sent, result });
            });
        }
        while requests.join_next().await.is_some() {}
    })
}

/// The answers to requests sent at or after `since`.
fn sent_since(answers: &Mutex<Vec<Answer>>, since: Instant) -> Vec<Answer> {
    let answers = answers.lock().unwrap();
    answers
        .iter()
        .filter(|a| a.sent >= since)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_failover_loses_nothing_when_zone_2_is_blackholed_then_reset_and_comes_back() {
    let pki = Pki::new("default");
    let (app2, _) = http_server("zone-2").await;
    let (app3, _) = http_server("zone-3").await;
    let ingress2 = RunningDataplane::start(zone_ingress(&pki, app2.addr));
    let ingress3 = RunningDataplane::start(zone_ingress(&pki, app3.addr));
    let link2 = FaultRelay::start(ingress2.addr("ingress").await)
        .await
        .unwrap();
    let frontend =
        RunningDataplane::start(sidecar(&pki, link2.addr(), ingress3.addr("ingress").await));
    let addr = frontend.addr("outbound").await;

    let answers = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let traffic = load(addr, 200, answers.clone(), stopped);

    // Steady state: zone-2 answers, for longer than the idle timeout.
    let start = Instant::now();
    test_support::eventually("zone-2 to answer", Duration::from_secs(10), || {
        let got = sent_since(&answers, start);
        async move {
            (got.iter()
                .filter(|a| a.result.as_deref() == Ok("zone-2"))
                .count()
                >= 400)
                .then_some(())
        }
    })
    .await
    .unwrap();

    // Cut zone-2's link: nothing passes, new connections stall in their TLS handshake.
    let cut = Instant::now();
    link2.set(Fault::Blackhole);
    test_support::eventually(
        "zone-3 to answer after the cut",
        Duration::from_secs(5),
        || {
            let got = sent_since(&answers, cut);
            async move {
                (got.iter()
                    .filter(|a| a.result.as_deref() == Ok("zone-3"))
                    .count()
                    >= 100)
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();
    let first_zone3 = sent_since(&answers, cut)
        .iter()
        .filter(|a| a.result.as_deref() == Ok("zone-3"))
        .map(|a| a.sent)
        .min()
        .unwrap();
    assert!(
        first_zone3 - cut < Duration::from_secs(1),
        "traffic reached zone-3 {:?} after the cut",
        first_zone3 - cut
    );
    tokio::time::sleep_until(cut + Duration::from_secs(3)).await;

    // Then the link resets every connection, established and new.
    link2.set(Fault::Reset);
    tokio::time::sleep_until(cut + Duration::from_secs(5)).await;

    // Healed: once the ejection ends, priority 0 takes the traffic back.
    let healed = Instant::now();
    link2.set(Fault::Pass);
    test_support::eventually(
        "traffic back on zone-2 after the heal",
        Duration::from_secs(20),
        || {
            let got = sent_since(&answers, healed);
            async move {
                let tail: Vec<&Answer> = got.iter().rev().take(200).collect();
                (tail.len() == 200 && tail.iter().all(|a| a.result.as_deref() == Ok("zone-2")))
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();

    stop.send(true).unwrap();
    traffic.await.unwrap();
    let answers = answers.lock().unwrap();
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.result.is_err()).collect();
    let stats = frontend.stats.render();
    assert!(
        failed.len() * 1000 < answers.len(),
        "{} of {} requests failed (first: {:?}, {:?} after the cut)\n{stats}",
        failed.len(),
        answers.len(),
        failed.first().map(|a| &a.result),
        failed.first().map(|a| a.sent.checked_duration_since(cut)),
    );
    assert!(
        answers.len() >= 1_000,
        "only {} requests sent",
        answers.len()
    );
}
