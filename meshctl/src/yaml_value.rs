//! Builders for the YAML documents meshctl writes (compose projects, Kubernetes manifests):
//! plain `serde_yaml::Value`s, so the documents are data, serialized once, with keys in the
//! order given.

use serde_yaml::{Mapping, Value};

/// A YAML string.
pub fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

/// A YAML integer.
pub fn n(v: u64) -> Value {
    Value::Number(v.into())
}

/// A sequence of values.
pub fn list(items: impl IntoIterator<Item = Value>) -> Value {
    Value::Sequence(items.into_iter().collect())
}

/// A sequence of strings.
pub fn strings<T: Into<String>>(items: impl IntoIterator<Item = T>) -> Value {
    list(items.into_iter().map(s))
}

/// A mapping with string keys, in the order given.
pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in entries {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}
