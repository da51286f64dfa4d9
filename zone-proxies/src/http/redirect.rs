//! The `Location` of a route's redirect (Envoy's `RedirectAction`): the request's URL with the
//! configured scheme, host, port and path (whole, or the matched prefix rewritten) swapped in.

use http::request::Parts;

use crate::config::{PathMatch, Redirect, RedirectPath};

/// The default port of `scheme`, which a URL leaves out.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Where `parts` is redirected to; `matched` is the route's path match (for prefix rewrites)
/// and `tls` whether the request came over TLS (its scheme when the URI has none).
pub fn location(r: &Redirect, matched: &PathMatch, parts: &Parts, tls: bool) -> String {
    let request_scheme = parts
        .uri
        .scheme_str()
        .unwrap_or(if tls { "https" } else { "http" })
        .to_ascii_lowercase();
    let scheme = r.scheme.clone().unwrap_or_else(|| request_scheme.clone());
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let (request_host, request_port) = split_authority(&authority);
    let host = r.host.clone().unwrap_or(request_host);
    // A new host replaces the whole authority (as Envoy's `host_redirect`); otherwise a changed
    // scheme drops the request's port when it was the old scheme's default.
    let port = r.port.or_else(|| {
        request_port.filter(|p| {
            r.host.is_none()
                && (scheme == request_scheme || default_port(&request_scheme) != Some(*p))
        })
    });
    let port = port.filter(|p| default_port(&scheme) != Some(*p));
    let path = parts.uri.path();
    let query = parts.uri.query();
    let (path, query) = match &r.path {
        RedirectPath::Keep => (path.to_owned(), query),
        RedirectPath::Whole(whole) => match whole.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q)),
            None => (whole.clone(), query),
        },
        RedirectPath::Prefix(prefix) => {
            let rest = match matched {
                PathMatch::Prefix(m) if path.starts_with(m.as_str()) => &path[m.len()..],
                PathMatch::Exact(m) if path == m => "",
                _ => path,
            };
            (format!("{prefix}{rest}"), query)
        }
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(port) = port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = query.filter(|q| !r.strip_query && !q.is_empty()) {
        location.push('?');
        location.push_str(q);
    }
    location
}

/// `host[:port]` (IPv6 literals in brackets) as host and port.
fn split_authority(authority: &str) -> (String, Option<u16>) {
    if let Some((host, port)) = authority.rsplit_once(':') {
        if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) {
            if let Ok(port) = port.parse() {
                return (host.to_owned(), Some(port));
            }
        }
    }
    (authority.to_owned(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: &str) -> Parts {
        http::Request::get(uri)
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn redirect(path: RedirectPath) -> Redirect {
        Redirect {
            status: 301,
            scheme: None,
            host: None,
            port: None,
            path,
            strip_query: false,
        }
    }

    #[test]
    fn the_location_swaps_in_the_configured_parts() {
        let prefix = PathMatch::Prefix("/old".into());
        let p = parts("/old/page?x=1", "api.mesh:8080");
        assert_eq!(
            location(&redirect(RedirectPath::Keep), &prefix, &p, false),
            "http://api.mesh:8080/old/page?x=1"
        );
        let mut r = redirect(RedirectPath::Whole("/new".into()));
        r.scheme = Some("https".into());
        r.host = Some("example.com".into());
        r.port = Some(8443);
        assert_eq!(
            location(&r, &prefix, &p, false),
            "https://example.com:8443/new?x=1"
        );
        r.port = Some(443);
        r.strip_query = true;
        assert_eq!(location(&r, &prefix, &p, false), "https://example.com/new");
        assert_eq!(
            location(
                &redirect(RedirectPath::Prefix("/v2".into())),
                &prefix,
                &p,
                false
            ),
            "http://api.mesh:8080/v2/page?x=1"
        );
        assert_eq!(
            location(
                &redirect(RedirectPath::Whole("/n?y=2".into())),
                &prefix,
                &p,
                true
            ),
            "https://api.mesh:8080/n?y=2"
        );
        // Moving from http on its default port to https leaves the port out.
        let mut https = redirect(RedirectPath::Keep);
        https.scheme = Some("https".into());
        assert_eq!(
            location(&https, &prefix, &parts("/a", "web:80"), false),
            "https://web/a"
        );
        assert_eq!(split_authority("[::1]:80"), ("[::1]".into(), Some(80)));
        assert_eq!(split_authority("[::1]"), ("[::1]".into(), None));
    }
}
