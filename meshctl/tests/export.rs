//! `meshctl export` end to end on the real control planes (build them first with
//! `cargo build --workspace --bins`): every resource of a global (meshes, the mesh CA made by the
//! global, a mesh's and a global secret, policies in two meshes, the zone) is written to a file
//! that `meshctl apply` restores into a fresh global, which then exports the same bytes; zone
//! inventory is not exported.

#[path = "common/federation.rs"]
mod federation;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use federation::{wait_for, Federation, SYNC_TIMEOUT};

const RESOURCES: &str = "\
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: Mesh
name: payments
---
type: MeshTrafficPermission
name: allow-all
mesh: default
spec:
  targetRef:
    kind: Mesh
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Allow
---
type: MeshTimeout
name: slow-backend
mesh: payments
labels:
  team: payments
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: MeshService
      name: backend
    default:
      connectionTimeout: 3s
---
type: Secret
name: db-password
mesh: payments
data: c2VjcmV0
---
type: GlobalSecret
name: license
data: bGljZW5zZQ==
";

fn meshctl() -> PathBuf {
    test_support::workspace_bin("global-cp");
    test_support::workspace_bin("zone-cp");
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

#[test]
fn an_export_applied_to_a_fresh_global_restores_every_global_resource() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("resources.yaml");
    std::fs::write(&input, RESOURCES).unwrap();

    let old = Federation::start(&meshctl, &tmp.path().join("old"), 1, &[]);
    old.ok(&["apply", "-f", input.to_str().unwrap()]);
    // The global makes the mesh CA; wait for it so the export holds it.
    wait_for("the default mesh's CA", SYNC_TIMEOUT, || {
        old.run(&[
            "get",
            "secrets",
            "default.ca-builtin-cert-ca-1",
            "-m",
            "default",
        ])
        .status
        .success()
        .then_some(())
    });
    let exported = tmp.path().join("export.yaml");
    old.ok(&["export", "-o", exported.to_str().unwrap()]);
    let mode = std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the export holds secrets");
    let text = std::fs::read_to_string(&exported).unwrap();
    for expected in [
        "name: payments",
        "name: slow-backend",
        "name: allow-all",
        "name: db-password",
        "name: license",
        "name: default.ca-builtin-cert-ca-1",
        "type: Zone\n",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not exported:\n{text}"
        );
    }
    for inventory in [
        "type: ZoneInsight",
        "type: ZoneLease",
        "type: ZoneIngress",
        "type: Dataplane",
    ] {
        assert!(!text.contains(inventory), "{inventory} exported:\n{text}");
    }
    // Standard output holds the same stream.
    assert_eq!(old.ok(&["export"]), text);
    old.stop();

    let fresh = Federation::start(&meshctl, &tmp.path().join("fresh"), 0, &[]);
    let applied = fresh.ok(&["apply", "-f", exported.to_str().unwrap()]);
    assert!(applied.contains("MeshTimeout slow-backend"), "{applied}");
    assert_eq!(
        fresh.ok(&["export"]),
        text,
        "the restored global exports something else"
    );
    let timeout = fresh.json(&["get", "meshtimeouts", "slow-backend", "-m", "payments"]);
    assert_eq!(timeout["labels"]["team"], "payments", "{timeout}");
    fresh.stop();
}
