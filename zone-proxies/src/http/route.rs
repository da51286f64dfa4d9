//! Route tables compiled for matching: virtual host by the request's host (exact, then the
//! longest `*.suffix`, then the longest `prefix.*`, then `*`, as Envoy orders them), then the
//! first route whose path, header and query matchers all hold. The matched route carries the
//! header changes of its route, virtual host and table, compiled and in the order they apply.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::HeaderMap;

use crate::config::{
    HeaderAction, HeaderMatch, HeaderMutations, HeaderRules, PathMatch, QueryMatch, Route,
    RouteTable,
};
use crate::matcher::{compile_regex, full_match, PatternError, StringMatcher};

#[derive(Debug)]
enum PathMatcher {
    Prefix(String),
    Exact(String),
    Regex(regex_automata::meta::Regex),
}

#[derive(Debug)]
pub(crate) struct HeaderMatcher {
    name: String,
    value: StringMatcher,
    invert: bool,
}

#[derive(Debug)]
struct CompiledRoute {
    path: PathMatcher,
    headers: Vec<HeaderMatcher>,
    query: Vec<(String, StringMatcher)>,
    /// The forward action's `regex_rewrite` pattern.
    rewrite: Option<regex_automata::meta::Regex>,
    /// The header changes of the route, its virtual host and the table that change anything,
    /// in the order they apply.
    request_headers: Vec<Arc<HeaderChanges>>,
    response_headers: Vec<Arc<HeaderChanges>>,
    route: Route,
}

/// The route a request matched, with what its rewrite and header changes need compiled.
#[derive(Debug, Clone, Copy)]
pub struct MatchedRoute<'a> {
    pub route: &'a Route,
    pub path_rewrite: Option<&'a regex_automata::meta::Regex>,
    /// Request header changes, level by level in the order they apply (empty: none).
    pub request_headers: &'a [Arc<HeaderChanges>],
    /// Response header changes, likewise.
    pub response_headers: &'a [Arc<HeaderChanges>],
}

impl MatchedRoute<'_> {
    /// Applies the route's request header changes to `headers`.
    pub fn change_request_headers(&self, headers: &mut HeaderMap) {
        for level in self.request_headers {
            level.apply(headers);
        }
    }

    /// Applies the route's response header changes to `headers`.
    pub fn change_response_headers(&self, headers: &mut HeaderMap) {
        for level in self.response_headers {
            level.apply(headers);
        }
    }
}

/// One level's header changes (a route's, a virtual host's or a table's), with names and
/// values parsed once. Applied as Envoy's header parser does: the removals, then the additions,
/// where whether a header exists (for add-if-absent and overwrite-if-exists) is judged on the
/// headers before this level's additions, and overwrites go before appends.
#[derive(Debug)]
pub struct HeaderChanges {
    remove: Vec<HeaderName>,
    /// Additions with a value or `keep_empty` (an empty value otherwise adds nothing).
    add: Vec<(HeaderName, HeaderValue, HeaderAction)>,
    /// Some addition depends on whether its header exists.
    conditional: bool,
}

impl HeaderChanges {
    /// `None` when `m` changes nothing. Names and values were validated by the translation
    /// (or by whoever built the configuration): an invalid one is refused here too.
    fn compile(m: &HeaderMutations) -> Result<LevelChanges, PatternError> {
        let invalid = |what: &str, text: &str| PatternError {
            pattern: text.to_owned(),
            reason: format!("not a valid header {what}"),
        };
        let name =
            |text: &str| HeaderName::from_bytes(text.as_bytes()).map_err(|_| invalid("name", text));
        let remove = m
            .remove
            .iter()
            .map(|n| name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut add = Vec::new();
        for a in m.add.iter().filter(|a| !a.value.is_empty() || a.keep_empty) {
            let value = HeaderValue::from_str(&a.value).map_err(|_| invalid("value", &a.value))?;
            add.push((name(&a.name)?, value, a.action));
        }
        if remove.is_empty() && add.is_empty() {
            return Ok(None);
        }
        let conditional = add.iter().any(|(_, _, action)| {
            matches!(
                action,
                HeaderAction::AddIfAbsent | HeaderAction::OverwriteIfExists
            )
        });
        Ok(Some(Arc::new(HeaderChanges {
            remove,
            add,
            conditional,
        })))
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        // Presence as it was before this level added anything (only looked up when needed).
        let present: Vec<bool> = if self.conditional {
            self.add
                .iter()
                .map(|(name, _, _)| headers.contains_key(name))
                .collect()
        } else {
            Vec::new()
        };
        let applies = |i: usize, action: HeaderAction| match action {
            HeaderAction::Append | HeaderAction::Overwrite => true,
            HeaderAction::AddIfAbsent => !present[i],
            HeaderAction::OverwriteIfExists => present[i],
        };
        for (i, (name, value, action)) in self.add.iter().enumerate() {
            let overwrite = matches!(
                action,
                HeaderAction::Overwrite | HeaderAction::OverwriteIfExists
            );
            if overwrite && applies(i, *action) {
                headers.insert(name.clone(), value.clone());
            }
        }
        for (i, (name, value, action)) in self.add.iter().enumerate() {
            let append = matches!(action, HeaderAction::Append | HeaderAction::AddIfAbsent);
            if append && applies(i, *action) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
}

/// The header changes of a route at `route`, `host` and `table` level, in the order they apply.
type Levels = [LevelChanges; 3];

fn ordered(levels: &Levels, most_specific_wins: bool) -> Vec<Arc<HeaderChanges>> {
    let mut ordered: Vec<Arc<HeaderChanges>> = levels.iter().flatten().cloned().collect();
    // Least specific last (it wins) by default; the route's last when asked.
    if most_specific_wins {
        ordered.reverse();
    }
    ordered
}

/// One level's compiled request or response header changes (`None`: none).
type LevelChanges = Option<Arc<HeaderChanges>>;

fn compile_rules(rules: &HeaderRules) -> Result<(LevelChanges, LevelChanges), PatternError> {
    Ok((
        HeaderChanges::compile(&rules.request)?,
        HeaderChanges::compile(&rules.response)?,
    ))
}

impl std::ops::Deref for MatchedRoute<'_> {
    type Target = Route;
    fn deref(&self) -> &Route {
        self.route
    }
}

/// `path` with every match of `regex` replaced by `substitution`, in which `\N` stands for
/// capture group N (Envoy's `regex_rewrite`).
pub fn regex_replace(
    regex: &regex_automata::meta::Regex,
    path: &str,
    substitution: &str,
) -> String {
    let mut out = String::with_capacity(path.len() + substitution.len());
    let mut last = 0;
    for caps in regex.captures_iter(path) {
        let Some(m) = caps.get_match() else {
            continue;
        };
        out.push_str(&path[last..m.start()]);
        let mut chars = substitution.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek().and_then(|d| d.to_digit(10))) {
                ('\\', Some(group)) => {
                    chars.next();
                    if let Some(span) = caps.get_group(group as usize) {
                        out.push_str(&path[span.range()]);
                    }
                }
                _ => out.push(c),
            }
        }
        last = m.end();
    }
    out.push_str(&path[last..]);
    out
}

#[derive(Debug)]
struct CompiledHost {
    domains: Vec<String>,
    routes: Vec<CompiledRoute>,
}

/// A compiled [`RouteTable`].
#[derive(Debug)]
pub struct RouteTableRuntime {
    pub config: Arc<RouteTable>,
    hosts: Vec<CompiledHost>,
    /// A table of one virtual host for `*` (a sidecar's outbound listener, usually) sends every
    /// request to it: no `Host` lookup then.
    only_host: bool,
}

/// Why a route table could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("route table {table:?}, virtual host {host:?}, route {route:?}: {source}")]
pub struct RouteError {
    table: String,
    host: String,
    route: String,
    source: PatternError,
}

impl RouteTableRuntime {
    pub fn compile(config: Arc<RouteTable>) -> Result<RouteTableRuntime, RouteError> {
        let mut hosts = Vec::new();
        let at = |host: &str, route: &str, source| RouteError {
            table: config.name.clone(),
            host: host.to_owned(),
            route: route.to_owned(),
            source,
        };
        let (table_request, table_response) =
            compile_rules(&config.headers).map_err(|e| at("", "", e))?;
        let most_specific_wins = config.most_specific_header_mutations_wins;
        for vh in &config.virtual_hosts {
            let (host_request, host_response) =
                compile_rules(&vh.headers).map_err(|e| at(&vh.name, "", e))?;
            let mut routes = Vec::new();
            for route in &vh.routes {
                let err = |source| at(&vh.name, &route.name, source);
                let m = &route.matcher;
                let path = match &m.path {
                    PathMatch::Prefix(p) => PathMatcher::Prefix(p.clone()),
                    PathMatch::Exact(p) => PathMatcher::Exact(p.clone()),
                    PathMatch::Regex(r) => PathMatcher::Regex(compile_regex(r).map_err(err)?),
                };
                let headers = m
                    .headers
                    .iter()
                    .map(HeaderMatcher::compile)
                    .collect::<Result<_, PatternError>>()
                    .map_err(err)?;
                let query = m
                    .query
                    .iter()
                    .map(|QueryMatch { name, value }| {
                        Ok((name.clone(), StringMatcher::compile(value)?))
                    })
                    .collect::<Result<_, PatternError>>()
                    .map_err(err)?;
                let rewrite = match &route.action {
                    crate::config::RouteAction::Forward(f) => f
                        .regex_rewrite
                        .as_ref()
                        .map(|r| {
                            // Unanchored: a rewrite replaces every match, not the whole path.
                            regex_automata::meta::Regex::new(&r.pattern).map_err(|e| PatternError {
                                pattern: r.pattern.clone(),
                                reason: e.to_string(),
                            })
                        })
                        .transpose()
                        .map_err(err)?,
                    _ => None,
                };
                let (request, response) = compile_rules(&route.headers).map_err(err)?;
                let request_headers = ordered(
                    &[request, host_request.clone(), table_request.clone()],
                    most_specific_wins,
                );
                let response_headers = ordered(
                    &[response, host_response.clone(), table_response.clone()],
                    most_specific_wins,
                );
                routes.push(CompiledRoute {
                    path,
                    headers,
                    query,
                    rewrite,
                    request_headers,
                    response_headers,
                    route: route.clone(),
                });
            }
            hosts.push(CompiledHost {
                domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                routes,
            });
        }
        let only_host = matches!(&hosts[..], [vh] if vh.domains.iter().any(|d| d == "*"));
        Ok(RouteTableRuntime {
            config,
            hosts,
            only_host,
        })
    }

    /// The route for a request, or `None` (404).
    pub fn find(&self, parts: &Parts) -> Option<MatchedRoute<'_>> {
        let vh = match &self.hosts[..] {
            [vh] if self.only_host => vh,
            _ => self.virtual_host_of(parts)?,
        };
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("");
        vh.routes
            .iter()
            .find(|r| r.matches(path, query, parts))
            .map(|r| MatchedRoute {
                route: &r.route,
                path_rewrite: r.rewrite.as_ref(),
                request_headers: &r.request_headers,
                response_headers: &r.response_headers,
            })
    }

    /// The virtual host for the request's authority (its URI's, else its `Host` header's).
    fn virtual_host_of(&self, parts: &Parts) -> Option<&CompiledHost> {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let host = strip_port(authority);
        // Host names are compared lower-case; most requests already are (no copy then).
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        self.virtual_host(host)
    }

    fn virtual_host(&self, host: &str) -> Option<&CompiledHost> {
        // (rank, specificity): exact 3, suffix wildcard 2, prefix wildcard 1, `*` 0.
        let mut best: Option<((u8, usize), &CompiledHost)> = None;
        for vh in &self.hosts {
            for d in &vh.domains {
                let score = if d == "*" {
                    Some((0, 0))
                } else if d == host {
                    Some((3, d.len()))
                } else if let Some(suffix) = d.strip_prefix('*') {
                    (host.len() > suffix.len() && host.ends_with(suffix)).then_some((2, d.len()))
                } else if let Some(prefix) = d.strip_suffix('*') {
                    (host.len() > prefix.len() && host.starts_with(prefix)).then_some((1, d.len()))
                } else {
                    None
                };
                if let Some(score) = score {
                    if best.as_ref().is_none_or(|(b, _)| score > *b) {
                        best = Some((score, vh));
                    }
                }
            }
        }
        best.map(|(_, vh)| vh)
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map(|(h, _)| &h[1..])
            .unwrap_or(authority);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

impl CompiledRoute {
    fn matches(&self, path: &str, query: &str, parts: &Parts) -> bool {
        let path_ok = match &self.path {
            PathMatcher::Prefix(p) => path.starts_with(p.as_str()),
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Regex(r) => full_match(r, path),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(parts))
            && self.query.iter().all(|(name, m)| {
                query
                    .split('&')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == name).then_some(v)
                    })
                    .any(|v| m.matches(v))
            })
    }
}

impl HeaderMatcher {
    pub(crate) fn compile(h: &HeaderMatch) -> Result<HeaderMatcher, PatternError> {
        Ok(HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            value: StringMatcher::compile(&h.value)?,
            invert: h.invert,
        })
    }

    pub(crate) fn matches(&self, parts: &Parts) -> bool {
        let found = match self.name.as_str() {
            ":method" => self.value.matches(parts.method.as_str()),
            ":path" => self.value.matches(
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
            ),
            ":authority" => parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| {
                    parts
                        .headers
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                })
                .is_some_and(|v| self.value.matches(v)),
            name => parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| self.value.matches(v)),
        };
        found != self.invert
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Forward, RouteAction, RouteMatch, ValueMatch, VirtualHost, WeightedCluster,
    };

    fn route(name: &str, matcher: RouteMatch) -> Route {
        Route {
            name: name.into(),
            matcher,
            action: RouteAction::Forward(Forward {
                clusters: vec![WeightedCluster {
                    name: name.into(),
                    weight: 1,
                }],
                timeout: None,
                idle_timeout: None,
                retry: None,
                prefix_rewrite: None,
                regex_rewrite: None,
                host_rewrite: None,
            }),
            headers: Default::default(),
        }
    }

    fn parts(uri: &str, host: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri).header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn picks_the_most_specific_host_then_the_first_matching_route() {
        let table = RouteTable {
            name: "outbound".into(),
            virtual_hosts: vec![
                VirtualHost {
                    name: "any".into(),
                    domains: vec!["*".into()],
                    routes: vec![route("any", RouteMatch::default())],
                    ..Default::default()
                },
                VirtualHost {
                    name: "api".into(),
                    domains: vec!["api".into(), "api:8080".into()],
                    routes: vec![
                        route(
                            "v2",
                            RouteMatch {
                                path: PathMatch::Regex("/v2/[a-z]+".into()),
                                ..Default::default()
                            },
                        ),
                        route(
                            "canary",
                            RouteMatch {
                                headers: vec![HeaderMatch {
                                    name: "x-canary".into(),
                                    value: ValueMatch::Exact("1".into()),
                                    invert: false,
                                }],
                                ..Default::default()
                            },
                        ),
                        route(
                            "debug",
                            RouteMatch {
                                query: vec![QueryMatch {
                                    name: "debug".into(),
                                    value: ValueMatch::Present,
                                }],
                                ..Default::default()
                            },
                        ),
                        route(
                            "exact",
                            RouteMatch {
                                path: PathMatch::Exact("/health".into()),
                                ..Default::default()
                            },
                        ),
                    ],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let t = RouteTableRuntime::compile(Arc::new(table)).unwrap();
        let name = |p: &Parts| t.find(p).map(|r| r.name.clone());
        assert_eq!(
            name(&parts("/v2/users", "api:8080", &[])),
            Some("v2".into())
        );
        assert_eq!(
            name(&parts("/v2/users/1", "api", &[("x-canary", "1")])),
            Some("canary".into())
        );
        assert_eq!(
            name(&parts("/x?a=1&debug", "api", &[])),
            Some("debug".into())
        );
        assert_eq!(name(&parts("/health", "api", &[])), Some("exact".into()));
        assert_eq!(name(&parts("/healthz", "api", &[])), None);
        assert_eq!(name(&parts("/anything", "web", &[])), Some("any".into()));
    }
}

#[cfg(test)]
mod rewrite_tests {
    use super::*;

    #[test]
    fn regex_rewrites_replace_every_match_with_groups() {
        let re = |p: &str| regex_automata::meta::Regex::new(p).unwrap();
        assert_eq!(regex_replace(&re("^.*$"), "/old/page", "/new"), "/new");
        assert_eq!(
            regex_replace(
                &re("^/service/([^/]+)(/.*)$"),
                "/service/foo/v1/api",
                "\\2/instance/\\1"
            ),
            "/v1/api/instance/foo"
        );
        assert_eq!(regex_replace(&re("o"), "/foo/bo", "0"), "/f00/b0");
        assert_eq!(regex_replace(&re("x"), "/abc", "y"), "/abc");
    }
}
