//! The built binary: `serve` configured by flags and by environment, `call` printing text and
//! JSON reports, SIGTERM stopping the server cleanly, and bad flags refused by name.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use demo_app::{Report, ReportKind};

const BIN: &str = env!("CARGO_BIN_EXE_demo-app");

/// A `demo-app serve` child, killed if the test fails before stopping it.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(command: &mut Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn demo-app serve");
        // The first line names the bound address; reading it blocks until the server is
        // listening (or exits, which ends the stream).
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, addr }
    }

    /// SIGTERM, then wait (with a deadline) for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "demo-app serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "demo-app serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("call").args(args).output().unwrap()
}

#[test]
fn serve_and_call_through_the_binary() {
    let server = Server::start(Command::new(BIN).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--service",
        "backend",
        "--zone",
        "zone-2",
        "--instance",
        "backend-1",
        "--version",
        "v2",
    ]));
    let target = format!("http://{}/", server.addr);

    let output = call(&[
        "--target",
        &target,
        "--rate",
        "50",
        "--duration",
        "1s",
        "--report-every",
        "500ms",
        "--json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let reports: Vec<Report> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    let (last, periods) = reports.split_last().unwrap();
    assert!(!periods.is_empty(), "{stdout}");
    assert!(periods.iter().all(|r| r.kind == ReportKind::Period));
    assert_eq!(last.kind, ReportKind::Final);
    assert_eq!((last.sent, last.ok, last.failed), (50, 50, 0));
    assert_eq!(last.zones, [("zone-2".to_owned(), 50)].into());
    assert_eq!(last.versions, [("v2".to_owned(), 50)].into());

    let output = call(&[
        "--target",
        &format!("http://{}/status/503", server.addr),
        "--rate",
        "20",
        "--duration",
        "500ms",
    ]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with("final after "),
        "text report expected: {text}"
    );
    assert!(text.contains("ok 0, failed 10 (status 503: 10)"), "{text}");
    assert!(text.contains("success rate 0.00%"), "{text}");
    assert!(text.contains("zones: zone-2=10"), "{text}");

    server.terminate();
}

#[test]
fn serve_reads_its_identity_from_the_environment() {
    let server = Server::start(
        Command::new(BIN)
            .arg("serve")
            .env("DEMO_APP_LISTEN", "127.0.0.1:0")
            .env("DEMO_APP_SERVICE", "frontend")
            .env("DEMO_APP_ZONE", "zone-7")
            .env("DEMO_APP_INSTANCE", "frontend-x"),
    );
    let output = call(&[
        "--target",
        &format!("http://{}/", server.addr),
        "--rate",
        "10",
        "--duration",
        "300ms",
        "--json",
    ]);
    let report: Report = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report.zones, [("zone-7".to_owned(), 3)].into());
    assert_eq!(report.instances, [("frontend-x".to_owned(), 3)].into());
    server.terminate();
}

#[test]
fn bad_flags_are_refused_by_name() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--service",
            "b",
            "--zone",
            "z",
            "--fail-percent",
            "101",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--fail-percent"), "{stderr}");

    let output = call(&[
        "--target",
        "ftp://127.0.0.1/",
        "--rate",
        "5",
        "--duration",
        "1s",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("target ftp://127.0.0.1/: only http:// URLs"),
        "{stderr}"
    );
}
