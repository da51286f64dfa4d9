//! The REST API client: Kuma-compatible paths, bearer-token writes, paged lists followed through
//! `next`, and API errors decoded from `{"title", "details", "causes": [{"field", "message"}]}`.

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

/// One invalid field reported by the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cause {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

/// The body of an error response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    details: String,
    #[serde(default)]
    causes: Vec<Cause>,
}

/// A request the server answered with an error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub title: String,
    pub details: String,
    pub causes: Vec<Cause>,
}

impl ApiError {
    /// Decodes an error response; a body that is not the JSON error shape becomes the details.
    pub fn from_response(method: &Method, url: &Url, status: StatusCode, body: &str) -> ApiError {
        let parsed: ErrorBody = serde_json::from_str(body).unwrap_or_else(|_| ErrorBody {
            details: body.trim().chars().take(500).collect(),
            ..ErrorBody::default()
        });
        let title = if parsed.title.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            parsed.title
        };
        ApiError {
            method: method.to_string(),
            url: url.to_string(),
            status: status.as_u16(),
            title,
            details: parsed.details,
            causes: parsed.causes,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.title)?;
        if !self.details.is_empty() && self.details != self.title {
            write!(f, ": {}", self.details)?;
        }
        write!(
            f,
            " (HTTP {} from {} {})",
            self.status, self.method, self.url
        )?;
        if self.status == 401 {
            write!(
                f,
                "; this needs the admin token: pass --token, MESHCTL_TOKEN or a --config file"
            )?;
        }
        for cause in &self.causes {
            if cause.field.is_empty() {
                write!(f, "\n  * {}", cause.message)?;
            } else {
                write!(f, "\n  * {}: {}", cause.field, cause.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// One page of a list.
#[derive(Debug, Clone, Deserialize)]
pub struct ListPage {
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub items: Vec<Value>,
    #[serde(default)]
    pub next: Option<String>,
}

/// What a PUT did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub created: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PutBody {
    #[serde(default)]
    warnings: Vec<String>,
}

/// The reply to `POST /tokens/zone` and `POST /tokens/dataplane`.
#[derive(Debug, Deserialize)]
struct TokenBody {
    token: String,
}

/// Whether the URL points at this machine.
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error and its sources, `outer: inner: root` (reqwest hides the cause in its sources).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Pages followed at most, in case a server keeps returning a `next`.
const MAX_PAGES: usize = 100_000;

/// A client for one API server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl ApiClient {
    /// A client for the API at `api_url` (http or https, optionally with a path prefix).
    pub fn new(api_url: &str, token: Option<String>) -> anyhow::Result<ApiClient> {
        let base = Url::parse(api_url).with_context(|| format!("invalid API URL {api_url:?}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            anyhow::bail!("invalid API URL {api_url:?}: expected http://HOST:PORT or https://...");
        }
        let mut builder = reqwest::Client::builder();
        if is_loopback(&base) {
            // As Go clients do: a proxy from the environment never applies to this machine.
            builder = builder.no_proxy();
        }
        let http = builder
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("meshctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(ApiClient { http, base, token })
    }

    /// The API URL this client talks to.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of a path given as segments (each is percent-encoded).
    pub fn url(&self, segments: &[String]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body)?);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the API server: {method} {url}: {}",
                error_chain(&e)
            )
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the response to {method} {url}"))?;
        if status.is_success() {
            Ok((status, text))
        } else {
            Err(ApiError::from_response(&method, &url, status, &text).into())
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        method: &str,
        url: &Url,
        text: &str,
    ) -> anyhow::Result<T> {
        serde_json::from_str(text).with_context(|| {
            format!("unexpected response to {method} {url}: not the expected JSON")
        })
    }

    /// `GET /`: the server's product, version, mode and zone.
    pub async fn server_info(&self) -> anyhow::Result<Value> {
        let url = self.url(&[]);
        let (_, text) = self.send(Method::GET, url.clone(), None).await?;
        Self::decode("GET", &url, &text)
    }

    /// Fetches one resource.
    pub async fn get(&self, segments: &[String]) -> anyhow::Result<Value> {
        let url = self.url(segments);
        let (_, text) = self.send(Method::GET, url.clone(), None).await?;
        Self::decode("GET", &url, &text)
    }

    /// Fetches every item of a collection, following `next` links. Returns the items and the
    /// `total` the first page announced (or the number of items when it announced none).
    pub async fn list_all(&self, segments: &[String]) -> anyhow::Result<(u64, Vec<Value>)> {
        let mut url = self.url(segments);
        let mut items = Vec::new();
        let mut total = None;
        for _ in 0..MAX_PAGES {
            let (_, text) = self.send(Method::GET, url.clone(), None).await?;
            let page: ListPage = Self::decode("GET", &url, &text)?;
            total = total.or(page.total);
            items.extend(page.items);
            match page.next.filter(|n| !n.is_empty()) {
                None => return Ok((total.unwrap_or(items.len() as u64), items)),
                Some(next) => {
                    let next_url = url
                        .join(&next)
                        .with_context(|| format!("invalid next link {next:?} from GET {url}"))?;
                    if next_url == url {
                        anyhow::bail!("GET {url} returned itself as its next page");
                    }
                    url = next_url;
                }
            }
        }
        anyhow::bail!(
            "GET {} returned more than {MAX_PAGES} pages",
            self.url(segments)
        )
    }

    /// `POST /tokens/zone` on the global: a token that lets zone `zone` connect over KDS, valid
    /// for `valid_for` (a duration such as `24h`). Needs the admin token.
    pub async fn generate_zone_token(&self, zone: &str, valid_for: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({ "zone": zone, "validFor": valid_for });
        self.issue_token("zone", &body).await
    }

    /// `POST /tokens/dataplane` on a zone CP: the token the proxy of Dataplane `mesh`/`name`
    /// (`proxy_type` `dataplane`), or of the zone's ingress or egress `name` (`ingress`,
    /// `egress`), presents on its ADS stream. Needs the admin token.
    pub async fn generate_dataplane_token(
        &self,
        proxy_type: &str,
        mesh: &str,
        name: &str,
        valid_for: &str,
    ) -> anyhow::Result<String> {
        let body = serde_json::json!({
            "type": proxy_type, "mesh": mesh, "name": name, "validFor": valid_for
        });
        self.issue_token("dataplane", &body).await
    }

    async fn issue_token(&self, kind: &str, body: &serde_json::Value) -> anyhow::Result<String> {
        let url = self.url(&["tokens".to_owned(), kind.to_owned()]);
        let (_, text) = self.send(Method::POST, url.clone(), Some(body)).await?;
        let reply: TokenBody = Self::decode("POST", &url, &text)?;
        let token = reply.token.trim();
        if token.is_empty() {
            anyhow::bail!("POST {url} returned an empty token");
        }
        Ok(token.to_owned())
    }

    /// `GET /zones/_overview` on the global: every zone's KDS status, in the list shape. Returns
    /// the announced total and the items.
    pub async fn zones_overview(&self) -> anyhow::Result<(u64, Vec<Value>)> {
        self.list_all(&["zones".to_owned(), "_overview".to_owned()])
            .await
    }

    /// `GET /global/members` on a global node: its view of the Raft cluster (`nodeId`, `role`,
    /// `term`, `leaderId`, `members`). Needs the admin token.
    pub async fn global_members(&self) -> anyhow::Result<Value> {
        self.get(&["global".to_owned(), "members".to_owned()]).await
    }

    /// `POST /global/members`: adds node `id` (peer address `address`) as a learner, then a
    /// voter once it has caught up; answers with the cluster view after. Needs the admin token.
    pub async fn add_global_member(&self, id: u64, address: &str) -> anyhow::Result<Value> {
        let url = self.url(&["global".to_owned(), "members".to_owned()]);
        let body = serde_json::json!({ "id": id, "address": address });
        let (_, text) = self.send(Method::POST, url.clone(), Some(&body)).await?;
        Self::decode("POST", &url, &text)
    }

    /// `GET /global/backup`: a consistent backup of the global's replicated state (JSON, as
    /// `global-cp restore` reads it). Needs the admin token.
    pub async fn global_backup(&self) -> anyhow::Result<String> {
        let url = self.url(&["global".to_owned(), "backup".to_owned()]);
        let (_, text) = self.send(Method::GET, url, None).await?;
        Ok(text)
    }

    /// `DELETE /global/members/{id}`; answers with the cluster view after.
    pub async fn remove_global_member(&self, id: u64) -> anyhow::Result<Value> {
        let url = self.url(&["global".to_owned(), "members".to_owned(), id.to_string()]);
        let (_, text) = self.send(Method::DELETE, url.clone(), None).await?;
        Self::decode("DELETE", &url, &text)
    }

    /// Creates or replaces a resource with its universal JSON.
    pub async fn put(&self, segments: &[String], body: &Value) -> anyhow::Result<PutOutcome> {
        let url = self.url(segments);
        let (status, text) = self.send(Method::PUT, url, Some(body)).await?;
        let parsed: PutBody = if text.trim().is_empty() {
            PutBody::default()
        } else {
            serde_json::from_str(&text).unwrap_or_default()
        };
        Ok(PutOutcome {
            created: status == StatusCode::CREATED,
            warnings: parsed.warnings,
        })
    }

    /// Deletes a resource.
    pub async fn delete(&self, segments: &[String]) -> anyhow::Result<()> {
        let url = self.url(segments);
        self.send(Method::DELETE, url, None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn urls_keep_a_path_prefix_and_encode_names() {
        let c = ApiClient::new("http://127.0.0.1:5681", None).unwrap();
        assert_eq!(
            c.url(&segs(&["meshes", "default"])).as_str(),
            "http://127.0.0.1:5681/meshes/default"
        );
        assert_eq!(c.url(&[]).as_str(), "http://127.0.0.1:5681/");
        let c = ApiClient::new("http://h:1/api/", None).unwrap();
        assert_eq!(
            c.url(&segs(&["meshes", "a b", "secrets", "x/y"])).as_str(),
            "http://h:1/api/meshes/a%20b/secrets/x%2Fy"
        );
        assert!(ApiClient::new("127.0.0.1:5681", None).is_err());
        assert!(is_loopback(&Url::parse("http://127.0.0.1:1").unwrap()));
        assert!(is_loopback(&Url::parse("http://[::1]:1").unwrap()));
        assert!(is_loopback(&Url::parse("http://LOCALHOST:1").unwrap()));
        assert!(!is_loopback(&Url::parse("http://cp.example:1").unwrap()));
        assert!(ApiClient::new("ftp://h", None).is_err());
    }

    #[test]
    fn api_errors_show_each_cause_with_its_field() {
        let url = Url::parse("http://h/meshes/default/meshtrafficpermissions/x").unwrap();
        let body = r#"{"title":"Resource is not valid","details":"validation failed","causes":[
            {"field":"spec.from[0].targetRef.kind","message":"must be one of Mesh, MeshService"},
            {"field":"spec.targetRef","message":"must be defined"}]}"#;
        let err = ApiError::from_response(&Method::PUT, &url, StatusCode::BAD_REQUEST, body);
        let text = err.to_string();
        assert!(
            text.starts_with("Resource is not valid: validation failed (HTTP 400"),
            "{text}"
        );
        assert!(
            text.contains("\n  * spec.from[0].targetRef.kind: must be one of Mesh, MeshService"),
            "{text}"
        );
        assert!(
            text.contains("\n  * spec.targetRef: must be defined"),
            "{text}"
        );

        let err =
            ApiError::from_response(&Method::GET, &url, StatusCode::NOT_FOUND, "no such thing");
        assert_eq!(err.title, "Not Found");
        assert_eq!(err.details, "no such thing");

        let err = ApiError::from_response(&Method::PUT, &url, StatusCode::UNAUTHORIZED, "");
        assert!(err.to_string().contains("--token"), "{err}");
    }

    /// A one-shot HTTP server: answers each connection with the next canned response and
    /// records each request (head and body, lower-cased header names as received).
    async fn canned_server(
        listener: tokio::net::TcpListener,
        responses: Vec<(u16, String)>,
    ) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut requests = Vec::new();
        for (status, body) in responses {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = socket.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            requests.push(String::from_utf8_lossy(&buf).to_string());
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        }
        requests
    }

    #[tokio::test]
    async fn follows_next_sends_the_token_and_decodes_outcomes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let responses = vec![
            (
                200,
                format!(
                    r#"{{"total":3,"items":[{{"name":"a"}},{{"name":"b"}}],"next":"{base}/meshes?size=2&offset=2"}}"#
                ),
            ),
            (
                200,
                r#"{"total":3,"items":[{"name":"c"}],"next":null}"#.to_owned(),
            ),
            (
                201,
                r#"{"warnings":["unknown field \"spec.x\""]}"#.to_owned(),
            ),
            (200, String::new()),
            (
                404,
                r#"{"title":"Not found","details":"no Mesh x","causes":[]}"#.to_owned(),
            ),
        ];
        let server = tokio::spawn(canned_server(listener, responses));
        let client = ApiClient::new(&base, Some("tok".into())).unwrap();

        let (total, items) = client.list_all(&segs(&["meshes"])).await.unwrap();
        assert_eq!(total, 3);
        let names: Vec<_> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b", "c"]);

        let body = serde_json::json!({"type": "Mesh", "name": "x"});
        let outcome = client.put(&segs(&["meshes", "x"]), &body).await.unwrap();
        assert_eq!(
            outcome,
            PutOutcome {
                created: true,
                warnings: vec!["unknown field \"spec.x\"".into()]
            }
        );
        let outcome = client.put(&segs(&["meshes", "x"]), &body).await.unwrap();
        assert!(!outcome.created);

        let err = client.delete(&segs(&["meshes", "x"])).await.unwrap_err();
        let api = err.downcast_ref::<ApiError>().expect("an ApiError");
        assert_eq!(api.status, 404);
        assert_eq!(api.details, "no Mesh x");

        let requests = server.await.unwrap();
        assert!(
            requests[0].starts_with("GET /meshes HTTP/1.1"),
            "{}",
            requests[0]
        );
        assert!(
            requests[1].starts_with("GET /meshes?size=2&offset=2 HTTP/1.1"),
            "{}",
            requests[1]
        );
        let put = requests[2].to_ascii_lowercase();
        assert!(put.starts_with("put /meshes/x http/1.1"), "{put}");
        assert!(put.contains("authorization: bearer tok"), "{put}");
        assert!(put.contains("content-type: application/json"), "{put}");
        assert!(put.ends_with(r#"{"name":"x","type":"mesh"}"#), "{put}");
        assert!(
            requests[4].starts_with("DELETE /meshes/x HTTP/1.1"),
            "{}",
            requests[4]
        );
    }

    #[tokio::test]
    async fn dataplane_tokens_follow_the_contract() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let responses = vec![(200, r#"{"token":"dp.sig"}"#.to_owned())];
        let server = tokio::spawn(canned_server(listener, responses));
        let client = ApiClient::new(&base, Some("admin".into())).unwrap();
        let token = client
            .generate_dataplane_token("dataplane", "default", "web-1", "1h")
            .await
            .unwrap();
        assert_eq!(token, "dp.sig");
        let requests = server.await.unwrap();
        let post = requests[0].to_ascii_lowercase();
        assert!(
            post.starts_with("post /tokens/dataplane http/1.1"),
            "{post}"
        );
        assert!(post.contains("authorization: bearer admin"), "{post}");
        let body = &requests[0][requests[0].find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap(),
            serde_json::json!({"type": "dataplane", "mesh": "default", "name": "web-1", "validFor": "1h"})
        );
    }

    #[tokio::test]
    async fn zone_tokens_and_the_overview_follow_the_contract() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let responses = vec![
            (200, r#"{"token":"eyJ.abc.def\n"}"#.to_owned()),
            (
                400,
                r#"{"title":"Invalid request","details":"bad token request","causes":[{"field":"validFor","message":"must be a duration such as 24h"}]}"#
                    .to_owned(),
            ),
            (200, r#"{"token":""}"#.to_owned()),
            (
                200,
                r#"{"total":1,"items":[{"name":"zone-1","status":"online"}],"next":null}"#
                    .to_owned(),
            ),
        ];
        let server = tokio::spawn(canned_server(listener, responses));
        let client = ApiClient::new(&base, Some("admin".into())).unwrap();

        let token = client.generate_zone_token("zone-1", "24h").await.unwrap();
        assert_eq!(token, "eyJ.abc.def");
        let err = client
            .generate_zone_token("zone-1", "forever")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HTTP 400"), "{text}");
        assert!(
            text.contains("* validFor: must be a duration such as 24h"),
            "{text}"
        );
        let err = client
            .generate_zone_token("zone-1", "1h")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("empty token"), "{err}");
        let (total, items) = client.zones_overview().await.unwrap();
        assert_eq!(total, 1);
        assert_eq!(items[0]["status"], "online");

        let requests = server.await.unwrap();
        let post = requests[0].to_ascii_lowercase();
        assert!(post.starts_with("post /tokens/zone http/1.1"), "{post}");
        assert!(post.contains("authorization: bearer admin"), "{post}");
        assert!(post.contains("content-type: application/json"), "{post}");
        let body = &requests[0][requests[0].find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap(),
            serde_json::json!({"zone": "zone-1", "validFor": "24h"})
        );
        assert!(
            requests[3].starts_with("GET /zones/_overview HTTP/1.1"),
            "{}",
            requests[3]
        );
    }

    #[test]
    fn list_pages_decode_with_or_without_next() {
        let page: ListPage = serde_json::from_str(
            r#"{"total":3,"items":[{"name":"a"}],"next":"http://h/meshes?offset=1"}"#,
        )
        .unwrap();
        assert_eq!(page.total, Some(3));
        assert_eq!(page.items.len(), 1);
        assert!(page.next.is_some());
        let page: ListPage = serde_json::from_str(r#"{"total":0,"items":[],"next":null}"#).unwrap();
        assert!(page.next.is_none());
    }
}
