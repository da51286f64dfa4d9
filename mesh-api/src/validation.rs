//! Validation results in Kuma's shape: a list of (field path, message) violations. Field paths use
//! Kuma's notation: `spec.to[0].default.idleTimeout`, `labels["kuma.io/mesh"]`.

use std::fmt;

use crate::registry::{Scope, SpecForm};
use crate::resource::{Resource, ResourceMeta};
use crate::MESH_LABEL;

/// One broken rule, at one field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// A path to a field, built up while walking a spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldPath(String);

impl FieldPath {
    /// The empty path (the root of a flat legacy document).
    pub fn root() -> FieldPath {
        FieldPath(String::new())
    }

    /// A path starting at the named top-level field (`spec`, `networking`).
    pub fn new(field: &str) -> FieldPath {
        FieldPath(field.to_owned())
    }

    /// `self.name`
    pub fn field(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_owned())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// `self[index]`
    pub fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }

    /// `self["key"]`
    pub fn key(&self, key: &str) -> FieldPath {
        FieldPath(format!("{}[{:?}]", self.0, key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An accumulating list of violations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(Vec<Violation>);

impl Violations {
    pub fn new() -> Violations {
        Violations::default()
    }

    pub fn add(&mut self, field: &FieldPath, message: impl Into<String>) {
        self.0.push(Violation {
            field: field.0.clone(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.0.iter()
    }

    pub fn into_vec(self) -> Vec<Violation> {
        self.0
    }

    /// `Ok(())` when nothing was violated, else the violations as an error.
    pub fn into_result(self) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { violations: self.0 })
        }
    }
}

/// A resource that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub violations: Vec<Violation>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("resource is not valid")?;
        for v in &self.violations {
            write!(f, "\n  {}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

/// What a validator may need to know beyond the spec itself.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    /// The resource's metadata (its name, mesh and labels).
    pub meta: &'a ResourceMeta,
}

/// Implemented by every spec type (and by the structs inside them).
pub trait Validate {
    /// Appends a violation for every broken rule, with field paths under `path`.
    fn validate(&self, ctx: &ValidationContext<'_>, path: &FieldPath, violations: &mut Violations);
}

/// Checks a whole resource as Kuma's API server does before storing it: the metadata (name,
/// mesh, label keys and values, the `kuma.io/mesh` label) and then the spec, rooted at `""` for
/// flat legacy types and at `spec` for new-style policies.
pub fn validate_resource(resource: &Resource) -> Result<(), ValidationError> {
    let mut violations = Violations::new();
    let meta = &resource.meta;
    let rtype = resource.resource_type();

    let labels = FieldPath::new("labels");
    if let Some(label_mesh) = meta.labels.get(MESH_LABEL) {
        if meta.mesh.as_deref() != Some(label_mesh.as_str()) {
            violations.add(
                &labels.key(MESH_LABEL),
                format!("{MESH_LABEL} label must not differ from mesh set on resource"),
            );
        }
    }
    for (key, value) in &meta.labels {
        for message in qualified_name_errors(key) {
            violations.add(&labels.key(key), message);
        }
        for message in label_value_errors(value) {
            violations.add(&labels.key(key), message);
        }
    }

    let name = FieldPath::new("name");
    if let Some(message) = identifier_error(&meta.name, is_rfc1123_subdomain, IDENTIFIER_ERROR) {
        violations.add(&name, message);
    }
    let mesh_path = FieldPath::new("mesh");
    match (rtype.scope(), &meta.mesh) {
        (Scope::Mesh, None) => violations.add(&mesh_path, "cannot be empty"),
        (Scope::Mesh, Some(mesh)) => {
            if let Some(message) =
                identifier_error(mesh, is_backward_compat_name, BACKWARD_COMPAT_ERROR)
            {
                violations.add(&mesh_path, message);
            }
        }
        (Scope::Global, Some(_)) => violations.add(
            &mesh_path,
            format!("must not be set: {rtype} is not mesh-scoped"),
        ),
        (Scope::Global, None) => {}
    }

    let root = match rtype.form() {
        SpecForm::Flat => FieldPath::root(),
        SpecForm::Wrapped => FieldPath::new("spec"),
    };
    resource
        .spec
        .validate(&ValidationContext { meta }, &root, &mut violations);
    violations.into_result()
}

const IDENTIFIER_ERROR: &str = "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const BACKWARD_COMPAT_ERROR: &str = "invalid characters. Valid characters are numbers, lowercase latin letters and '-', '_', '.' symbols.";

fn identifier_error(value: &str, valid: fn(&str) -> bool, message: &str) -> Option<String> {
    if value.is_empty() {
        Some("cannot be empty".to_owned())
    } else if value.len() > 253 {
        Some("value length must less or equal 253".to_owned())
    } else if !valid(value) {
        Some(message.to_owned())
    } else {
        None
    }
}

/// A lowercase RFC 1123 subdomain: dot-separated labels of lowercase letters, digits and `-`,
/// each starting and ending with a letter or digit (`my-name.ns`).
pub fn is_rfc1123_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && label.bytes().next().is_some_and(|b| b != b'-')
                && label.bytes().last().is_some_and(|b| b != b'-')
        })
}

/// Mesh names created by older versions may also contain `_`.
fn is_backward_compat_name(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, the name part of a Kubernetes qualified name.
fn is_qualified_name_part(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

const QUALIFIED_NAME_HINT: &str = "(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// The problems with `key` as a label key (a Kubernetes qualified name: an optional DNS
/// subdomain prefix and `/`, then a name of at most 63 characters), in Kubernetes' wording.
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                if prefix.len() > 253 {
                    errors.push("prefix part must be no more than 253 characters".to_owned());
                }
                if !is_rfc1123_subdomain(prefix) {
                    errors.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned());
                }
            }
            *name
        }
        _ => {
            errors.push(format!("a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character {QUALIFIED_NAME_HINT} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return errors;
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > 63 {
            errors.push("name part must be no more than 63 characters".to_owned());
        }
        if !is_qualified_name_part(name) {
            errors.push(format!("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character {QUALIFIED_NAME_HINT}"));
        }
    }
    errors
}

/// The problems with `value` as a label value (empty, or at most 63 characters of the qualified
/// name alphabet), in Kubernetes' wording.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errors.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_owned());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_use_kuma_notation() {
        let p = FieldPath::new("spec").field("to").index(0).field("default");
        assert_eq!(p.as_str(), "spec.to[0].default");
        assert_eq!(FieldPath::root().field("networking").as_str(), "networking");
        assert_eq!(
            FieldPath::new("labels").key("kuma.io/mesh").as_str(),
            r#"labels["kuma.io/mesh"]"#
        );
    }

    fn fields(resource: &Resource) -> Vec<String> {
        match validate_resource(resource) {
            Ok(()) => Vec::new(),
            Err(e) => e.violations.into_iter().map(|v| v.field).collect(),
        }
    }

    fn mesh_resource() -> Resource {
        Resource::new(
            "default",
            None,
            crate::Spec::empty(crate::ResourceType::Mesh),
        )
    }

    #[test]
    fn a_plain_mesh_is_valid() {
        assert_eq!(fields(&mesh_resource()), Vec::<String>::new());
    }

    #[test]
    fn names_and_meshes_are_checked() {
        let mut r = mesh_resource();
        r.meta.name = "Not_Valid".into();
        assert_eq!(fields(&r), vec!["name"]);
        r.meta.name = String::new();
        assert_eq!(fields(&r), vec!["name"]);

        let mut secret = Resource::new("s", None, crate::Spec::empty(crate::ResourceType::Secret));
        assert_eq!(fields(&secret), vec!["mesh"]);
        secret.meta.mesh = Some("old_mesh".into());
        assert_eq!(fields(&secret), Vec::<String>::new());
        secret.meta.mesh = Some("Bad Mesh".into());
        assert_eq!(fields(&secret), vec!["mesh"]);

        let mut zone = Resource::new(
            "z",
            Some("default"),
            crate::Spec::empty(crate::ResourceType::Zone),
        );
        zone.meta.mesh = Some("default".into());
        assert_eq!(fields(&zone), vec!["mesh"]);
    }

    #[test]
    fn label_keys_values_and_mesh_label() {
        let mut r = Resource::new(
            "s",
            Some("default"),
            crate::Spec::empty(crate::ResourceType::Secret),
        );
        r.meta
            .labels
            .insert("kuma.io/Not Valid!".into(), "value".into());
        r.meta.labels.insert("kuma.io/mesh".into(), "other".into());
        r.meta.labels.insert("team".into(), "-bad".into());
        r.meta
            .labels
            .insert("ok.example.com/fine".into(), "".into());
        let err = validate_resource(&r).unwrap_err();
        let found: Vec<(&str, &str)> = err
            .violations
            .iter()
            .map(|v| (v.field.as_str(), v.message.as_str()))
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            found[0],
            (
                r#"labels["kuma.io/mesh"]"#,
                "kuma.io/mesh label must not differ from mesh set on resource"
            )
        );
        assert_eq!(found[1].0, r#"labels["kuma.io/Not Valid!"]"#);
        assert!(found[1]
            .1
            .starts_with("name part must consist of alphanumeric characters"));
        assert_eq!(found[2].0, r#"labels["team"]"#);
    }

    #[test]
    fn qualified_names() {
        assert!(qualified_name_errors("kuma.io/service").is_empty());
        assert!(qualified_name_errors("k8s.kuma.io/namespace").is_empty());
        assert_eq!(
            qualified_name_errors("/x"),
            vec!["prefix part must be non-empty"]
        );
        assert_eq!(qualified_name_errors("a/b/c").len(), 1);
        assert_eq!(qualified_name_errors("Upper.Case/x").len(), 1);
        assert!(label_value_errors("").is_empty());
        assert_eq!(label_value_errors(&"a".repeat(64)).len(), 1);
    }
}
