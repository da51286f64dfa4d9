//! `meshctl up --zones 2` with its demo, on the real binaries (`global-cp`, `zone-cp`,
//! `zone-proxy`, `demo-app`; build them first with `cargo build --workspace --bins`): the request
//! it prints goes through zone-1's frontend sidecar and is answered by backend in zone-2, over
//! mTLS through zone-2's ingress; the proxies registered themselves and are gone from their zone
//! once stopped; a restart on the same data directory serves the request again.

#[path = "common/federation.rs"]
mod federation;

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use federation::{wait_for, Federation};

/// How long the printed request may take to be answered from zone-2 once `up` is ready.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

fn meshctl() -> PathBuf {
    for bin in ["global-cp", "zone-cp", "zone-proxy", "demo-app"] {
        test_support::workspace_bin(bin);
    }
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

/// `GET url` (plain HTTP/1.1, `http://127.0.0.1:PORT/`): status and body.
fn get(url: &str) -> Option<(u16, String)> {
    let addr = url.strip_prefix("http://")?.trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits until the demo request `up` printed is answered 200 by backend in zone-2.
fn answered_from_zone_2(fed: &Federation) {
    let demo = fed
        .endpoints
        .demo
        .as_ref()
        .expect("endpoints.json has the demo");
    assert_eq!(demo.answered_by, "zone-2");
    let output = fed.up_output();
    assert!(
        output.contains(&format!("curl {}", demo.request)),
        "meshctl up did not print the request:\n{output}"
    );
    wait_for(
        "the demo request answered from zone-2",
        ANSWER_DEADLINE,
        || {
            let (status, body) = get(&demo.request)?;
            (status == 200 && body.contains("\"zone\":\"zone-2\"")).then_some(())
        },
    );
}

#[test]
fn up_runs_a_demo_answered_across_zones_and_restarts() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("up");
    let fed = Federation::start_with(&meshctl, &dir, 2, &[], &[]);
    answered_from_zone_2(&fed);
    let output = fed.up_output();
    for name in [
        "zone-1-ingress",
        "zone-2-egress",
        "frontend-zone-1",
        "backend-zone-2",
    ] {
        assert!(
            output.contains(name),
            "{name} not in the status table:\n{output}"
        );
    }
    // The proxies registered themselves: their resources are on their zones (no REST writes).
    let dataplanes = fed.wait_on_zone("zone-2", &["dataplane", "backend-zone-2"]);
    assert_eq!(
        dataplanes["labels"]["meridian.io/registered-by"], "xds",
        "{dataplanes}"
    );
    fed.wait_on_zone("zone-1", &["zoneingress", "zone-1-ingress"]);
    assert!(fed.stop().success());

    let fed = Federation::start_with(&meshctl, &dir, 2, &[], &[]);
    answered_from_zone_2(&fed);
    assert!(fed.stop().success());
}
