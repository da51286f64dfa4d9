//! Mesh mTLS through real proxies: sidecar -> sidecar with SPIFFE identities verified on both
//! ends, network RBAC on the client identity, a foreign CA refused, and SNI passthrough through
//! an ingress-shaped listener (the cross-zone path sidecar -> ingress -> sidecar).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use tokio::net::TcpStream;
use zone_proxies::config::*;
use zone_proxies::testing::*;

const CERT: &str = "identity_cert:default";
const CA: &str = "mesh_ca:default";

/// The inbound side of a sidecar for `service`: mTLS terminated, then TCP to the local app.
fn inbound(pki: &Pki, service: &str, app: SocketAddr, rbac: Option<Rbac>) -> ProxyConfig {
    let mut chain = tcp_chain("inbound", &[("localhost", 1)]);
    chain.tls = Some(DownstreamTls {
        certificate: CERT.into(),
        trusted_ca: Some(CA.into()),
        require_client_certificate: true,
        match_san: vec![ValueMatch::Prefix("spiffe://default/".into())],
    });
    chain.rbac = rbac;
    ProxyConfig::default()
        .with_secret(
            CERT,
            pki.identity_secret(&format!("spiffe://default/{service}")),
        )
        .with_secret(CA, pki.ca_secret())
        .with_cluster(static_cluster("localhost", &[app]))
        .with_listener(listener("inbound", localhost(), vec![chain]))
}

/// The outbound side of a sidecar for `me` calling `service` at `endpoint` with SNI `sni`.
fn outbound(pki: &Pki, me: &str, service: &str, sni: &str, endpoint: SocketAddr) -> ProxyConfig {
    let mut cluster = static_cluster(service, &[endpoint]);
    cluster.tls = Some(UpstreamTls {
        sni: sni.into(),
        certificate: Some(CERT.into()),
        trusted_ca: Some(CA.into()),
        match_san: vec![ValueMatch::Exact(format!("spiffe://default/{service}"))],
        alpn: Vec::new(),
    });
    ProxyConfig::default()
        .with_secret(CERT, pki.identity_secret(&format!("spiffe://default/{me}")))
        .with_secret(CA, pki.ca_secret())
        .with_cluster(cluster)
        .with_listener(listener(
            "outbound",
            localhost(),
            vec![tcp_chain("outbound", &[(service, 1)])],
        ))
}

fn allow_only(spiffe: &str) -> Rbac {
    Rbac {
        action: RbacAction::Allow,
        policies: [(
            "allowed".to_string(),
            vec![Principal::UriSan(ValueMatch::Exact(spiffe.into()))],
        )]
        .into(),
    }
}

#[tokio::test]
async fn sidecar_to_sidecar_mtls_with_spiffe_identities() {
    let pki = Pki::new("default");
    let app = echo_server().await;
    let api = RunningDataplane::start(inbound(
        &pki,
        "api",
        app.addr,
        Some(allow_only("spiffe://default/web")),
    ));
    let api_addr = api.addr("inbound").await;

    let web = RunningDataplane::start(outbound(&pki, "web", "api", "api", api_addr));
    let mut conn = TcpStream::connect(web.addr("outbound").await)
        .await
        .unwrap();
    assert_eq!(echo(&mut conn, b"over mTLS").await.unwrap(), b"over mTLS");

    // A client whose identity RBAC does not allow: connection closed.
    let other = RunningDataplane::start(outbound(&pki, "other", "api", "api", api_addr));
    let mut conn = TcpStream::connect(other.addr("outbound").await)
        .await
        .unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"denied?").await;
    assert!(closed(&mut conn).await, "RBAC closes the connection");
    let stats = api.stats.render();
    assert_eq!(
        stat(
            &stats,
            "envoy_listener_downstream_cx_rbac_denied{envoy_listener_name=\"inbound\"}"
        ),
        1,
        "{stats}"
    );

    // A server presenting another service's identity: the client side refuses it.
    let wrong = RunningDataplane::start(outbound(&pki, "web", "db", "db", api_addr));
    let mut conn = TcpStream::connect(wrong.addr("outbound").await)
        .await
        .unwrap();
    assert!(
        closed(&mut conn).await,
        "a server SAN other than spiffe://default/db is refused"
    );
    let stats = wrong.stats.render();
    assert!(
        stat(
            &stats,
            "envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"db\"}"
        ) >= 1,
        "{stats}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_mesh_ca_is_refused() {
    let pki = Pki::new("default");
    let foreign = Pki::new("default");
    let app = echo_server().await;
    let api = RunningDataplane::start(inbound(&pki, "api", app.addr, None));
    let api_addr = api.addr("inbound").await;

    // The client trusts the right CA but its own certificate comes from another CA.
    let mut config = outbound(&pki, "web", "api", "api", api_addr);
    config = config.with_secret(CERT, foreign.identity_secret("spiffe://default/web"));
    let web = RunningDataplane::start(config);
    let mut conn = TcpStream::connect(web.addr("outbound").await)
        .await
        .unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut conn, b"let me in").await;
    assert!(
        closed(&mut conn).await,
        "the inbound side refuses the foreign client certificate"
    );

    // The same client with a certificate from the mesh CA gets through.
    web.update(|c| {
        c.secrets.insert(
            CERT.into(),
            Arc::new(pki.identity_secret("spiffe://default/web")),
        );
    });
    let addr = web.addr("outbound").await;
    test_support::eventually(
        "the new certificate to be used",
        std::time::Duration::from_secs(5),
        || async move {
            let mut conn = TcpStream::connect(addr).await.ok()?;
            (echo(&mut conn, b"ok").await.ok()? == b"ok").then_some(())
        },
    )
    .await
    .unwrap();
    let stats = api.stats.render();
    assert!(
        stat(
            &stats,
            "envoy_listener_downstream_cx_tls_handshake_error{envoy_listener_name=\"inbound\"}"
        ) >= 1,
        "{stats}"
    );
}

#[tokio::test]
async fn sni_passthrough_through_an_ingress() {
    let pki = Pki::new("default");
    let app = echo_server().await;
    let api = RunningDataplane::start(inbound(
        &pki,
        "api",
        app.addr,
        Some(allow_only("spiffe://default/web")),
    ));
    let api_addr = api.addr("inbound").await;

    // The zone ingress: TLS inspected, not terminated; the SNI picks the service's cluster.
    let sni = "api.0.zone-2.default.mesh";
    let mut chain = tcp_chain(sni, &[("default:api", 1)]);
    chain.server_names = vec![sni.into()];
    let mut other_chain = tcp_chain("web.0.zone-2.default.mesh", &[("default:web", 1)]);
    other_chain.server_names = vec!["web.0.zone-2.default.mesh".into()];
    let mut ingress_listener = listener("ingress", localhost(), vec![chain, other_chain]);
    ingress_listener.inspect_tls = true;
    let ingress = RunningDataplane::start(
        ProxyConfig::default()
            .with_cluster(static_cluster("default:api", &[api_addr]))
            .with_cluster(static_cluster("default:web", &[app.addr]))
            .with_listener(ingress_listener),
    );
    let ingress_addr = ingress.addr("ingress").await;

    let web = RunningDataplane::start(outbound(&pki, "web", "api", sni, ingress_addr));
    let mut conn = TcpStream::connect(web.addr("outbound").await)
        .await
        .unwrap();
    assert_eq!(echo(&mut conn, b"cross-zone").await.unwrap(), b"cross-zone");

    // An SNI no chain serves is closed at the ingress.
    let unknown = RunningDataplane::start(outbound(
        &pki,
        "web",
        "api",
        "db.0.zone-2.default.mesh",
        ingress_addr,
    ));
    let mut conn = TcpStream::connect(unknown.addr("outbound").await)
        .await
        .unwrap();
    assert!(closed(&mut conn).await);
    let stats = ingress.stats.render();
    // The client side tries its connect attempts (3), each refused at the ingress.
    assert!(
        stat(
            &stats,
            "envoy_listener_downstream_cx_no_filter_chain_match{envoy_listener_name=\"ingress\"}"
        ) >= 1,
        "{stats}"
    );
    assert_eq!(
        stat(
            &stats,
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"default:api\"}"
        ),
        1,
        "{stats}"
    );
}

/// HTTP between sidecars over mTLS: the inbound HTTP manager's RBAC decides per request on the
/// caller's SPIFFE identity (403 when denied), HTTP/2 negotiated by ALPN on the mTLS hop.
#[tokio::test]
async fn http_over_mtls_with_per_request_rbac() {
    let pki = Pki::new("default");
    let (app, _) = http_server("api-app").await;
    let mut manager = http_manager(
        "inbound",
        route_table(
            "inbound",
            vec![forward_route("all", "/", &[("localhost", 1)])],
        ),
    );
    manager.rbac = Some(allow_only("spiffe://default/web"));
    let mut chain = http_chain("inbound", manager);
    chain.tls = Some(DownstreamTls {
        certificate: CERT.into(),
        trusted_ca: Some(CA.into()),
        require_client_certificate: true,
        match_san: Vec::new(),
    });
    let api = RunningDataplane::start(
        ProxyConfig::default()
            .with_secret(CERT, pki.identity_secret("spiffe://default/api"))
            .with_secret(CA, pki.ca_secret())
            .with_cluster(static_cluster("localhost", &[app.addr]))
            .with_listener(listener("inbound", localhost(), vec![chain])),
    );
    let api_addr = api.addr("inbound").await;

    let caller = |me: &str| {
        let mut cluster = static_cluster("api", &[api_addr]);
        cluster.tls = Some(UpstreamTls {
            sni: "api".into(),
            certificate: Some(CERT.into()),
            trusted_ca: Some(CA.into()),
            match_san: vec![ValueMatch::Exact("spiffe://default/api".into())],
            alpn: vec!["h2".into()],
        });
        RunningDataplane::start(
            ProxyConfig::default()
                .with_secret(CERT, pki.identity_secret(&format!("spiffe://default/{me}")))
                .with_secret(CA, pki.ca_secret())
                .with_cluster(cluster)
                .with_listener(listener(
                    "outbound",
                    localhost(),
                    vec![http_chain(
                        "outbound",
                        http_manager(
                            "outbound",
                            route_table("out", vec![forward_route("all", "/", &[("api", 1)])]),
                        ),
                    )],
                )),
        )
    };
    let web = caller("web");
    let other = caller("other");
    let c = client();
    let web_addr = web.addr("outbound").await;
    for _ in 0..3 {
        assert_eq!(
            get(&c, web_addr, "/").await.unwrap(),
            (200, "api-app".into())
        );
    }
    assert_eq!(
        get(&c, other.addr("outbound").await, "/").await.unwrap(),
        (403, "RBAC: access denied".into())
    );
    // The three requests shared one HTTP/2 connection over mTLS.
    assert_eq!(
        stat(
            &web.stats.render(),
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"api\"}"
        ),
        1
    );
    assert_eq!(
        stat(
            &api.stats.render(),
            "envoy_http_rbac_denied{envoy_http_conn_manager_prefix=\"inbound\"}"
        ),
        1
    );
}
