//! Envoy behaviours the data path reproduces, through a real proxy: a new endpoint of a
//! health-checked cluster waits for its first check, ring hash places a request by its
//! authority and path, and the route's idle timeout (408 before the response, a reset after).
//! Panic mode and outlier ejection backoff are unit-tested in `upstream::lb` and
//! `upstream::outlier`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zone_proxies::config::*;
use zone_proxies::testing::*;

fn http_config(routes: RouteTable) -> ProxyConfig {
    ProxyConfig::default().with_listener(listener(
        "http",
        localhost(),
        vec![http_chain("http", http_manager("http", routes))],
    ))
}

fn one_route(cluster: &str) -> RouteTable {
    route_table("r", vec![forward_route("all", "/", &[(cluster, 1)])])
}

#[tokio::test]
async fn a_new_endpoint_waits_for_its_first_health_check() {
    let (a, _) = http_server("a").await;
    let (b, _) = http_server("b").await;
    let (c, c_status) = http_server("c").await;
    c_status.store(503, Ordering::Relaxed);
    let mut cluster = eds_cluster("backend");
    cluster.health_checks = vec![HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        unhealthy_threshold: 1,
        healthy_threshold: 3,
        kind: HealthCheckKind::Http {
            path: "/health".into(),
            host: String::new(),
            request_headers: Vec::new(),
            http2: false,
            expected_statuses: vec![(200, 300)],
        },
    }];
    let dp = RunningDataplane::start(
        http_config(one_route("backend"))
            .with_cluster(cluster)
            .with_endpoints(assignment("backend", &[(0, vec![a.addr, b.addr])])),
    );
    let addr = dp.addr("http").await;
    let client = client();
    // Both first endpoints pass their first check, then share the traffic.
    test_support::eventually("a and b to be used", Duration::from_secs(5), || {
        let client = client.clone();
        async move {
            let mut seen = HashSet::new();
            for _ in 0..10 {
                seen.insert(get(&client, addr, "/").await.ok()?.1);
            }
            (seen.len() == 2).then_some(())
        }
    })
    .await
    .unwrap();

    let stats = |name: &str| stat(&dp.stats.render(), name);
    let failures = "envoy_cluster_health_check_failure{envoy_cluster_name=\"backend\"}";
    let failures_before = stats(failures);
    dp.update(|config| {
        *config = std::mem::take(config)
            .with_endpoints(assignment("backend", &[(0, vec![a.addr, b.addr, c.addr])]));
    });
    // From the update on, c is pending its first check (which fails): never picked, though
    // 2 of 3 hosts available keeps the cluster out of panic.
    let started = Instant::now();
    let mut counts: HashMap<String, u32> = HashMap::new();
    while started.elapsed() < Duration::from_millis(400) || stats(failures) <= failures_before {
        let (status, body) = get(&client, addr, "/").await.unwrap();
        assert_eq!(status, 200);
        *counts.entry(body).or_default() += 1;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "c never checked"
        );
    }
    assert!(!counts.contains_key("c"), "{counts:?}");
    assert!(counts.len() == 2, "{counts:?}");

    // c passes: healthy after `healthy_threshold` successes (its first check failed), then used.
    c_status.store(200, Ordering::Relaxed);
    test_support::eventually("c to be used", Duration::from_secs(5), || {
        let client = client.clone();
        async move {
            for _ in 0..6 {
                if get(&client, addr, "/").await.ok()?.1 == "c" {
                    return Some(());
                }
            }
            None
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_new_endpoint_is_used_after_one_passing_check_despite_the_healthy_threshold() {
    let (a, _) = http_server("a").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cluster = eds_cluster("backend");
    cluster.health_checks = vec![HealthCheck {
        // Long interval: the first check runs at once, a second one not within the test.
        interval: Duration::from_secs(30),
        timeout: Duration::from_millis(500),
        unhealthy_threshold: 1,
        healthy_threshold: 5,
        kind: HealthCheckKind::Tcp,
    }];
    let dp = RunningDataplane::start(
        http_config(one_route("backend"))
            .with_cluster(cluster)
            .with_endpoints(assignment("backend", &[(0, vec![a.addr, dead])])),
    );
    let addr = dp.addr("http").await;
    test_support::eventually("both first checks", Duration::from_secs(5), || {
        let dp = &dp;
        async move {
            let text = dp.stats.render();
            let n = |s: &str| stat(&text, &format!("{s}{{envoy_cluster_name=\"backend\"}}"));
            (n("envoy_cluster_health_check_success") == 1
                && n("envoy_cluster_health_check_failure") == 1)
                .then_some(())
        }
    })
    .await
    .unwrap();
    // One pass made `a` healthy (1 of 2 is not under the panic threshold): only `a` is used.
    // Had it waited for 5 passes, both would be down and panic would send half to `dead`.
    let client = client();
    for _ in 0..20 {
        assert_eq!(get(&client, addr, "/").await.unwrap(), (200, "a".into()));
    }
}

#[tokio::test]
async fn ring_hash_places_a_request_by_authority_and_path() {
    let mut servers = Vec::new();
    for name in ["h0", "h1", "h2", "h3"] {
        servers.push(http_server(name).await.0);
    }
    let mut cluster = static_cluster(
        "backend",
        &servers.iter().map(|s| s.addr).collect::<Vec<_>>(),
    );
    cluster.lb_policy = LbPolicy::RingHash {
        minimum_ring_size: 1024,
    };
    let dp = RunningDataplane::start(http_config(one_route("backend")).with_cluster(cluster));
    let addr = dp.addr("http").await;
    let client = client();
    let mut placed = HashMap::new();
    for i in 0..40 {
        let path = format!("/item/{i}?v=1");
        let (_, first) = get(&client, addr, &path).await.unwrap();
        for _ in 0..5 {
            assert_eq!(
                get(&client, addr, &path).await.unwrap().1,
                first,
                "{path} moved"
            );
        }
        placed.insert(path, first);
    }
    let hosts: HashSet<&String> = placed.values().collect();
    assert!(hosts.len() >= 3, "40 paths on {} of 4 hosts", hosts.len());
    // The query is part of the key.
    let mut moved = 0;
    for i in 0..40 {
        let (_, now) = get(&client, addr, &format!("/item/{i}?v=2")).await.unwrap();
        moved += usize::from(now != placed[&format!("/item/{i}?v=1")]);
    }
    assert!(moved > 0, "a different query never moved a request");
}

/// A server that answers every request's headers and the first bytes of a 1 KiB body, then
/// goes quiet with the connection open.
async fn stalling_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\nfirst bytes")
                    .await;
                // Hold the connection until the peer closes it.
                let _ = s.read(&mut [0u8; 64]).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_route_idle_timeout_answers_408_then_resets_a_stalled_response() {
    let (slow, _) = http_server_on(localhost(), "slow", Duration::from_secs(3)).await;
    let (fast, _) = http_server("fast").await;
    let stalled = stalling_server().await;
    let with_idle = |name: &str, prefix: &str, cluster: &str| {
        let mut route = forward_route(name, prefix, &[(cluster, 1)]);
        if let RouteAction::Forward(f) = &mut route.action {
            f.idle_timeout = Some(Duration::from_millis(200));
        }
        route
    };
    let routes = route_table(
        "r",
        vec![
            with_idle("slow", "/slow", "slow"),
            with_idle("stalled", "/stalled", "stalled"),
            with_idle("fast", "/", "fast"),
        ],
    );
    let dp = RunningDataplane::start(
        http_config(routes)
            .with_cluster(static_cluster("slow", &[slow.addr]))
            .with_cluster(static_cluster("stalled", &[stalled]))
            .with_cluster(static_cluster("fast", &[fast.addr])),
    );
    let addr = dp.addr("http").await;
    let client = client();

    // Quick answers are untouched.
    assert_eq!(get(&client, addr, "/").await.unwrap(), (200, "fast".into()));

    // No response headers within 200 ms: 408, well before the upstream's 3 s.
    let started = Instant::now();
    let (status, body) = get(&client, addr, "/slow").await.unwrap();
    assert_eq!((status, body.as_str()), (408, "stream timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let text = dp.stats.render();
    assert_eq!(
        stat(
            &text,
            "envoy_http_downstream_rq_idle_timeout{envoy_http_conn_manager_prefix=\"http\"}"
        ),
        1,
        "{text}"
    );

    // The response started, then nothing for 200 ms: the stream is reset.
    let uri: http::Uri = format!("http://{addr}/stalled").parse().unwrap();
    let res = client.get(uri).await.unwrap();
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
        .await
        .expect("the stalled body is cut, not left hanging");
    assert!(body.is_err(), "a cut body is an error, not a short success");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
