//! TrafficRouteSpec: the legacy selector-based route (sources to destinations), with weighted
//! splits, a load balancer and per-HTTP-match rules. Meridian supports it for weighted splits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::common::{validate_tags, TagRules, TagValues};
use crate::core::traffic_permission::validate_selectors;
pub use crate::core::traffic_permission::Selector;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The `spec` of a TrafficRoute.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficRouteSpec {
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sources: Vec<Selector>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destinations: Vec<Selector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conf: Option<Conf>,
}

/// `conf`: where matching traffic goes. Exactly one of `split` and `destination` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Conf {
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub split: Option<Vec<Split>>,
    #[serde(alias = "load_balancer", skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(
        deserialize_with = "crate::lenient::opt_string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination: Option<BTreeMap<String, String>>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub http: Vec<Http>,
}

/// One weighted destination.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Split {
    #[serde(
        deserialize_with = "crate::lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub weight: Option<u32>,
    #[serde(
        deserialize_with = "crate::lenient::string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub destination: BTreeMap<String, String>,
}

/// An empty configuration block (`roundRobin: {}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// `conf.loadBalancer`: one of the variants.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancer {
    #[serde(alias = "round_robin", skip_serializing_if = "Option::is_none")]
    pub round_robin: Option<Empty>,
    #[serde(alias = "least_request", skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequest>,
    #[serde(alias = "ring_hash", skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Empty>,
}

/// `loadBalancer.leastRequest`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LeastRequest {
    #[serde(alias = "choice_count", deserialize_with = "crate::lenient::u32")]
    pub choice_count: u32,
}

/// `loadBalancer.ringHash`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    #[serde(alias = "hash_function")]
    pub hash_function: String,
    #[serde(alias = "min_ring_size", skip_serializing_if = "Option::is_none")]
    pub min_ring_size: Option<u64>,
    #[serde(alias = "max_ring_size", skip_serializing_if = "Option::is_none")]
    pub max_ring_size: Option<u64>,
}

/// `conf.http[]`: a route for requests matching `match`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Http {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub http_match: Option<HttpMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modify: Option<Modify>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub split: Option<Vec<Split>>,
    #[serde(
        deserialize_with = "crate::lenient::opt_string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination: Option<BTreeMap<String, String>>,
}

/// `http[].match`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, StringMatcher>>,
}

/// One of `prefix`, `exact`, `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StringMatcher {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// `http[].modify`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Modify {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<ModifyPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<ModifyHost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<ModifyHeaders>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<ModifyHeaders>,
}

/// A regex substitution.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegexReplace {
    pub pattern: String,
    pub substitution: String,
}

/// `modify.path`: one of `rewritePrefix`, `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModifyPath {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<RegexReplace>,
}

/// `modify.host`: one of `value`, `fromPath`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModifyHost {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_path: Option<RegexReplace>,
}

/// `modify.requestHeaders` / `modify.responseHeaders`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModifyHeaders {
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub add: Vec<AddHeader>,
    #[serde(
        deserialize_with = "crate::lenient::nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remove: Vec<RemoveHeader>,
}

/// A header to add.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AddHeader {
    pub name: String,
    #[serde(deserialize_with = "crate::lenient::string")]
    pub value: String,
    #[serde(
        deserialize_with = "crate::lenient::bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub append: bool,
}

/// A header to remove.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RemoveHeader {
    pub name: String,
}

fn destination_rules() -> TagRules {
    TagRules {
        values: TagValues::Selector,
        require_at_least_one: true,
        require_service: true,
        ..TagRules::default()
    }
}

fn validate_split_and_destination(
    path: &FieldPath,
    split: Option<&[Split]>,
    destination: Option<&BTreeMap<String, String>>,
    v: &mut Violations,
) {
    match (split, destination) {
        (None, None) => v.add(path, "requires either \"destination\" or \"split\""),
        (Some(_), Some(_)) => v.add(
            path,
            "\"split\" cannot be defined at the same time as \"destination\"",
        ),
        _ => {}
    }
    if let Some(split) = split {
        let at = path.field("split");
        if split.is_empty() {
            v.add(&at, "must have at least one element");
        } else {
            let mut total: u64 = 0;
            for (i, entry) in split.iter().enumerate() {
                match entry.weight {
                    None => v.add(&at.index(i).field("weight"), "needs to be defined"),
                    Some(w) => total += u64::from(w),
                }
                validate_tags(
                    &at.index(i).field("destination"),
                    &entry.destination,
                    destination_rules(),
                    v,
                );
            }
            if total == 0 {
                v.add(
                    &at,
                    "there must be at least one split entry with weight above 0",
                );
            }
        }
    }
    if let Some(destination) = destination {
        validate_tags(
            &path.field("destination"),
            destination,
            destination_rules(),
            v,
        );
    }
}

fn validate_string_matcher(path: &FieldPath, m: &StringMatcher, v: &mut Violations) {
    let set = [&m.prefix, &m.exact, &m.regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if set > 1 {
        v.add(
            path,
            "only one of \"prefix\", \"exact\" or \"regex\" can be set",
        );
    }
    if m.exact.is_some() {
        return;
    }
    if let Some(prefix) = &m.prefix {
        if prefix.is_empty() {
            v.add(&path.field("prefix"), "cannot be empty");
        }
    } else if let Some(regex) = &m.regex {
        if regex.is_empty() {
            v.add(&path.field("regex"), "cannot be empty");
        }
    } else {
        v.add(
            path,
            "cannot be empty. Available options: \"exact\", \"prefix\" or \"regex\"",
        );
    }
}

fn validate_http_match(path: &FieldPath, m: Option<&HttpMatch>, v: &mut Violations) {
    let m = match m {
        Some(m) if m.path.is_some() || m.method.is_some() || m.headers.is_some() => m,
        _ => {
            v.add(
                path,
                "must be present and contain at least one of the elements: \"method\", \"path\" or \"headers\"",
            );
            return;
        }
    };
    if let Some(method) = &m.method {
        validate_string_matcher(&path.field("method"), method, v);
    }
    if let Some(p) = &m.path {
        validate_string_matcher(&path.field("path"), p, v);
    }
    if let Some(headers) = &m.headers {
        if headers.is_empty() {
            v.add(&path.field("headers"), "must contain at least one element");
        }
        for (key, matcher) in headers {
            let at = path.field("headers").key(key);
            if key.is_empty() {
                v.add(&at, "cannot be empty");
            }
            validate_string_matcher(&at, matcher, v);
        }
    }
}

fn validate_header_name(path: &FieldPath, name: &str, v: &mut Violations) {
    if name.is_empty() {
        v.add(path, "cannot be empty");
    } else if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        v.add(
            path,
            "host header and HTTP/2 pseudo-headers are not allowed to be modified",
        );
    }
}

fn validate_modify(path: &FieldPath, modify: &Modify, m: Option<&HttpMatch>, v: &mut Violations) {
    if let Some(p) = &modify.path {
        let at = path.field("path");
        match (&p.rewrite_prefix, &p.regex) {
            (Some(prefix), _) => {
                if prefix.is_empty() {
                    v.add(&at.field("rewritePrefix"), "cannot be empty");
                } else if m
                    .and_then(|m| m.path.as_ref())
                    .and_then(|p| p.prefix.as_deref())
                    .is_none_or(str::is_empty)
                {
                    v.add(
                        &at.field("rewritePrefix"),
                        "can only be set when .http.match.path.prefix is not empty",
                    );
                }
            }
            (None, Some(regex)) => validate_regex_replace(&at.field("regex"), regex, v),
            (None, None) => v.add(&at, "either \"rewritePrefix\" or \"regex\" has to be set"),
        }
    }
    if let Some(h) = &modify.host {
        let at = path.field("host");
        match (&h.value, &h.from_path) {
            (Some(value), _) => {
                if value.is_empty() {
                    v.add(&at.field("value"), "cannot be empty");
                }
            }
            (None, Some(regex)) => validate_regex_replace(&at.field("fromPath"), regex, v),
            (None, None) => v.add(&at, "either \"value\" or \"fromPath\" has to be set"),
        }
    }
    for (name, headers) in [
        ("requestHeaders", &modify.request_headers),
        ("responseHeaders", &modify.response_headers),
    ] {
        let Some(headers) = headers else { continue };
        let at = path.field(name);
        for (i, add) in headers.add.iter().enumerate() {
            validate_header_name(&at.field("add").index(i).field("name"), &add.name, v);
            if add.value.is_empty() {
                v.add(&at.field("add").index(i).field("value"), "cannot be empty");
            }
        }
        for (i, remove) in headers.remove.iter().enumerate() {
            validate_header_name(&at.field("remove").index(i).field("name"), &remove.name, v);
        }
    }
}

fn validate_regex_replace(path: &FieldPath, r: &RegexReplace, v: &mut Violations) {
    if r.pattern.is_empty() {
        v.add(&path.field("pattern"), "cannot be empty");
    }
    if r.substitution.is_empty() {
        v.add(&path.field("substitution"), "cannot be empty");
    }
}

fn validate_load_balancer(path: &FieldPath, lb: &LoadBalancer, v: &mut Violations) {
    let set = [
        lb.round_robin.is_some(),
        lb.least_request.is_some(),
        lb.ring_hash.is_some(),
        lb.random.is_some(),
        lb.maglev.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set > 1 {
        v.add(path, "only one load balancer type can be set");
    }
    if let Some(lr) = &lb.least_request {
        if lr.choice_count == 1 {
            v.add(
                &path.field("leastRequest").field("choiceCount"),
                "value must be greater than or equal to 2",
            );
        }
    }
    if let Some(rh) = &lb.ring_hash {
        if !matches!(rh.hash_function.as_str(), "XX_HASH" | "MURMUR_HASH_2") {
            v.add(
                &path.field("ringHash").field("hashFunction"),
                "must have a valid hash function",
            );
        }
    }
}

impl Validate for TrafficRouteSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        validate_selectors(
            &path.field("sources"),
            &self.sources,
            TagRules {
                values: TagValues::Selector,
                require_at_least_one: true,
                require_service: true,
                ..TagRules::default()
            },
            v,
        );
        validate_selectors(
            &path.field("destinations"),
            &self.destinations,
            TagRules {
                values: TagValues::Selector,
                only_service: true,
                ..TagRules::default()
            },
            v,
        );
        let at = path.field("conf");
        let Some(conf) = &self.conf else {
            v.add(&at, "cannot be empty");
            return;
        };
        validate_split_and_destination(&at, conf.split.as_deref(), conf.destination.as_ref(), v);
        for (i, http) in conf.http.iter().enumerate() {
            let hp = at.field("http").index(i);
            validate_http_match(&hp.field("match"), http.http_match.as_ref(), v);
            if let Some(modify) = &http.modify {
                validate_modify(&hp.field("modify"), modify, http.http_match.as_ref(), v);
            }
            validate_split_and_destination(
                &hp,
                http.split.as_deref(),
                http.destination.as_ref(),
                v,
            );
        }
        if let Some(lb) = &conf.load_balancer {
            validate_load_balancer(&at.field("loadBalancer"), lb, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(yaml: &str) -> Vec<(String, String)> {
        let spec: TrafficRouteSpec = serde_yaml::from_str(yaml).unwrap();
        let meta = crate::resource::ResourceMeta::default();
        let mut v = Violations::new();
        spec.validate(
            &ValidationContext { meta: &meta },
            &FieldPath::root(),
            &mut v,
        );
        v.into_vec()
            .into_iter()
            .map(|v| (v.field, v.message))
            .collect()
    }

    const SELECTORS: &str = "sources:\n- match:\n    kuma.io/service: web\ndestinations:\n- match:\n    kuma.io/service: backend\n";

    #[test]
    fn split_xor_destination() {
        let both = format!("{SELECTORS}conf:\n  split:\n  - weight: 1\n    destination:\n      kuma.io/service: a\n  destination:\n    kuma.io/service: b\n");
        assert_eq!(
            violations(&both),
            vec![(
                "conf".into(),
                "\"split\" cannot be defined at the same time as \"destination\"".into()
            )]
        );
        let neither = format!("{SELECTORS}conf: {{}}\n");
        assert_eq!(violations(&neither)[0].0, "conf");
        let missing = violations(SELECTORS);
        assert_eq!(missing, vec![("conf".into(), "cannot be empty".into())]);
    }

    #[test]
    fn weights_and_http_rules() {
        let yaml = format!("{SELECTORS}conf:\n  split:\n  - weight: 0\n    destination:\n      kuma.io/service: a\n  - destination:\n      version: v1\n  http:\n  - match: {{}}\n    modify:\n      path:\n        rewritePrefix: /x\n      requestHeaders:\n        add:\n        - name: host\n          value: a\n    destination:\n      kuma.io/service: a\n  loadBalancer:\n    leastRequest:\n      choiceCount: 1\n");
        let fields: Vec<_> = violations(&yaml).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "conf.split[1].weight",
                "conf.split[1].destination",
                "conf.split",
                "conf.http[0].match",
                "conf.http[0].modify.path.rewritePrefix",
                "conf.http[0].modify.requestHeaders.add[0].name",
                "conf.loadBalancer.leastRequest.choiceCount",
            ]
        );
    }

    #[test]
    fn destinations_take_only_the_service_tag() {
        let yaml = "sources:\n- match:\n    kuma.io/service: web\ndestinations:\n- match:\n    kuma.io/service: backend\n    version: v1\nconf:\n  destination:\n    kuma.io/service: backend\n";
        let fields: Vec<_> = violations(yaml).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            vec![
                "destinations[0].match",
                r#"destinations[0].match["version"]"#
            ]
        );
    }
}
