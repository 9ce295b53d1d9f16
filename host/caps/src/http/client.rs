//! The http capability's backend: requests to the bound base URL only. The adapter sends a
//! path; redirects are never followed; response bodies are capped.

use std::time::Duration;

use reqwest::Url;

use crate::CapError;
use crate::limits::MAX_RESULT_BYTES;
use upshift_model::redact::url_for_display;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (at most the limit).
    pub body: Vec<u8>,
}

/// One bound base URL.
pub struct HttpBackend {
    base: Url,
    client: reqwest::Client,
}

/// How many rounds of percent-decoding a segment is checked through (a server, or a proxy in
/// front of it, may decode `%252e` into `%2e` and then into `.`).
const DECODE_ROUNDS: usize = 3;

fn leaves(path: &str, why: &str) -> CapError {
    CapError::Denied(format!(
        "`{}` leaves the bound URL: {why}",
        path.escape_debug().take(200).collect::<String>()
    ))
}

/// Check one raw path segment as every decoding of it reads: no encoded `/` or `\`, no control
/// characters, no encoded `.`/`..`, no `..;params`. Returns whether it is a plain dot segment.
fn check_segment(path: &str, raw: &str) -> Result<Dot, CapError> {
    let mut text = raw.to_string();
    for round in 0..=DECODE_ROUNDS {
        let name = text.split(';').next().unwrap_or("");
        if matches!(name, "." | "..") {
            if round == 0 && name == text {
                return Ok(if name == "." {
                    Dot::Current
                } else {
                    Dot::Parent
                });
            }
            return Err(leaves(path, "an encoded or parameterised dot segment"));
        }
        if round > 0 && text.contains(['/', '\\']) {
            return Err(leaves(path, "an encoded `/` or `\\`"));
        }
        if text.chars().any(char::is_control) {
            return Err(leaves(path, "a control character"));
        }
        let decoded = percent_encoding::percent_decode_str(&text)
            .decode_utf8_lossy()
            .into_owned();
        if decoded == text {
            break;
        }
        text = decoded;
    }
    Ok(Dot::None)
}

/// What a segment is for dot-segment removal.
enum Dot {
    None,
    Current,
    Parent,
}

impl HttpBackend {
    /// A backend for base URL `base`.
    pub fn new(base: &str) -> Result<HttpBackend, CapError> {
        let base = Url::parse(base).map_err(|e| {
            CapError::Invalid(format!("bad base URL `{}`: {e}", url_for_display(base)))
        })?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CapError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpBackend { base, client })
    }

    /// The bound base URL as it may be shown (no userinfo).
    pub fn shown(&self) -> String {
        url_for_display(self.base.as_str())
    }

    /// The URL `path` resolves to, refused if it would leave the bound origin or base path.
    ///
    /// The path is joined to the base by segments: every segment is checked through its
    /// percent-decodings (no encoded `/`, `\`, dots or control characters), `.` and `..` are
    /// removed, and a `..` that would climb out of the adapter's path — and so out of the base
    /// path — is denied. The URL built is checked once more against the base.
    pub fn resolve(&self, path: &str) -> Result<Url, CapError> {
        if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
            return Err(CapError::Denied(format!(
                "`{}` is not a path under the bound URL; send a path starting with a single `/`",
                path.escape_debug().take(200).collect::<String>()
            )));
        }
        if path.chars().any(|c| c.is_control() || c.is_whitespace()) || path.contains('#') {
            return Err(leaves(path, "whitespace, a control character or a `#`"));
        }
        let (raw_path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let mut segments: Vec<&str> = Vec::new();
        // `/a/..` and `/a/.` name a directory: they keep a trailing slash.
        let mut ends_in_dot = false;
        for raw in raw_path[1..].split('/') {
            ends_in_dot = true;
            match check_segment(path, raw)? {
                Dot::None => {
                    segments.push(raw);
                    ends_in_dot = false;
                }
                Dot::Current => {}
                Dot::Parent => {
                    if segments.pop().is_none() {
                        return Err(leaves(path, "`..` climbs above the base path"));
                    }
                }
            }
        }
        if ends_in_dot {
            segments.push("");
        }
        let base_path = self.base.path().trim_end_matches('/');
        let joined = format!("{base_path}/{}", segments.join("/"));
        let mut url = self.base.clone();
        url.set_path(&joined);
        url.set_query(query);
        url.set_fragment(None);
        if url.path() != joined
            || url.scheme() != self.base.scheme()
            || url.host_str() != self.base.host_str()
            || url.port_or_known_default() != self.base.port_or_known_default()
        {
            return Err(leaves(path, "it does not stay under the base path"));
        }
        Ok(url)
    }

    /// Send one request.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(Response, u64), CapError> {
        let url = self.resolve(path)?;
        let shown = url_for_display(url.as_str());
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| CapError::Invalid(format!("`{method}` is not an HTTP method")))?;
        let server = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let mut response = self
            .client
            .request(method, url)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    // Name the server and the cause, not reqwest's bare "error sending request".
                    CapError::Failed(format!(
                        "cannot connect to HTTP server at {server} ({shown}): {}",
                        crate::connect::cause(&e)
                    ))
                } else {
                    CapError::Failed(format!("request to {shown} failed: {}", e.without_url()))
                }
            })?;
        let status = response.status().as_u16();
        let mut out = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            CapError::Failed(format!(
                "reading the response from {shown} failed: {}",
                e.without_url()
            ))
        })? {
            if out.len() + chunk.len() > MAX_RESULT_BYTES {
                return Err(CapError::Invalid(format!(
                    "the response from {shown} exceeds {MAX_RESULT_BYTES} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        let n = out.len() as u64;
        Ok((Response { status, body: out }, n))
    }
}

/// Whether an HTTP method only reads.
pub fn is_read_method(method: &str) -> bool {
    matches!(
        method.to_ascii_uppercase().as_str(),
        "GET" | "HEAD" | "OPTIONS"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_origin() {
        let h = HttpBackend::new("http://127.0.0.1:8080").expect("backend");
        assert_eq!(
            h.resolve("/healthz").expect("ok").as_str(),
            "http://127.0.0.1:8080/healthz"
        );
        for bad in ["http://evil/", "//evil/x", "@evil/x", "healthz", "/\\evil"] {
            assert!(matches!(h.resolve(bad), Err(CapError::Denied(_))), "{bad}");
        }
    }

    #[test]
    fn paths_cannot_leave_the_base_path() {
        let h = HttpBackend::new("http://127.0.0.1:8080/api").expect("backend");
        for bad in [
            "/../api-admin/secret",
            "/..",
            "/./../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/.%2e/x",
            "/%252e%252e/x",
            "/a/..%2f..%2fx",
            "/a/%2f/x",
            "/a%5c..%5cx",
            "/..;/x",
            "/..;a=b/x",
            "/%2e%2e;/x",
            "/a/%00",
            "/a\u{1}b",
            "/a b",
            "/a#frag",
            "\\..\\x",
            "//x",
        ] {
            assert!(
                matches!(h.resolve(bad), Err(CapError::Denied(_))),
                "{bad}: {:?}",
                h.resolve(bad)
            );
        }
        for (good, want) in [
            ("/healthz", "http://127.0.0.1:8080/api/healthz"),
            ("/", "http://127.0.0.1:8080/api/"),
            ("/a/../b", "http://127.0.0.1:8080/api/b"),
            ("/a/./b/", "http://127.0.0.1:8080/api/a/b/"),
            ("/a/..", "http://127.0.0.1:8080/api/"),
            (
                "/v1/items?q=a/../b",
                "http://127.0.0.1:8080/api/v1/items?q=a/../b",
            ),
            (
                "/name%20with%20space",
                "http://127.0.0.1:8080/api/name%20with%20space",
            ),
            ("/a;v=1/b", "http://127.0.0.1:8080/api/a;v=1/b"),
        ] {
            assert_eq!(h.resolve(good).expect(good).as_str(), want, "{good}");
        }
        let slash = HttpBackend::new("http://127.0.0.1:8080/api/").expect("backend");
        assert_eq!(
            slash.resolve("/x").expect("ok").as_str(),
            "http://127.0.0.1:8080/api/x"
        );
        assert!(slash.resolve("/../api-admin").is_err());
    }

    #[test]
    fn urls_are_shown_without_userinfo() {
        let h = HttpBackend::new("http://admin:s3cretpw@127.0.0.1:8080/api").expect("backend");
        assert_eq!(h.shown(), "http://***@127.0.0.1:8080/api");
        let err = HttpBackend::new("http://admin:s3cretpw@[::1")
            .err()
            .expect("bad");
        assert!(!err.to_string().contains("s3cretpw"), "{err}");
    }
}
