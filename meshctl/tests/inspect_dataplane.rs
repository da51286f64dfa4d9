//! `meshctl inspect dataplane` against a real zone control plane: the `zone-cp` binary of this
//! workspace (build it first with `cargo build --workspace --bins`) as a child process, a
//! Dataplane applied with meshctl, and a proxy (envoy-types' ADS client) connecting to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use meshctl::process::{send_signal, Signal};
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;

const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const WAIT: Duration = Duration::from_secs(30);

const DATAPLANE: &str = "\
type: Dataplane
name: web-1
mesh: default
networking:
  address: 10.0.0.1
  inbound:
    - port: 15000
      servicePort: 8080
      tags:
        kuma.io/service: web
";

/// A `zone-cp` child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct ZoneCp {
    child: Child,
    api: String,
    xds: String,
    admin: String,
}

impl ZoneCp {
    fn start(dir: &Path) -> ZoneCp {
        let ready = dir.join("ready.json");
        let log = std::fs::File::create(dir.join("zone-cp.log")).expect("log file");
        let child = Command::new(test_support::workspace_bin("zone-cp"))
            .args(["--zone", "zone-1", "--mode", "standalone"])
            .args([
                "--api-addr",
                "127.0.0.1:0",
                "--diagnostics-addr",
                "127.0.0.1:0",
            ])
            .args(["--xds-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn zone-cp");
        let mut cp = ZoneCp {
            child,
            api: String::new(),
            xds: String::new(),
            admin: String::new(),
        };
        let addresses: Value = wait_for("zone-cp's ready file", || {
            if let Ok(Some(status)) = cp.child.try_wait() {
                panic!(
                    "zone-cp exited ({status}): {}",
                    std::fs::read_to_string(dir.join("zone-cp.log")).unwrap_or_default()
                );
            }
            std::fs::read(&ready)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        });
        cp.api = addresses["api"].as_str().expect("api").to_owned();
        cp.xds = format!("http://{}", addresses["xds"].as_str().expect("xds"));
        let token = dir.join("data").join("admin-token");
        cp.admin = wait_for("the admin token", || {
            std::fs::read_to_string(&token)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        cp
    }

    /// Runs meshctl against this zone CP, with the admin token when `admin`.
    fn meshctl(&self, admin: bool, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meshctl"));
        command
            .env_remove("MESHCTL_API_URL")
            .env_remove("MESHCTL_TOKEN")
            .env_remove("MESHCTL_CONFIG")
            .args(["--api-url", &self.api]);
        if admin {
            command.args(["--token", &self.admin]);
        }
        command.args(args).output().expect("run meshctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.meshctl(true, args);
        assert!(
            out.status.success(),
            "meshctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("meshctl {args:?}: {e}: {out}"))
    }

    /// Runs meshctl expecting exit code 1; returns its stderr.
    fn fails(&self, admin: bool, args: &[&str]) -> String {
        let out = self.meshctl(admin, args);
        assert_eq!(out.status.code(), Some(1), "meshctl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for ZoneCp {
    fn drop(&mut self) {
        let _ = send_signal(self.child.id(), Signal::Term);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_dataplane_shows_config_policies_and_insight() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cp = ZoneCp::start(tmp.path());
    let file: PathBuf = tmp.path().join("dataplane.yaml");
    std::fs::write(&file, DATAPLANE).expect("write dataplane.yaml");
    cp.ok(&["apply", "-f", file.to_str().expect("utf-8")]);

    // The Envoy configuration: JSON, admin only.
    let denied = cp.fails(false, &["inspect", "dataplane", "web-1"]);
    assert!(
        denied.contains("HTTP 401") && denied.contains("needs the admin token"),
        "{denied}"
    );
    let dump = cp.json(&["inspect", "dataplane", "web-1", "-m", "default"]);
    let listener = &dump["listeners"][0];
    assert_eq!(listener["name"], "inbound:10.0.0.1:15000", "{dump}");
    assert_eq!(
        listener["filterChains"][0]["filters"][0]["typedConfig"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    );

    // The policies: the default mesh's defaults apply.
    let policies = cp.json(&["inspect", "dataplane", "web-1", "--type", "policies"]);
    let types: Vec<&str> = policies["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert!(types.contains(&"MeshTimeout"), "{policies}");

    // A missing dataplane: the API's error, clearly.
    let missing = cp.fails(
        true,
        &["inspect", "dataplane", "nope", "--type", "policies"],
    );
    assert!(
        missing.contains("dataplane nope")
            && missing.contains("not found")
            && missing.contains("HTTP 404"),
        "{missing}"
    );

    // The insight: never connected, then online with its LDS ACKed.
    let summary = cp.ok(&["inspect", "dataplane", "web-1", "--type", "insight"]);
    assert!(summary.contains("Dataplane: default/web-1"), "{summary}");
    assert!(summary.contains("offline (never connected)"), "{summary}");

    let token = cp
        .ok(&[
            "generate",
            "dataplane-token",
            "--mesh",
            "default",
            "--name",
            "web-1",
        ])
        .trim()
        .to_owned();
    let mut client = AggregatedDiscoveryServiceClient::connect(cp.xds.clone())
        .await
        .expect("connect to xDS");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let request = |version: &str, nonce: &str| DiscoveryRequest {
        node: Some(Node {
            id: "default/web-1".into(),
            ..Node::default()
        }),
        type_url: LISTENER_TYPE.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..DiscoveryRequest::default()
    };
    tx.send(request("", "")).await.expect("send");
    let mut stream_request = tonic::Request::new(ReceiverStream::new(rx));
    stream_request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let mut stream = client
        .stream_aggregated_resources(stream_request)
        .await
        .expect("stream admitted")
        .into_inner();
    let lds = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("LDS in time")
        .expect("LDS")
        .expect("stream open");
    tx.send(request(&lds.version_info, &lds.nonce))
        .await
        .expect("ACK");
    let summary = wait_for("the insight to show web-1 online with its ACK", || {
        let out = cp.meshctl(
            false,
            &["inspect", "dataplane", "web-1", "--type", "insight"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains(&lds.version_info)).then_some(text)
    });
    assert!(
        summary.contains("Status:    online (connected"),
        "{summary}"
    );
    let row = summary
        .lines()
        .find(|l| l.starts_with("Listener"))
        .unwrap_or_else(|| panic!("no Listener row: {summary}"));
    assert!(
        row.contains(&lds.version_info) && row.ends_with('-'),
        "{summary}"
    );
    drop((tx, stream));
}
