//! Watch mode (`wasmgate run --watch`): a component file of gateway.toml
//! that changes is deployed as a new version of its app, hot-swapped like
//! any other deployment, without restarting the gateway.
//!
//! Files are polled (every 500 ms) rather than watched through the kernel,
//! which keeps this portable and free of dependencies; a change is taken
//! once the file has stayed the same for one more poll, so a build that is
//! still writing it is not picked up half-done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

use super::{DeployClient, DeployRequest};
use crate::config::Config;

const POLL: Duration = Duration::from_millis(500);

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The component files as they were when the gateway started to load its
/// apps. Taken before the apps load, so that a file changed while they
/// start is seen as a change and deployed, not taken as the starting point.
pub struct Watcher {
    config: Config,
    seen: HashMap<String, Option<(SystemTime, u64)>>,
}

impl Watcher {
    pub fn new(config: &Config) -> Watcher {
        let seen = config
            .apps
            .iter()
            .map(|a| (a.name.clone(), stamp(&a.component)))
            .collect();
        Watcher {
            config: config.clone(),
            seen,
        }
    }

    /// Poll until `cancel`, deploying each file that changed.
    pub async fn run(self, deploy: DeployClient, cancel: CancellationToken) {
        let Watcher { config, mut seen } = self;
        let mut changed: HashMap<String, Option<(SystemTime, u64)>> = HashMap::new();
        tracing::info!(
            "watching {} component file(s) for changes",
            config.apps.len()
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            for app in &config.apps {
                let now = stamp(&app.component);
                if seen.get(&app.name) == Some(&now) {
                    changed.remove(&app.name);
                    continue;
                }
                // Take it once it stopped changing.
                if changed.get(&app.name) != Some(&now) {
                    changed.insert(app.name.clone(), now);
                    continue;
                }
                changed.remove(&app.name);
                seen.insert(app.name.clone(), now);
                let (component, spec) = match super::read_app(app) {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::warn!(app = %app.name, "watch: not deployed: {e:#}");
                        continue;
                    }
                };
                tracing::info!(app = %app.name, component = %app.component.display(), "watch: the component changed; deploying it");
                let request = DeployRequest {
                    app: app.name.clone(),
                    component,
                    model: None,
                    config: None,
                    grants: None,
                    spec: Some(spec),
                    source: "watch".into(),
                };
                if let Err(e) = deploy.deploy(request).await {
                    tracing::warn!(app = %app.name, "watch: {e}");
                }
            }
        }
    }
}
