//! `meshctl inspect zones`: the global's view of each zone's KDS connection, from
//! `GET /zones/_overview`, as a kumactl-like table (times shown as ages, `12s ago`, or `-`).
//! `meshctl inspect dataplane`: a zone CP's view of one dataplane, its Envoy configuration and
//! policies (printed as the JSON the API returns) or its xDS insight, summarised for reading.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

/// One item of `GET /zones/_overview`. Every field is optional on the wire, so that a server
/// adding or omitting a field never breaks the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneOverview {
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    /// The id of the global node holding the zone's KDS stream (none while offline).
    pub global_node: Option<u64>,
    /// Start of the current KDS session (RFC 3339), null while offline.
    pub connected_since: Option<String>,
    /// Start of the latest KDS session, current or past (RFC 3339).
    pub last_connected: Option<String>,
    /// Time of the latest update exchanged with the zone (RFC 3339).
    pub last_updated: Option<String>,
    pub total_updates: u64,
    pub total_errors: u64,
    pub resources_sent: u64,
    pub resources_received: u64,
    pub nacks: u64,
    /// The zone control plane's version.
    pub version: Option<String>,
}

impl ZoneOverview {
    /// Decodes the items of an overview list; the error names the item that is not one.
    pub fn from_items(items: &[Value]) -> anyhow::Result<Vec<ZoneOverview>> {
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value(item.clone()).map_err(|e| {
                    anyhow::anyhow!(
                        "zone overview item {i} is not the expected shape ({e}): {item}"
                    )
                })
            })
            .collect()
    }

    /// Whether the global reports this zone connected.
    pub fn is_online(&self) -> bool {
        self.status.eq_ignore_ascii_case("online")
    }
}

/// The columns of `meshctl inspect zones`.
pub const ZONE_HEADERS: [&str; 8] = [
    "NAME",
    "STATUS",
    "GLOBAL NODE",
    "LAST CONNECTED",
    "LAST UPDATED",
    "TOTAL UPDATES",
    "TOTAL ERRORS",
    "VERSION",
];

/// `12s ago` for an RFC 3339 time, `-` when there is none, the text itself when it does not parse.
pub fn ago(time: Option<&str>, now: DateTime<Utc>) -> String {
    let Some(text) = time.map(str::trim).filter(|t| !t.is_empty()) else {
        return "-".to_owned();
    };
    match DateTime::parse_from_rfc3339(text) {
        Ok(t) => format!(
            "{} ago",
            crate::output::human_duration(now.signed_duration_since(t.with_timezone(&Utc)))
        ),
        Err(_) => text.to_owned(),
    }
}

/// One table row. LAST CONNECTED is the latest session's start (`lastConnected`, else
/// `connectedSince`).
pub fn zone_row(zone: &ZoneOverview, now: DateTime<Utc>) -> Vec<String> {
    let last_connected = zone
        .last_connected
        .as_deref()
        .or(zone.connected_since.as_deref());
    let status = if zone.status.is_empty() {
        "-".to_owned()
    } else {
        zone.status.clone()
    };
    vec![
        zone.name.clone(),
        status,
        zone.global_node
            .map_or_else(|| "-".to_owned(), |node| node.to_string()),
        ago(last_connected, now),
        ago(zone.last_updated.as_deref(), now),
        zone.total_updates.to_string(),
        zone.total_errors.to_string(),
        zone.version
            .clone()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "-".to_owned()),
    ]
}

/// The table of `meshctl inspect zones`.
pub fn render_zones_table(zones: &[ZoneOverview], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = zones.iter().map(|z| zone_row(z, now)).collect();
    crate::output::align(&ZONE_HEADERS, &rows)
}

/// The API path of a dataplane view.
pub fn dataplane_segments(view: crate::DataplaneView, mesh: &str, name: &str) -> Vec<String> {
    let (collection, tail) = match view {
        crate::DataplaneView::ConfigDump => ("dataplanes", Some("xds")),
        crate::DataplaneView::Policies => ("dataplanes", Some("_policies")),
        crate::DataplaneView::Insight => ("dataplanes+insights", None),
    };
    ["meshes", mesh, collection, name]
        .into_iter()
        .chain(tail)
        .map(str::to_owned)
        .collect()
}

/// `dataplaneInsight` of `GET /meshes/{mesh}/dataplanes+insights/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataplaneInsight {
    pub online: bool,
    pub connected_since: Option<String>,
    pub disconnected_at: Option<String>,
    /// Per xDS type URL.
    pub xds: BTreeMap<String, XdsTypeInsight>,
}

/// One xDS type's state in a [`DataplaneInsight`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct XdsTypeInsight {
    pub last_acked_version: Option<String>,
    pub last_acked_at: Option<String>,
    pub last_nack: Option<XdsNack>,
}

/// The last configuration a proxy refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct XdsNack {
    pub message: String,
    pub at: Option<String>,
}

/// `Listener` for `type.googleapis.com/envoy.config.listener.v3.Listener`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit(['.', '/']).next().unwrap_or(type_url)
}

/// The summary `meshctl inspect dataplane --type insight` prints: who, whether online since
/// when, and a table of the xDS types with their last ACK and NACK.
pub fn render_dataplane_insight(overview: &Value, now: DateTime<Utc>) -> anyhow::Result<String> {
    let field = |k: &str| overview.get(k).and_then(Value::as_str).unwrap_or("?");
    let insight: DataplaneInsight = serde_json::from_value(
        overview
            .get("dataplaneInsight")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no dataplaneInsight in {overview}"))?,
    )
    .map_err(|e| anyhow::anyhow!("dataplaneInsight is not the expected shape ({e}): {overview}"))?;
    let status = match (&insight.connected_since, insight.online) {
        (None, _) => "offline (never connected)".to_owned(),
        (Some(since), true) => format!("online (connected {})", ago(Some(since), now)),
        (Some(since), false) => format!(
            "offline (disconnected {}, had connected {})",
            ago(insight.disconnected_at.as_deref(), now),
            ago(Some(since), now)
        ),
    };
    let mut out = format!(
        "Dataplane: {}/{}\nStatus:    {status}\n",
        field("mesh"),
        field("name")
    );
    if insight.xds.is_empty() {
        return Ok(out);
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = insight
        .xds
        .iter()
        .map(|(type_url, t)| {
            let nack = match &t.last_nack {
                None => "-".to_owned(),
                Some(n) => format!("{}: {}", ago(n.at.as_deref(), now), n.message),
            };
            vec![
                short_type(type_url).to_owned(),
                t.last_acked_version
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
                ago(t.last_acked_at.as_deref(), now),
                nack,
            ]
        })
        .collect();
    out.push_str(&crate::output::align(
        &["XDS TYPE", "ACKED VERSION", "ACKED", "LAST NACK"],
        &rows,
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn overview() -> Value {
        json!({"total": 2, "items": [
            {"name": "zone-1", "status": "online", "globalNode": 2,
             "connectedSince": "2026-01-10T11:59:48Z",
             "lastConnected": "2026-01-10T11:59:48Z", "lastUpdated": "2026-01-10T11:59:58Z",
             "totalUpdates": 12, "totalErrors": 0, "resourcesSent": 30, "resourcesReceived": 4,
             "nacks": 0, "version": "0.1.0"},
            {"name": "zone-2", "status": "offline", "globalNode": null, "connectedSince": null,
             "lastConnected": null, "lastUpdated": null, "totalUpdates": 0, "totalErrors": 3,
             "resourcesSent": 0, "resourcesReceived": 0, "nacks": 1, "version": null}
        ], "next": null})
    }

    #[test]
    fn overview_items_decode_with_every_field() {
        let items = overview()["items"].as_array().unwrap().clone();
        let zones = ZoneOverview::from_items(&items).unwrap();
        assert_eq!(zones[0].name, "zone-1");
        assert!(zones[0].is_online());
        assert_eq!(zones[0].global_node, Some(2));
        assert_eq!(zones[0].total_updates, 12);
        assert_eq!(zones[0].resources_sent, 30);
        assert_eq!(zones[0].version.as_deref(), Some("0.1.0"));
        assert!(!zones[1].is_online());
        assert_eq!(zones[1].connected_since, None);
        assert_eq!(zones[1].nacks, 1);
        // Missing fields are defaults; a wrong type names the item.
        let zones = ZoneOverview::from_items(&[json!({"name": "z", "extra": 1})]).unwrap();
        assert_eq!(zones[0].status, "");
        let err = ZoneOverview::from_items(&[json!({}), json!({"totalUpdates": "many"})])
            .unwrap_err()
            .to_string();
        assert!(err.contains("item 1"), "{err}");
    }

    #[test]
    fn zones_table_shows_ages_and_dashes() {
        let items = overview()["items"].as_array().unwrap().clone();
        let zones = ZoneOverview::from_items(&items).unwrap();
        assert_eq!(
            render_zones_table(&zones, now()),
            "NAME     STATUS    GLOBAL NODE   LAST CONNECTED   LAST UPDATED   TOTAL UPDATES   TOTAL ERRORS   VERSION\n\
             zone-1   online    2             12s ago          2s ago         12              0              0.1.0\n\
             zone-2   offline   -             -                -              0               3              -\n"
        );
        assert_eq!(
            render_zones_table(&[], now()),
            "NAME   STATUS   GLOBAL NODE   LAST CONNECTED   LAST UPDATED   TOTAL UPDATES   TOTAL ERRORS   VERSION\n"
        );
    }

    #[test]
    fn dataplane_views_have_their_paths() {
        use crate::DataplaneView as V;
        assert_eq!(
            dataplane_segments(V::ConfigDump, "m", "dp").join("/"),
            "meshes/m/dataplanes/dp/xds"
        );
        assert_eq!(
            dataplane_segments(V::Policies, "m", "dp").join("/"),
            "meshes/m/dataplanes/dp/_policies"
        );
        assert_eq!(
            dataplane_segments(V::Insight, "m", "dp").join("/"),
            "meshes/m/dataplanes+insights/dp"
        );
    }

    #[test]
    fn dataplane_insight_summary() {
        let overview = json!({"type": "DataplaneOverview", "mesh": "default", "name": "web-1",
            "dataplaneInsight": {"online": true, "connectedSince": "2026-01-10T11:59:00Z",
                "disconnectedAt": null, "xds": {
                "type.googleapis.com/envoy.config.listener.v3.Listener": {
                    "lastAckedVersion": "3f2a", "lastAckedAt": "2026-01-10T11:59:50Z",
                    "lastNack": null},
                "type.googleapis.com/envoy.config.cluster.v3.Cluster": {
                    "lastAckedVersion": null, "lastAckedAt": null,
                    "lastNack": {"version": "", "nonce": "2", "message": "bad cluster",
                                 "at": "2026-01-10T11:59:58Z"}}}}});
        assert_eq!(
            render_dataplane_insight(&overview, now()).unwrap(),
            "Dataplane: default/web-1\n\
             Status:    online (connected 60s ago)\n\
             \n\
             XDS TYPE   ACKED VERSION   ACKED     LAST NACK\n\
             Cluster    -               -         2s ago: bad cluster\n\
             Listener   3f2a            10s ago   -\n"
        );
        let offline = json!({"mesh": "default", "name": "web-1", "dataplaneInsight": {
            "online": false, "connectedSince": "2026-01-10T11:00:00Z",
            "disconnectedAt": "2026-01-10T11:59:30Z", "xds": {}}});
        assert_eq!(
            render_dataplane_insight(&offline, now()).unwrap(),
            "Dataplane: default/web-1\n\
             Status:    offline (disconnected 30s ago, had connected 60m ago)\n"
        );
        let never = json!({"mesh": "m", "name": "n", "dataplaneInsight": {"online": false}});
        assert!(render_dataplane_insight(&never, now())
            .unwrap()
            .contains("offline (never connected)"));
        let err = render_dataplane_insight(&json!({"name": "x"}), now()).unwrap_err();
        assert!(err.to_string().contains("no dataplaneInsight"), "{err}");
        let err = render_dataplane_insight(&json!({"dataplaneInsight": {"online": "yes"}}), now())
            .unwrap_err();
        assert!(err.to_string().contains("not the expected shape"), "{err}");
    }

    #[test]
    fn last_connected_falls_back_to_connected_since() {
        let zone = ZoneOverview {
            name: "z".into(),
            status: "online".into(),
            connected_since: Some("2026-01-10T11:00:00Z".into()),
            ..ZoneOverview::default()
        };
        assert_eq!(zone_row(&zone, now())[3], "60m ago");
        assert_eq!(ago(Some("yesterday"), now()), "yesterday");
        assert_eq!(ago(Some(""), now()), "-");
        assert_eq!(ago(None, now()), "-");
        assert_eq!(ago(Some("2026-01-08T12:00:00+00:00"), now()), "2d ago");
        assert_eq!(zone_row(&ZoneOverview::default(), now())[1], "-");
    }
}
