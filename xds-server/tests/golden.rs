//! Golden-file test of the generated Envoy configuration (issue [3]). `tests/golden/topology.yaml`
//! is zone-1's view of a two-zone mesh (sidecars, the zone's ingress and egress, zone-2's relayed
//! ingress, an external service, one of each outbound/inbound policy); each test renders one
//! proxy's snapshot with `config_dump` and compares it with `tests/golden/<proxy>.json`. The goldens
//! are reviewed Envoy configuration: any change to what the generators emit shows up here as a
//! diff to read, and is accepted by rewriting them (`UPDATE_GOLDEN=1`).
//!
//! Certificates come from `tests/golden/pki/` (a test CA and per-service certificates made once
//! with openssl), so nothing in the output depends on randomness or on the clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_api::{Resource, ResourceType};
use serde_json::{Map, Value};
use xds_server::context::{ingresses_of, MeshContext};
use xds_server::generator::gateways::{egress_snapshot, ingress_snapshot};
use xds_server::generator::sidecar::EGRESS_SERVICE;
use xds_server::generator::{sidecar_snapshot, ProxyIdentity};
use xds_server::snapshot::Snapshot;

const TOPOLOGY: &str = include_str!("golden/topology.yaml");
const MESH: &str = "default";
const ZONE: &str = "zone-1";
const CA_PEM: &str = include_str!("golden/pki/ca.pem");

/// How many differing lines a failure shows.
const DIFF_LINES: usize = 40;

/// The topology's resources; every document must parse without warnings and validate.
fn topology() -> Vec<Resource> {
    mesh_api::parse_documents(TOPOLOGY)
        .into_iter()
        .enumerate()
        .map(|(i, parsed)| {
            let parsed = parsed.unwrap_or_else(|e| panic!("topology.yaml: {e}"));
            let resource = parsed.resource;
            let what = format!(
                "topology.yaml resource[{i}] ({:?} {})",
                resource.resource_type(),
                resource.meta.name
            );
            assert!(parsed.warnings.is_empty(), "{what}: {:?}", parsed.warnings);
            if let Err(e) = mesh_api::validate_resource(&resource) {
                panic!("{what} does not validate: {e}");
            }
            resource
        })
        .collect()
}

/// Zone-1's context of the mesh, as the zone control plane builds it from its store.
fn context() -> Arc<MeshContext> {
    let (zone_wide, in_mesh): (Vec<Resource>, Vec<Resource>) =
        topology().into_iter().partition(|r| {
            matches!(
                r.resource_type(),
                ResourceType::ZoneIngress | ResourceType::ZoneEgress
            )
        });
    let (ingresses, egresses): (Vec<Resource>, Vec<Resource>) = zone_wide
        .into_iter()
        .partition(|r| r.resource_type() == ResourceType::ZoneIngress);
    let ingresses = ingresses_of(ingresses, Some(ZONE));
    Arc::new(MeshContext::from_resources(
        MESH,
        Some(ZONE),
        in_mesh,
        &ingresses,
        &egresses,
    ))
}

/// The fixed certificate of `service` (one of the files in `tests/golden/pki/`).
fn identity(service: &str) -> ProxyIdentity {
    let (cert, key) = match service {
        "web" => (
            include_str!("golden/pki/web.pem"),
            include_str!("golden/pki/web.key.pem"),
        ),
        "api" => (
            include_str!("golden/pki/api.pem"),
            include_str!("golden/pki/api.key.pem"),
        ),
        EGRESS_SERVICE => (
            include_str!("golden/pki/zone-egress.pem"),
            include_str!("golden/pki/zone-egress.key.pem"),
        ),
        other => panic!("no test certificate for service {other:?}"),
    };
    ProxyIdentity {
        cert_chain_pem: cert.to_string(),
        key_pem: key.to_string(),
        ca_pem: CA_PEM.to_string(),
        // Not rendered in the config; fixed anyway so snapshots compare equal.
        renew_at: SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
    }
}

fn sidecar(dataplane: &str, service: &str) -> Snapshot {
    let ctx = context();
    let resource = ctx
        .dataplane(dataplane)
        .unwrap_or_else(|| panic!("topology.yaml has no Dataplane {dataplane}"));
    sidecar_snapshot(&ctx, resource, Some(&identity(service)))
}

fn ingress() -> Snapshot {
    let ctx = context();
    let local = ctx
        .ingresses
        .iter()
        .find(|i| i.local)
        .expect("topology.yaml has zone-1's own ZoneIngress");
    ingress_snapshot(&local.resource, std::slice::from_ref(&ctx))
}

fn egress() -> Snapshot {
    let ctx = context();
    let egress = ctx
        .egresses
        .first()
        .expect("topology.yaml has a ZoneEgress")
        .clone();
    let identities = BTreeMap::from([(MESH.to_string(), identity(EGRESS_SERVICE))]);
    egress_snapshot(&egress, std::slice::from_ref(&ctx), &identities)
}

/// `value` with every object's keys in sorted order (whatever map serde_json was built with).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let entries: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(entries.into_iter().collect::<Map<String, Value>>())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The golden form of a snapshot: its config dump, pretty-printed with sorted keys.
fn render(snapshot: &Snapshot) -> String {
    let dump = config_dump::config_dump(snapshot).expect("the snapshot renders as Envoy JSON");
    let mut text = serde_json::to_string_pretty(&sorted(dump)).expect("JSON serializes");
    text.push('\n');
    text
}

/// A readable account of how `actual` differs from `expected`: a line diff (longest common
/// subsequence) showing the first differing lines, `-` from the golden and `+` generated, each
/// with its line number in its own file.
fn diff(expected: &str, actual: &str) -> String {
    let old: Vec<&str> = expected.lines().collect();
    let new: Vec<&str> = actual.lines().collect();
    // lcs[i][j]: length of the longest common subsequence of old[i..] and new[j..].
    let mut lcs = vec![vec![0u32; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            i += 1;
            j += 1;
        } else if i < old.len() && (j == new.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            changes.push(format!("-{:>6} {}", i + 1, old[i]));
            i += 1;
        } else {
            changes.push(format!("+{:>6} {}", j + 1, new[j]));
            j += 1;
        }
    }
    let mut out: String = changes
        .iter()
        .take(DIFF_LINES)
        .map(|line| format!("{line}\n"))
        .collect();
    if changes.len() > DIFF_LINES {
        out.push_str(&format!(
            "... and {} more differing lines\n",
            changes.len() - DIFF_LINES
        ));
    }
    out
}

/// Compares `snapshot` with the golden file `name`, or rewrites it under `UPDATE_GOLDEN=1`.
fn check(name: &str, snapshot: &Snapshot) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let actual = render(snapshot);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &actual)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let expected = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!(
            "cannot read golden file {}: {e}\nrun `UPDATE_GOLDEN=1 cargo test -p xds-server \
             --test golden` to create it, then review it",
            path.display()
        ),
    };
    if expected != actual {
        panic!(
            "generated configuration differs from {} (- golden, + generated):\n{}\nif the change \
             is intended, review it and run `UPDATE_GOLDEN=1 cargo test -p xds-server --test \
             golden` to rewrite the golden files",
            path.display(),
            diff(&expected, &actual)
        );
    }
}

#[test]
fn web_sidecar() {
    check("web.json", &sidecar("web-1", "web"));
}

#[test]
fn api_sidecar() {
    check("api.json", &sidecar("api-1", "api"));
}

#[test]
fn zone_ingress() {
    check("ingress.json", &ingress());
}

#[test]
fn zone_egress() {
    check("egress.json", &egress());
}

/// The goldens can only be stable if generating is: the same input gives the same bytes, and so
/// the same resource versions (a changed version makes the ADS server push to the proxy).
#[test]
fn generation_is_deterministic() {
    for (name, build) in [
        ("web", (|| sidecar("web-1", "web")) as fn() -> Snapshot),
        ("api", || sidecar("api-1", "api")),
        ("ingress", ingress),
        ("egress", egress),
    ] {
        let (first, second) = (build(), build());
        assert_eq!(
            render(&first),
            render(&second),
            "{name}: two builds render differently"
        );
        assert_eq!(first, second, "{name}: two builds differ");
    }
}

#[test]
fn diff_shows_the_differing_lines_with_their_numbers() {
    let shown = diff("a\nb\nc\nd\n", "a\nB\nc\nd\n");
    assert_eq!(shown, "-     2 b\n+     2 B\n");
    let added = diff("a\nz\n", "a\nb\nz\n");
    assert_eq!(added, "+     2 b\n");
    // An insertion early on does not make everything after it look changed.
    let inserted = diff("a\nb\nc\nd\nv1\n", "a\nx\nb\nc\nd\nv2\n");
    assert_eq!(inserted, "+     2 x\n-     5 v1\n+     6 v2\n");
}
