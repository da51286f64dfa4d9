//! HTTP through the proxy: weighted route splits, RBAC (403), local rate limit and fault
//! injection, priority failover driven by active health checks, retries hiding a failing
//! endpoint, HTTP/2 upstreams, and access logs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use zone_proxies::config::*;
use zone_proxies::testing::*;

fn http_config(manager: HttpManager) -> ProxyConfig {
    ProxyConfig::default().with_listener(listener(
        "http",
        localhost(),
        vec![http_chain("http", manager)],
    ))
}

#[tokio::test]
async fn a_90_10_split_holds_within_5_points_over_1000_requests() {
    let (v1, _) = http_server("v1").await;
    let (v2, _) = http_server("v2").await;
    let routes = route_table(
        "r",
        vec![forward_route("split", "/", &[("v1", 90), ("v2", 10)])],
    );
    let dp = RunningDataplane::start(
        http_config(http_manager("http", routes))
            .with_cluster(static_cluster("v1", &[v1.addr]))
            .with_cluster(static_cluster("v2", &[v2.addr])),
    );
    let addr = dp.addr("http").await;
    let c = client();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        let (status, body) = get(&c, addr, "/").await.unwrap();
        assert_eq!(status, 200);
        *counts.entry(body).or_default() += 1;
    }
    let v1_share = counts.get("v1").copied().unwrap_or(0) as f64 / 10.0;
    assert!(
        (85.0..=95.0).contains(&v1_share),
        "v1 got {v1_share}% ({counts:?})"
    );
    let stats = dp.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"v1\"}"
        ) + stat(
            &stats,
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"v2\"}"
        ),
        1000
    );
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"v1\"}"
        ),
        *counts.get("v1").unwrap() as i64
    );
}

#[tokio::test]
async fn routes_match_paths_headers_and_rewrite() {
    let (api, _) = http_server("api").await;
    let (web, _) = http_server("web").await;
    let mut exact = forward_route("exact", "/", &[("api", 1)]);
    exact.matcher.path = PathMatch::Exact("/api".into());
    let mut header = forward_route("header", "/", &[("api", 1)]);
    header.matcher.headers = vec![HeaderMatch {
        name: "x-to".into(),
        value: ValueMatch::Exact("api".into()),
        invert: false,
    }];
    let direct = Route {
        name: "direct".into(),
        matcher: RouteMatch {
            path: PathMatch::Prefix("/direct".into()),
            ..Default::default()
        },
        action: RouteAction::DirectResponse {
            status: 418,
            body: "teapot".into(),
        },
        headers: Default::default(),
    };
    let routes = route_table(
        "r",
        vec![exact, direct, forward_route("web", "/web", &[("web", 1)])],
    );
    let mut with_header = routes.clone();
    with_header.virtual_hosts[0].routes.insert(0, header);
    let dp = RunningDataplane::start(
        http_config(http_manager("http", with_header))
            .with_cluster(static_cluster("api", &[api.addr]))
            .with_cluster(static_cluster("web", &[web.addr])),
    );
    let addr = dp.addr("http").await;
    let c = client();
    assert_eq!(get(&c, addr, "/api").await.unwrap(), (200, "api".into()));
    assert_eq!(get(&c, addr, "/web/x").await.unwrap(), (200, "web".into()));
    assert_eq!(
        get(&c, addr, "/direct").await.unwrap(),
        (418, "teapot".into())
    );
    assert_eq!(get(&c, addr, "/api/more").await.unwrap().0, 404);
    let req = http::Request::get(format!("http://{addr}/anything"))
        .header("x-to", "api")
        .body(Default::default())
        .unwrap();
    let res = c.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn rbac_denies_with_403_and_filters_apply_before_routing() {
    let (app, _) = http_server("app").await;
    let routes = route_table("r", vec![forward_route("all", "/", &[("app", 1)])]);
    let mut manager = http_manager("http", routes.clone());
    // Only spiffe://default/web may call; a plaintext caller has no identity.
    manager.rbac = Some(Rbac {
        action: RbacAction::Allow,
        policies: [(
            "web".into(),
            vec![Principal::UriSan(ValueMatch::Exact(
                "spiffe://default/web".into(),
            ))],
        )]
        .into(),
    });
    let dp = RunningDataplane::start(
        http_config(manager).with_cluster(static_cluster("app", &[app.addr])),
    );
    let c = client();
    let addr = dp.addr("http").await;
    assert_eq!(
        get(&c, addr, "/").await.unwrap(),
        (403, "RBAC: access denied".into())
    );

    // Allowing anyone (a config update) lets requests through, on the same connection pool.
    let mut open = http_manager("http", routes.clone());
    open.rbac = Some(Rbac {
        action: RbacAction::Allow,
        policies: [("any".into(), vec![Principal::Any])].into(),
    });
    open.local_rate_limit = Some(LocalRateLimit {
        max_tokens: 2,
        tokens_per_fill: 1,
        fill_interval: Duration::from_secs(3600),
        status: 429,
    });
    dp.update(|cfg| {
        *cfg = cfg.clone().with_listener(listener(
            "http",
            localhost(),
            vec![http_chain("http", open)],
        ));
    });
    test_support::eventually("the allow-all policy", Duration::from_secs(5), || {
        let c = c.clone();
        async move { (get(&c, addr, "/").await.ok()?.0 == 200).then_some(()) }
    })
    .await
    .unwrap();
    // One token was left; then the bucket is empty.
    assert_eq!(get(&c, addr, "/").await.unwrap().0, 200);
    assert_eq!(get(&c, addr, "/").await.unwrap().0, 429);

    let mut faulty = http_manager("http", routes);
    faulty.faults = vec![FaultInjection {
        abort: Some(FaultAbort {
            status: 503,
            percent: 100.0,
        }),
        ..FaultInjection::default()
    }];
    dp.update(|cfg| {
        *cfg = cfg.clone().with_listener(listener(
            "http",
            localhost(),
            vec![http_chain("http", faulty)],
        ));
    });
    test_support::eventually("the fault filter", Duration::from_secs(5), || {
        let c = c.clone();
        async move {
            (get(&c, addr, "/").await.ok()? == (503, "fault filter abort".into())).then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn priority_failover_follows_health_checks_and_comes_back() {
    let (preferred, _) = http_server("preferred").await;
    let (fallback, _) = http_server("fallback").await;
    let preferred_addr = preferred.addr;
    let mut cluster = eds_cluster("backend");
    cluster.health_checks = vec![HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        kind: HealthCheckKind::Http {
            path: "/health".into(),
            host: String::new(),
            request_headers: Vec::new(),
            http2: false,
            expected_statuses: vec![(200, 300)],
        },
    }];
    let dp = RunningDataplane::start(
        http_config(http_manager(
            "http",
            route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]),
        ))
        .with_cluster(cluster)
        .with_endpoints(assignment(
            "backend",
            &[(0, vec![preferred.addr]), (1, vec![fallback.addr])],
        )),
    );
    let addr = dp.addr("http").await;
    let c = client();
    // New endpoints wait for their first health check (until then the cluster is in panic).
    // Once one check has passed, "preferred" can only come from the preferred endpoint
    // having passed its own (were it still pending, all traffic would go to priority 1).
    test_support::eventually(
        "the preferred endpoint's first check",
        Duration::from_secs(5),
        || {
            let c = c.clone();
            let checked = stat(
                &dp.stats.render(),
                "envoy_cluster_health_check_success{envoy_cluster_name=\"backend\"}",
            ) >= 1;
            async move {
                (checked && get(&c, addr, "/").await.ok()?.1 == "preferred").then_some(())
            }
        },
    )
    .await
    .unwrap();
    for _ in 0..20 {
        assert_eq!(get(&c, addr, "/").await.unwrap(), (200, "preferred".into()));
    }
    preferred.stop().await;
    until_answered_by(&c, addr, "fallback", "traffic to move to priority 1").await;
    for _ in 0..20 {
        assert_eq!(get(&c, addr, "/").await.unwrap(), (200, "fallback".into()));
    }
    let (_back, _) = http_server_on(preferred_addr, "preferred", Duration::ZERO).await;
    until_answered_by(&c, addr, "preferred", "traffic to return to priority 0").await;
    for _ in 0..20 {
        assert_eq!(get(&c, addr, "/").await.unwrap(), (200, "preferred".into()));
    }
}

#[tokio::test]
async fn retries_hide_a_failing_endpoint_and_outlier_detection_ejects_it() {
    let (good, _) = http_server("good").await;
    let (bad, bad_status) = http_server("bad").await;
    bad_status.store(503, Ordering::Relaxed);
    let mut route = forward_route("all", "/", &[("backend", 1)]);
    if let RouteAction::Forward(f) = &mut route.action {
        f.retry = Some(RetryPolicy {
            retry_on: RetryOn {
                five_xx: true,
                connect_failure: true,
                ..Default::default()
            },
            num_retries: 3,
            per_try_timeout: Some(Duration::from_secs(2)),
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            retriable_status_codes: Vec::new(),
        });
    }
    let mut cluster = static_cluster("backend", &[good.addr, bad.addr]);
    cluster.outlier_detection = Some(OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 50,
        consecutive_5xx: Some(5),
        consecutive_gateway_failure: None,
    });
    let dp = RunningDataplane::start(
        http_config(http_manager("http", route_table("r", vec![route]))).with_cluster(cluster),
    );
    let addr = dp.addr("http").await;
    let c = client();
    for i in 0..200 {
        assert_eq!(
            get(&c, addr, "/").await.unwrap(),
            (200, "good".into()),
            "request {i}"
        );
    }
    let stats = dp.stats.render();
    assert!(
        stat(
            &stats,
            "envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"backend\"}"
        ) >= 1,
        "{stats}"
    );
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_outlier_detection_ejections_total{envoy_cluster_name=\"backend\"}"
        ),
        1,
        "{stats}"
    );
    // Once ejected, the bad endpoint gets nothing: the 5xx count stays where ejection left it.
    let fivexx = stat(&stats, "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"backend\"}");
    assert_eq!(fivexx, 5, "{stats}");
}

#[tokio::test]
async fn http2_upstreams_and_access_logs() {
    let (app, _) = http_server("h2-app").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let mut manager = http_manager(
        "http",
        route_table("r", vec![forward_route("all", "/", &[("app", 1)])]),
    );
    manager.access_logs = vec![AccessLog {
        path: log_path.to_string_lossy().into_owned(),
    }];
    let mut cluster = static_cluster("app", &[app.addr]);
    cluster.protocol = UpstreamProtocol::Http2;
    let dp = RunningDataplane::start(http_config(manager).with_cluster(cluster));
    let addr = dp.addr("http").await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            get(&c, addr, "/logged?x=1").await.unwrap(),
            (200, "h2-app".into())
        );
    }
    // HTTP/2 multiplexes the three requests on one upstream connection.
    assert_eq!(
        stat(
            &dp.stats.render(),
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"app\"}"
        ),
        1
    );
    let path = Arc::new(log_path);
    let lines = test_support::eventually("three access log lines", Duration::from_secs(5), || {
        let path = path.clone();
        async move {
            let text = std::fs::read_to_string(&*path).ok()?;
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            (lines.len() == 3).then_some(lines)
        }
    })
    .await
    .unwrap();
    assert_eq!(lines[0]["path"], "/logged?x=1");
    assert_eq!(lines[0]["response_code"], 200);
    assert_eq!(lines[0]["upstream_cluster"], "app");
    assert_eq!(lines[0]["method"], "GET");
}

#[tokio::test]
async fn the_request_circuit_breaker_answers_503_overflow() {
    let (slow, _) = http_server_on(localhost(), "slow", Duration::from_millis(500)).await;
    let mut cluster = static_cluster("slow", &[slow.addr]);
    cluster.circuit_breakers.max_requests = 1;
    let dp = RunningDataplane::start(
        http_config(http_manager(
            "http",
            route_table("r", vec![forward_route("all", "/", &[("slow", 1)])]),
        ))
        .with_cluster(cluster),
    );
    let addr = dp.addr("http").await;
    let c = client();
    let first = {
        let c = c.clone();
        tokio::spawn(async move { get(&c, addr, "/").await })
    };
    let stats = dp.stats.clone();
    test_support::eventually(
        "the first request to be in flight",
        Duration::from_secs(5),
        || {
            let text = stats.render();
            async move {
                (stat(
                    &text,
                    "envoy_cluster_upstream_rq_active{envoy_cluster_name=\"slow\"}",
                ) == 1)
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();
    let res = c
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-envoy-overloaded"], "true");
    assert_eq!(first.await.unwrap().unwrap(), (200, "slow".into()));
    assert_eq!(
        get(&c, addr, "/").await.unwrap().0,
        200,
        "the slot is free again"
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads requests and never answers, and says when a connection to it
    // closes.
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = closed_tx.send(());
            });
        }
    });
    let dp = RunningDataplane::start(
        http_config(http_manager(
            "http",
            route_table("r", vec![forward_route("all", "/", &[("silent", 1)])]),
        ))
        .with_cluster(static_cluster("silent", &[upstream])),
    );
    let addr = dp.addr("http").await;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /never HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let stats = dp.stats.clone();
    let active = move || {
        stat(
            &stats.render(),
            "envoy_cluster_upstream_rq_active{envoy_cluster_name=\"silent\"}",
        )
    };
    let in_flight = active.clone();
    test_support::eventually("the request in flight", Duration::from_secs(5), || {
        let n = in_flight();
        async move { (n == 1).then_some(()) }
    })
    .await
    .unwrap();
    drop(client);
    // The route has no timeout: only the client's leaving ends the exchange.
    tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
        .await
        .expect("the upstream connection closed after the client left")
        .unwrap();
    test_support::eventually("no request in flight", Duration::from_secs(5), || {
        let n = active();
        async move { (n == 0).then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let (bad, bad_status) = http_server("bad").await;
    bad_status.store(503, Ordering::Relaxed);
    let mut route = forward_route("all", "/", &[("backend", 1)]);
    if let RouteAction::Forward(f) = &mut route.action {
        f.retry = Some(RetryPolicy {
            retry_on: RetryOn {
                five_xx: true,
                ..Default::default()
            },
            num_retries: 3,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            retriable_status_codes: Vec::new(),
        });
    }
    let mut cluster = static_cluster("backend", &[bad.addr]);
    cluster.circuit_breakers.max_retries = 0;
    let dp = RunningDataplane::start(
        http_config(http_manager("http", route_table("r", vec![route]))).with_cluster(cluster),
    );
    let addr = dp.addr("http").await;
    assert_eq!(
        get(&client(), addr, "/").await.unwrap(),
        (503, "bad".into())
    );
    let stats = dp.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_rq_retry_overflow{envoy_cluster_name=\"backend\"}"
        ),
        1,
        "{stats}"
    );
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"}"
        ),
        1,
        "{stats}"
    );
}

/// Faults restricted to callers, as the zone CP generates them for MeshFaultInjection: one
/// filter per source, selected by the caller's `x-kuma-tags` header, and one for a `rules`
/// entry matching a SPIFFE ID (a plaintext caller has none, so it never applies here).
#[tokio::test]
async fn faults_apply_only_to_the_callers_they_select() {
    let (backend, _) = http_server("backend").await;
    let routes = route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]);
    let mut manager = http_manager("http", routes);
    let abort = |status| FaultInjection {
        abort: Some(FaultAbort {
            status,
            percent: 100.0,
        }),
        ..FaultInjection::default()
    };
    manager.faults = vec![
        FaultInjection {
            headers: vec![HeaderMatch {
                name: "x-kuma-tags".into(),
                value: ValueMatch::Regex(".*&kuma.io/service=web&.*".into()),
                invert: false,
            }],
            ..abort(503)
        },
        FaultInjection {
            callers: vec![CallerMatch {
                uri_san: Some(ValueMatch::Exact("spiffe://default/web".into())),
                sni: None,
            }],
            ..abort(418)
        },
    ];
    let dp = RunningDataplane::start(
        http_config(manager).with_cluster(static_cluster("backend", &[backend.addr])),
    );
    let addr = dp.addr("http").await;
    let c = client();
    let call = |tags: &'static str| {
        let c = c.clone();
        async move {
            let req = http::Request::get(format!("http://{addr}/"))
                .header("x-kuma-tags", tags)
                .body(Default::default())
                .unwrap();
            let res = tokio::time::timeout(Duration::from_secs(10), c.request(req))
                .await
                .unwrap()
                .unwrap();
            res.status().as_u16()
        }
    };
    for _ in 0..20 {
        assert_eq!(call("&kuma.io/service=web&").await, 503);
        assert_eq!(call("&kuma.io/service=billing&").await, 200);
    }
    let stats = dp.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_http_fault_aborts_injected{envoy_http_conn_manager_prefix=\"http\"}"
        ),
        20,
        "{stats}"
    );
}

/// A gRPC health check (`grpc.health.v1.Health/Check` over HTTP/2, as the zone CP generates for
/// a MeshHealthCheck on a gRPC service) takes a NOT_SERVING host out of the rotation and brings
/// it back once it serves again.
#[tokio::test]
async fn grpc_health_checks_follow_the_serving_status() {
    let (a, _) = grpc_health_server("a").await;
    let (b, b_serving) = grpc_health_server("b").await;
    b_serving.store(2, Ordering::Relaxed);
    let mut cluster = static_cluster("backend", &[a.addr, b.addr]);
    cluster.health_checks = vec![HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        kind: HealthCheckKind::Grpc {
            service_name: "backend".into(),
            authority: String::new(),
        },
    }];
    let routes = route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]);
    let dp =
        RunningDataplane::start(http_config(http_manager("http", routes)).with_cluster(cluster));
    let addr = dp.addr("http").await;
    let c = client();
    let served_by = |n: usize| {
        let c = c.clone();
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..n {
                let (status, body) = get(&c, addr, "/").await.ok()?;
                (status == 200).then_some(())?;
                seen.insert(body);
            }
            Some(seen)
        }
    };
    test_support::eventually("a serving alone", Duration::from_secs(5), || async {
        (served_by(20).await? == ["a".to_owned()].into()).then_some(())
    })
    .await
    .unwrap();
    let stats = dp.stats.render();
    assert!(
        stat(
            &stats,
            "envoy_cluster_health_check_failure{envoy_cluster_name=\"backend\"}"
        ) > 0
    );
    b_serving.store(1, Ordering::Relaxed);
    test_support::eventually("b back in rotation", Duration::from_secs(5), || async {
        (served_by(10).await? == ["a".to_owned(), "b".to_owned()].into()).then_some(())
    })
    .await
    .unwrap();
}

/// A TCP health check with payloads (MeshHealthCheck `tcp.send`/`receive`): the check writes
/// `send` and the host is healthy once the reply holds the `receive` blocks. Here the payload
/// is an HTTP request, so the reply's status line decides.
#[tokio::test]
async fn tcp_payload_health_checks_match_the_reply() {
    let (a, _) = http_server("a").await;
    let (b, b_status) = http_server("b").await;
    b_status.store(503, Ordering::Relaxed);
    let mut cluster = static_cluster("backend", &[a.addr, b.addr]);
    cluster.health_checks = vec![HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        kind: HealthCheckKind::TcpPayload {
            send: b"GET /health HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n".to_vec(),
            receive: vec![b"HTTP/1.1 ".to_vec(), b"200".to_vec()],
        },
    }];
    let routes = route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]);
    let dp =
        RunningDataplane::start(http_config(http_manager("http", routes)).with_cluster(cluster));
    let addr = dp.addr("http").await;
    let c = client();
    let served_by = |n: usize| {
        let c = c.clone();
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..n {
                let (status, body) = get(&c, addr, "/").await.ok()?;
                (status == 200).then_some(())?;
                seen.insert(body);
            }
            Some(seen)
        }
    };
    test_support::eventually("a serving alone", Duration::from_secs(5), || async {
        (served_by(20).await? == ["a".to_owned()].into()).then_some(())
    })
    .await
    .unwrap();
    b_status.store(200, Ordering::Relaxed);
    test_support::eventually("b back in rotation", Duration::from_secs(5), || async {
        (served_by(10).await? == ["a".to_owned(), "b".to_owned()].into()).then_some(())
    })
    .await
    .unwrap();
}

/// A MeshHTTPRoute RequestRedirect: the proxy answers the redirect itself, with the request's
/// URL rewritten in `Location`; other routes still forward.
#[tokio::test]
async fn a_redirect_route_answers_with_the_rewritten_location() {
    let (backend, _) = http_server("backend").await;
    let mut redirect = forward_route("old", "/old", &[("backend", 1)]);
    redirect.action = RouteAction::Redirect(Redirect {
        status: 308,
        scheme: Some("https".into()),
        host: Some("example.com".into()),
        port: None,
        path: RedirectPath::Prefix("/new".into()),
        strip_query: false,
    });
    let routes = route_table(
        "r",
        vec![redirect, forward_route("all", "/", &[("backend", 1)])],
    );
    let dp = RunningDataplane::start(
        http_config(http_manager("http", routes))
            .with_cluster(static_cluster("backend", &[backend.addr])),
    );
    let addr = dp.addr("http").await;
    let c = client();
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        c.get(format!("http://{addr}/old/page?x=1").parse().unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status().as_u16(), 308);
    assert_eq!(
        res.headers()["location"],
        "https://example.com/new/page?x=1"
    );
    assert_eq!(
        get(&c, addr, "/other").await.unwrap(),
        (200, "backend".into())
    );
    let stats = dp.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"}"
        ),
        1
    );
}

/// Regex path rewrites (the zone CP's MeshHTTPRoute URLRewrite `ReplaceFullPath` is
/// `^.*$` -> the new path; capture groups as Envoy's `\N`): the upstream sees the new path,
/// the query kept.
#[tokio::test]
async fn regex_rewrites_change_the_upstream_path() {
    let upstream = path_server().await;
    let rewrite = |name: &str, prefix: &str, pattern: &str, substitution: &str| {
        let mut route = forward_route(name, prefix, &[("up", 1)]);
        if let RouteAction::Forward(f) = &mut route.action {
            f.regex_rewrite = Some(RegexRewrite {
                pattern: pattern.into(),
                substitution: substitution.into(),
            });
        }
        route
    };
    let routes = route_table(
        "r",
        vec![
            rewrite("whole", "/old", "^.*$", "/new"),
            rewrite(
                "groups",
                "/service",
                "^/service/([^/]+)(/.*)$",
                "\\2/instance/\\1",
            ),
        ],
    );
    let dp = RunningDataplane::start(
        http_config(http_manager("http", routes))
            .with_cluster(static_cluster("up", &[upstream.addr])),
    );
    let addr = dp.addr("http").await;
    let c = client();
    assert_eq!(
        get(&c, addr, "/old/page?x=1").await.unwrap(),
        (200, "/new?x=1".into())
    );
    assert_eq!(
        get(&c, addr, "/service/foo/v1/api").await.unwrap(),
        (200, "/v1/api/instance/foo".into())
    );
}

/// A fault's response bandwidth limit (MeshFaultInjection `responseBandwidth`): the body
/// arrives whole, no faster than the limit.
#[tokio::test]
async fn a_bandwidth_fault_slows_the_response_to_its_rate() {
    let big = "x".repeat(32 * 1024);
    let (backend, _) = http_server(&big).await;
    let routes = route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]);
    let mut manager = http_manager("http", routes);
    manager.faults = vec![FaultInjection {
        response_bandwidth: Some(FaultBandwidth {
            kbps: 64,
            percent: 100.0,
        }),
        ..FaultInjection::default()
    }];
    let dp = RunningDataplane::start(
        http_config(manager).with_cluster(static_cluster("backend", &[backend.addr])),
    );
    let addr = dp.addr("http").await;
    let c = client();
    let started = std::time::Instant::now();
    let (status, body) = get(&c, addr, "/").await.unwrap();
    let took = started.elapsed();
    assert_eq!((status, body.len()), (200, big.len()));
    // 32 KiB at 64 KiB/s: the last piece (6.4 KiB each) is due after 25.6 KiB, 0.4 s.
    assert!(took >= Duration::from_millis(390), "took {took:?}");
}

/// At the cluster's `max_connections`, requests wait as pending requests (bounded by
/// `max_pending_requests`) for a connection to come back, as in Envoy, instead of getting 503
/// at once.
#[tokio::test]
async fn at_max_connections_requests_wait_for_a_connection() {
    let (slow, _) = http_server_on(localhost(), "slow", Duration::from_millis(300)).await;
    let mut cluster = static_cluster("slow", &[slow.addr]);
    cluster.circuit_breakers.max_connections = 1;
    let dp = RunningDataplane::start(
        http_config(http_manager(
            "http",
            route_table("r", vec![forward_route("all", "/", &[("slow", 1)])]),
        ))
        .with_cluster(cluster),
    );
    let addr = dp.addr("http").await;
    let c = client();
    let send = || {
        let c = c.clone();
        tokio::spawn(async move { get(&c, addr, "/").await })
    };
    let mut requests = vec![send()];
    // The first request holds the one connection; the next ones find the cluster at its limit.
    let stats = dp.stats.clone();
    test_support::eventually("the first connection", Duration::from_secs(5), || {
        let text = stats.render();
        async move {
            (stat(
                &text,
                "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"slow\"}",
            ) == 1)
                .then_some(())
        }
    })
    .await
    .unwrap();
    requests.extend((0..3).map(|_| send()));
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap(), (200, "slow".into()));
    }
    let stats = dp.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"slow\"}"
        ),
        1,
        "one upstream connection served them all"
    );
    assert!(
        stat(
            &stats,
            "envoy_cluster_upstream_cx_overflow{envoy_cluster_name=\"slow\"}"
        ) > 0,
        "{stats}"
    );
}

/// An HTTP/2-only server: `/health` answers 200 to an HTTP/2 request carrying `x-check: yes`
/// (503 otherwise) and records each check's `:authority`; other paths answer `h2`.
async fn h2_health_server() -> (Server, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            conns.spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let mut res = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"h2"),
                            ));
                            if req.uri().path() == "/health" {
                                record.lock().unwrap().push(
                                    req.uri()
                                        .authority()
                                        .map(|a| a.to_string())
                                        .unwrap_or_default(),
                                );
                                let ok = req.version() == http::Version::HTTP_2
                                    && req.headers().get("x-check").is_some_and(|v| v == "yes");
                                if !ok {
                                    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                }
                            }
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                        .await;
            });
        }
    });
    (Server::new(addr, task), seen)
}

/// HTTP health checks of an `http2` service (the zone CP sets `codec_client_type: HTTP2`) go
/// out as HTTP/2 with their `request_headers_to_add`, and `:authority` the cluster's name.
#[tokio::test]
async fn http2_health_checks_speak_http2_and_send_their_headers() {
    let (server, seen) = h2_health_server().await;
    let mut cluster = static_cluster("backend", &[server.addr]);
    cluster.protocol = UpstreamProtocol::Http2;
    cluster.health_checks = vec![HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        kind: HealthCheckKind::Http {
            path: "/health".into(),
            host: String::new(),
            request_headers: vec![("x-check".into(), "yes".into())],
            http2: true,
            expected_statuses: vec![(200, 201)],
        },
    }];
    let routes = route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]);
    let dp =
        RunningDataplane::start(http_config(http_manager("http", routes)).with_cluster(cluster));
    let addr = dp.addr("http").await;
    let stats = dp.stats.clone();
    test_support::eventually("a passing health check", Duration::from_secs(5), || {
        let text = stats.render();
        async move {
            (stat(
                &text,
                "envoy_cluster_health_check_success{envoy_cluster_name=\"backend\"}",
            ) >= 2)
                .then_some(())
        }
    })
    .await
    .unwrap();
    let text = dp.stats.render();
    assert_eq!(
        stat(
            &text,
            "envoy_cluster_health_check_failure{envoy_cluster_name=\"backend\"}"
        ),
        0,
        "{text}"
    );
    assert_eq!(seen.lock().unwrap()[0], "backend");
    assert_eq!(get(&client(), addr, "/").await.unwrap(), (200, "h2".into()));
}

/// Reads one HTTP/1.1 response with a content-length body from `stream`: its head (status
/// line and headers, lower-cased names) and its body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before a response head: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = seen[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed in the body");
        body.extend_from_slice(&buf[..n]);
    }
    (head, String::from_utf8_lossy(&body).to_string())
}

/// The downstream HTTP/1.1 server: request bodies framed by content-length and by chunked
/// encoding reach the upstream whole on one kept-alive connection (also through a route with
/// retries, which buffers them), `Expect: 100-continue` is answered by the proxy, a bad head
/// gets 400 naming what is wrong, and a client speaking HTTP/2 with prior knowledge is served
/// on the same listener.
#[tokio::test]
async fn downstream_request_bodies_expect_continue_bad_heads_and_http2() {
    use tokio::io::AsyncWriteExt;
    let upstream = serve_http(
        localhost(),
        |req: http::Request<hyper::body::Incoming>| async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let text = format!(
                "{} {} {:?} expect={:?} {}",
                parts.method,
                parts.uri.path(),
                parts.version,
                parts.headers.get("expect"),
                String::from_utf8_lossy(&body)
            );
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)))
        },
    )
    .await;
    let mut retried = forward_route("retried", "/retried", &[("echo", 1)]);
    if let RouteAction::Forward(f) = &mut retried.action {
        f.retry = Some(RetryPolicy {
            retry_on: RetryOn {
                five_xx: true,
                ..Default::default()
            },
            num_retries: 2,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            retriable_status_codes: Vec::new(),
        });
    }
    let routes = route_table(
        "r",
        vec![retried, forward_route("all", "/", &[("echo", 1)])],
    );
    let dp = RunningDataplane::start(
        http_config(http_manager("http", routes))
            .with_cluster(static_cluster("echo", &[upstream.addr])),
    );
    let addr = dp.addr("http").await;

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "POST /a HTTP/1.1 expect=None hello");

    stream
        .write_all(b"PUT /retried HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (interim, rest) = read_response(&mut stream).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(rest, "");
    stream
        .write_all(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "PUT /retried HTTP/1.1 expect=None Wikipedia");

    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.starts_with("invalid request head"), "{body}");
    assert!(closed(&mut stream).await);

    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        h2.request(
            http::Request::post(format!("http://{addr}/h2"))
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"over h2",
                )))
                .unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = {
        use http_body_util::BodyExt;
        response.into_body().collect().await.unwrap().to_bytes()
    };
    assert_eq!(body, "POST /h2 HTTP/1.1 expect=None over h2");
    let stats = dp.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"echo\"}"
        ),
        3,
        "{stats}"
    );
}
