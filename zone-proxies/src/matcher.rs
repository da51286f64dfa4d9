//! String matchers compiled once per configuration version (regular expressions included), so
//! the hot path never parses a pattern. Used by route matching, RBAC and SAN checks.

use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

use crate::config::ValueMatch;

/// Why a pattern could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// A compiled [`ValueMatch`].
#[derive(Debug, Clone)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    /// Matches the whole value.
    Regex(Regex),
    Present,
}

impl StringMatcher {
    pub fn compile(value: &ValueMatch) -> Result<StringMatcher, PatternError> {
        Ok(match value {
            ValueMatch::Exact(s) => StringMatcher::Exact(s.clone()),
            ValueMatch::Prefix(s) => StringMatcher::Prefix(s.clone()),
            ValueMatch::Regex(p) => StringMatcher::Regex(compile_regex(p)?),
            ValueMatch::Present => StringMatcher::Present,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(s) => s == value,
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => full_match(r, value),
            StringMatcher::Present => true,
        }
    }
}

/// Compiles a pattern that must match a whole value (Envoy's `safe_regex` semantics).
pub fn compile_regex(pattern: &str) -> Result<Regex, PatternError> {
    Regex::new(&format!("(?:{pattern})$")).map_err(|e| PatternError {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

/// Whether `regex` (from [`compile_regex`]) matches all of `value`.
pub fn full_match(regex: &Regex, value: &str) -> bool {
    regex.is_match(Input::new(value).anchored(Anchored::Yes))
}

/// Whether `name` matches an SNI or host pattern: exact (case-insensitive), `*`, `*.suffix` /
/// `*suffix`, or `prefix.*`.
pub fn host_pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return name.len() > suffix.len()
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return name.len() > prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix);
    }
    pattern.eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_matches_the_whole_value_only() {
        let m = StringMatcher::compile(&ValueMatch::Regex("/api/v[0-9]+".into())).unwrap();
        assert!(m.matches("/api/v12"));
        assert!(!m.matches("/api/v12/x"));
        assert!(!m.matches("x/api/v1"));
        let err = StringMatcher::compile(&ValueMatch::Regex("(".into())).unwrap_err();
        assert!(err.to_string().contains("\"(\""), "{err}");
    }

    #[test]
    fn host_patterns() {
        assert!(host_pattern_matches("*.mesh", "api.0.zone-1.default.mesh"));
        assert!(!host_pattern_matches("*.mesh", ".mesh"));
        assert!(host_pattern_matches("web.*", "web.local"));
        assert!(host_pattern_matches("Web", "web"));
        assert!(!host_pattern_matches("web", "api"));
    }
}
