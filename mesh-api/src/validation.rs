//! Validation results in Kuma's shape: a list of (field path, message) violations. Field paths use
//! Kuma's notation: `spec.to[0].default.idleTimeout`, `labels["kuma.io/mesh"]`.

use std::fmt;

use crate::resource::ResourceMeta;

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
}
