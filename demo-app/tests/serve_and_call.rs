//! The server and the client together, in-process on ephemeral ports: the schedule is kept,
//! answers are counted by zone, instance and version, and failures by kind (status codes, a
//! stopped server, timeouts, the in-flight limit).

use std::time::Duration;

use demo_app::{call, serve, CallConfig, Identity, Report, ServerConfig};
use http::Uri;
use tokio::sync::oneshot;

/// A running demo server; dropping `stop` (or sending on it) shuts it down.
struct Running {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), demo_app::ServeError>>,
}

async fn start(zone: &str, instance: &str, version: Option<&str>, fail_percent: u8) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServerConfig {
        identity: Identity {
            service: "backend".into(),
            zone: zone.into(),
            instance: instance.into(),
            version: version.map(str::to_owned),
        },
        fail_percent,
        drain_timeout: Duration::from_secs(2),
    };
    let task = tokio::spawn(serve(listener, config, async {
        let _ = stopped.await;
    }));
    Running { url, stop, task }
}

fn config(target: &str, rate: f64, duration: Duration) -> CallConfig {
    CallConfig {
        target: target.parse::<Uri>().unwrap(),
        rate,
        duration,
        concurrency: 50,
        timeout: Duration::from_secs(2),
        report_every: None,
    }
}

async fn run(config: CallConfig) -> Report {
    call(config, std::future::pending(), |_| {}).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_is_kept_and_answers_are_counted_by_zone_instance_and_version() {
    let server = start("zone-2", "backend-1", Some("v2"), 0).await;
    let mut call_config = config(&format!("{}/", server.url), 200.0, Duration::from_secs(1));
    call_config.report_every = Some(Duration::from_millis(500));
    let mut periods = Vec::new();
    let report = call(call_config, std::future::pending(), |period| {
        periods.push(period.clone())
    })
    .await
    .unwrap();

    assert_eq!((report.scheduled, report.sent, report.ok), (200, 200, 200));
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.success_rate, Some(1.0));
    // Over the sending window (1 s on schedule; more only if the client fell behind).
    assert!(
        (150.0..=200.001).contains(&report.sent_per_sec),
        "{report:?}"
    );
    // The last request is due at 995 ms: the run cannot be shorter, and the schedule, not the
    // answers, sets its length.
    assert!(
        (0.99..3.0).contains(&report.elapsed_secs),
        "elapsed {}",
        report.elapsed_secs
    );
    // Spread over the second, not sent in a burst: the first half-second's report holds about
    // half (timer jitter on a shared machine gets a wide margin).
    let first = periods.first().expect("a report after 500 ms");
    assert!((50..=150).contains(&first.sent), "first period: {first:?}");
    assert_eq!(report.zones.get("zone-2"), Some(&200));
    assert_eq!(report.instances.get("backend-1"), Some(&200));
    assert_eq!(report.versions.get("v2"), Some(&200));
    assert_eq!(report.zones.len(), 1);
    let latency = report.latency.unwrap();
    assert_eq!(latency.count, 200);
    assert!(latency.p50_ms <= latency.p99_ms && latency.p99_ms <= latency.max_ms);
    server.stop.send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_two_zones_are_told_apart() {
    let zone_1 = start("zone-1", "backend-a", None, 0).await;
    let zone_2 = start("zone-2", "backend-b", None, 0).await;
    let (to_1, to_2) = tokio::join!(
        run(config(
            &format!("{}/", zone_1.url),
            100.0,
            Duration::from_millis(500)
        )),
        run(config(
            &format!("{}/", zone_2.url),
            60.0,
            Duration::from_millis(500)
        )),
    );
    assert_eq!(to_1.zones, [("zone-1".to_owned(), 50)].into());
    assert_eq!(to_2.zones, [("zone-2".to_owned(), 30)].into());
    assert_eq!(to_2.instances, [("backend-b".to_owned(), 30)].into());
    assert!(to_1.versions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_status_code() {
    let always = start("zone-1", "failing", None, 100).await;
    let report = run(config(
        &format!("{}/", always.url),
        100.0,
        Duration::from_millis(500),
    ))
    .await;
    assert_eq!((report.sent, report.ok, report.failed), (50, 0, 50));
    assert_eq!(report.failures.status, [(503, 50)].into());
    assert_eq!(report.success_rate, Some(0.0));
    // The 503s carry the identity, so the failing instance is named.
    assert_eq!(report.instances, [("failing".to_owned(), 50)].into());

    let half = start("zone-1", "flaky", None, 50).await;
    let report = run(config(
        &format!("{}/", half.url),
        400.0,
        Duration::from_secs(1),
    ))
    .await;
    assert_eq!(report.sent, 400);
    assert_eq!(
        report.ok + report.failures.status.get(&503).unwrap_or(&0),
        400
    );
    // 50% of 400: 200 expected, standard deviation 10; 140..=260 is six of them.
    assert!((140..=260).contains(&report.ok), "{report:?}");

    let status = start("zone-1", "plain", None, 0).await;
    let report = run(config(
        &format!("{}/status/418", status.url),
        50.0,
        Duration::from_millis(200),
    ))
    .await;
    assert_eq!(report.failures.status, [(418, 10)].into());
    let report = run(config(
        &format!("{}/status/204", status.url),
        50.0,
        Duration::from_millis(200),
    ))
    .await;
    assert_eq!((report.ok, report.failed), (10, 0));
    assert!(report.zones.is_empty(), "a 204 has no body to count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_mid_run_shows_as_connect_failures() {
    let server = start("zone-2", "backend-1", None, 0).await;
    let mut call_config = config(&format!("{}/", server.url), 100.0, Duration::from_secs(2));
    call_config.report_every = Some(Duration::from_millis(100));
    let mut stop = Some(server.stop);
    let report = call(call_config, std::future::pending(), |period| {
        // Stop the server once it has been seen answering.
        if period.ok > 0 {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
    })
    .await
    .unwrap();
    server.task.await.unwrap().unwrap();
    assert!(stop.is_none(), "the server never answered: {report:?}");
    assert_eq!(report.sent, 200);
    assert!(report.ok > 0, "{report:?}");
    assert!(report.failures.connect > 0, "{report:?}");
    // Everything sent is accounted for: answered, refused, or (a request caught by the
    // shutdown on a kept-alive connection) broken.
    assert_eq!(
        report.ok + report.failures.connect + report.failures.io,
        200,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_are_timeouts_and_a_full_pipe_is_not_sent() {
    let server = start("zone-1", "slow", None, 0).await;
    let mut slow = config(
        &format!("{}/delay/1000", server.url),
        20.0,
        Duration::from_millis(500),
    );
    slow.timeout = Duration::from_millis(100);
    let report = run(slow).await;
    assert_eq!(report.failures.timeout, 10, "{report:?}");
    assert!(report.latency.is_none());

    let mut delayed = config(
        &format!("{}/delay/50", server.url),
        20.0,
        Duration::from_millis(500),
    );
    delayed.timeout = Duration::from_secs(5);
    let report = run(delayed).await;
    assert_eq!(report.ok, 10, "{report:?}");
    assert!(report.latency.unwrap().p50_ms >= 50.0);

    // One request at a time, each taking 300 ms, 50 due per second: most cannot go out.
    let mut narrow = config(
        &format!("{}/delay/300", server.url),
        50.0,
        Duration::from_millis(500),
    );
    narrow.concurrency = 1;
    let report = run(narrow).await;
    assert_eq!(report.scheduled, 25);
    assert_eq!(report.sent + report.failures.not_sent, 25);
    assert!((1..=3).contains(&report.sent), "{report:?}");
    assert_eq!(report.ok, report.sent);
}

#[tokio::test]
async fn the_run_stops_sending_on_shutdown() {
    let server = start("zone-1", "backend-1", None, 0).await;
    let (stop_calling, stopped) = oneshot::channel::<()>();
    let mut call_config = config(&format!("{}/", server.url), 100.0, Duration::from_secs(60));
    call_config.report_every = Some(Duration::from_millis(50));
    let mut stop_calling = Some(stop_calling);
    let report = call(
        call_config,
        async {
            let _ = stopped.await;
        },
        |period| {
            if period.ok > 0 {
                if let Some(stop) = stop_calling.take() {
                    let _ = stop.send(());
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(report.sent > 0 && report.sent < 6000, "{report:?}");
    assert_eq!(report.ok, report.sent);
    assert!(report.elapsed_secs < 30.0);
}

#[tokio::test]
async fn bad_client_configuration_is_refused() {
    let mut bad = config("https://127.0.0.1:1/", 10.0, Duration::from_secs(1));
    let error = call(bad.clone(), std::future::pending(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "target https://127.0.0.1:1/: only http:// URLs with a host are supported"
    );
    bad.target = "http://127.0.0.1:1/".parse().unwrap();
    bad.rate = 0.0;
    let error = call(bad, std::future::pending(), |_| {}).await.unwrap_err();
    assert!(error.to_string().starts_with("rate 0:"), "{error}");
}
