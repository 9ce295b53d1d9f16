//! `upshift:adapter/http`: requests to a bound base URL.

use serde_json::json;

use super::{CapResult, HostState};
use crate::bindings::upshift::adapter::http;
use crate::tap::bytes_to_tape;
use upshift_caps::Operation;

impl http::Host for HostState {
    async fn request(
        &mut self,
        binding: String,
        method: String,
        path: String,
        body: Vec<u8>,
    ) -> CapResult<http::Response> {
        let args = self.tap_args(|| json!({ "binding": binding, "method": method, "path": path, "body": bytes_to_tape(&body) }));
        self.taped("http", Operation::Request, &binding, args, async |caps| {
            let resp = caps.http().request(&binding, &method, &path, body).await?;
            Ok(http::Response {
                status: resp.status,
                body: resp.body,
            })
        })
        .await
    }
}
