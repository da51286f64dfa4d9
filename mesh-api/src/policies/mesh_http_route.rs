//! MeshHTTPRoute: HTTP routing for outbound traffic (matches on path, method, headers and query
//! parameters; filters; weighted backends).

use serde::{Deserialize, Serialize};

use super::common::{
    is_dns1123_subdomain, items, kuma_enum, top_or_mesh, validate_backend_refs,
    validate_target_ref, BackendRef, HeaderModifier, IntOrString, TargetRef, TargetRefKind as K,
    TargetRefRules,
};
use super::mesh_retry::HeaderMatch;
use crate::lenient;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The spec of a MeshHTTPRoute.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshHttpRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<To>>,
}

/// A destination, its rules and (for gateways) hostnames.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct To {
    #[serde(default)]
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string_vec"
    )]
    pub hostnames: Option<Vec<String>>,
}

/// Matches and what to do with matching requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub default: RuleConf,
}

kuma_enum! {
    /// How a path is matched.
    PathMatchType { Exact => "Exact", PathPrefix => "PathPrefix", RegularExpression => "RegularExpression" }
}

kuma_enum! {
    /// How a query parameter is matched.
    QueryParamMatchType { Exact => "Exact", RegularExpression => "RegularExpression" }
}

kuma_enum! {
    /// The kind of a filter.
    FilterType {
        RequestHeaderModifier => "RequestHeaderModifier",
        ResponseHeaderModifier => "ResponseHeaderModifier",
        RequestRedirect => "RequestRedirect",
        URLRewrite => "URLRewrite",
        RequestMirror => "RequestMirror",
    }
}

kuma_enum! {
    /// How a redirect or rewrite changes the path.
    PathModifierType { ReplaceFullPath => "ReplaceFullPath", ReplacePrefixMatch => "ReplacePrefixMatch" }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(default, rename = "type")]
    pub match_type: PathMatchType,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    #[serde(default, rename = "type")]
    pub match_type: QueryParamMatchType,
    #[serde(default, deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string")]
    pub value: String,
}

/// One way a request can match (all given conditions must hold).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_params: Option<Vec<QueryParamMatch>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<HeaderMatch>>,
}

/// Filters and backends of a rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<Filter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_refs: Option<Vec<BackendRef>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(default, rename = "type")]
    pub modifier_type: PathModifierType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub replace_full_path: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub scheme: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub port: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub status_code: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_string"
    )]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub host_to_backend_hostname: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    #[serde(default)]
    pub backend_ref: BackendRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<IntOrString>,
}

/// A filter applied to matching requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default, rename = "type")]
    pub filter_type: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

const TOP_KINDS: &[K] = &[
    K::Mesh,
    K::MeshGateway,
    K::MeshSubset,
    K::MeshService,
    K::MeshServiceSubset,
    K::Dataplane,
];

impl Validate for MeshHttpRouteSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if let Some(top) = &self.target_ref {
            let rules = TargetRefRules::kinds(TOP_KINDS).with_gateway_tags();
            validate_target_ref(top, &path.field("targetRef"), &rules, v);
        }
        let top = top_or_mesh(&self.target_ref).kind;
        let kinds: &[K] = if top == K::MeshGateway {
            &[K::Mesh]
        } else {
            &[
                K::MeshService,
                K::MeshExternalService,
                K::MeshMultiZoneService,
            ]
        };
        for (i, to) in items(&self.to).iter().enumerate() {
            let tpath = path.field("to").index(i);
            validate_target_ref(
                &to.target_ref,
                &tpath.field("targetRef"),
                &TargetRefRules::kinds(kinds),
                v,
            );
            for (j, rule) in to.rules.iter().enumerate() {
                let rpath = tpath.field("rules").index(j);
                check_matches(&rule.matches, &rpath.field("matches"), v);
                let dpath = rpath.field("default");
                check_filters(
                    &top,
                    items(&rule.default.filters),
                    &rule.matches,
                    &dpath.field("filters"),
                    v,
                );
                let backends = items(&rule.default.backend_refs);
                let redirects = items(&rule.default.filters)
                    .iter()
                    .any(|f| f.filter_type == FilterType::RequestRedirect);
                if backends.is_empty() && top == K::MeshGateway && !redirects {
                    v.add(&dpath.field("backendRefs"), "must not be empty");
                }
                validate_backend_refs(backends, &dpath.field("backendRefs"), v);
            }
            if top != K::MeshGateway && !items(&to.hostnames).is_empty() {
                v.add(&tpath.field("hostnames"), "must not be defined");
            }
        }
    }
}

fn check_matches(matches: &[Match], path: &FieldPath, v: &mut Violations) {
    for (i, m) in matches.iter().enumerate() {
        let mpath = path.index(i);
        if let Some(p) = &m.path {
            let value_path = mpath.field("path").field("value");
            match p.match_type {
                PathMatchType::PathPrefix if p.value != "/" => {
                    if p.value.ends_with('/') {
                        v.add(
                            &value_path,
                            "does not need a trailing slash because only a `/`-separated prefix or an entire path is matched",
                        );
                    }
                    if !p.value.starts_with('/') {
                        v.add(&value_path, "must be an absolute path");
                    }
                }
                PathMatchType::Exact if !p.value.starts_with('/') => {
                    v.add(&value_path, "must be an absolute path")
                }
                PathMatchType::Other(ref t) => v.add(
                    &mpath.field("path").field("type"),
                    if t.is_empty() {
                        "must be defined".to_owned()
                    } else {
                        format!(
                            "value '{t}' is not supported, must be one of: {}",
                            PathMatchType::KNOWN.join(", ")
                        )
                    },
                ),
                _ => {}
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (j, q) in items(&m.query_params).iter().enumerate() {
            if !names.insert(q.name.as_str()) {
                v.add(
                    &mpath.field("queryParams").index(j).field("name"),
                    format!("multiple entries for name {}", q.name),
                );
            }
        }
        for (j, h) in items(&m.headers).iter().enumerate() {
            use super::mesh_retry::HeaderMatchType as H;
            let valueless = matches!(h.match_type, Some(H::Present) | Some(H::Absent));
            if valueless && h.value.as_deref().is_some_and(|s| !s.is_empty()) {
                v.add(
                    &mpath.field("headers").index(j).field("value"),
                    "must not be defined",
                );
            }
        }
    }
}

fn all_prefix_matches(matches: &[Match]) -> bool {
    matches.iter().all(|m| {
        m.path
            .as_ref()
            .is_some_and(|p| p.match_type == PathMatchType::PathPrefix)
    })
}

fn check_hostname(hostname: Option<&String>, path: &FieldPath, v: &mut Violations) {
    let Some(h) = hostname else { return };
    if h.parse::<std::net::IpAddr>().is_ok() {
        v.add(path, "cannot be an IP address");
    } else if !is_dns1123_subdomain(h) {
        v.add(
            path,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        );
    }
}

fn check_header_modifier(m: &HeaderModifier, path: &FieldPath, v: &mut Violations) {
    if m.set.is_none() && m.add.is_none() && m.remove.is_none() {
        v.add(path, "must have at least one defined: set, add, remove");
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut check = |p: FieldPath, name: &str| {
        if !seen.insert(name.to_ascii_lowercase()) {
            v.add(&p.field("name"), "duplicate header name");
        }
    };
    for (i, h) in items(&m.set).iter().enumerate() {
        check(path.field("set").index(i), &h.name);
    }
    for (i, h) in items(&m.add).iter().enumerate() {
        check(path.field("add").index(i), &h.name);
    }
    for (i, name) in items(&m.remove).iter().enumerate() {
        check(path.field("remove").index(i), name);
    }
}

fn check_filters(
    top: &K,
    filters: &[Filter],
    matches: &[Match],
    path: &FieldPath,
    v: &mut Violations,
) {
    for (i, f) in filters.iter().enumerate() {
        let fpath = path.index(i);
        let prefix_only = "can only appear if all matches match a path prefix";
        match &f.filter_type {
            FilterType::RequestHeaderModifier => match &f.request_header_modifier {
                None => v.add(&fpath.field("requestHeaderModifier"), "must be defined"),
                Some(m) => check_header_modifier(m, &fpath.field("requestHeaderModifier"), v),
            },
            FilterType::ResponseHeaderModifier => match &f.response_header_modifier {
                None => v.add(&fpath.field("responseHeaderModifier"), "must be defined"),
                Some(m) => check_header_modifier(m, &fpath.field("responseHeaderModifier"), v),
            },
            FilterType::RequestRedirect => {
                let rp = fpath.field("requestRedirect");
                let Some(r) = &f.request_redirect else {
                    v.add(&rp, "must be defined");
                    continue;
                };
                if r.path
                    .as_ref()
                    .is_some_and(|p| p.replace_prefix_match.is_some())
                    && !all_prefix_matches(matches)
                {
                    v.add(&rp.field("path").field("replacePrefixMatch"), prefix_only);
                }
                check_hostname(r.hostname.as_ref(), &rp.field("hostname"), v);
            }
            FilterType::URLRewrite => {
                let up = fpath.field("urlRewrite");
                let Some(r) = &f.url_rewrite else {
                    v.add(&up, "must be defined");
                    continue;
                };
                if r.path
                    .as_ref()
                    .is_some_and(|p| p.replace_prefix_match.is_some())
                    && !all_prefix_matches(matches)
                {
                    v.add(&up.field("path").field("replacePrefixMatch"), prefix_only);
                }
                check_hostname(r.hostname.as_ref(), &up.field("hostname"), v);
                if r.host_to_backend_hostname == Some(true) {
                    if *top != K::MeshGateway {
                        v.add(
                            &up.field("hostToBackendHostname"),
                            "can only be set with MeshGateway",
                        );
                    }
                    if r.hostname.is_some() {
                        v.add(
                            &up.field("hostToBackendHostname"),
                            "cannot be set together with hostname",
                        );
                    }
                }
            }
            FilterType::RequestMirror => {
                let mp = fpath.field("requestMirror");
                let Some(m) = &f.request_mirror else {
                    v.add(&mp, "must be defined");
                    continue;
                };
                validate_target_ref(
                    &m.backend_ref.target_ref(),
                    &mp.field("backendRef"),
                    &TargetRefRules::kinds(&[K::MeshService, K::MeshServiceSubset]),
                    v,
                );
            }
            FilterType::Other(t) => v.add(
                &fpath.field("type"),
                if t.is_empty() {
                    "must be defined".to_owned()
                } else {
                    format!(
                        "value '{t}' is not supported, must be one of: {}",
                        FilterType::KNOWN.join(", ")
                    )
                },
            ),
        }
    }
}
