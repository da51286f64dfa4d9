//! Serde helpers that decode scalars the way Kuma does (Kuma decodes YAML through JSON into Go
//! types, coercing scalars): YAML `6000` into a string tag, `"2.5"` into a number. Real Kuma
//! documents therefore parse as written. Use them with `#[serde(deserialize_with = "...")]`.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

fn scalar_to_string<E: de::Error>(value: Value) -> Result<String, E> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(E::custom(format!("expected a string, got {other}"))),
    }
}

/// A string that may be written as a number or boolean (`version: 1.0`).
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar_to_string(Value::deserialize(d)?)
}

/// An optional string that may be written as a number or boolean.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => scalar_to_string(v).map(Some),
    }
}

/// A string map (tags, labels, headers) whose values may be numbers or booleans; null is empty.
pub fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| scalar_to_string(v).map(|v| (k, v)))
            .collect(),
        other => Err(de::Error::custom(format!(
            "expected a mapping, got {other}"
        ))),
    }
}

/// A number that may be written as a string (`percentage: "2.5"`).
pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(Value::deserialize(d)?)
}

/// An optional number that may be written as a string.
pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => number(v).map(Some),
    }
}

fn number<E: de::Error>(value: Value) -> Result<f64, E> {
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| E::custom("number out of range")),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| E::custom(format!("expected a number, got {s:?}"))),
        other => Err(E::custom(format!("expected a number, got {other}"))),
    }
}

/// An optional string map whose values may be numbers or booleans; absent or null is `None`.
pub fn opt_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| scalar_to_string(v).map(|v| (k, v)))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map(Some),
        other => Err(de::Error::custom(format!(
            "expected a mapping, got {other}"
        ))),
    }
}

/// An optional list of strings whose items may be numbers or booleans (`retryOn: [5xx, 503]`).
pub fn opt_string_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .into_iter()
            .map(scalar_to_string)
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(de::Error::custom(format!("expected a list, got {other}"))),
    }
}

/// An optional integer that may be written as a string (`port: "8080"`).
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("expected an integer, got {n}"))),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected an integer, got {s:?}"))),
        other => Err(de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

/// An optional boolean that may be written as a string (`"true"`).
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        Value::String(s) => s
            .trim()
            .parse::<bool>()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("expected a boolean, got {s:?}"))),
        other => Err(de::Error::custom(format!(
            "expected a boolean, got {other}"
        ))),
    }
}

fn to_u32<E: de::Error>(value: Value) -> Result<u32, E> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| E::custom(format!("expected an unsigned 32-bit integer, got {n}"))),
        Value::String(s) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| E::custom(format!("expected an unsigned 32-bit integer, got {s:?}"))),
        other => Err(E::custom(format!(
            "expected an unsigned 32-bit integer, got {other}"
        ))),
    }
}

/// A `u32` that may be written as a string (protobuf JSON); null is 0.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(0),
        v => to_u32(v),
    }
}

/// An optional `u32` that may be written as a string.
pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => to_u32(v).map(Some),
    }
}

/// A `bool` that may be written as a string; null is false.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(b),
        Value::String(s) => s
            .trim()
            .parse::<bool>()
            .map_err(|_| de::Error::custom(format!("expected a boolean, got {s:?}"))),
        other => Err(de::Error::custom(format!(
            "expected a boolean, got {other}"
        ))),
    }
}

/// Any value where `null` means the default (protobuf JSON treats null as "not set").
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Sample {
        #[serde(deserialize_with = "string_map")]
        tags: BTreeMap<String, String>,
        #[serde(deserialize_with = "f64")]
        percentage: f64,
    }

    #[test]
    fn coerces_scalars_as_kuma_does() {
        let s: Sample = serde_json::from_value(serde_json::json!({
            "tags": {"port": 6000, "canary": true, "kuma.io/service": "web"},
            "percentage": "2.5"
        }))
        .unwrap();
        assert_eq!(s.tags["port"], "6000");
        assert_eq!(s.tags["canary"], "true");
        assert_eq!(s.percentage, 2.5);
    }

    #[derive(Deserialize)]
    struct Optional {
        #[serde(default, deserialize_with = "opt_string_map")]
        tags: Option<BTreeMap<String, String>>,
        #[serde(default, deserialize_with = "opt_string_vec")]
        retry_on: Option<Vec<String>>,
        #[serde(default, deserialize_with = "opt_i64")]
        port: Option<i64>,
        #[serde(default, deserialize_with = "opt_bool")]
        enabled: Option<bool>,
    }

    #[test]
    fn optional_helpers_coerce_and_default() {
        let o: Optional = serde_json::from_value(serde_json::json!({
            "tags": {"port": 6000}, "retry_on": ["5xx", 503], "port": "8080", "enabled": "true"
        }))
        .unwrap();
        assert_eq!(o.tags.unwrap()["port"], "6000");
        assert_eq!(o.retry_on.unwrap(), ["5xx", "503"]);
        assert_eq!(o.port, Some(8080));
        assert_eq!(o.enabled, Some(true));
        let empty: Optional = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(empty.tags.is_none() && empty.retry_on.is_none() && empty.port.is_none());
    }
}
