//! `upshift:adapter/service`: the state, health and images of a bound service.

use serde_json::json;

use super::{CapResult, HostState};
use crate::bindings::upshift::adapter::service;
use upshift_caps::Operation;

impl service::Host for HostState {
    async fn inspect(&mut self, binding: String) -> CapResult<service::ServiceStatus> {
        let args = self.tap_args(|| json!({ "binding": binding }));
        self.taped(
            "service",
            Operation::Inspect,
            &binding,
            args,
            async |caps| {
                let s = caps.service().inspect(&binding, None).await?;
                Ok(service::ServiceStatus {
                    running: s.running,
                    version: s.version,
                    detail: s.detail,
                })
            },
        )
        .await
    }

    async fn healthy(&mut self, binding: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding }));
        self.taped(
            "service",
            Operation::Healthy,
            &binding,
            args,
            async |caps| caps.service().healthy(&binding, None).await,
        )
        .await
    }

    async fn image_present(&mut self, binding: String, version: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "version": version }));
        self.taped(
            "service",
            Operation::ImagePresent,
            &binding,
            args,
            async |caps| caps.service().image_present(&binding, &version).await,
        )
        .await
    }

    async fn load_image(
        &mut self,
        binding: String,
        files_binding: String,
        path: String,
    ) -> CapResult<Vec<String>> {
        let args = self.tap_args(
            || json!({ "binding": binding, "files-binding": files_binding, "path": path }),
        );
        self.taped(
            "service",
            Operation::LoadImage,
            &binding,
            args,
            async |caps| {
                caps.service()
                    .load_image(&binding, caps.files(), &files_binding, &path)
                    .await
            },
        )
        .await
    }
}
