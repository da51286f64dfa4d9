//! `meshctl up` as a supervisor of the real control planes: a child that dies is reported and the
//! others are stopped; a child that fails at start is named with its log; a child that ignores
//! SIGTERM (stopped with SIGSTOP) is killed after the stop timeout. Also `apply` checks that need
//! no server at all. Build the binaries first with `cargo build --workspace --bins`.
//!
//! The zones `meshctl up` starts run in zone mode, connected to the global over KDS with a token
//! it issued (`--global-kds-address`, `--kds-ca-file`, `--zone-token-file`); `up` passes those
//! flags itself and waits for every zone to be online, so nothing here changes with KDS: the same
//! scenarios now supervise federated zones. A zone that fails at start still fails before it
//! dials the global, and is named with its log as before.

#[path = "common/federation.rs"]
mod federation;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use federation::Federation;

/// meshctl, after checking that the control planes it starts have been built.
fn meshctl() -> PathBuf {
    test_support::workspace_bin("global-cp");
    test_support::workspace_bin("zone-cp");
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

fn pid_of(dir: &Path, name: &str) -> u32 {
    std::fs::read_to_string(dir.join(format!("run/{name}.pid")))
        .unwrap_or_else(|e| panic!("pid file of {name}: {e}"))
        .trim()
        .parse()
        .expect("pid")
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[test]
fn a_child_that_dies_stops_the_others_and_fails() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    let fed = Federation::start(&meshctl, &dir, 2, &[]);
    let pids = fed.child_pids();
    assert_eq!(pids.len(), 3);
    signal(pid_of(&dir, "zone-2"), "-KILL");
    let (status, output) = fed.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("zone-cp zone-2"), "{output}");
    assert!(output.contains("exited unexpectedly"), "{output}");
    assert!(output.contains("logs/zone-2.log"), "{output}");
    for pid in pids {
        federation::wait_for(
            &format!("pid {pid} to be gone"),
            Duration::from_secs(30),
            || (!meshctl::process::is_alive(pid)).then_some(()),
        );
    }
}

#[test]
fn a_child_that_fails_at_start_is_named_with_its_log() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    std::fs::create_dir_all(dir.join("zone-1")).expect("dir");
    // A file where zone-1's store should be: zone-cp refuses to start (meshctl cannot know).
    std::fs::write(dir.join("zone-1/store"), "not a store").expect("write");
    let out = Command::new(&meshctl)
        .args(["up", "--zones", "1", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("run meshctl up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("zone-cp zone-1"), "{stderr}");
    assert!(stderr.contains("logs/zone-1.log"), "{stderr}");
    assert!(!dir.join("endpoints.json").exists());
    let log = std::fs::read_to_string(dir.join("logs/zone-1.log")).expect("zone-1 log");
    assert!(
        log.contains("zone-1/store"),
        "the log names the bad path: {log}"
    );
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    let err_log = tmp.path().join("up.err");
    let mut up = Command::new(&meshctl)
        .args(["up", "--zones", "1", "--stop-timeout", "1", "--data-dir"])
        .arg(&dir)
        .stdout(std::fs::File::create(tmp.path().join("up.out")).expect("log"))
        .stderr(std::fs::File::create(&err_log).expect("log"))
        .spawn()
        .expect("spawn meshctl up");
    federation::wait_for("endpoints.json", federation::START_TIMEOUT, || {
        dir.join("endpoints.json").exists().then_some(())
    });
    let zone_pid = pid_of(&dir, "zone-1");
    // A stopped process cannot act on SIGTERM; only SIGKILL ends it.
    signal(zone_pid, "-STOP");
    let started = Instant::now();
    signal(up.id(), "-TERM");
    let status = federation::wait_for("meshctl up to exit", Duration::from_secs(30), || {
        up.try_wait().expect("wait")
    });
    let stderr = std::fs::read_to_string(&err_log).unwrap_or_default();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("zone-cp zone-1"), "{stderr}");
    assert!(stderr.contains("killed it"), "{stderr}");
    federation::wait_for(
        "the stopped zone-cp to be gone",
        Duration::from_secs(10),
        || (!meshctl::process::is_alive(zone_pid)).then_some(()),
    );
}

#[test]
fn dry_run_needs_no_server_and_broken_documents_apply_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("r.yaml");
    std::fs::write(
        &file,
        "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: a\n",
    )
    .expect("write");
    let meshctl = Path::new(env!("CARGO_BIN_EXE_meshctl"));
    let out = Command::new(meshctl)
        .args([
            "--api-url",
            "http://127.0.0.1:1",
            "apply",
            "--dry-run",
            "-f",
        ])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "type: Mesh\nname: a\n"
    );

    std::fs::write(&file, "type: Mesh\nname: a\n---\ntype: Nope\nname: b\n").expect("write");
    let out = Command::new(meshctl)
        .args(["--api-url", "http://127.0.0.1:1", "apply", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("resource[1]: type: invalid resource type \"Nope\""),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");

    // Invalid documents are rejected locally too, naming the field path.
    std::fs::write(
        &file,
        "type: MeshTimeout\nname: t\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: -1s\n",
    )
    .expect("write");
    let out = Command::new(meshctl)
        .args([
            "--api-url",
            "http://127.0.0.1:1",
            "apply",
            "--dry-run",
            "-f",
        ])
        .arg(&file)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("spec.to[0].default.idleTimeout"),
        "{stderr}"
    );
}
