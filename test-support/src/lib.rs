//! Helpers for Meridian's tests: waiting for a condition with a deadline (never a fixed sleep),
//! locating the workspace's binaries and the shared fixtures. Dev-only: nothing ships with it.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` in the message.
/// Checks back off from 5 ms to 100 ms so a fast condition is seen fast.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The repository root (the workspace directory).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `../shared` beside the repository root, where the Kuma fixtures and seeds live. Panics with a
/// clear message when it is missing, since the conformance tests cannot run without it.
pub fn shared_dir() -> PathBuf {
    let dir = workspace_root().join("../shared");
    assert!(
        dir.join("fixtures/kuma/INDEX.md").is_file(),
        "the shared fixtures are missing: expected {}/fixtures/kuma/INDEX.md \
         (clone the repository beside its shared/ folder)",
        dir.display()
    );
    dir
}

/// A binary built from this workspace (`global-cp`, `zone-cp`, `meshctl`, ...), next to the
/// running test executable's profile directory. Panics naming the command that builds it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "binary {} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}
