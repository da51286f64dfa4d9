//! ZoneLeaseSpec: which node of the global holds a zone's KDS stream, kept in the global's
//! replicated store so that every node of a multi-node global knows every zone's connection
//! state. Written by the global node the zone is connected to (a claim when the zone's stream
//! opens, a renewal every third of the lease while it stays open, a release when it closes);
//! computed, never written by users, and never synced to zones (sync direction `Local`). One per
//! zone, named after the zone. What a lease means (when it is live) is `kds::lease`'s to say.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The `spec` of a ZoneLease.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ZoneLeaseSpec {
    /// The id of the global node that holds (or, when disconnected, last held) the zone's stream.
    pub global_node: u64,
    /// The holding connection's id, new for every connection: a holder whose connection id is no
    /// longer in the record has lost it to a newer connection and stops renewing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub connection: String,
    /// Whether the zone's stream is open (as its holder last said; see `leaseExpires`).
    pub connected: bool,
    /// When the current connection opened (`None` while disconnected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_connected: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_disconnected: Option<DateTime<Utc>>,
    /// When the holder last renewed the lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed: Option<DateTime<Utc>>,
    /// Until when the connection counts as open without a further renewal: a holder that stops
    /// renewing (it died) leaves a connected record whose lease runs out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires: Option<DateTime<Utc>>,
    /// Why a node of the global refused the zone's latest handshake (its version is outside the
    /// skew rule); cleared when a connection is accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Validate for ZoneLeaseSpec {
    fn validate(
        &self,
        _ctx: &ValidationContext<'_>,
        path: &FieldPath,
        violations: &mut Violations,
    ) {
        if self.connected && self.lease_expires.is_none() {
            violations.add(
                &path.field("leaseExpires"),
                "a connected lease must say when it expires",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_camel_case_without_empty_fields() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let spec = ZoneLeaseSpec {
            global_node: 2,
            connection: "2-abc".into(),
            connected: true,
            connected_since: Some(t),
            last_connected: Some(t),
            renewed: Some(t),
            lease_expires: Some(t),
            ..ZoneLeaseSpec::default()
        };
        let value = serde_json::to_value(&spec).unwrap();
        assert_eq!(value["globalNode"], 2);
        assert_eq!(value["leaseExpires"], "2026-01-02T03:04:05Z");
        assert!(value.get("lastDisconnected").is_none() && value.get("refused").is_none());
        assert_eq!(
            serde_json::from_value::<ZoneLeaseSpec>(value).unwrap(),
            spec
        );
    }
}
