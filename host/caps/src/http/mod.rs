//! The http capability: [`Http`] owns the bound base URLs and reaches them only through the
//! guard. The client backend (reqwest) is in [`client`].

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use crate::CapError;
use crate::guard::{Bound, Guard};
use crate::operation::Operation;
use upshift_model::grants::{Access, BindingKind};

pub use client::{HttpBackend, Response, is_read_method};

/// What an `http-check` expects.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The path to GET.
    pub path: &'a str,
    /// The status it must answer with.
    pub status: u16,
    /// Text the body must contain, if any.
    pub body_contains: Option<&'a str>,
    /// How long to keep asking.
    pub timeout: Duration,
}

/// The http capability: the bound base URLs, reached only through the guard.
pub struct Http {
    bound: Bound<HttpBackend>,
}

impl Http {
    pub(crate) fn new(guard: Arc<Guard>) -> Http {
        Http {
            bound: Bound::new(guard, BindingKind::Http),
        }
    }

    pub(crate) fn bind(&mut self, name: &str, backend: HttpBackend) {
        self.bound.bind(name, backend);
    }

    /// `http.request`: GET/HEAD/OPTIONS need `read`, other methods `write`.
    pub async fn request(
        &self,
        binding: &str,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, CapError> {
        let access = if is_read_method(method) {
            Access::Read
        } else {
            Access::Write
        };
        let detail = format!(
            "{} {}",
            method.to_ascii_uppercase(),
            path.chars().take(200).collect::<String>()
        );
        self.bound
            .call(
                binding,
                &[access],
                Operation::Request,
                Some(detail),
                async |b| b.request(method, path, body).await,
            )
            .await
    }

    /// Host: GET `expect.path` until it answers as expected or the timeout passes.
    pub async fn check(
        &self,
        binding: &str,
        detail: &str,
        expect: &Expect<'_>,
    ) -> Result<String, CapError> {
        self.bound
            .host(binding, Operation::HttpCheck, detail, async |backend| {
                let deadline = std::time::Instant::now() + expect.timeout;
                loop {
                    let last = match backend.request("GET", expect.path, Vec::new()).await {
                        Ok((resp, _)) => match answered(binding, expect, &resp) {
                            Ok(done) => return Ok(done),
                            Err(why) => why,
                        },
                        Err(e) => e.to_string(),
                    };
                    if std::time::Instant::now() >= deadline {
                        return Err(CapError::Failed(last));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
    }
}

/// Whether `resp` is what `expect` wants: a summary if so, else why not.
fn answered(binding: &str, expect: &Expect<'_>, resp: &Response) -> Result<String, String> {
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    let body_ok = expect.body_contains.is_none_or(|want| body.contains(want));
    if resp.status == expect.status && body_ok {
        return Ok(format!(
            "{binding} {} answered {}",
            expect.path, resp.status
        ));
    }
    Err(format!(
        "{} answered {} with `{}`; expected {}{}",
        expect.path,
        resp.status,
        body.chars().take(200).collect::<String>(),
        expect.status,
        expect
            .body_contains
            .map(|w| format!(" containing `{w}`"))
            .unwrap_or_default()
    ))
}
