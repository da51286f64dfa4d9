//! `meshctl install control-plane` output validated against the Kubernetes schemas, offline:
//! `kubernetes-validate` (PyPI, with its bundled schemas) in a virtualenv under the target dir
//! (`cargo run -p test-support --bin python-with-grpcio` makes it, as CI does before the tests),
//! in strict mode (unknown fields refused), for Kubernetes 1.28 (the first with the pod-index
//! label the global's node ids come from) and 1.37.

use std::path::{Path, PathBuf};
use std::process::Command;

const VERSIONS: &[&str] = &["1.28.0", "1.37.0"];

fn validator() -> PathBuf {
    let python = test_support::python_with_kubernetes_validate();
    python.with_file_name("kubernetes-validate")
}

fn meshctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("run meshctl");
    assert!(
        out.status.success(),
        "meshctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// Runs the validator on `file` for every version; its output and whether all passed.
fn validate(validator: &Path, file: &Path) -> (bool, String) {
    let mut ok = true;
    let mut text = String::new();
    for version in VERSIONS {
        let out = Command::new(validator)
            .args(["--strict", "--no-warn", "-k", version])
            .arg(file)
            .output()
            .expect("run kubernetes-validate");
        ok &= out.status.success();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (ok, text)
}

#[test]
fn global_and_zone_manifests_pass_the_kubernetes_schemas() {
    let validator = validator();
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, Vec<&str>); 3] = [
        ("global", vec!["--mode", "global"]),
        (
            "global-5",
            vec![
                "--mode",
                "global",
                "--replicas",
                "5",
                "--kds-hostnames",
                "kds.example.com",
                "--namespace",
                "mesh",
            ],
        ),
        (
            "zone",
            vec![
                "--mode",
                "zone",
                "--zone",
                "eu-west-1",
                "--kds-global-address",
                "grpcs://kds.example.com:5685",
            ],
        ),
    ];
    for (name, flags) in cases {
        let mut args = vec!["install", "control-plane"];
        args.extend(flags);
        let text = meshctl(&args);
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &text).unwrap();
        let (ok, report) = validate(&validator, &file);
        assert!(ok, "{name}: kubernetes-validate refused:\n{report}\n{text}");
        // Every document was checked (one "passed" line per document and version).
        let documents = text.matches("\n---\n").count() + usize::from(text.starts_with("---\n"));
        assert_eq!(
            report.matches("passed").count(),
            documents * VERSIONS.len(),
            "{name}: {report}"
        );
    }

    // The validator does refuse what is wrong: the zone's manifests with a misspelt field.
    let text = meshctl(&[
        "install",
        "control-plane",
        "--mode",
        "zone",
        "--zone",
        "z",
        "--kds-global-address",
        "grpcs://g:5685",
    ])
    .replace("strategy:", "stratgy:");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, text).unwrap();
    let (ok, report) = validate(&validator, &file);
    assert!(!ok, "a misspelt field passed: {report}");
    assert!(report.contains("stratgy"), "{report}");
}

#[test]
fn a_zone_without_its_global_address_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["install", "control-plane", "--mode", "zone", "--zone", "z"])
        .output()
        .expect("run meshctl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--mode zone needs --kds-global-address"),
        "{stderr}"
    );
}
