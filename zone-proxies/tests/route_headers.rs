//! Header mutations of a CP-style RouteConfiguration (`request_headers_to_add/remove`,
//! `response_headers_to_add/remove` on the route, its virtual host and the route configuration),
//! fed through the proxy's RDS translation as an ADS response is and carried out on real
//! requests: each level removes, then adds; levels apply route, then virtual host, then route
//! configuration (the last one wins), or the other way round with
//! `most_specific_header_mutations_wins`; the four append actions and `keep_empty_value` as
//! Envoy's; and what Envoy refuses (`:`-prefixed or `host` headers, formatter commands) is
//! refused with the field named.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route as PbRoute, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::google::protobuf::Any;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use prost::Message;
use zone_proxies::config::{HttpManager, ProxyConfig, RouteSource, RouteTable};
use zone_proxies::testing::*;
use zone_proxies::xds::resources::Resources;
use zone_proxies::xds::ROUTE_TYPE;

use common::{localhost, serve_http, Server};

/// An upstream answering with the `x-` request headers it received, one `name=value` line per
/// value in order, and with response headers the proxy is to remove or overwrite.
async fn header_echo_server() -> Server {
    serve_http("127.0.0.1:0".parse().unwrap(), |req| async move {
        let mut names: Vec<&str> = req
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("x-"))
            .collect();
        names.sort_unstable();
        let mut lines = String::new();
        for name in names {
            for value in req.headers().get_all(name) {
                lines += &format!("{name}={}\n", value.to_str().unwrap());
            }
        }
        let mut res = http::Response::new(Full::new(Bytes::from(lines)));
        let headers = res.headers_mut();
        headers.insert("x-upstream-drop", "1".parse().unwrap());
        headers.insert("x-upstream-keep", "1".parse().unwrap());
        headers.insert("x-resp-level", "upstream".parse().unwrap());
        res
    })
    .await
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..HeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

use HeaderAppendAction::{AddIfAbsent, AppendIfExistsOrAdd, OverwriteIfExists};
const OVERWRITE: HeaderAppendAction = HeaderAppendAction::OverwriteIfExistsOrAdd;

fn prefix_route(name: &str, prefix: &str, action: route::Action) -> PbRoute {
    PbRoute {
        name: name.into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
            ..RouteMatch::default()
        }),
        action: Some(action),
        ..PbRoute::default()
    }
}

fn to_backend() -> route::Action {
    route::Action::Route(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("backend".into())),
        ..RouteAction::default()
    })
}

/// The route configuration, as the zone CP writes a MeshHTTPRoute's header modifiers (`set`:
/// overwrite then append, `add`: append) plus the other append actions.
fn route_configuration(most_specific_wins: bool) -> RouteConfiguration {
    let mut headers = prefix_route("headers", "/h", to_backend());
    headers.request_headers_to_add = vec![
        header("x-level", "route", OVERWRITE),
        header("x-multi", "a", OVERWRITE),
        header("x-multi", "b", AppendIfExistsOrAdd),
        header("x-if-absent", "route", AddIfAbsent),
        header("x-only-if-present", "route", OverwriteIfExists),
        header("x-never", "route", OverwriteIfExists),
        header("x-empty", "", AppendIfExistsOrAdd),
        HeaderValueOption {
            keep_empty_value: true,
            ..header("x-kept-empty", "", AppendIfExistsOrAdd)
        },
    ];
    headers.request_headers_to_remove = vec!["x-drop-route".into()];
    headers.response_headers_to_add = vec![
        header("x-resp-level", "route", OVERWRITE),
        header("x-resp-route", "1", AppendIfExistsOrAdd),
    ];
    let direct = prefix_route(
        "direct",
        "/direct",
        route::Action::DirectResponse(DirectResponseAction {
            status: 418,
            ..DirectResponseAction::default()
        }),
    );
    let plain = prefix_route("plain", "/", to_backend());
    RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![VirtualHost {
            name: "backend".into(),
            domains: vec!["*".into()],
            routes: vec![headers, direct, plain],
            request_headers_to_add: vec![
                header("x-level", "vhost", OVERWRITE),
                header("x-if-absent", "vhost", AddIfAbsent),
                header("x-vhost", "1", AppendIfExistsOrAdd),
            ],
            response_headers_to_add: vec![header("x-resp-level", "vhost", OVERWRITE)],
            response_headers_to_remove: vec!["x-upstream-drop".into()],
            ..VirtualHost::default()
        }],
        request_headers_to_add: vec![header("x-level", "config", OVERWRITE)],
        request_headers_to_remove: vec!["x-drop-config".into()],
        response_headers_to_add: vec![header("x-resp-config", "1", AppendIfExistsOrAdd)],
        most_specific_header_mutations_wins: most_specific_wins,
        ..RouteConfiguration::default()
    }
}

/// `config` through the proxy's RDS translation, as an ADS response delivers it.
fn translate(config: &RouteConfiguration) -> Result<RouteTable, String> {
    let mut resources = Resources::default();
    let any = Any {
        type_url: ROUTE_TYPE.into(),
        value: config.encode_to_vec(),
    };
    resources
        .replace(ROUTE_TYPE, &[any])
        .map_err(|e| e.to_string())?;
    let routes = resources.config().routes;
    Ok((*routes[&config.name]).clone())
}

fn proxy_config(table: RouteTable, backend: std::net::SocketAddr) -> ProxyConfig {
    let manager = HttpManager {
        routes: RouteSource::Rds(table.name.clone()),
        ..http_manager("http", RouteTable::default())
    };
    let mut config = ProxyConfig::default()
        .with_cluster(static_cluster("backend", &[backend]))
        .with_listener(listener(
            "http",
            localhost(),
            vec![http_chain("http", manager)],
        ));
    config.routes.insert(table.name.clone(), Arc::new(table));
    config
}

/// A GET with `headers` through the proxy: (status, response headers, body).
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "backend");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("a response within 10 s")
    .unwrap();
    let status = res.status().as_u16();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The header echo upstream behind a proxy running [`route_configuration`]; the proxy's address.
async fn proxy_to_header_echo(
    most_specific_wins: bool,
) -> (Server, RunningDataplane, std::net::SocketAddr) {
    let backend = header_echo_server().await;
    let table = translate(&route_configuration(most_specific_wins)).unwrap();
    let dp = RunningDataplane::start(proxy_config(table, backend.addr));
    let addr = dp.addr("http").await;
    (backend, dp, addr)
}

const CLIENT_HEADERS: [(&str, &str); 6] = [
    ("x-drop-route", "1"),
    ("x-drop-config", "1"),
    ("x-multi", "client"),
    ("x-only-if-present", "client"),
    ("x-level", "client"),
    ("x-client", "1"),
];

#[tokio::test]
async fn route_virtual_host_and_configuration_levels_apply_least_specific_last() {
    let (_backend, dp, addr) = proxy_to_header_echo(false).await;

    // The route's own mutations, then the virtual host's, then the configuration's.
    let (status, headers, body) = get(addr, "/h", &CLIENT_HEADERS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "x-client=1\n\
         x-if-absent=route\n\
         x-kept-empty=\n\
         x-level=config\n\
         x-multi=a\n\
         x-multi=b\n\
         x-only-if-present=route\n\
         x-vhost=1\n",
        "request headers the upstream received"
    );
    assert_eq!(values(&headers, "x-resp-level"), ["vhost"]);
    assert_eq!(values(&headers, "x-resp-route"), ["1"]);
    assert_eq!(values(&headers, "x-resp-config"), ["1"]);
    assert_eq!(values(&headers, "x-upstream-keep"), ["1"]);
    assert!(headers.get("x-upstream-drop").is_none());

    // Another route of the same virtual host: only the virtual host's and the configuration's.
    let (status, headers, body) = get(addr, "/other", &CLIENT_HEADERS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "x-client=1\n\
         x-drop-route=1\n\
         x-if-absent=vhost\n\
         x-level=config\n\
         x-multi=client\n\
         x-only-if-present=client\n\
         x-vhost=1\n"
    );
    assert_eq!(values(&headers, "x-resp-level"), ["vhost"]);
    assert!(headers.get("x-resp-route").is_none());
    assert!(headers.get("x-upstream-drop").is_none());

    // A direct response gets the response mutations too.
    let (status, headers, _) = get(addr, "/direct", &[]).await;
    assert_eq!(status, 418);
    assert_eq!(values(&headers, "x-resp-level"), ["vhost"]);
    assert_eq!(values(&headers, "x-resp-config"), ["1"]);
    dp.stop().await.unwrap();
}

#[tokio::test]
async fn most_specific_header_mutations_win_when_asked() {
    let (_backend, dp, addr) = proxy_to_header_echo(true).await;
    let (status, headers, body) = get(addr, "/h", &CLIENT_HEADERS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "x-client=1\n\
         x-if-absent=vhost\n\
         x-kept-empty=\n\
         x-level=route\n\
         x-multi=a\n\
         x-multi=b\n\
         x-only-if-present=route\n\
         x-vhost=1\n"
    );
    assert_eq!(values(&headers, "x-resp-level"), ["route"]);
    dp.stop().await.unwrap();
}

#[test]
fn unmodifiable_headers_and_formatters_are_refused_with_the_field() {
    type Change = fn(&mut RouteConfiguration);
    let cases: [(Change, &str); 5] = [
        (
            |c| {
                c.virtual_hosts[0].routes[0].request_headers_to_add[0] =
                    header("host", "x", OVERWRITE)
            },
            "virtual_hosts[0].routes[0].request_headers_to_add[0].header.key",
        ),
        (
            |c| c.virtual_hosts[0].request_headers_to_remove = vec![":path".into()],
            "virtual_hosts[0].request_headers_to_remove[0]",
        ),
        (
            |c| c.request_headers_to_remove = vec!["Host".into()],
            "request_headers_to_remove[0]",
        ),
        (
            |c| {
                c.response_headers_to_add =
                    vec![header("x-peer", "%DOWNSTREAM_REMOTE_ADDRESS%", OVERWRITE)]
            },
            "response_headers_to_add[0].header.value",
        ),
        (
            |c| {
                c.virtual_hosts[0].response_headers_to_add =
                    vec![header("bad name", "1", OVERWRITE)]
            },
            "virtual_hosts[0].response_headers_to_add[0].header.key",
        ),
    ];
    for (change, field) in cases {
        let mut config = route_configuration(false);
        change(&mut config);
        let err = translate(&config).unwrap_err();
        assert!(
            err.contains(&format!("route configuration \"r\": {field}: ")),
            "{err} (expected the field {field})"
        );
    }
    // `%%` is a literal `%`.
    let mut config = route_configuration(false);
    config.request_headers_to_add = vec![header("x-percent", "100%%", OVERWRITE)];
    let table = translate(&config).unwrap();
    assert_eq!(table.headers.request.add[0].value, "100%");
}
