//! Upgrading with version skew, as operators see it: real zone control planes (`zone_cp::run` in
//! zone mode, in-process, stating another version with the hidden test flag
//! `--kds-report-version`) against a real global. A zone one minor version behind the global
//! comes online and `GET /zones/_overview` lists its version; a zone one minor version ahead is
//! refused at the KDS handshake and the overview shows it `refused`, with its version and why.
//! Each zone's own `GET /global-link` says the same from its side.

use std::time::Duration;

use serde_json::Value;

mod common;
use common::{start_global, Global};

const DEADLINE: Duration = Duration::from_secs(20);

struct ZoneCp {
    api: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_zone(global: &Global, dir: &std::path::Path, zone: &str, version: &str) -> ZoneCp {
    let mut config = global.zone_config(dir, zone).await;
    config.kds_report_version = Some(version.to_owned());
    let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
    let api = format!("http://{}", listeners.api.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(zone_cp::run(config, listeners, async {
        let _ = stopped.await;
    }));
    ZoneCp { api, stop, task }
}

impl ZoneCp {
    /// Waits for the zone's `GET /global-link` to satisfy `check`.
    async fn global_link(&self, check: impl Fn(&Value) -> bool) -> Value {
        let client = reqwest::Client::new();
        test_support::eventually("the zone's /global-link", DEADLINE, || async {
            let link: Value = client
                .get(format!("{}/global-link", self.api))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            check(&link).then_some(link)
        })
        .await
        .unwrap()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the zone CP stops")
            .unwrap()
            .unwrap();
    }
}

/// Waits for the zone's overview item to satisfy `check`.
async fn overview_item(global: &Global, zone: &str, check: impl Fn(&Value) -> bool) -> Value {
    test_support::eventually(&format!("{zone} in the overview"), DEADLINE, || async {
        let overview = global.overview().await;
        overview["items"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == zone && check(i))
            .cloned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_overview_lists_zone_versions_and_refused_zones() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(&dir.path().join("global")).await;
    // The global runs this build's version; the zones state one minor behind and one ahead.
    let own: kds::version::Version = kds::version::CURRENT.parse().unwrap();
    let behind = format!("{}.{}.9", own.major, own.minor.saturating_sub(1));
    let ahead = format!("{}.{}.0", own.major, own.minor + 1);
    let older = start_zone(&global, dir.path(), "older", &behind).await;
    let newer = start_zone(&global, dir.path(), "newer", &ahead).await;

    let item = overview_item(&global, "older", |i| i["status"] == "online").await;
    assert_eq!(item["version"], behind.as_str(), "{item}");
    assert_eq!(item["refused"], Value::Null, "{item}");
    // The older zone syncs: the default mesh the global made reached it, so it reports up.
    overview_item(&global, "older", |i| {
        i["resourcesSent"].as_u64().unwrap_or(0) > 0
    })
    .await;

    let item = overview_item(&global, "newer", |i| i["status"] == "refused").await;
    assert_eq!(item["version"], ahead.as_str(), "{item}");
    let why = item["refused"].as_str().unwrap_or_default();
    assert!(
        why.contains(&ahead)
            && why.contains(kds::version::CURRENT)
            && why.contains("upgrade the global first"),
        "{item}"
    );
    assert_eq!(item["resourcesSent"], 0, "{item}");

    // Each zone sees its side of the link: the older one connected, knowing the global's
    // version; the newer one refused, with the global's reason, still redialling.
    let link = older.global_link(|l| l["state"] == "connected").await;
    assert_eq!(link["version"], behind.as_str(), "{link}");
    assert_eq!(
        link["global"]["globalVersion"],
        kds::version::CURRENT,
        "{link}"
    );
    let link = newer
        .global_link(|l| l["state"] == "refused" && l["global"]["dials"].as_u64() >= Some(2))
        .await;
    assert_eq!(link["version"], ahead.as_str(), "{link}");
    assert_eq!(
        link["global"]["globalVersion"],
        kds::version::CURRENT,
        "{link}"
    );
    let why = link["global"]["refused"].as_str().unwrap_or_default();
    assert!(why.contains("upgrade the global first"), "{link}");
    // No Zone resource is made for a zone that never got in.
    let status = global
        .send(global.client.get(format!("{}/zones/newer", global.api)))
        .await;
    assert_eq!(status, 404);

    older.stop().await;
    newer.stop().await;
    global.stop().await;
}
