//! `upshift:adapter/files`: reading, writing and listing inside a bound directory.

use serde_json::json;

use super::{CapResult, HostState};
use crate::bindings::upshift::adapter::files;
use crate::tap::bytes_to_tape;
use upshift_caps::Operation;

impl files::Host for HostState {
    async fn read(&mut self, binding: String, path: String) -> CapResult<Vec<u8>> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", Operation::Read, &binding, args, async |caps| {
            caps.files().read(&binding, &path).await
        })
        .await
    }

    async fn write(&mut self, binding: String, path: String, contents: Vec<u8>) -> CapResult<()> {
        let args = self.tap_args(
            || json!({ "binding": binding, "path": path, "contents": bytes_to_tape(&contents) }),
        );
        self.taped("files", Operation::Write, &binding, args, async |caps| {
            caps.files().write(&binding, &path, contents).await
        })
        .await
    }

    async fn list_dir(&mut self, binding: String, path: String) -> CapResult<Vec<files::DirEntry>> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", Operation::ListDir, &binding, args, async |caps| {
            let entries = caps.files().list_dir(&binding, &path).await?;
            Ok(entries
                .into_iter()
                .map(|e| files::DirEntry {
                    name: e.name,
                    is_dir: e.is_dir,
                    size: e.size,
                })
                .collect())
        })
        .await
    }

    async fn exists(&mut self, binding: String, path: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "path": path }));
        self.taped("files", Operation::Exists, &binding, args, async |caps| {
            caps.files().exists(&binding, &path).await
        })
        .await
    }
}
