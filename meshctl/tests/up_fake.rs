//! meshctl against a stand-in control plane (`examples/fake_cp.rs`, which follows the command-line,
//! ready-file and REST contracts of `global-cp` and `zone-cp`): checks `meshctl up`'s supervision
//! (readiness, SIGTERM, a child dying, a child never ready) and the client commands, without the
//! real servers. `cargo test` builds the example; the test copies it as `global-cp` and `zone-cp`
//! next to a copy of meshctl, where `meshctl up` looks first.

#[path = "common/federation.rs"]
mod federation;

use std::path::{Path, PathBuf};
use std::time::Duration;

use federation::Federation;

/// A directory holding meshctl, and the fake as global-cp and zone-cp.
fn fake_bin_dir(tmp: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let fake = profile.join("examples").join("fake_cp");
    assert!(
        fake.is_file(),
        "{} not found: run `cargo test -p meshctl` (it builds the examples; `--test up_fake` \
         alone does not, and may run a stale one) or `cargo build -p meshctl --examples`",
        fake.display()
    );
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let place = |from: &Path, name: &str| {
        let to = bin.join(name);
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to).expect("copy binary");
        }
    };
    place(Path::new(env!("CARGO_BIN_EXE_meshctl")), "meshctl");
    place(&fake, "global-cp");
    place(&fake, "zone-cp");
    bin
}

#[test]
fn fake_up_apply_get_delete_stop_and_restart_keeps_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = fake_bin_dir(tmp.path());
    federation::apply_get_delete_restart(&bin.join("meshctl"), tmp.path());
}

#[test]
fn fake_seed_examples_apply_and_read_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = fake_bin_dir(tmp.path());
    let seeds = test_support::workspace_root().join("../shared/seeds");
    federation::apply_seeds(&bin.join("meshctl"), tmp.path(), &seeds);
}

#[test]
fn a_child_that_dies_stops_the_others_and_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = fake_bin_dir(tmp.path());
    let dir = tmp.path().join("d");
    let fed = Federation::start(
        &bin.join("meshctl"),
        &dir,
        2,
        &[
            ("FAKE_CP_EXIT_AFTER_MS", "1500"),
            ("FAKE_CP_ONLY", "zone-2"),
        ],
    );
    let pids = fed.child_pids();
    assert_eq!(pids.len(), 3);
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
fn a_child_slow_to_stop_is_killed_after_the_stop_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = fake_bin_dir(tmp.path());
    let dir = tmp.path().join("d");
    let log = tmp.path().join("up.log");
    let mut up = std::process::Command::new(bin.join("meshctl"))
        .args(["up", "--zones", "1", "--stop-timeout", "1", "--data-dir"])
        .arg(&dir)
        .env("FAKE_CP_SLOW_STOP_MS", "60000")
        .env("FAKE_CP_ONLY", "zone-1")
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(tmp.path().join("up.err")).expect("log"))
        .spawn()
        .expect("spawn meshctl up");
    federation::wait_for("endpoints.json", federation::START_TIMEOUT, || {
        dir.join("endpoints.json").exists().then_some(())
    });
    let zone_pid: u32 = std::fs::read_to_string(dir.join("run/zone-1.pid"))
        .expect("zone pid")
        .trim()
        .parse()
        .expect("pid");
    let started = std::time::Instant::now();
    meshctl::process::send_signal(up.id(), meshctl::process::Signal::Term).expect("SIGTERM");
    let status = federation::wait_for("meshctl up to exit", Duration::from_secs(30), || {
        up.try_wait().expect("wait")
    });
    let stderr = std::fs::read_to_string(tmp.path().join("up.err")).unwrap_or_default();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("zone-cp zone-1"), "{stderr}");
    assert!(stderr.contains("killed it"), "{stderr}");
    assert!(!meshctl::process::is_alive(zone_pid));
}

#[test]
fn a_child_never_ready_fails_startup_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = fake_bin_dir(tmp.path());
    let out = std::process::Command::new(bin.join("meshctl"))
        .args(["up", "--zones", "1", "--ready-timeout", "2", "--data-dir"])
        .arg(tmp.path().join("d"))
        .env("FAKE_CP_NOT_READY", "1")
        .env("FAKE_CP_ONLY", "zone-1")
        .output()
        .expect("run meshctl up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("zone-cp zone-1"), "{stderr}");
    assert!(stderr.contains("was not ready within 2s"), "{stderr}");
    assert!(stderr.contains("/ready"), "{stderr}");
    assert!(stderr.contains("logs/zone-1.log"), "{stderr}");
    assert!(!tmp.path().join("d/endpoints.json").exists());
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
    let args = [
        "--api-url",
        "http://127.0.0.1:1",
        "apply",
        "--dry-run",
        "-f",
    ];
    let out = std::process::Command::new(meshctl)
        .args(args)
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
    let out = std::process::Command::new(meshctl)
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
}
