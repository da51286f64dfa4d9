//! The two document forms. Universal: `type`, `name`, `mesh`, `labels`, then the spec fields
//! (flat for legacy types, under `spec:` for new-style policies). Kubernetes: `apiVersion`,
//! `kind`, `metadata.name`, `metadata.labels["kuma.io/mesh"]`, `spec`. Both parse to the same
//! [`Resource`]; output is universal unless asked otherwise.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::registry::{ResourceType, Scope, Spec, SpecForm};
use crate::resource::{Resource, ResourceMeta, DEFAULT_MESH};
use crate::MESH_LABEL;

/// A successfully parsed document: the resource and the unknown fields it carried, as full field
/// paths (`spec.to[0].defualt`). Unknown fields are accepted, as Kuma does, but reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub resource: Resource,
    pub warnings: Vec<String>,
}

/// A document that could not be read as a resource. `document` is its 0-based index in a
/// multi-document stream (0 for a single document).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource[{document}]: {message}")]
pub struct ParseError {
    pub document: usize,
    pub message: String,
}

impl ParseError {
    fn new(message: impl Into<String>) -> ParseError {
        ParseError {
            document: 0,
            message: message.into(),
        }
    }
}

/// Splits a YAML stream on `---` lines and parses every document that is not empty. A broken
/// document yields an error in its place without hiding the others (as `kumactl apply` does).
pub fn parse_documents(text: &str) -> Vec<Result<Parsed, ParseError>> {
    split_documents(text)
        .into_iter()
        .enumerate()
        .map(|(index, doc)| {
            parse_yaml_document(doc).map_err(|mut e| {
                e.document = index;
                e
            })
        })
        .collect()
}

/// Splits on lines that are exactly `---` (optionally followed by whitespace or a comment), and
/// drops documents that hold only comments and blank lines.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        let is_separator = trimmed == "---"
            || trimmed
                .strip_prefix("---")
                .is_some_and(|rest| rest.starts_with(' ') && rest.trim_start().starts_with('#'));
        if is_separator {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .filter(|doc| {
            doc.lines().any(|l| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with('#')
            })
        })
        .collect()
}

fn parse_yaml_document(doc: &str) -> Result<Parsed, ParseError> {
    let value = yaml_to_json(doc)?;
    parse_resource(value)
}

/// Reads YAML (or JSON, which is YAML) into a JSON value.
fn yaml_to_json(doc: &str) -> Result<Value, ParseError> {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(doc).map_err(|e| ParseError::new(format!("invalid YAML: {e}")))?;
    serde_json::to_value(yaml).map_err(|e| ParseError::new(format!("invalid YAML: {e}")))
}

/// Parses one document already decoded to JSON, in either form.
pub fn parse_resource(value: Value) -> Result<Parsed, ParseError> {
    let Value::Object(mut map) = value else {
        return Err(ParseError::new("a resource must be a mapping"));
    };
    if map.contains_key("apiVersion") || map.contains_key("kind") {
        parse_kubernetes(map)
    } else {
        let rtype = take_type(&mut map, "type")?;
        parse_universal(rtype, map)
    }
}

fn take_type(map: &mut Map<String, Value>, key: &str) -> Result<ResourceType, ParseError> {
    match map.remove(key) {
        Some(Value::String(name)) => ResourceType::from_name(&name)
            .ok_or_else(|| ParseError::new(format!("{key}: invalid resource type {name:?}"))),
        Some(other) => Err(ParseError::new(format!(
            "{key}: must be a string, got {other}"
        ))),
        None => Err(ParseError::new(format!("{key}: must be defined"))),
    }
}

fn take_string(
    map: &mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, ParseError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ParseError::new(format!(
            "{path}: must be a string, got {other}"
        ))),
    }
}

fn take_labels(
    map: &mut Map<String, Value>,
    path: &str,
) -> Result<BTreeMap<String, String>, ParseError> {
    match map.remove("labels") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(labels)) => labels
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                other => Err(ParseError::new(format!(
                    "{path}[{k:?}]: label values must be strings, got {other}"
                ))),
            })
            .collect(),
        Some(other) => Err(ParseError::new(format!(
            "{path}: must be a mapping, got {other}"
        ))),
    }
}

fn take_time(map: &mut Map<String, Value>, key: &str) -> Result<Option<DateTime<Utc>>, ParseError> {
    match take_string(map, key, key)? {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| ParseError::new(format!("{key}: not an RFC 3339 time: {e}"))),
    }
}

fn parse_universal(rtype: ResourceType, mut map: Map<String, Value>) -> Result<Parsed, ParseError> {
    let name = take_string(&mut map, "name", "name")?.unwrap_or_default();
    let mesh = take_string(&mut map, "mesh", "mesh")?;
    let labels = take_labels(&mut map, "labels")?;
    let creation_time = take_time(&mut map, "creationTime")?;
    let modification_time = take_time(&mut map, "modificationTime")?;
    let mut warnings = Vec::new();
    let spec_value = match rtype.form() {
        SpecForm::Flat => Value::Object(map),
        SpecForm::Wrapped => {
            let spec = map.remove("spec").unwrap_or(Value::Object(Map::new()));
            warnings.extend(map.keys().map(|k| format!("unknown field {k:?}")));
            spec
        }
    };
    let spec = decode_spec(rtype, spec_value, &mut warnings)?;
    let mesh = match rtype.scope() {
        Scope::Global => None,
        Scope::Mesh => Some(mesh.unwrap_or_else(|| DEFAULT_MESH.to_owned())),
    };
    Ok(Parsed {
        resource: Resource {
            meta: ResourceMeta {
                name,
                mesh,
                labels,
                version: 0,
                creation_time,
                modification_time,
            },
            spec,
        },
        warnings,
    })
}

fn parse_kubernetes(mut map: Map<String, Value>) -> Result<Parsed, ParseError> {
    let rtype = take_type(&mut map, "kind")?;
    let api_version = take_string(&mut map, "apiVersion", "apiVersion")?;
    if let Some(v) = &api_version {
        if !v.starts_with("kuma.io/") {
            return Err(ParseError::new(format!(
                "apiVersion: {v:?} is not a Kuma resource (expected kuma.io/v1alpha1)"
            )));
        }
    }
    let mut metadata = match map.remove("metadata") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(other) => {
            return Err(ParseError::new(format!(
                "metadata: must be a mapping, got {other}"
            )))
        }
    };
    let name = take_string(&mut metadata, "name", "metadata.name")?.unwrap_or_default();
    let mut labels = take_labels(&mut metadata, "metadata.labels")?;
    // Legacy Kubernetes resources carry the mesh as a top-level `mesh:` field.
    let top_mesh = take_string(&mut map, "mesh", "mesh")?;
    let label_mesh = labels.remove(MESH_LABEL);
    let mesh = match rtype.scope() {
        Scope::Global => None,
        Scope::Mesh => Some(
            label_mesh
                .or(top_mesh)
                .unwrap_or_else(|| DEFAULT_MESH.to_owned()),
        ),
    };
    let creation_time = take_time(&mut metadata, "creationTimestamp")?;
    let mut warnings = Vec::new();
    let spec_value = map.remove("spec").unwrap_or(Value::Object(Map::new()));
    // `status` is written by controllers and carries nothing a user sets.
    map.remove("status");
    warnings.extend(map.keys().map(|k| format!("unknown field {k:?}")));
    let spec = decode_spec(rtype, spec_value, &mut warnings)?;
    Ok(Parsed {
        resource: Resource {
            meta: ResourceMeta {
                name,
                mesh,
                labels,
                version: 0,
                creation_time,
                modification_time: None,
            },
            spec,
        },
        warnings,
    })
}

fn decode_spec(
    rtype: ResourceType,
    value: Value,
    warnings: &mut Vec<String>,
) -> Result<Spec, ParseError> {
    let prefix = match rtype.form() {
        SpecForm::Flat => "",
        SpecForm::Wrapped => "spec",
    };
    let value = if value.is_null() {
        Value::Object(Map::new())
    } else {
        value
    };
    let mut unknown = Vec::new();
    let spec = Spec::from_value(rtype, value, &mut |path| unknown.push(path)).map_err(|e| {
        ParseError::new(format!(
            "{}: {e}",
            if prefix.is_empty() {
                rtype.name()
            } else {
                prefix
            }
        ))
    })?;
    warnings.extend(unknown.into_iter().map(|p| {
        let full = match (prefix.is_empty(), p.starts_with('[')) {
            (true, _) => p,
            (false, true) => format!("{prefix}{p}"),
            (false, false) => format!("{prefix}.{p}"),
        };
        format!("unknown field {full:?}")
    }));
    Ok(spec)
}

/// Parses a bare spec body of type `rtype` (the `SPEC` and `FLAT` fixture forms: the content of
/// `spec:` for new-style policies, the flat fields for legacy types). Returns the spec and the
/// unknown-field warnings.
pub fn parse_spec(rtype: ResourceType, text: &str) -> Result<(Spec, Vec<String>), ParseError> {
    let value = yaml_to_json(text)?;
    let mut warnings = Vec::new();
    let spec = decode_spec(rtype, value, &mut warnings)?;
    Ok((spec, warnings))
}

/// Renders a path reported by `serde_ignored` in Kuma's notation (`to[0].default.foo`).
pub(crate) fn ignored_path_to_string(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path_to_string(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path_to_string(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path_to_string(parent),
    }
}

/// The universal form as a JSON value: `type`, `name`, `mesh`, then times, labels and the spec.
pub fn to_universal(resource: &Resource) -> Value {
    let rtype = resource.resource_type();
    let meta = &resource.meta;
    let mut map = Map::new();
    map.insert("type".into(), Value::String(rtype.name().into()));
    map.insert("name".into(), Value::String(meta.name.clone()));
    if let Some(mesh) = &meta.mesh {
        map.insert("mesh".into(), Value::String(mesh.clone()));
    }
    if let Some(t) = meta.creation_time {
        map.insert("creationTime".into(), Value::String(t.to_rfc3339()));
    }
    if let Some(t) = meta.modification_time {
        map.insert("modificationTime".into(), Value::String(t.to_rfc3339()));
    }
    if !meta.labels.is_empty() {
        map.insert("labels".into(), labels_value(&meta.labels));
    }
    let spec = resource.spec.to_value();
    match rtype.form() {
        SpecForm::Flat => {
            if let Value::Object(fields) = spec {
                map.extend(fields);
            }
        }
        SpecForm::Wrapped => {
            map.insert("spec".into(), spec);
        }
    }
    Value::Object(map)
}

/// The Kubernetes form as a JSON value.
pub fn to_kubernetes(resource: &Resource) -> Value {
    let rtype = resource.resource_type();
    let meta = &resource.meta;
    let mut labels = meta.labels.clone();
    if let Some(mesh) = &meta.mesh {
        labels.insert(MESH_LABEL.into(), mesh.clone());
    }
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(meta.name.clone()));
    if !labels.is_empty() {
        metadata.insert("labels".into(), labels_value(&labels));
    }
    if let Some(t) = meta.creation_time {
        metadata.insert("creationTimestamp".into(), Value::String(t.to_rfc3339()));
    }
    let mut map = Map::new();
    map.insert(
        "apiVersion".into(),
        Value::String("kuma.io/v1alpha1".into()),
    );
    map.insert("kind".into(), Value::String(rtype.name().into()));
    map.insert("metadata".into(), Value::Object(metadata));
    map.insert("spec".into(), resource.spec.to_value());
    Value::Object(map)
}

fn labels_value(labels: &BTreeMap<String, String>) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// YAML text of a JSON value (as produced by [`to_universal`] or [`to_kubernetes`]).
pub fn to_yaml(value: &Value) -> String {
    // A JSON value always has a YAML rendering.
    serde_yaml::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_separator_lines_only() {
        let text = "# comment\n---\nname: a\n# --- not a separator\ntype: Mesh\n---\ntype: Mesh\nname: b\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert!(docs[0].contains("not a separator"));
    }

    #[test]
    fn both_forms_parse_to_the_same_value() {
        let universal = "type: Mesh\nname: default\n";
        let kube = "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: default\n";
        let a = parse_documents(universal).remove(0).unwrap();
        let b = parse_documents(kube).remove(0).unwrap();
        assert_eq!(a.resource, b.resource);
    }

    #[test]
    fn unknown_type_is_an_error_naming_the_type() {
        let err = parse_documents("type: Foo\nname: x\n")
            .remove(0)
            .unwrap_err();
        assert!(err.message.contains("\"Foo\""), "{err}");
    }
}
