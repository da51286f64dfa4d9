//! Issue [3] point 7: a real gRPC xDS client (grpcio, Python) with a bootstrap pointing at the
//! zone CP dials `xds:///greeter` and round-robins over the service's instances, two real gRPC
//! servers registered as Dataplanes through the REST API; when one's Dataplane is deleted, the
//! client's calls all go to the other. The client authenticates with a dataplane token in its
//! node metadata (gRPC cannot set stream headers). Python's stderr (with gRPC's xDS traces) is in
//! every failure message.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const WAIT: Duration = Duration::from_secs(60);
const CALLS: usize = 20;

/// Every Python process's stderr, line by line, prefixed with the process's name.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn follow(&self, name: &str, child: &mut Child) {
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let (logs, name) = (self.clone(), name.to_string());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                logs.0.lock().unwrap().push(format!("[{name}] {line}"));
            }
        });
    }

    /// The last lines, for a failure message.
    fn tail(&self) -> String {
        let lines = self.0.lock().unwrap();
        let start = lines.len().saturating_sub(300);
        lines[start..].join("\n")
    }
}

/// A Python script speaking lines on stdin/stdout.
struct Script {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    logs: Logs,
}

impl Script {
    fn spawn(
        python: &Path,
        script: &str,
        args: &[&str],
        env: &[(&str, &OsStr)],
        name: &str,
        logs: &Logs,
    ) -> Script {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/grpc")
            .join(script);
        let mut command = Command::new(python);
        command
            .arg(&path)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start {} {}: {e}", python.display(), path.display())
        });
        logs.follow(name, &mut child);
        Script {
            name: name.to_string(),
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().expect("stdout piped")).lines(),
            child,
            logs: logs.clone(),
        }
    }

    /// Fails the test with `what` and every Python process's stderr.
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- python stderr ---\n{}", self.logs.tail());
    }

    async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = self.child.try_wait().ok().flatten();
                self.fail(&format!(
                    "{} closed its stdout (exit: {status:?})",
                    self.name
                ))
            }
            Ok(Err(e)) => self.fail(&format!("reading {}: {e}", self.name)),
            Err(_) => self.fail(&format!("{} said nothing for {WAIT:?}", self.name)),
        }
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        if let Err(e) = stdin.write_all(format!("{line}\n").as_bytes()).await {
            self.fail(&format!("writing to {}: {e}", self.name));
        }
    }
}

/// What the client got for `call <n>`.
#[derive(Debug, serde::Deserialize)]
struct Calls {
    answers: Vec<String>,
    errors: Vec<String>,
}

async fn call(client: &mut Script, n: usize) -> Calls {
    client.send(&format!("call {n}")).await;
    let line = client.line().await;
    match serde_json::from_str::<Calls>(&line) {
        Ok(calls) if calls.errors.is_empty() && calls.answers.len() == n => calls,
        Ok(calls) => client.fail(&format!("call {n}: {calls:?}")),
        Err(e) => client.fail(&format!("client said {line:?}: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_xds_client_load_balances_over_the_service() {
    let python = tokio::task::spawn_blocking(test_support::python_with_grpcio)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let config = zone_cp::Config::try_parse_from([
        "zone-cp",
        "--zone",
        "zone-1",
        "--data-dir",
        data_dir,
        "--api-addr",
        "127.0.0.1:0",
        "--diagnostics-addr",
        "127.0.0.1:0",
        "--xds-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
    let api = format!("http://{}", listeners.api.local_addr().unwrap());
    let xds = listeners.xds.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cp = tokio::spawn(zone_cp::run(config, listeners, async {
        let _ = stopped.await;
    }));
    let token_file = dir.path().join(control_plane::auth::ADMIN_TOKEN_FILE);
    let admin = test_support::eventually("the admin token", WAIT, || {
        let file = token_file.clone();
        async move {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| !t.trim().is_empty())
        }
    })
    .await
    .unwrap();
    let admin = admin.trim().to_string();
    let http = reqwest::Client::new();
    let put = |path: String, body: serde_json::Value| {
        let request = http
            .put(format!("{api}{path}"))
            .bearer_auth(&admin)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            assert!(
                status.is_success(),
                "PUT {path}: {status} {:?}",
                response.text().await
            );
        }
    };
    put(
        "/meshes/default".into(),
        json!({"type": "Mesh", "name": "default"}),
    )
    .await;

    // Two instances of `greeter`, each registered as a Dataplane (the gRPC server is the
    // endpoint itself: no sidecar in front of it).
    let logs = Logs::default();
    let mut servers = Vec::new();
    for name in ["greeter-a", "greeter-b"] {
        let mut server = Script::spawn(&python, "echo_server.py", &[name], &[], name, &logs);
        let line = server.line().await;
        let Some(port) = line
            .strip_prefix("port ")
            .and_then(|p| p.parse::<u16>().ok())
        else {
            server.fail(&format!("{name} said {line:?}, not `port <N>`"))
        };
        put(
            format!("/meshes/default/dataplanes/{name}"),
            json!({"type": "Dataplane", "mesh": "default", "name": name, "networking": {
                "address": "127.0.0.1",
                "inbound": [{"port": port, "tags": {
                    "kuma.io/service": "greeter", "kuma.io/protocol": "grpc"
                }}]
            }}),
        )
        .await;
        servers.push(server);
    }
    // The client's own Dataplane, and its token. It declares the service it dials as an
    // outbound: a proxy gets configuration only for the services it reaches (the port is never
    // bound, gRPC asks for the service's api listener by name).
    put(
        "/meshes/default/dataplanes/grpc-client".into(),
        json!({"type": "Dataplane", "mesh": "default", "name": "grpc-client", "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": 1, "tags": {"kuma.io/service": "grpc-client"}}],
            "outbound": [{"port": 2, "tags": {"kuma.io/service": "greeter"}}]
        }}),
    )
    .await;
    let reply: serde_json::Value = http
        .post(format!("{api}/tokens/dataplane"))
        .bearer_auth(&admin)
        .json(&json!({"mesh": "default", "name": "grpc-client", "validFor": "1h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reply["token"].as_str().expect("a dataplane token");

    let bootstrap = dir.path().join("grpc-bootstrap.json");
    let contents = json!({
        "xds_servers": [{
            "server_uri": xds.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": "default/grpc-client",
            "metadata": {(xds_server::server::TOKEN_METADATA_FIELD): token},
            "locality": {},
        },
    });
    std::fs::write(&bootstrap, serde_json::to_vec_pretty(&contents).unwrap()).unwrap();
    let mut client = Script::spawn(
        &python,
        "xds_client.py",
        &["greeter"],
        &[
            ("GRPC_XDS_BOOTSTRAP", bootstrap.as_os_str()),
            // gRPC's xDS client and resolver traces: what went wrong, when something does.
            ("GRPC_VERBOSITY", OsStr::new("INFO")),
            ("GRPC_TRACE", OsStr::new("xds_client,xds_resolver")),
        ],
        "grpc-client",
        &logs,
    );

    // Round robin: both instances answer.
    let first = call(&mut client, CALLS).await;
    for name in ["greeter-a", "greeter-b"] {
        if !first.answers.iter().any(|a| a == name) {
            client.fail(&format!("{name} never answered: {:?}", first.answers));
        }
    }

    // greeter-a's Dataplane goes (its server keeps running): once the client's EDS update
    // arrives, every call goes to greeter-b.
    let deleted = http
        .delete(format!("{api}/meshes/default/dataplanes/greeter-a"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{:?}", deleted.text().await);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let calls = call(&mut client, 5).await;
        if calls.answers.iter().all(|a| a == "greeter-b") {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            client.fail(&format!(
                "calls still reach greeter-a {WAIT:?} after its Dataplane was deleted: {:?}",
                calls.answers
            ));
        }
    }
    let after = call(&mut client, CALLS).await;
    if after.answers.iter().any(|a| a != "greeter-b") {
        client.fail(&format!("after the switch: {:?}", after.answers));
    }

    drop(client);
    drop(servers);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), cp)
        .await
        .expect("the zone CP stops")
        .unwrap()
        .unwrap();
}
