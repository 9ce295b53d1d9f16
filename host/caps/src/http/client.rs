//! The http capability's backend: requests to the bound base URL only. The adapter sends a
//! path; redirects are never followed; response bodies are capped.

use std::time::Duration;

use reqwest::Url;

use crate::CapError;
use crate::limits::MAX_RESULT_BYTES;

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

impl HttpBackend {
    /// A backend for base URL `base`.
    pub fn new(base: &str) -> Result<HttpBackend, CapError> {
        let base = Url::parse(base)
            .map_err(|e| CapError::Invalid(format!("bad base URL `{base}`: {e}")))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CapError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpBackend { base, client })
    }

    /// The URL `path` resolves to, refused if it would leave the bound origin.
    pub fn resolve(&self, path: &str) -> Result<Url, CapError> {
        if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
            return Err(CapError::Denied(format!(
                "`{path}` is not a path under the bound URL; send a path starting with a single `/`"
            )));
        }
        let joined = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let url = Url::parse(&joined)
            .map_err(|e| CapError::Invalid(format!("bad path `{path}`: {e}")))?;
        if url.scheme() != self.base.scheme()
            || url.host_str() != self.base.host_str()
            || url.port_or_known_default() != self.base.port_or_known_default()
            || !url
                .path()
                .starts_with(self.base.path().trim_end_matches('/'))
        {
            return Err(CapError::Denied(format!("`{path}` leaves the bound URL")));
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
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| CapError::Invalid(format!("`{method}` is not an HTTP method")))?;
        let mut response = self
            .client
            .request(method, url.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| CapError::Failed(format!("request to {url} failed: {e}")))?;
        let status = response.status().as_u16();
        let mut out = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CapError::Failed(format!("reading the response from {url} failed: {e}")))?
        {
            if out.len() + chunk.len() > MAX_RESULT_BYTES {
                return Err(CapError::Invalid(format!(
                    "the response from {url} exceeds {MAX_RESULT_BYTES} bytes"
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
        let h = HttpBackend::new("http://127.0.0.1:8080/api").expect("backend");
        assert!(h.resolve("/../admin").is_err());
    }
}
