//! `meshctl global backup|restore` end to end with the real binaries (build them first with
//! `cargo build --workspace --bins`): policies applied to a global, backed up through its API,
//! restored into a new data dir, a global started on it serves them with the same versions.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Global {
    child: Child,
    api: String,
    token: String,
}

impl Drop for Global {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(global: &Path, data: &Path) -> Global {
    let ready = data.with_extension("ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(global)
        .arg("--data-dir")
        .arg(data)
        .args([
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
        ])
        .args(["--kds-addr", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn global-cp");
    let started = Instant::now();
    let endpoints: Value = loop {
        if let Some(endpoints) = std::fs::read(&ready)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            break endpoints;
        }
        assert!(child.try_wait().unwrap().is_none(), "global-cp exited");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "global-cp not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    Global {
        child,
        api: endpoints["api"].as_str().unwrap().to_owned(),
        token: token.trim().to_owned(),
    }
}

fn meshctl(global: &Global, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--api-url", &global.api, "--token", &global.token])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn policies_backed_up_and_restored_into_a_new_global_are_served_again() {
    let global_bin = test_support::workspace_bin("global-cp");
    let dir = tempfile::tempdir().unwrap();
    let original = start(&global_bin, &dir.path().join("original"));
    let mut yaml = String::new();
    for i in 0..5 {
        yaml.push_str(&format!(
            "---\ntype: MeshTimeout\nname: kept-{i}\nmesh: default\nspec:\n  targetRef:\n    \
             kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        \
             idleTimeout: {i}h\n"
        ));
    }
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, yaml).unwrap();
    ok(meshctl(&original, &["apply", "-f", file.to_str().unwrap()]));
    let before = ok(meshctl(&original, &["get", "meshtimeouts", "-o", "json"]));

    let backup = dir.path().join("global.backup.json");
    let said = ok(meshctl(
        &original,
        &["global", "backup", "--output", backup.to_str().unwrap()],
    ));
    assert!(said.contains("written to"), "{said}");
    // It holds the meshes' CA keys and the signing keys: owner-only, as `meshctl export` writes.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // A wrong token is refused, naming the API's answer.
    let refused = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--api-url", &original.api, "--token", "wrong"])
        .args(["global", "backup", "--output", "/dev/null"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    drop(original);

    let restored_dir = dir.path().join("restored");
    let restore = |target: &Path| {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["global", "restore", "--input", backup.to_str().unwrap()])
            .arg("--data-dir")
            .arg(target)
            .output()
            .unwrap()
    };
    let said = ok(restore(&restored_dir));
    assert!(said.contains("restored"), "{said}");
    let restored = start(&global_bin, &restored_dir);
    let after = ok(meshctl(&restored, &["get", "meshtimeouts", "-o", "json"]));
    let (before, after): (Value, Value) = (
        serde_json::from_str(&before).unwrap(),
        serde_json::from_str(&after).unwrap(),
    );
    assert_eq!(before, after, "the same policies, versions and times");
    // Five applied plus the default mesh's own MeshTimeout.
    assert_eq!(after["items"].as_array().map(Vec::len), Some(6), "{after}");
    // A data dir in use is not overwritten.
    let again = restore(&restored_dir);
    assert!(!again.status.success());
}
