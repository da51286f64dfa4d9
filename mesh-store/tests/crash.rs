//! Crash durability: a child process (this test binary, re-executed with an environment variable
//! selecting the child role) creates resources from several tasks and prints the name of each
//! acknowledged one; the parent kills it with SIGKILL mid-stream, reopens the store, and checks
//! that every acknowledged write is there.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mesh_api::ResourceType;
use mesh_store::{testing, ListQuery, ResourceStore, SledStore};

const CHILD_DIR_ENV: &str = "MERIDIAN_STORE_CRASH_CHILD_DIR";
const CHILD_PREFIX_ENV: &str = "MERIDIAN_STORE_CRASH_CHILD_PREFIX";
const WRITERS: usize = 8;
const DEADLINE: Duration = Duration::from_secs(60);

/// The child role; a no-op unless the parent set the environment.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(prefix)) = (
        std::env::var(CHILD_DIR_ENV),
        std::env::var(CHILD_PREFIX_ENV),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = SledStore::open(&dir).expect("child: open");
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded: the parent kills us long before either bound.
                for i in 0..100_000 {
                    if started.elapsed() > DEADLINE {
                        break;
                    }
                    let name = format!("{prefix}-{w}-{i}");
                    let labels = [("writer", w.to_string()), ("seq", i.to_string())];
                    let labels: Vec<(&str, &str)> =
                        labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    store
                        .create(testing::resource(&name, "default", &labels))
                        .await
                        .expect("child: create");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {name}").expect("child: stdout");
                    out.flush().expect("child: flush stdout");
                }
            }));
        }
        for task in tasks {
            task.await.expect("child: writer");
        }
    });
}

/// Runs the child against `dir`, kills it once `kill_after` writes were acknowledged, and returns
/// every acknowledged name (including those printed between the kill decision and the kill).
fn run_and_kill(dir: &Path, prefix: &str, kill_after: usize) -> Vec<String> {
    let exe = std::env::current_exe().expect("current test binary");
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_PREFIX_ENV, prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(name) = line.strip_prefix("ACK ") {
                if tx.send(name.to_owned()).is_err() {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let mut acked = Vec::new();
    while acked.len() < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(name) => acked.push(name),
            Err(e) => {
                let _ = child.kill();
                panic!("child acknowledged only {} writes: {e}", acked.len());
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, not finished");
    // The pipe closes when the child dies: collect what it printed before that.
    reader.join().expect("reader thread");
    acked.extend(rx.try_iter());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    let mut all_acked = Vec::new();
    // Crash the same store several times, so recovery itself is also crashed into.
    for (round, kill_after) in [(0, 1000), (1, 200), (2, 2000)] {
        let acked = run_and_kill(&path, &format!("round{round}"), kill_after);
        assert!(acked.len() >= kill_after);
        all_acked.extend(acked);

        let store = SledStore::open(&path).expect("reopen after SIGKILL");
        let mut missing = Vec::new();
        for name in &all_acked {
            match store.get(&testing::key(name, "default")).await {
                Ok(Some(r)) => assert_eq!(r.meta.version, 1),
                Ok(None) => missing.push(name.clone()),
                Err(e) => panic!("reading {name} after the crash: {e}"),
            }
        }
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        // Everything stored decodes, and the change log agrees with the resources.
        let page = store
            .list(&ListQuery::all(ResourceType::MeshTimeout))
            .await
            .expect("list after the crash");
        assert!(page.total >= all_acked.len());
        assert_eq!(
            store.revision(),
            page.total as u64,
            "one revision per create"
        );
        let mut watch = store.watch(0).expect("watch from 0");
        for expected in 1..=store.revision() {
            let event = testing::next_event(&mut watch)
                .await
                .expect("replayed event");
            assert_eq!(event.revision, expected);
        }
        drop(watch);
        drop(store);
    }
}
