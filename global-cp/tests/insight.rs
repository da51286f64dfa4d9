//! A real zone control plane (`zone_cp::run` in zone mode, in-process) connected to a real global:
//! the Dataplane created on the zone reaches the global renamed and labelled, the zone's
//! ZoneInsight (what it runs) reaches the global and shows in `GET /zones/_overview`, and policy
//! applied on the global reaches the zone's REST API.

use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::start_global;

#[tokio::test]
async fn zone_inventory_and_insight_reach_the_global() {
    let dir = tempfile::tempdir().unwrap();
    let global = start_global(&dir.path().join("global")).await;
    let zone_dir = dir.path().join("zone-1");
    let config = global.zone_config(dir.path(), "zone-1").await;
    let listeners = zone_cp::ZoneListeners::bind(&config).await.unwrap();
    let zone_api = format!("http://{}", listeners.api.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let zone = tokio::spawn(zone_cp::run(config, listeners, async {
        let _ = stop_rx.await;
    }));

    // The default mesh comes from the global; then a Dataplane can be created on the zone.
    let client = reqwest::Client::new();
    test_support::eventually(
        "the default mesh on the zone",
        Duration::from_secs(10),
        || {
            let (client, url) = (client.clone(), format!("{zone_api}/meshes/default"));
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        },
    )
    .await
    .unwrap();
    let zone_token =
        test_support::eventually("the zone's admin token", Duration::from_secs(10), || {
            let path = zone_dir.join("admin-token");
            async move {
                std::fs::read_to_string(path)
                    .ok()
                    .map(|t| t.trim().to_owned())
            }
        })
        .await
        .unwrap();
    let dataplane = "type: Dataplane\nname: web-1\nmesh: default\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags:\n        kuma.io/service: web\n";
    let created = client
        .put(format!("{zone_api}/meshes/default/dataplanes/web-1"))
        .bearer_auth(&zone_token)
        .body(dataplane)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // At the global: the Dataplane, renamed and labelled with its zone.
    let at_global: Value = test_support::eventually(
        "the Dataplane at the global",
        Duration::from_secs(10),
        || {
            let (client, url) = (
                client.clone(),
                format!("{}/meshes/default/dataplanes/web-1.zone-1", global.api),
            );
            async move {
                let response = client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())?;
                response.json().await.ok()
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(at_global["labels"]["kuma.io/zone"], "zone-1", "{at_global}");
    assert_eq!(at_global["labels"]["kuma.io/origin"], "zone", "{at_global}");

    // The zone's insight, in the overview.
    let item = test_support::eventually(
        "zone-1's insight in the overview",
        Duration::from_secs(10),
        || async {
            let overview = global.overview().await;
            let item = overview["items"]
                .as_array()?
                .iter()
                .find(|i| i["name"] == "zone-1")?
                .clone();
            (item["status"] == "online" && item["insight"]["meshes"]["default"]["dataplanes"] == 1)
                .then_some(item)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        item["insight"]["meshes"]["default"]["services"], 1,
        "{item}"
    );
    assert_eq!(
        item["insight"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{item}"
    );

    // Users cannot write insights, on the zone or the global.
    let refused = client
        .put(format!("{zone_api}/zone-insights/zone-1"))
        .bearer_auth(&zone_token)
        .json(&json!({"type": "ZoneInsight", "name": "zone-1", "zone": "zone-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    // Policy applied on the global reaches the zone's API.
    let timeout = "type: MeshTimeout\nname: t1\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        idleTimeout: 5s\n";
    let applied = client
        .put(format!("{}/meshes/default/meshtimeouts/t1", global.api))
        .bearer_auth(&global.token)
        .body(timeout)
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 201);
    test_support::eventually(
        "the MeshTimeout on the zone",
        Duration::from_secs(10),
        || {
            let (client, url) = (
                client.clone(),
                format!("{zone_api}/meshes/default/meshtimeouts/t1"),
            );
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        },
    )
    .await
    .unwrap();

    stop_tx.send(()).unwrap();
    zone.await.unwrap().unwrap();
    global.stop().await;
}
