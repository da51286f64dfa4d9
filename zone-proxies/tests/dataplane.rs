//! The data plane's life: TCP proxying, listeners following configuration updates without
//! dropping established connections, and draining on shutdown.

mod common;

use std::time::Duration;

use common::*;
use tokio::net::TcpStream;
use zone_proxies::config::ProxyConfig;
use zone_proxies::testing::*;

#[tokio::test]
async fn tcp_proxy_carries_bytes_both_ways() {
    let upstream = echo_server().await;
    let dp = RunningDataplane::start(
        ProxyConfig::default()
            .with_cluster(static_cluster("echo", &[upstream.addr]))
            .with_listener(listener(
                "tcp",
                localhost(),
                vec![tcp_chain("tcp", &[("echo", 1)])],
            )),
    );
    let mut conn = TcpStream::connect(dp.addr("tcp").await).await.unwrap();
    assert_eq!(echo(&mut conn, b"hello").await.unwrap(), b"hello");
    let big = vec![7u8; 1 << 20];
    assert_eq!(echo(&mut conn, &big).await.unwrap(), big);
    drop(conn);
    let stats = dp.stats.render();
    assert!(
        stats.contains("envoy_listener_downstream_cx_total{envoy_listener_name=\"tcp\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"echo\"} 1"),
        "{stats}"
    );
    dp.stop().await.unwrap();
}

#[tokio::test]
async fn a_connect_failure_moves_on_to_the_next_endpoint() {
    let upstream = echo_server().await;
    let dead = {
        let s = echo_server().await;
        let addr = s.addr;
        s.stop().await;
        addr
    };
    let dp = RunningDataplane::start(
        ProxyConfig::default()
            .with_cluster(static_cluster("echo", &[dead, upstream.addr]))
            .with_listener(listener(
                "tcp",
                localhost(),
                vec![tcp_chain("tcp", &[("echo", 1)])],
            )),
    );
    let addr = dp.addr("tcp").await;
    for i in 0..6u8 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo(&mut conn, &[i]).await.unwrap(), [i]);
    }
    let failed = stat(
        &dp.stats.render(),
        "envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"echo\"}",
    );
    assert!(failed >= 1, "the dead endpoint was tried: {failed}");
}

/// Waits until `cluster` has exactly one request with its upstream (5 s at most).
async fn one_request_active(dp: &RunningDataplane, cluster: &str) {
    let wanted = format!("envoy_cluster_upstream_rq_active{{envoy_cluster_name=\"{cluster}\"}} 1");
    let stats = dp.stats.clone();
    test_support::eventually(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || {
            let found = stats.render().contains(&wanted);
            async move { found.then_some(()) }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn config_updates_keep_established_connections() {
    let first = echo_server().await;
    let second = echo_server().await;
    let dp = RunningDataplane::start(
        ProxyConfig::default()
            .with_cluster(static_cluster("echo", &[first.addr]))
            .with_listener(listener(
                "tcp",
                localhost(),
                vec![tcp_chain("tcp", &[("echo", 1)])],
            )),
    );
    let addr = dp.addr("tcp").await;
    let mut established = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo(&mut established, b"before").await.unwrap(), b"before");

    // The cluster moves to another endpoint and a second listener appears: the old connection
    // stays on its upstream, new connections go to the new one.
    dp.update(|c| {
        *c = c
            .clone()
            .with_cluster(static_cluster("echo", &[second.addr]))
            .with_listener(listener(
                "other",
                localhost(),
                vec![tcp_chain("other", &[("echo", 1)])],
            ))
    });
    let other = dp.addr("other").await;
    assert_eq!(echo(&mut established, b"during").await.unwrap(), b"during");
    first.stop().await;
    let mut fresh = TcpStream::connect(other).await.unwrap();
    assert_eq!(echo(&mut fresh, b"fresh").await.unwrap(), b"fresh");

    // Removing the listener stops accepting; its connection carries on.
    let mut on_removed = TcpStream::connect(other).await.unwrap();
    assert_eq!(echo(&mut on_removed, b"x").await.unwrap(), b"x");
    dp.update(|c| {
        c.listeners.remove("other");
    });
    dp.wait_bound(|b| !b.contains_key("other")).await;
    assert!(
        TcpStream::connect(other).await.is_err(),
        "a removed listener accepts no more"
    );
    assert_eq!(
        echo(&mut on_removed, b"still here").await.unwrap(),
        b"still here"
    );
    assert_eq!(echo(&mut fresh, b"and here").await.unwrap(), b"and here");
    // TCP connections cannot be drained gracefully: close them so stopping is quick.
    drop((established, fresh, on_removed));
    dp.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let (slow, _) = http_server_on(localhost(), "slow", Duration::from_millis(500)).await;
    let mut dp = RunningDataplane::start_with_drain(
        ProxyConfig::default()
            .with_cluster(static_cluster("slow", &[slow.addr]))
            .with_listener(listener(
                "http",
                localhost(),
                vec![http_chain(
                    "http",
                    http_manager(
                        "http",
                        route_table("r", vec![forward_route("all", "/", &[("slow", 1)])]),
                    ),
                )],
            )),
        Duration::from_secs(5),
    );
    let addr = dp.addr("http").await;
    let c = client();
    let in_flight = tokio::spawn(async move { get(&c, addr, "/").await });
    // Shut down once the request is with the upstream.
    one_request_active(&dp, "slow").await;
    dp.begin_shutdown();
    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (200, "slow"));
    dp.join().await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no listener after shutdown"
    );
}

#[tokio::test]
async fn the_drain_deadline_closes_what_is_left() {
    let upstream = echo_server().await;
    let mut dp = RunningDataplane::start_with_drain(
        ProxyConfig::default()
            .with_cluster(static_cluster("echo", &[upstream.addr]))
            .with_listener(listener(
                "tcp",
                localhost(),
                vec![tcp_chain("tcp", &[("echo", 1)])],
            )),
        Duration::from_millis(200),
    );
    let mut conn = TcpStream::connect(dp.addr("tcp").await).await.unwrap();
    assert_eq!(echo(&mut conn, b"hi").await.unwrap(), b"hi");
    dp.begin_shutdown();
    assert!(
        closed(&mut conn).await,
        "an idle TCP connection is closed at the drain deadline"
    );
    dp.join().await.unwrap();
}

#[tokio::test]
async fn the_tcp_idle_timeout_closes_quiet_connections() {
    let upstream = echo_server().await;
    let mut chain = tcp_chain("tcp", &[("echo", 1)]);
    if let zone_proxies::config::ChainHandler::Tcp(tcp) = &mut chain.handler {
        tcp.idle_timeout = Some(Duration::from_millis(300));
    }
    let dp = RunningDataplane::start(
        ProxyConfig::default()
            .with_cluster(static_cluster("echo", &[upstream.addr]))
            .with_listener(listener("tcp", localhost(), vec![chain])),
    );
    let mut conn = TcpStream::connect(dp.addr("tcp").await).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(echo(&mut conn, b"ping").await.unwrap(), b"ping");
    assert!(closed(&mut conn).await);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the idle timeout"
    );
}

/// The network local rate limit (MeshRateLimit `local.tcp.connectionRate`): each new connection
/// takes a token from the chain's bucket; without one it is closed before any byte flows.
#[tokio::test]
async fn the_connection_rate_limit_closes_connections_over_the_rate() {
    let upstream = echo_server().await;
    let mut chain = tcp_chain("tcp", &[("echo", 1)]);
    chain.connection_rate_limit = Some(zone_proxies::config::LocalRateLimit {
        max_tokens: 2,
        tokens_per_fill: 2,
        fill_interval: Duration::from_secs(3600),
        status: 0,
    });
    let dp = RunningDataplane::start(
        ProxyConfig::default()
            .with_cluster(static_cluster("echo", &[upstream.addr]))
            .with_listener(listener("tcp", localhost(), vec![chain])),
    );
    let addr = dp.addr("tcp").await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echo(&mut conn, b"hello").await.unwrap(), b"hello");
        kept.push(conn);
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(closed(&mut over).await, "the third connection is closed");
    // The connections admitted before are not affected.
    assert_eq!(echo(&mut kept[0], b"still").await.unwrap(), b"still");
    let stats = dp.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_listener_downstream_cx_local_rate_limited{envoy_listener_name=\"tcp\"}"
        ),
        1,
        "{stats}"
    );
    dp.stop().await.unwrap();
}

/// An HTTP server answering `name`, and how many connections it has open.
async fn counting_http_server(
    name: &'static str,
) -> (Server, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let open = counter.clone();
            open.fetch_add(1, Ordering::SeqCst);
            conns.spawn(async move {
                let service = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(name)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (Server::new(addr, task), open)
}

async fn open_until(open: &std::sync::atomic::AtomicUsize, what: &str, wanted: usize) {
    test_support::eventually(what, Duration::from_secs(5), || async {
        (open.load(std::sync::atomic::Ordering::SeqCst) == wanted).then_some(())
    })
    .await
    .unwrap();
}

/// Pooled upstream connections do not outlive their endpoint or the proxy: an endpoint gone
/// from its cluster has its idle connections closed, and so has every endpoint when the proxy
/// stops (the upstream, often a draining proxy, would otherwise wait on them).
#[tokio::test]
async fn pooled_upstream_connections_close_with_their_endpoint_and_the_proxy() {
    let (a, a_open) = counting_http_server("a").await;
    let (b, b_open) = counting_http_server("b").await;
    let routes = route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]);
    let dp = RunningDataplane::start_with_drain(
        ProxyConfig::default()
            .with_cluster(static_cluster("backend", &[a.addr]))
            .with_listener(listener(
                "http",
                localhost(),
                vec![http_chain("http", http_manager("http", routes))],
            )),
        Duration::from_secs(25),
    );
    let addr = dp.addr("http").await;
    let c = client();
    assert_eq!(get(&c, addr, "/").await.unwrap(), (200, "a".into()));
    assert_eq!(a_open.load(std::sync::atomic::Ordering::SeqCst), 1);
    dp.update(|config| {
        config.clusters.insert(
            "backend".into(),
            static_cluster("backend", &[b.addr]).into(),
        );
    });
    until_answered_by(&c, addr, "b", "b serving").await;
    open_until(&a_open, "a's pooled connection to close", 0).await;
    assert_eq!(b_open.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(c);
    let started = std::time::Instant::now();
    dp.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the proxy stopped in {:?}",
        started.elapsed()
    );
    open_until(&b_open, "b's pooled connection to close", 0).await;
}

/// An upstream that closes a keep-alive connection after answering on it (a server's short
/// keep-alive timeout): the proxy notices while the connection is idle in its pool and closes
/// its side at once, rather than keep it (CLOSE_WAIT, counted active) until the next request
/// finds it; the next request gets a new connection.
#[tokio::test]
async fn a_pooled_connection_the_upstream_closes_while_idle_is_closed_at_once() {
    use tokio::io::AsyncWriteExt;
    let accepting = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let upstream = accepting.local_addr().unwrap();
    let (close, closing) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut s, _)) = accepting.accept().await else {
                return;
            };
            let mut closing = closing.clone();
            conns.spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbye!")
                    .await;
                let _ = closing.wait_for(|close| *close).await;
            });
        }
    });
    let _upstream = Server::new(upstream, task);
    let routes = route_table("r", vec![forward_route("all", "/", &[("backend", 1)])]);
    let dp = RunningDataplane::start(
        ProxyConfig::default()
            .with_cluster(static_cluster("backend", &[upstream]))
            .with_listener(listener(
                "http",
                localhost(),
                vec![http_chain("http", http_manager("http", routes))],
            )),
    );
    let addr = dp.addr("http").await;
    let c = client();
    assert_eq!(get(&c, addr, "/").await.unwrap(), (200, "bye!".into()));
    let active = "envoy_cluster_upstream_cx_active{envoy_cluster_name=\"backend\"}";
    assert_eq!(stat(&dp.stats.render(), active), 1);
    close.send_replace(true);
    let stats = dp.stats.clone();
    test_support::eventually(
        "the proxy to close the connection the upstream closed",
        Duration::from_secs(5),
        || {
            let open = stat(&stats.render(), active);
            async move { (open == 0).then_some(()) }
        },
    )
    .await
    .unwrap();
    close.send_replace(false);
    assert_eq!(get(&c, addr, "/").await.unwrap(), (200, "bye!".into()));
    dp.stop().await.unwrap();
}

#[tokio::test]
async fn worker_threads_serve_follow_updates_stop_accepting_and_drain() {
    let (first, _) = http_server("first").await;
    let (second, _) = http_server("second").await;
    let (slow, _) = http_server_on(localhost(), "slow", Duration::from_millis(300)).await;
    let routes = route_table(
        "r",
        vec![
            forward_route("slow", "/slow", &[("slow", 1)]),
            forward_route("all", "/", &[("app", 1)]),
        ],
    );
    let workers = std::sync::Arc::new(zone_proxies::workers::Workers::start(2).unwrap());
    let mut dp = RunningDataplane::start_on_workers(
        ProxyConfig::default()
            .with_cluster(static_cluster("app", &[first.addr]))
            .with_cluster(static_cluster("slow", &[slow.addr]))
            .with_listener(listener(
                "http",
                localhost(),
                vec![http_chain("http", http_manager("http", routes))],
            )),
        workers,
    );
    let addr = dp.addr("http").await;
    let c = client();
    // Concurrent requests open several connections, accepted by either worker.
    let answers = futures::future::join_all((0..40).map(|_| get(&c, addr, "/"))).await;
    for answer in answers {
        assert_eq!(answer.unwrap(), (200, "first".to_string()));
    }

    // An update reaches the connections the workers hold.
    dp.update(|c| {
        *c = c
            .clone()
            .with_cluster(static_cluster("app", &[second.addr]))
    });
    until_answered_by(
        &c,
        addr,
        "second",
        "kept connections to see the new endpoint",
    )
    .await;

    // Shutdown: every worker stops accepting, an in-flight request finishes.
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { get(&c, addr, "/slow").await }
    });
    one_request_active(&dp, "slow").await;
    dp.begin_shutdown();
    assert_eq!(in_flight.await.unwrap().unwrap(), (200, "slow".to_string()));
    dp.join().await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no worker accepts after shutdown"
    );
}
