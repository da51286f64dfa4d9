//! Shared by meshctl's integration tests: runs `meshctl up` as a child process, waits (with a
//! deadline, never a fixed sleep) for its endpoints.json, runs meshctl commands against it, and
//! the scenarios run against the real control planes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use meshctl::endpoints::Endpoints;
use meshctl::process::{is_alive, send_signal, Signal};
use serde_json::Value;

/// How long `meshctl up` may take to report everything ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `meshctl up` may take to stop after SIGTERM (children get 10 s each, in parallel).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a change on the global may take to show on a zone. KDS is event-driven: expect well
/// under a second; the margin is for loaded test machines.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `check` with backoff until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A running `meshctl up`.
pub struct Federation {
    pub meshctl: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub endpoints: Endpoints,
    up: Option<Child>,
    up_log: PathBuf,
}

impl Federation {
    /// Starts `meshctl up --zones N --data-dir DIR --no-demo` (the control planes only) and
    /// waits for DIR/endpoints.json.
    pub fn start(meshctl: &Path, dir: &Path, zones: u32, env: &[(&str, &str)]) -> Federation {
        Federation::start_with(meshctl, dir, zones, env, &["--no-demo"])
    }

    /// Starts `meshctl up --zones N --data-dir DIR` with `extra` arguments and waits for
    /// DIR/endpoints.json.
    pub fn start_with(
        meshctl: &Path,
        dir: &Path,
        zones: u32,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Federation {
        let up_log = dir.with_extension(format!("up-{}.log", unique()));
        let log = std::fs::File::create(&up_log).expect("create up log");
        let mut command = Command::new(meshctl);
        command
            .args(["up", "--zones", &zones.to_string(), "--data-dir"])
            .arg(dir)
            .args(extra)
            .env_remove("MESHCTL_API_URL")
            .env_remove("MESHCTL_TOKEN")
            .env_remove("MESHCTL_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        let up = command.spawn().expect("spawn meshctl up");
        let mut federation = Federation {
            meshctl: meshctl.to_path_buf(),
            dir: dir.to_path_buf(),
            config: dir.join("meshctl.yaml"),
            endpoints: placeholder_endpoints(),
            up: Some(up),
            up_log,
        };
        let endpoints_file = dir.join(Endpoints::FILE);
        federation.endpoints =
            wait_for("meshctl up to write endpoints.json", START_TIMEOUT, || {
                if let Some(status) = federation
                    .up
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "meshctl up exited ({status}) before it was ready:\n{}",
                        federation.up_output()
                    );
                }
                Endpoints::read(&endpoints_file).ok().flatten()
            });
        assert_eq!(federation.endpoints.zones.len(), zones as usize);
        assert!(
            federation.config.is_file(),
            "meshctl up wrote no meshctl.yaml"
        );
        federation
    }

    /// What `meshctl up` printed so far.
    pub fn up_output(&self) -> String {
        std::fs::read_to_string(&self.up_log).unwrap_or_default()
    }

    /// The pid of `meshctl up`.
    pub fn up_pid(&self) -> u32 {
        self.up.as_ref().expect("running").id()
    }

    /// The control planes' pids, from DIR/run/<name>.pid.
    pub fn child_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("run"))
            .expect("run dir")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".pid") && name != "up.pid" {
                let text = std::fs::read_to_string(entry.path()).expect("pid file");
                pids.push(text.trim().parse().expect("pid"));
            }
        }
        pids
    }

    /// Runs meshctl with `--config DIR/meshctl.yaml` and `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        run_meshctl(&self.meshctl, Some(&self.config), args)
    }

    /// Runs meshctl and asserts it succeeds; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs meshctl against zone `zone`'s API (`--api-url`, no config file), with the zone's own
    /// admin token when `with_token`.
    pub fn on_zone(&self, zone: &str, with_token: bool, args: &[&str]) -> Output {
        let api = &self
            .endpoints
            .zones
            .get(zone)
            .unwrap_or_else(|| panic!("no zone {zone} in endpoints.json"))
            .api;
        let mut full = vec!["--api-url", api.as_str()];
        let token;
        if with_token {
            let path = self.dir.join(zone).join("admin-token");
            token = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("admin token {}: {e}", path.display()));
            full.extend(["--token", token.trim()]);
        }
        full.extend_from_slice(args);
        run_meshctl(&self.meshctl, None, &full)
    }

    /// Waits until `meshctl get ... -o json` on zone `zone` finds the resource; returns it.
    pub fn wait_on_zone(&self, zone: &str, get: &[&str]) -> Value {
        let mut args = vec!["get"];
        args.extend_from_slice(get);
        args.extend(["-o", "json"]);
        let started = Instant::now();
        let found = wait_for(
            &format!("{get:?} to reach {zone} over KDS"),
            SYNC_TIMEOUT,
            || {
                let out = self.on_zone(zone, false, &args);
                if !out.status.success() {
                    return None;
                }
                serde_json::from_slice::<Value>(&out.stdout).ok()
            },
        );
        eprintln!("{get:?} reached {zone} in {:?}", started.elapsed());
        found
    }

    /// Waits until `meshctl get ...` on zone `zone` answers 404.
    pub fn wait_gone_from_zone(&self, zone: &str, get: &[&str]) {
        let mut args = vec!["get"];
        args.extend_from_slice(get);
        wait_for(
            &format!("{get:?} to be deleted from {zone} over KDS"),
            SYNC_TIMEOUT,
            || {
                let out = self.on_zone(zone, false, &args);
                let stderr = String::from_utf8_lossy(&out.stderr);
                (out.status.code() == Some(1) && stderr.contains("HTTP 404")).then_some(())
            },
        );
    }

    /// Asserts `meshctl inspect zones` (table and JSON) shows every zone of endpoints.json online.
    pub fn assert_zones_online(&self) {
        let table = self.ok(&["inspect", "zones"]);
        let header = table.lines().next().unwrap_or_default();
        assert!(header.starts_with("NAME"), "{table}");
        for column in [
            "STATUS",
            "GLOBAL NODE",
            "LAST CONNECTED",
            "LAST UPDATED",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "VERSION",
        ] {
            assert!(header.contains(column), "no {column} column:\n{table}");
        }
        for zone in self.endpoints.zones.keys() {
            let row = table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(zone.as_str()))
                .unwrap_or_else(|| panic!("no row for {zone}:\n{table}"));
            assert_eq!(
                row.split_whitespace().nth(1),
                Some("online"),
                "{zone} is not online:\n{table}"
            );
            assert!(
                row.contains(" ago "),
                "{zone} has no last connection:\n{table}"
            );
            assert!(
                row.split_whitespace()
                    .nth(2)
                    .is_some_and(|node| node.parse::<u64>().is_ok()),
                "{zone} is held by no global node:\n{table}"
            );
        }
        let json = self.json(&["inspect", "zones"]);
        let items = json["items"].as_array().expect("items");
        assert_eq!(
            json["total"],
            self.endpoints.zones.len(),
            "one item per zone: {json}"
        );
        for zone in self.endpoints.zones.keys() {
            let item = items
                .iter()
                .find(|i| i["name"] == zone.as_str())
                .unwrap_or_else(|| panic!("no item for {zone}: {json}"));
            assert_eq!(item["status"], "online", "{json}");
            assert!(item["connectedSince"].is_string(), "{json}");
        }
    }

    /// Runs meshctl and asserts it fails with exit code 1; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "meshctl {args:?} should have failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs meshctl with `-o json` appended and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("meshctl {args:?}: {e}: {out}"))
    }

    /// Sends SIGTERM to `meshctl up`, waits for it to exit and for every child to be gone.
    pub fn stop(mut self) -> ExitStatus {
        let pids = self.child_pids();
        let mut up = self.up.take().expect("running");
        send_signal(up.id(), Signal::Term).expect("SIGTERM meshctl up");
        let status = wait_for("meshctl up to exit after SIGTERM", STOP_TIMEOUT, || {
            up.try_wait().expect("wait meshctl up")
        });
        for pid in pids {
            wait_for(
                &format!("control plane pid {pid} to be gone"),
                STOP_TIMEOUT,
                || (!is_alive(pid)).then_some(()),
            );
        }
        status
    }

    /// Waits for `meshctl up` to exit on its own.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let mut up = self.up.take().expect("running");
        let status = wait_for("meshctl up to exit", timeout, || {
            up.try_wait().expect("wait")
        });
        (status, self.up_output())
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            let _ = send_signal(up.id(), Signal::Term);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = up.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = up.kill();
            let _ = up.wait();
        }
    }
}

fn placeholder_endpoints() -> Endpoints {
    serde_json::from_value(serde_json::json!({
        "global": {"api": "", "kds": "", "diagnostics": ""}, "zones": {}
    }))
    .expect("placeholder")
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Runs meshctl (with a config file when given), never picking up the caller's MESHCTL_* variables.
pub fn run_meshctl(meshctl: &Path, config: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(meshctl);
    command
        .env_remove("MESHCTL_API_URL")
        .env_remove("MESHCTL_TOKEN")
        .env_remove("MESHCTL_CONFIG")
        .stdin(Stdio::null());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(args).output().expect("run meshctl")
}

const DEMO: &str = "\
type: Mesh
name: demo
---
type: MeshTrafficPermission
name: allow-all
mesh: demo
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        action: Allow
";

const ZONE_TIMEOUT: &str = "\
type: MeshTimeout
name: zone-local
mesh: demo
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: Mesh
      default:
        idleTimeout: 30s
";

/// The main scenario: the zones are online on the global (`inspect zones`); apply a Mesh and a
/// MeshTrafficPermission on the global, get them as tables and JSON, see them reach every zone
/// over KDS; a policy applied on a zone is refused; delete one and see the delete reach the zones;
/// stop `up` with SIGTERM (exit 0, children gone), start it again on the same directory and find
/// the data as it was, on the global and on the zones.
pub fn apply_get_delete_restart(meshctl: &Path, tmp: &Path) {
    let dir = tmp.join("federation");
    let file = tmp.join("demo.yaml");
    std::fs::write(&file, DEMO).expect("write demo.yaml");
    let file = file.to_str().expect("utf-8 path");

    let fed = Federation::start(meshctl, &dir, 2, &[]);
    let up_out = fed.up_output();
    assert!(up_out.contains("meshctl.yaml get meshes"), "{up_out}");
    assert!(up_out.contains("meshctl.yaml inspect zones"), "{up_out}");
    for (name, role) in [("global", "global"), ("zone-1", "zone"), ("zone-2", "zone")] {
        let row = up_out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("status table lacks {name}:\n{up_out}"));
        assert_eq!(
            row.split_whitespace().nth(1),
            Some(role),
            "ROLE of {name}:\n{up_out}"
        );
    }

    // `up` waits for the zones to connect before it writes endpoints.json.
    fed.assert_zones_online();
    assert!(
        fed.endpoints.global.kds_ca.is_some(),
        "endpoints.json names no kdsCa"
    );
    for zone in ["zone-1", "zone-2"] {
        let token = dir.join(format!("run/{zone}.token"));
        let meta = std::fs::metadata(&token).unwrap_or_else(|e| panic!("{}: {e}", token.display()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            token.display()
        );
    }

    // Zone tokens come from the global, for the admin only.
    let token = fed.ok(&[
        "generate",
        "zone-token",
        "--zone",
        "zone-9",
        "--valid-for",
        "1h",
    ]);
    assert_eq!(token.lines().count(), 1, "{token}");
    assert!(!token.trim().is_empty(), "{token}");
    let anonymous = run_meshctl(
        meshctl,
        None,
        &[
            "--api-url",
            &fed.endpoints.global.api,
            "generate",
            "zone-token",
            "--zone",
            "zone-9",
        ],
    );
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(anonymous.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    let bad = fed.fails(&[
        "generate",
        "zone-token",
        "--zone",
        "zone-9",
        "--valid-for",
        "soon",
    ]);
    assert!(bad.contains("HTTP 400"), "{bad}");

    // Reads are open, writes need the token.
    let anonymous = run_meshctl(
        meshctl,
        None,
        &["--api-url", &fed.endpoints.global.api, "apply", "-f", file],
    );
    assert_eq!(anonymous.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("HTTP 401"), "{stderr}");

    let version = fed.ok(&["version"]);
    assert!(version.contains("Server: Meridian"), "{version}");
    assert!(version.contains("mode global"), "{version}");
    let zone_version = run_meshctl(
        meshctl,
        None,
        &["--api-url", &fed.endpoints.zones["zone-1"].api, "version"],
    );
    let zone_version = String::from_utf8_lossy(&zone_version.stdout);
    assert!(zone_version.contains("zone zone-1"), "{zone_version}");

    let applied = fed.ok(&["apply", "-f", file]);
    assert!(applied.contains("created Mesh demo"), "{applied}");
    assert!(
        applied.contains("created MeshTrafficPermission allow-all"),
        "{applied}"
    );
    let again = fed.ok(&["apply", "-f", file]);
    assert!(again.contains("updated Mesh demo"), "{again}");
    assert!(
        again.contains("updated MeshTrafficPermission allow-all"),
        "{again}"
    );

    let meshes = fed.ok(&["get", "meshes"]);
    assert!(meshes.starts_with("NAME"), "{meshes}");
    assert!(meshes.contains("MTLS"), "{meshes}");
    assert!(meshes.lines().any(|l| l.starts_with("demo ")), "{meshes}");

    let table = fed.ok(&["get", "meshtrafficpermissions", "-m", "demo"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.starts_with("MESH"), "{table}");
    assert!(header.contains("TARGETREF KIND"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("allow-all"))
        .unwrap_or_else(|| panic!("no allow-all row:\n{table}"));
    assert!(row.starts_with("demo "), "{table}");
    assert!(row.contains(" Mesh "), "{table}");

    let list = fed.json(&["get", "meshtrafficpermissions", "-m", "demo"]);
    let items = list["items"].as_array().expect("items");
    // The applied policy, and the default allow-all-demo the new mesh got.
    assert_eq!(list["total"], 2, "{list}");
    let applied = items
        .iter()
        .find(|i| i["name"] == "allow-all")
        .unwrap_or_else(|| panic!("no allow-all item: {list}"));
    assert_eq!(applied["mesh"], "demo", "{list}");
    assert!(
        items.iter().any(|i| i["name"] == "allow-all-demo"),
        "{list}"
    );
    // The server keeps the spec meshctl sent.
    let sent = meshctl::apply::plan(DEMO, "demo").expect("DEMO plans");
    assert_eq!(applied["spec"], sent[1].body["spec"], "{list}");

    let one = fed.json(&["get", "MeshTrafficPermission", "allow-all", "-m", "demo"]);
    assert_eq!(one["type"], "MeshTrafficPermission", "{one}");
    assert_eq!(one["name"], "allow-all", "{one}");
    let mesh = fed.json(&["get", "mesh", "demo"]);
    assert_eq!(mesh["type"], "Mesh", "{mesh}");

    // The global's Mesh and policy reach every zone over KDS, as they are on the global.
    for zone in ["zone-1", "zone-2"] {
        let mesh = fed.wait_on_zone(zone, &["mesh", "demo"]);
        assert_eq!(mesh["name"], "demo", "{zone}: {mesh}");
        let policy = fed.wait_on_zone(zone, &["meshtrafficpermission", "allow-all", "-m", "demo"]);
        assert_eq!(policy["type"], "MeshTrafficPermission", "{zone}: {policy}");
        assert_eq!(policy["mesh"], "demo", "{zone}: {policy}");
        assert_eq!(policy["spec"], applied["spec"], "{zone}: {policy}");
    }

    // A zone refuses policy written to it: policy belongs to the global.
    let timeout_file = tmp.join("zone-timeout.yaml");
    std::fs::write(&timeout_file, ZONE_TIMEOUT).expect("write zone-timeout.yaml");
    let refused = fed.on_zone(
        "zone-1",
        true,
        &["apply", "-f", timeout_file.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("MeshTimeout"), "{stderr}");
    assert!(stderr.contains("on the global"), "{stderr}");
    assert!(!stderr.contains("HTTP 401"), "{stderr}");
    let absent = fed.on_zone(
        "zone-1",
        false,
        &["get", "meshtimeout", "zone-local", "-m", "demo"],
    );
    assert_eq!(absent.status.code(), Some(1));

    // Nothing leaks into another mesh.
    let other = fed.json(&["get", "meshtrafficpermissions", "-m", "default"]);
    assert!(
        other["items"]
            .as_array()
            .is_none_or(|items| items.iter().all(|i| i["name"] != "allow-all")),
        "{other}"
    );

    let deleted = fed.ok(&["delete", "meshtrafficpermission", "allow-all", "-m", "demo"]);
    assert!(
        deleted.contains("deleted MeshTrafficPermission allow-all"),
        "{deleted}"
    );
    let missing = fed.fails(&["get", "meshtrafficpermission", "allow-all", "-m", "demo"]);
    assert!(missing.contains("404"), "{missing}");
    let missing = fed.fails(&["delete", "meshtrafficpermission", "allow-all", "-m", "demo"]);
    assert!(missing.contains("404"), "{missing}");
    // The delete reaches the zones too.
    for zone in ["zone-1", "zone-2"] {
        fed.wait_gone_from_zone(zone, &["meshtrafficpermission", "allow-all", "-m", "demo"]);
    }

    let status = fed.stop();
    assert!(
        status.success(),
        "meshctl up exited with {status} after SIGTERM"
    );
    assert!(
        !dir.join(Endpoints::FILE).exists(),
        "endpoints.json left behind"
    );
    assert!(
        !dir.join("run/zone-1.token").exists(),
        "zone token left behind"
    );

    // Same directory: the data is still there.
    let fed = Federation::start(meshctl, &dir, 2, &[]);
    fed.assert_zones_online();
    let mesh = fed.json(&["get", "mesh", "demo"]);
    assert_eq!(mesh["name"], "demo", "{mesh}");
    fed.fails(&["get", "meshtrafficpermission", "allow-all", "-m", "demo"]);
    for zone in ["zone-1", "zone-2"] {
        let mesh = fed.wait_on_zone(zone, &["mesh", "demo"]);
        assert_eq!(mesh["name"], "demo", "{zone}: {mesh}");
        let gone = fed.on_zone(
            zone,
            false,
            &["get", "meshtrafficpermission", "allow-all", "-m", "demo"],
        );
        assert_eq!(gone.status.code(), Some(1), "{zone} still has allow-all");
    }
    let status = fed.stop();
    assert!(
        status.success(),
        "meshctl up exited with {status} after SIGTERM"
    );
}

/// The ```yaml blocks of a text file.
pub fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        match &mut current {
            None if trimmed == "```yaml" || trimmed == "```yml" => current = Some(String::new()),
            Some(block) if trimmed == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Applies every ```yaml block of `seeds/*.txt` and gets each resource back.
pub fn apply_seeds(meshctl: &Path, tmp: &Path, seeds: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(seeds)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", seeds.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let fed = Federation::start(meshctl, &tmp.join("seeds-federation"), 1, &[]);
    let mut applied = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("seed file");
        for (i, block) in yaml_blocks(&text).into_iter().enumerate() {
            let what = format!("{} block {i}", file.display());
            let path = tmp.join(format!("seed-{applied}.yaml"));
            std::fs::write(&path, &block).expect("write block");
            let out = fed.ok(&["apply", "-f", path.to_str().expect("utf-8")]);
            for parsed in mesh_api::parse_documents(&block) {
                let parsed = parsed.unwrap_or_else(|e| panic!("{what}: {e}"));
                let r = &parsed.resource;
                let rtype = r.resource_type();
                assert!(
                    out.contains(&format!("{rtype} {}", r.meta.name)),
                    "{what}: apply said {out}"
                );
                let mut args = vec!["get", rtype.plural(), r.meta.name.as_str()];
                if let Some(mesh) = &r.meta.mesh {
                    args.extend(["-m", mesh.as_str()]);
                }
                let got = fed.json(&args);
                assert_eq!(got["type"], rtype.name(), "{what}: {got}");
                assert_eq!(got["name"], r.meta.name.as_str(), "{what}: {got}");
                let table = fed.ok(&args[..]);
                assert!(table.contains(&r.meta.name), "{what}: {table}");
            }
            applied += 1;
        }
    }
    assert!(applied > 0, "no ```yaml block found in {}", seeds.display());
    let status = fed.stop();
    assert!(status.success(), "meshctl up exited with {status}");
}
