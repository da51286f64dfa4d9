//! Envoy v3 resources -> [`crate::config`]. One module per resource type, each with a handler
//! implementing [`ResourceHandler`] (as ztunnel has one handler per xDS type): [`listener`],
//! [`route`], [`cluster`], [`endpoint`], [`secret`]. Each translates one resource on its own;
//! references between resources stay names, resolved by the data path.
//!
//! What is refused (the client NACKs it) is what would make the proxy behave differently from
//! what the zone CP asked: an unknown filter, a redirect, a conditional (matcher-wrapped) filter,
//! a gRPC health check, a network rate limit, RBAC permissions other than "any", response
//! bandwidth faults, route header changes the proxy cannot make as asked (formatter commands in
//! values, `:`-prefixed or `host` names, changes per weighted cluster). What is accepted and not
//! carried out, because it does not change where traffic goes or who may send it:
//! - statistics, tracing and naming fields (`stat_prefix`, `alt_stat_name`, ...);
//! - access loggers other than files (fluentd, OpenTelemetry, gRPC), and access log formats
//!   (the proxy writes its own JSON lines);
//! - header additions and removals on rate-limited responses, request mirroring, hash
//!   policies (ring hash then spreads requests as random would), `max_stream_duration`;
//! - retry conditions other than the six [`crate::config::RetryOn`] holds, retry host and
//!   priority predicates;
//! - RBAC shadow rules (they only log);
//! - health check event logs, panic thresholds, zone-aware and locality-weighted switches
//!   (locality weights are used whenever EDS gives them);
//! - success-rate and failure-percentage outlier detection;
//! - the HTTP connection manager's connection idle timeout and request headers timeout (Kuma
//!   sets both to 0, disabled); its `stream_idle_timeout` is [`crate::config::HttpManager::idle_timeout`].
//!
//! TLS trust given inline (a `trusted_ca` file or string in a cluster's validation context, as
//! for external services) becomes a secret of its own, named `file:<path>` or
//! `inline:<hash>`, returned beside the resource ([`Translated::secrets`]), so the data path
//! finds every trust bundle by name.

pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod route;
pub mod secret;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::{Message, Name};

use crate::config::{Secret, ValueMatch};

/// A resource that cannot be carried out: which one, where in it, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind} {name:?}: {path}{message}")]
pub struct TranslateError {
    /// `listener`, `route configuration`, `cluster`, `cluster load assignment`, `secret`.
    pub kind: &'static str,
    pub name: String,
    /// The field path followed by `": "`, or empty when the whole resource is at fault.
    pub path: String,
    pub message: String,
}

/// An error inside a resource, with the path to the field (built from the inside out).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Innermost segment first.
    segments: Vec<String>,
    message: String,
}

impl FieldError {
    pub fn new(message: impl Into<String>) -> FieldError {
        FieldError {
            segments: Vec::new(),
            message: message.into(),
        }
    }

    /// The same error, one level further out: `segment` is a field name (`filters`) or an
    /// index (`[1]`).
    pub fn at(mut self, segment: impl fmt::Display) -> FieldError {
        self.segments.push(segment.to_string());
        self
    }

    /// The dotted field path, outermost first (`filter_chains[0].filters[1]`).
    pub fn path(&self) -> String {
        let mut path = String::new();
        for segment in self.segments.iter().rev() {
            if !path.is_empty() && !segment.starts_with('[') {
                path.push('.');
            }
            path.push_str(segment);
        }
        path
    }

    fn into_error(self, kind: &'static str, name: &str) -> TranslateError {
        let path = self.path();
        TranslateError {
            kind,
            name: name.to_owned(),
            path: if path.is_empty() {
                path
            } else {
                format!("{path}: ")
            },
            message: self.message,
        }
    }
}

/// `Result` of translating part of a resource.
pub type FieldResult<T> = Result<T, FieldError>;

/// Extension for attaching a field segment to an error result.
pub trait At<T> {
    fn at(self, segment: impl fmt::Display) -> FieldResult<T>;
}

impl<T> At<T> for FieldResult<T> {
    fn at(self, segment: impl fmt::Display) -> FieldResult<T> {
        self.map_err(|e| e.at(segment))
    }
}

/// Translates every item of the repeated field `field` with `item`; an error names the item's
/// index (`field[i]`).
pub fn each<T, U>(
    items: &[T],
    field: impl fmt::Display,
    mut item: impl FnMut(&T) -> FieldResult<U>,
) -> FieldResult<Vec<U>> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| item(x).at(format!("[{i}]")))
        .collect::<FieldResult<Vec<U>>>()
        .at(field)
}

/// What translating one resource gives: the model, and any secrets it carried inline.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated<T> {
    pub value: T,
    pub secrets: Vec<(String, Arc<Secret>)>,
}

/// A handled resource: its name and what it translated to.
pub type Handled<T> = (String, Translated<Option<T>>);

/// The seam per xDS type: decode, name and translate one resource of it.
pub trait ResourceHandler {
    /// The type URL resources of this type carry.
    const TYPE_URL: &'static str;
    /// How errors name the type (`listener`).
    const KIND: &'static str;
    type Proto: Message + Name + Default;
    /// The model; `None` from [`Self::translate`] means "nothing for this proxy to run" (an
    /// api_listener, which has no socket).
    type Model;

    fn name(proto: &Self::Proto) -> &str;

    /// Translates one decoded resource. `secrets` collects secrets found inline.
    fn translate(
        proto: &Self::Proto,
        secrets: &mut InlineSecrets,
    ) -> FieldResult<Option<Self::Model>>;

    /// Decodes `any` and translates it: the resource's name and its model.
    fn handle(any: &Any) -> Result<Handled<Self::Model>, TranslateError> {
        if any.type_url != Self::TYPE_URL {
            return Err(TranslateError {
                kind: Self::KIND,
                name: String::new(),
                path: String::new(),
                message: format!(
                    "a resource of type {} in a response for {}",
                    any.type_url,
                    Self::TYPE_URL
                ),
            });
        }
        let proto = Self::Proto::decode(any.value.as_slice()).map_err(|e| TranslateError {
            kind: Self::KIND,
            name: String::new(),
            path: String::new(),
            message: format!("does not decode: {e}"),
        })?;
        let name = Self::name(&proto).to_owned();
        let mut secrets = InlineSecrets::default();
        let value =
            Self::translate(&proto, &mut secrets).map_err(|e| e.into_error(Self::KIND, &name))?;
        Ok((
            name,
            Translated {
                value,
                secrets: secrets.0.into_iter().collect(),
            },
        ))
    }
}

/// Secrets given inline in a resource, by the name they get.
#[derive(Debug, Default)]
pub struct InlineSecrets(BTreeMap<String, Arc<Secret>>);

impl InlineSecrets {
    /// A trusted CA bundle from a data source: its secret name.
    pub fn trusted_ca(&mut self, source: &DataSource) -> FieldResult<String> {
        let name = match &source.specifier {
            Some(data_source::Specifier::Filename(path)) => format!("file:{path}"),
            _ => {
                let pem = data_source_text(source)?;
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                pem.hash(&mut hasher);
                format!("inline:{:016x}", hasher.finish())
            }
        };
        if !self.0.contains_key(&name) {
            let ca_pem = data_source_text(source)?;
            self.0
                .insert(name.clone(), Arc::new(Secret::TrustedCa { ca_pem }));
        }
        Ok(name)
    }
}

/// The text of a data source: inline, or read from its file (as Envoy reads it).
pub fn data_source_text(source: &DataSource) -> FieldResult<String> {
    match &source.specifier {
        Some(data_source::Specifier::InlineString(s)) => Ok(s.clone()),
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| FieldError::new("inline_bytes is not UTF-8 text").at("inline_bytes")),
        Some(data_source::Specifier::Filename(path)) => std::fs::read_to_string(path)
            .map_err(|e| FieldError::new(format!("cannot read {path:?}: {e}")).at("filename")),
        Some(data_source::Specifier::EnvironmentVariable(var)) => {
            std::env::var(var).map_err(|_| {
                FieldError::new(format!("environment variable {var:?} is not set"))
                    .at("environment_variable")
            })
        }
        None => Err(FieldError::new("empty data source")),
    }
}

/// A protobuf duration; negative or out-of-range is an error.
pub fn duration(d: &PbDuration) -> FieldResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(format!(
            "invalid duration {}s {}ns",
            d.seconds, d.nanos
        )));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration where absent and zero both mean "disabled".
pub fn optional_timeout(d: Option<&PbDuration>) -> FieldResult<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) => duration(d).map(|d| (!d.is_zero()).then_some(d)),
    }
}

/// A string matcher as a [`ValueMatch`]. Case-insensitive matching and `contains` are refused:
/// the model has neither.
pub fn value_match(m: &StringMatcher) -> FieldResult<ValueMatch> {
    if m.ignore_case {
        return Err(FieldError::new("ignore_case is not supported").at("ignore_case"));
    }
    match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(v)) => Ok(ValueMatch::Exact(v.clone())),
        Some(string_matcher::MatchPattern::Prefix(v)) => Ok(ValueMatch::Prefix(v.clone())),
        Some(string_matcher::MatchPattern::SafeRegex(r)) => Ok(ValueMatch::Regex(r.regex.clone())),
        Some(string_matcher::MatchPattern::Suffix(v)) => {
            Ok(ValueMatch::Regex(format!(".*{}", regex_escape(v))))
        }
        Some(string_matcher::MatchPattern::Contains(v)) => {
            Ok(ValueMatch::Regex(format!(".*{}.*", regex_escape(v))))
        }
        Some(string_matcher::MatchPattern::Custom(c)) => Err(FieldError::new(format!(
            "custom string matcher {:?} is not supported",
            c.name
        ))
        .at("custom")),
        None => Err(FieldError::new("no match pattern")),
    }
}

/// RE2 escaping of a literal.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Decodes an `Any` known to hold `T`; `what` names the field in errors.
pub fn unpack<T: Message + Name + Default>(any: &Any) -> FieldResult<T> {
    if any.type_url != T::type_url() {
        return Err(FieldError::new(format!(
            "expected {}, got {}",
            T::type_url(),
            any.type_url
        )));
    }
    T::decode(any.value.as_slice()).map_err(|e| FieldError::new(format!("does not decode: {e}")))
}

/// Short form of a type URL for messages (`envoy.extensions.filters.http.rbac.v3.RBAC`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_read_outermost_first() {
        let e = FieldError::new("unsupported filter type X")
            .at("[1]")
            .at("filters")
            .at("[0]")
            .at("filter_chains");
        assert_eq!(e.path(), "filter_chains[0].filters[1]");
        let e = e.into_error("listener", "inbound:10.0.0.1:15000");
        assert_eq!(
            e.to_string(),
            "listener \"inbound:10.0.0.1:15000\": filter_chains[0].filters[1]: unsupported \
             filter type X"
        );
        let whole = FieldError::new("no address").into_error("listener", "l");
        assert_eq!(whole.to_string(), "listener \"l\": no address");
    }

    #[test]
    fn durations_and_matchers() {
        assert_eq!(
            duration(&PbDuration {
                seconds: 1,
                nanos: 500_000_000
            })
            .unwrap(),
            Duration::from_millis(1500)
        );
        assert!(duration(&PbDuration {
            seconds: -1,
            nanos: 0
        })
        .is_err());
        assert_eq!(
            optional_timeout(Some(&PbDuration::default())).unwrap(),
            None
        );
        let m = StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Suffix(".mesh".into())),
            ..StringMatcher::default()
        };
        assert_eq!(
            value_match(&m).unwrap(),
            ValueMatch::Regex(".*\\.mesh".into())
        );
        let m = StringMatcher {
            ignore_case: true,
            ..m
        };
        assert_eq!(value_match(&m).unwrap_err().path(), "ignore_case");
    }
}
