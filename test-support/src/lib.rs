//! Helpers for Meridian's tests: waiting for a condition with a deadline (never a fixed sleep),
//! locating the workspace's binaries and the shared fixtures, and a Python with grpcio for the
//! gRPC proxyless tests, and [`relay::FaultRelay`], a TCP relay that injects link faults
//! ([`relay_control`] runs a set of them behind a control port: the `fault-relay` binary, the
//! container tier's relay image). Dev-only: nothing ships with it.

pub mod relay;
pub mod relay_control;

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

/// The grpcio release the proxyless tests use (it has the xDS resolver, `xds:///`).
pub const GRPCIO_VERSION: &str = "1.85.1";

/// The cargo target directory: `$CARGO_TARGET_DIR` when set, else the nearest ancestor of the
/// running executable holding cargo's `CACHEDIR.TAG`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A Python interpreter that can `import grpc` (grpcio [`GRPCIO_VERSION`]): a virtualenv at
/// `<target dir>/python-grpcio-<version>` (see [`python_venv`]).
pub fn python_with_grpcio() -> PathBuf {
    python_venv(
        &format!("grpcio-{GRPCIO_VERSION}"),
        &format!("grpcio=={GRPCIO_VERSION}"),
        "import grpc",
    )
}

/// The version of `kubernetes-validate` (PyPI) the manifest tests check against; it ships the
/// Kubernetes schemas, so validation runs offline once installed.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// A Python interpreter with `kubernetes-validate` [`KUBERNETES_VALIDATE_VERSION`] (see
/// [`python_venv`]); its `bin/kubernetes-validate` is beside it.
pub fn python_with_kubernetes_validate() -> PathBuf {
    python_venv(
        &format!("kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}"),
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
        "import kubernetes_validate",
    )
}

/// A Python interpreter with `requirement` installed: a virtualenv at
/// `<target dir>/python-<name>`, made once with `python3 -m venv` (or `$MERIDIAN_PYTHON -m venv`)
/// and `pip install` from PyPI, checked by running `check`, then reused. A file lock makes
/// parallel tests (and processes) wait for the one that installs. Panics saying what is missing
/// when Python or PyPI is unavailable.
pub fn python_venv(name: &str, requirement: &str, check: &str) -> PathBuf {
    use fs2::FileExt as _;

    let target = target_dir();
    let venv = target.join(format!("python-{name}"));
    let python = venv.join("bin").join("python");
    let ready = venv.join(".meridian-ready");
    if ready.is_file() {
        return python;
    }
    std::fs::create_dir_all(&target)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", target.display()));
    let lock_path = target.join(format!("python-{name}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock_exclusive()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    // Whoever held the lock before may have finished the job.
    if ready.is_file() {
        return python;
    }
    let base = std::env::var("MERIDIAN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let venv_arg = venv.to_string_lossy().into_owned();
    // --clear: a venv left half-made by an interrupted run is started afresh.
    run_setup(
        &base,
        &["-m", "venv", "--clear", &venv_arg],
        "creating a Python virtualenv (needs CPython 3 with the venv module; set MERIDIAN_PYTHON \
         to use another interpreter than python3)",
    );
    let python_arg = python.to_string_lossy().into_owned();
    run_setup(
        &python_arg,
        &[
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            requirement,
        ],
        &format!("installing {requirement} from PyPI (is PyPI reachable?)"),
    );
    run_setup(
        &python_arg,
        &["-c", check],
        &format!("running `{check}` in the new virtualenv"),
    );
    std::fs::write(&ready, requirement)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", ready.display()));
    python
}

fn run_setup(program: &str, args: &[&str], what: &str) {
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{what}: `{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
