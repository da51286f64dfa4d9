//! Rendering resources for people: kumactl-like aligned tables (columns chosen per type), ages in
//! kubectl's short style, and the YAML/JSON output of `get -o`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use mesh_api::{ResourceType, Scope};
use serde_json::Value;

/// Spaces between two table columns.
const COLUMN_GAP: usize = 3;

/// Lays out `rows` under `headers` in left-aligned columns, one line each, no trailing spaces.
pub fn align(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                let pad = widths[i - 1] - row[i - 1].chars().count() + COLUMN_GAP;
                line.extend(std::iter::repeat_n(' ', pad));
            }
            line.push_str(cell);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The columns shown for a type.
pub fn headers(rtype: ResourceType) -> Vec<&'static str> {
    match rtype {
        ResourceType::Mesh => vec!["NAME", "MTLS", "AGE"],
        ResourceType::Dataplane => vec!["MESH", "NAME", "TAGS", "AGE"],
        t if t.is_policy() => vec!["MESH", "NAME", "TARGETREF KIND", "AGE"],
        t if t.scope() == Scope::Global => vec!["NAME", "AGE"],
        _ => vec!["MESH", "NAME", "AGE"],
    }
}

/// One table row for an item (the universal JSON form the API returns).
pub fn row(rtype: ResourceType, item: &Value, now: DateTime<Utc>) -> Vec<String> {
    let name = str_at(item, &["name"]).unwrap_or_default().to_owned();
    let mesh = str_at(item, &["mesh"]).unwrap_or_default().to_owned();
    let age = age(item, now);
    match rtype {
        ResourceType::Mesh => vec![name, mesh_mtls(item), age],
        ResourceType::Dataplane => vec![mesh, name, dataplane_tags(item), age],
        t if t.is_policy() => {
            let kind = str_at(item, &["spec", "targetRef", "kind"])
                .unwrap_or("Mesh")
                .to_owned();
            vec![mesh, name, kind, age]
        }
        t if t.scope() == Scope::Global => vec![name, age],
        _ => vec![mesh, name, age],
    }
}

/// The table for a list of items of one type.
pub fn render_table(rtype: ResourceType, items: &[Value], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = items.iter().map(|item| row(rtype, item, now)).collect();
    align(&headers(rtype), &rows)
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// `builtin/ca-1` when a backend is enabled, else `off` (as kumactl shows it).
fn mesh_mtls(item: &Value) -> String {
    let Some(enabled) = str_at(item, &["mtls", "enabledBackend"]).filter(|s| !s.is_empty()) else {
        return "off".to_owned();
    };
    let backend_type = item
        .pointer("/mtls/backends")
        .and_then(Value::as_array)
        .and_then(|backends| {
            backends
                .iter()
                .find(|b| b.get("name").and_then(Value::as_str) == Some(enabled))
        })
        .and_then(|b| b.get("type"))
        .and_then(Value::as_str);
    match backend_type {
        Some(t) => format!("{t}/{enabled}"),
        None => enabled.to_owned(),
    }
}

/// The tags of a Dataplane's inbounds and gateway: `key=v1,v2` pairs sorted by key.
fn dataplane_tags(item: &Value) -> String {
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |t: Option<&Value>| {
        if let Some(Value::Object(map)) = t {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                tags.entry(k.clone()).or_default().insert(v);
            }
        }
    };
    if let Some(inbounds) = item
        .pointer("/networking/inbound")
        .and_then(Value::as_array)
    {
        for inbound in inbounds {
            add(inbound.get("tags"));
        }
    }
    add(item.pointer("/networking/gateway/tags"));
    tags.into_iter()
        .map(|(k, vs)| format!("{k}={}", vs.into_iter().collect::<Vec<_>>().join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn age(item: &Value, now: DateTime<Utc>) -> String {
    str_at(item, &["creationTime"])
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| human_duration(now.signed_duration_since(t.with_timezone(&Utc))))
        .unwrap_or_else(|| "<unknown>".to_owned())
}

/// A duration the way kubectl and kumactl print ages: `45s`, `3m20s`, `2h`, `4d5h`, `1y30d`.
pub fn human_duration(d: chrono::TimeDelta) -> String {
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{days}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The JSON or YAML document of a list, in the API's list shape.
pub fn list_document(total: u64, items: Vec<Value>) -> Value {
    serde_json::json!({ "total": total, "items": items, "next": null })
}

/// Keys shown first, in this order, in every object of YAML and JSON output (the universal form's
/// order: `type`, `name`, `mesh`, ...; `kind` before `name` in a targetRef); other keys follow
/// alphabetically.
const KEY_ORDER: &[&str] = &[
    "apiVersion",
    "type",
    "kind",
    "name",
    "mesh",
    "creationTime",
    "modificationTime",
    "labels",
    "metadata",
    "total",
    "items",
    "next",
    "targetRef",
];

/// The value with its object keys in display order (see [`KEY_ORDER`]).
pub fn ordered(value: &Value) -> serde_yaml::Value {
    use serde_yaml::Value as Y;
    match value {
        Value::Null => Y::Null,
        Value::Bool(b) => Y::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Y::Number(u.into())
            } else if let Some(i) = n.as_i64() {
                Y::Number(i.into())
            } else {
                Y::Number(n.as_f64().unwrap_or(f64::NAN).into())
            }
        }
        Value::String(s) => Y::String(s.clone()),
        Value::Array(items) => Y::Sequence(items.iter().map(ordered).collect()),
        Value::Object(map) => {
            let rank = |k: &str| {
                KEY_ORDER
                    .iter()
                    .position(|p| *p == k)
                    .unwrap_or(KEY_ORDER.len())
            };
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
            Y::Mapping(
                keys.into_iter()
                    .map(|k| (Y::String(k.clone()), ordered(&map[k])))
                    .collect(),
            )
        }
    }
}

/// YAML in display order.
pub fn to_yaml(value: &Value) -> String {
    serde_yaml::to_string(&ordered(value)).unwrap_or_default()
}

/// Pretty JSON in display order, with a trailing newline.
pub fn to_json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&ordered(value)).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn columns_are_aligned_with_a_gap_and_no_trailing_spaces() {
        let text = align(
            &["NAME", "MTLS", "AGE"],
            &[
                vec!["default".into(), "builtin/ca-1".into(), "5m".into()],
                vec!["a".into(), "off".into(), "".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME      MTLS           AGE\n\
             default   builtin/ca-1   5m\n\
             a         off\n"
        );
        assert_eq!(align(&["MESH", "NAME", "AGE"], &[]), "MESH   NAME   AGE\n");
    }

    #[test]
    fn meshes_show_their_mtls_backend() {
        let items = [
            json!({"type": "Mesh", "name": "default", "creationTime": "2026-01-10T11:55:00Z",
                   "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}),
            json!({"type": "Mesh", "name": "plain", "creationTime": "2026-01-08T12:00:00Z"}),
        ];
        assert_eq!(
            render_table(ResourceType::Mesh, &items, now()),
            "NAME      MTLS           AGE\n\
             default   builtin/ca-1   5m\n\
             plain     off            2d\n"
        );
    }

    #[test]
    fn dataplanes_show_merged_tags() {
        let dp = json!({"type": "Dataplane", "mesh": "default", "name": "web-1",
            "networking": {"address": "10.0.0.1", "inbound": [
                {"port": 8080, "tags": {"kuma.io/service": "web", "version": "v1"}},
                {"port": 9090, "tags": {"kuma.io/service": "web-admin", "version": "v1"}}]}});
        let tags = "kuma.io/service=web,web-admin version=v1";
        assert_eq!(
            row(ResourceType::Dataplane, &dp, now()),
            ["default", "web-1", tags, "<unknown>"]
        );
        let table = render_table(ResourceType::Dataplane, &[dp], now());
        let header = format!(
            "MESH      NAME    TAGS{}AGE",
            " ".repeat(tags.len() - 4 + 3)
        );
        assert_eq!(
            table,
            format!("{header}\ndefault   web-1   {tags}   <unknown>\n")
        );
    }

    #[test]
    fn policies_show_the_top_level_target_ref_kind() {
        let items = [
            json!({"type": "MeshTrafficPermission", "mesh": "demo", "name": "allow",
                   "creationTime": "2026-01-10T11:59:30Z",
                   "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}}}),
            json!({"type": "MeshTrafficPermission", "mesh": "demo", "name": "no-ref", "spec": {}}),
        ];
        assert_eq!(
            render_table(ResourceType::MeshTrafficPermission, &items, now()),
            "MESH   NAME     TARGETREF KIND   AGE\n\
             demo   allow    MeshService      30s\n\
             demo   no-ref   Mesh             <unknown>\n"
        );
    }

    #[test]
    fn other_types_show_mesh_name_age_or_name_age() {
        assert_eq!(headers(ResourceType::TrafficRoute), ["MESH", "NAME", "AGE"]);
        assert_eq!(headers(ResourceType::Secret), ["MESH", "NAME", "AGE"]);
        assert_eq!(headers(ResourceType::MeshService), ["MESH", "NAME", "AGE"]);
        assert_eq!(headers(ResourceType::Zone), ["NAME", "AGE"]);
        assert_eq!(headers(ResourceType::ZoneIngress), ["NAME", "AGE"]);
        let zone =
            json!({"type": "Zone", "name": "zone-1", "creationTime": "2026-01-10T09:00:00Z"});
        assert_eq!(
            render_table(ResourceType::Zone, &[zone], now()),
            "NAME     AGE\nzone-1   3h\n"
        );
    }

    #[test]
    fn yaml_and_json_show_identity_first() {
        let v = json!({"spec": {"targetRef": {"name": "b", "kind": "Mesh"}}, "name": "x",
                       "type": "MeshTrafficPermission", "mesh": "m", "labels": {"b": "1", "a": "2"}});
        assert_eq!(
            to_yaml(&v),
            "type: MeshTrafficPermission\nname: x\nmesh: m\nlabels:\n  a: '2'\n  b: '1'\n\
             spec:\n  targetRef:\n    kind: Mesh\n    name: b\n"
        );
        let json_text = to_json(&v);
        assert!(
            json_text.starts_with("{\n  \"type\": \"MeshTrafficPermission\",\n  \"name\": \"x\""),
            "{json_text}"
        );
        assert_eq!(serde_json::from_str::<Value>(&json_text).unwrap(), v);
        let list = list_document(
            1,
            vec![json!({"name": "a", "type": "Mesh", "n": 1.5, "i": -2})],
        );
        assert_eq!(
            to_yaml(&list),
            "total: 1\nitems:\n- type: Mesh\n  name: a\n  i: -2\n  n: 1.5\nnext: null\n"
        );
    }

    #[test]
    fn ages_follow_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (730 * 86400, "2y"),
            (760 * 86400, "2y30d"),
            (3000 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(TimeDelta::seconds(secs)), want, "{secs}s");
        }
    }
}
