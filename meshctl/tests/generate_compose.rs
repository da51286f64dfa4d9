//! `meshctl generate compose` end to end on the real control planes (build them first with
//! `cargo build --workspace --bins`): the secrets it makes by running the federation once are
//! complete and valid, the project files are written, and a second run refuses to overwrite the
//! secrets. Bringing the project up in Docker is deploy/compose/smoke.sh's job.

use std::path::{Path, PathBuf};
use std::process::Command;

fn meshctl() -> PathBuf {
    test_support::workspace_bin("global-cp");
    test_support::workspace_bin("zone-cp");
    PathBuf::from(env!("CARGO_BIN_EXE_meshctl"))
}

fn generate(meshctl: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(meshctl)
        .args(["generate", "compose", "--zones", "2", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run meshctl")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn secrets_are_made_once_and_match_the_project() {
    let meshctl = meshctl();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("fed");

    let first = generate(&meshctl, &out, &[]);
    assert!(
        first.status.success(),
        "generate failed: {}\n{}",
        String::from_utf8_lossy(&first.stderr),
        std::fs::read_to_string(out.join("secrets/bootstrap.log")).unwrap_or_default()
    );

    let compose = read(&out.join("docker-compose.yaml"));
    assert!(compose.contains("zone-2-ingress:"), "{compose}");
    assert!(read(&out.join(".gitignore"))
        .lines()
        .any(|l| l == "secrets/"));
    let env = read(&out.join(".env"));
    assert!(env.contains("MERIDIAN_UID="), "{env}");

    let secrets = out.join("secrets");
    // The KDS CA zones trust, and a certificate that names `global` (the compose service).
    assert!(read(&secrets.join("global/kds/ca.crt")).contains("BEGIN CERTIFICATE"));
    let log = read(&secrets.join("logs/global.log"));
    assert!(log.contains("\"global\""), "KDS certificate names: {log}");
    for cp in ["global", "zone-1", "zone-2"] {
        assert!(!read(&secrets.join(cp).join("admin-token"))
            .trim()
            .is_empty());
    }
    let tokens = secrets.join("tokens");
    for name in [
        "zone-1",
        "zone-2",
        "zone-1-ingress",
        "zone-1-egress",
        "frontend-zone-1",
        "zone-2-ingress",
        "zone-2-egress",
        "backend-zone-2",
    ] {
        let token = read(&tokens.join(format!("{name}.token")));
        assert_eq!(token.split('.').count(), 2, "{name}: {token}");
        let mount = format!("./secrets/tokens/{name}.token:");
        assert!(compose.contains(&mount), "{mount} not in the compose file");
    }
    // The bootstrap federation is gone: its endpoints file is removed at shutdown.
    assert!(!secrets.join("endpoints.json").exists());

    // Existing secrets are never overwritten (the running project's data lives there).
    let token_before = read(&tokens.join("zone-1.token"));
    let second = generate(&meshctl, &out, &[]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(read(&tokens.join("zone-1.token")), token_before);

    // --no-secrets rewrites only the project files.
    let third = generate(&meshctl, &out, &["--no-secrets", "--image-tag", "dev"]);
    assert!(third.status.success());
    assert!(read(&out.join("docker-compose.yaml")).contains("meridian/zone-cp:dev"));
    assert_eq!(read(&tokens.join("zone-1.token")), token_before);
}
