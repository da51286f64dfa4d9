//! The real `global-cp` binary as a child process: it reports its bound ports in the ready file,
//! answers on them, stops cleanly on SIGTERM, and keeps acknowledged writes across a SIGKILL.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Running {
    child: Child,
    api: String,
    token: String,
}

async fn start(data_dir: &Path) -> Running {
    let ready = data_dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_global-cp"))
        .args(["--data-dir", data_dir.join("data").to_str().unwrap()])
        .args([
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
            "--kds-addr",
            "127.0.0.1:0",
        ])
        .args(["--ready-file", ready.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn global-cp");
    let endpoints: Value =
        test_support::eventually("the ready file", Duration::from_secs(20), || {
            let ready = ready.clone();
            async move {
                std::fs::read(&ready)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            }
        })
        .await
        .unwrap();
    let diagnostics = endpoints["diagnostics"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    test_support::eventually("/ready", Duration::from_secs(20), || {
        let (client, url) = (client.clone(), format!("{diagnostics}/ready"));
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await
    .unwrap();
    let token = std::fs::read_to_string(data_dir.join("data/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    Running {
        child,
        api: endpoints["api"].as_str().unwrap().to_owned(),
        token,
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = start(dir.path()).await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let resp = client
            .put(format!("{}/meshes/m{i}", cp.api))
            .bearer_auth(&cp.token)
            .body(format!("type: Mesh\nname: m{i}\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    cp.child.kill().unwrap(); // SIGKILL
    cp.child.wait().unwrap();

    let mut cp = start(dir.path()).await;
    let list: Value = client
        .get(format!("{}/meshes?size=100", cp.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["total"], 21,
        "20 acknowledged meshes plus default: {list}"
    );

    let pid = cp.child.id() as i32;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = test_support::eventually(
        "global-cp to exit after SIGTERM",
        Duration::from_secs(10),
        || {
            let status = cp.child.try_wait().unwrap();
            async move { status }
        },
    )
    .await
    .unwrap();
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test]
async fn a_bad_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_global-cp"))
        .args(["--data-dir", file.to_str().unwrap()])
        .args([
            "--api-addr",
            "127.0.0.1:0",
            "--diagnostics-addr",
            "127.0.0.1:0",
            "--kds-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not-a-dir"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
