//! `meshctl up --global-nodes 3`: a three-node Raft global from the real binaries (build them
//! first with `cargo build --workspace --bins`). Every node names the same leader; a policy
//! applied through node 2 is read on node 3 with `?consistent=true` and reaches the zone;
//! `meshctl global members` lists three voters and refuses to remove an unknown id; a restart on
//! the same data dir comes back with the same members and the policy.

#[path = "common/federation.rs"]
mod federation;

use std::path::{Path, PathBuf};
use std::time::Instant;

use federation::{run_meshctl, wait_for, Federation, SYNC_TIMEOUT};
use serde_json::Value;

const POLICY: &str = "\
type: MeshTrafficPermission
name: through-node-2
mesh: default
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        action: Allow
";

fn meshctl() -> PathBuf {
    test_support::workspace_bin("global-cp");
    test_support::workspace_bin("zone-cp");
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

fn start(meshctl: &Path, dir: &Path) -> Federation {
    Federation::start_with(meshctl, dir, 1, &[], &["--no-demo", "--global-nodes", "3"])
}

/// `meshctl --api-url <node> --token <admin> args`, asserted to succeed; its stdout.
fn on_node(fed: &Federation, node: usize, args: &[&str]) -> String {
    let api = fed.endpoints.global.nodes[node].api.clone();
    let token = std::fs::read_to_string(fed.dir.join(format!("global-{}/admin-token", node + 1)))
        .expect("admin token");
    let mut full = vec!["--api-url", api.as_str(), "--token", token.trim()];
    full.extend_from_slice(args);
    let out = run_meshctl(&fed.meshctl, None, &full);
    assert!(
        out.status.success(),
        "meshctl {full:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn members(fed: &Federation, node: usize) -> Value {
    let out = on_node(fed, node, &["global", "members", "list", "-o", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `GET <node>/<path>` with the admin token: status and body.
fn get(fed: &Federation, node: usize, path: &str) -> (u16, String) {
    let url = format!(
        "{}/{path}",
        fed.endpoints.global.nodes[node].api.trim_end_matches('/')
    );
    let token = std::fs::read_to_string(fed.dir.join("global-1/admin-token")).expect("token");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    })
}

/// Each node's (leader id, term), asserted to agree, and the voters' ids.
fn agreed_leader(fed: &Federation) -> (u64, Vec<u64>) {
    let views: Vec<Value> = (0..3).map(|i| members(fed, i)).collect();
    let leaders: Vec<(Option<u64>, Option<u64>)> = views
        .iter()
        .map(|v| (v["leaderId"].as_u64(), v["term"].as_u64()))
        .collect();
    assert!(
        leaders.iter().all(|l| l.0.is_some() && *l == leaders[0]),
        "the nodes disagree on (leader, term): {leaders:?}"
    );
    let voters = views[2]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["voter"] == Value::Bool(true))
        .map(|m| m["id"].as_u64().expect("id"))
        .collect();
    (leaders[0].0.expect("leader"), voters)
}

#[test]
fn three_global_nodes_elect_one_leader_replicate_and_restart() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("federation");
    let file = tmp.path().join("policy.yaml");
    std::fs::write(&file, POLICY).expect("write policy");

    let started = Instant::now();
    let fed = start(&meshctl, &dir);
    let up = fed.up_output();
    eprintln!(
        "meshctl up --global-nodes 3 ready in {:?}",
        started.elapsed()
    );

    let nodes = &fed.endpoints.global.nodes;
    assert_eq!(nodes.len(), 3, "endpoints.json: {nodes:?}");
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        [1, 2, 3],
        "{nodes:?}"
    );
    let leaders: Vec<u64> = nodes
        .iter()
        .filter(|n| n.role == "leader")
        .map(|n| n.id)
        .collect();
    assert_eq!(leaders.len(), 1, "one leader in endpoints.json: {nodes:?}");
    assert_eq!(
        fed.endpoints.global.api, nodes[0].api,
        "meshctl.yaml's API is node 1's"
    );
    for id in 1..=3 {
        let row = up
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("global-{id}")))
            .unwrap_or_else(|| panic!("status table lacks global-{id}:\n{up}"));
        assert!(row.contains("global ("), "global-{id}'s role:\n{up}");
    }
    fed.assert_zones_online();

    let (leader, voters) = agreed_leader(&fed);
    assert_eq!(voters, [1, 2, 3]);
    let table = fed.ok(&["global", "members"]);
    assert_eq!(table.matches("voter").count(), 3, "{table}");
    eprintln!("leader: node {leader}");

    // A write through node 2, read on node 3 at once with a linearizable read.
    on_node(&fed, 1, &["apply", "-f", file.to_str().expect("utf-8")]);
    let (status, body) = get(
        &fed,
        2,
        "meshes/default/meshtrafficpermissions/through-node-2?consistent=true",
    );
    assert_eq!(status, 200, "node 3: {body}");
    assert!(body.contains("through-node-2"), "{body}");
    // And it reaches the zone, connected to the global's nodes over KDS.
    fed.wait_on_zone("zone-1", &["meshtrafficpermission", "through-node-2"]);

    let err = fed.fails(&["global", "members", "remove", "--id", "9"]);
    assert!(
        err.contains("node 9 is not a member (members: 1, 2, 3)"),
        "{err}"
    );

    assert!(fed.stop().success());

    // The same data dir: the same peers, the policy kept, a leader again.
    let fed = start(&meshctl, &dir);
    let (_, voters) = agreed_leader(&fed);
    assert_eq!(voters, [1, 2, 3]);
    let out = wait_for(
        "the policy on node 3 after the restart",
        SYNC_TIMEOUT,
        || {
            let (status, body) = get(
                &fed,
                2,
                "meshes/default/meshtrafficpermissions/through-node-2?consistent=true",
            );
            (status == 200).then_some(body)
        },
    );
    assert!(out.contains("through-node-2"), "{out}");
    assert!(fed.stop().success());
}
