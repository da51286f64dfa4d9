//! `GET /global-link`: the zone control plane's own view of its KDS link to the global (issue
//! [6], upgrading with version skew): the version this zone states, the version the global
//! stated at the latest handshake, whether the link is up and since when, and, when the global
//! refused this zone's version, why. The global's side of the same link is its
//! `GET /zones/_overview`; this is what an operator of a zone sees without access to the
//! global. A standalone zone has no link and says so.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use kds::client::{ClientStatus, ClientStatusSnapshot};
use serde::Serialize;

use crate::ZoneMode;

/// What the endpoint reads.
#[derive(Debug, Clone)]
pub struct GlobalLinkApi {
    pub zone: String,
    pub mode: ZoneMode,
    /// The version this zone states at the KDS handshake.
    pub version: String,
    /// The KDS client's status; `None` for a standalone zone.
    pub status: Option<ClientStatus>,
}

/// The endpoint's answer (docs/api.md).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalLink {
    pub zone: String,
    /// `zone` or `standalone`.
    pub mode: &'static str,
    pub version: String,
    /// `connected`, `refused` (the global refused this zone's version; it keeps redialling),
    /// `disconnected`, or `none` (standalone).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<ClientStatusSnapshot>,
}

pub fn router(api: GlobalLinkApi) -> Router {
    Router::new()
        .route("/global-link", get(global_link))
        .with_state(api)
}

async fn global_link(State(api): State<GlobalLinkApi>) -> Json<GlobalLink> {
    Json(link(&api))
}

fn link(api: &GlobalLinkApi) -> GlobalLink {
    let global = api.status.as_ref().map(ClientStatus::snapshot);
    let state = match &global {
        None => "none",
        Some(s) if s.connected => "connected",
        Some(s) if s.refused.is_some() => "refused",
        Some(_) => "disconnected",
    };
    GlobalLink {
        zone: api.zone.clone(),
        mode: match api.mode {
            ZoneMode::Zone => "zone",
            ZoneMode::Standalone => "standalone",
        },
        version: api.version.clone(),
        state,
        global,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standalone_zone_has_no_link_and_a_fresh_zone_is_disconnected() {
        let standalone = link(&GlobalLinkApi {
            zone: "z".into(),
            mode: ZoneMode::Standalone,
            version: "0.1.0".into(),
            status: None,
        });
        assert_eq!((standalone.mode, standalone.state), ("standalone", "none"));
        assert!(standalone.global.is_none());
        let fresh = link(&GlobalLinkApi {
            zone: "z".into(),
            mode: ZoneMode::Zone,
            version: "0.1.0".into(),
            status: Some(ClientStatus::default()),
        });
        assert_eq!((fresh.mode, fresh.state), ("zone", "disconnected"));
        let json = serde_json::to_value(&fresh).unwrap();
        assert_eq!(json["global"]["connected"], false, "{json}");
        assert_eq!(json["version"], "0.1.0", "{json}");
    }
}
