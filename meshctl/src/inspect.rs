//! `meshctl inspect zones`: the global's view of each zone's KDS connection, from
//! `GET /zones/_overview`, as a kumactl-like table (times shown as ages, `12s ago`, or `-`).

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
pub const ZONE_HEADERS: [&str; 7] = [
    "NAME",
    "STATUS",
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
            {"name": "zone-1", "status": "online", "connectedSince": "2026-01-10T11:59:48Z",
             "lastConnected": "2026-01-10T11:59:48Z", "lastUpdated": "2026-01-10T11:59:58Z",
             "totalUpdates": 12, "totalErrors": 0, "resourcesSent": 30, "resourcesReceived": 4,
             "nacks": 0, "version": "0.1.0"},
            {"name": "zone-2", "status": "offline", "connectedSince": null,
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
            "NAME     STATUS    LAST CONNECTED   LAST UPDATED   TOTAL UPDATES   TOTAL ERRORS   VERSION\n\
             zone-1   online    12s ago          2s ago         12              0              0.1.0\n\
             zone-2   offline   -                -              0               3              -\n"
        );
        assert_eq!(
            render_zones_table(&[], now()),
            "NAME   STATUS   LAST CONNECTED   LAST UPDATED   TOTAL UPDATES   TOTAL ERRORS   VERSION\n"
        );
    }

    #[test]
    fn last_connected_falls_back_to_connected_since() {
        let zone = ZoneOverview {
            name: "z".into(),
            status: "online".into(),
            connected_since: Some("2026-01-10T11:00:00Z".into()),
            ..ZoneOverview::default()
        };
        assert_eq!(zone_row(&zone, now())[2], "60m ago");
        assert_eq!(ago(Some("yesterday"), now()), "yesterday");
        assert_eq!(ago(Some(""), now()), "-");
        assert_eq!(ago(None, now()), "-");
        assert_eq!(ago(Some("2026-01-08T12:00:00+00:00"), now()), "2d ago");
        assert_eq!(zone_row(&ZoneOverview::default(), now())[1], "-");
    }
}
