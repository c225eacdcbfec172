//! Deployments from the cloud: a signed manifest on `deploy/req`, the
//! component in chunks on `deploy/{id}/chunk/{index}`, progress and outcome
//! on `deploy/res` (see docs/protocol.md).
//!
//! The manifest's signature is checked against the trusted keys before a
//! single chunk is taken, so an unsigned or badly signed deployment costs
//! nothing but its refusal. Chunks are held in memory (the component is at
//! most 64 MiB); once all have arrived, the sha256 of the whole must match
//! the signed one, so a changed, missing or extra byte anywhere is refused.
//! Then it is deployed like any other version.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DeployClient, DeployRequest, MAX_ARTIFACT_BYTES, signing};
use crate::model::check_name;
use crate::wire::protocol::{DeployManifest, DeployProgress};
use crate::wire::topics;
use crate::wire::topics::Kind;
use crate::wire::{Inbound, Reply};

/// The largest chunk taken.
pub const MAX_CHUNK_BYTES: u64 = 1 << 20;

/// A transfer that stops receiving chunks for this long is dropped.
const STALE: Duration = Duration::from_secs(600);

/// Read a `deploy/req` payload and check it: names, sizes that add up, and
/// a signature by a trusted key. On refusal: the id, if one could be read,
/// and why.
pub fn check_manifest(
    trusted: &[[u8; 32]],
    payload: &[u8],
) -> Result<DeployManifest, (Option<String>, String)> {
    let manifest: DeployManifest = serde_json::from_slice(payload).map_err(|e| {
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("id")?.as_str().map(str::to_string))
            .filter(|id| check_name(id).is_ok());
        (id, format!("malformed deployment request: {e}"))
    })?;
    if let Err(m) = check_name(&manifest.id) {
        return Err((None, format!("deployment id: {m}")));
    }
    let id = Some(manifest.id.clone());
    check_name(&manifest.app).map_err(|m| (id.clone(), m))?;
    let sized = manifest.size > 0
        && manifest.size <= MAX_ARTIFACT_BYTES as u64
        && (1..=MAX_CHUNK_BYTES).contains(&manifest.chunk_size)
        && manifest.chunks == manifest.size.div_ceil(manifest.chunk_size);
    if !sized {
        return Err((
            id,
            format!(
                "size {} in {} chunks of {} bytes does not add up (at most {} MiB, chunks of at most {} KiB)",
                manifest.size,
                manifest.chunks,
                manifest.chunk_size,
                MAX_ARTIFACT_BYTES >> 20,
                MAX_CHUNK_BYTES >> 10
            ),
        ));
    }
    let signed = signing::signed_bytes(
        &manifest.id,
        &manifest.app,
        &manifest.sha256,
        manifest.model.as_ref(),
        manifest.config.as_deref(),
    );
    signing::verify(trusted, &signed, &manifest.signature).map_err(|e| (id, e))?;
    Ok(manifest)
}

/// A deployment being received: its checked manifest and the chunks so far.
pub struct Transfer {
    pub manifest: DeployManifest,
    chunks: Vec<Option<Vec<u8>>>,
    received: u64,
    touched: Instant,
}

impl Transfer {
    /// Start receiving what a checked manifest announced.
    pub fn new(manifest: DeployManifest) -> Transfer {
        Transfer {
            chunks: vec![None; manifest.chunks as usize],
            manifest,
            received: 0,
            touched: Instant::now(),
        }
    }

    /// Take chunk `index` (as it came in the topic); a repeated chunk
    /// replaces the earlier one. Returns how many distinct chunks are in.
    pub fn accept(&mut self, index: &str, payload: Vec<u8>) -> Result<u64, String> {
        self.touched = Instant::now();
        let m = &self.manifest;
        let expected =
            |i: u64| crate::content::transfer::chunk_len(m.size, m.chunk_size, m.chunks, i);
        let index: u64 = match index.parse() {
            Ok(i) if i < m.chunks && payload.len() as u64 == expected(i) => i,
            _ => {
                return Err(format!(
                    "chunk {index} ({} bytes) does not fit the manifest",
                    payload.len()
                ));
            }
        };
        if self.chunks[index as usize].replace(payload).is_none() {
            self.received += 1;
        }
        Ok(self.received)
    }

    /// The whole component, once every chunk is in and its sha256 is the
    /// signed one.
    pub fn assemble(self) -> Result<(DeployManifest, Vec<u8>), String> {
        if self.received < self.manifest.chunks {
            return Err(format!(
                "{} of {} chunks received",
                self.received, self.manifest.chunks
            ));
        }
        let component: Vec<u8> = self.chunks.into_iter().flatten().flatten().collect();
        let digest = super::artifacts::digest(&component);
        if digest != self.manifest.sha256 {
            return Err(format!(
                "the component's sha256 is {digest}, not the signed {}: refused as tampered or corrupt",
                self.manifest.sha256
            ));
        }
        Ok((self.manifest, component))
    }
}

/// Start the handler on `tasks`; the returned sender is for the downlink.
pub fn spawn(
    gateway: String,
    trusted: Vec<[u8; 32]>,
    deploy: DeployClient,
    replies: mpsc::Sender<Reply>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> mpsc::Sender<Inbound> {
    let (tx, rx) = mpsc::channel(64);
    let handler = Handler {
        gateway,
        trusted,
        deploy,
        replies,
        transfers: HashMap::new(),
    };
    tasks.spawn(handler.run(rx, cancel));
    tx
}

struct Handler {
    gateway: String,
    trusted: Vec<[u8; 32]>,
    deploy: DeployClient,
    replies: mpsc::Sender<Reply>,
    transfers: HashMap<String, Transfer>,
}

impl Handler {
    async fn run(mut self, mut rx: mpsc::Receiver<Inbound>, cancel: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = cancel.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            self.transfers.retain(|id, t| {
                let stale = t.touched.elapsed() > STALE;
                if stale {
                    tracing::warn!(deployment = %id, "dropping a cloud deployment that stopped receiving chunks");
                }
                !stale
            });
            let Some(parsed) = topics::parse(&message.topic) else {
                continue;
            };
            if parsed.device != self.gateway {
                tracing::warn!(topic = %message.topic, "ignoring a deployment message: deployments come on the gateway's own device");
                continue;
            }
            match parsed.kind {
                Kind::DeployRequest => self.manifest(&message.payload).await,
                Kind::DeployChunk(id, index) => {
                    let id = id.to_string();
                    let index = index.to_string();
                    self.chunk(id, &index, message.payload).await
                }
                _ => {}
            }
        }
    }

    async fn report(&self, progress: DeployProgress) {
        let reply = Reply {
            topic: topics::topic(&self.gateway, &self.gateway, "deploy/res"),
            payload: serde_json::to_vec(&progress).unwrap_or_default(),
        };
        let _ = self.replies.send(reply).await;
    }

    async fn fail(&self, id: Option<String>, error: String) {
        tracing::warn!(
            deployment = id.as_deref().unwrap_or("?"),
            "cloud deployment refused: {error}"
        );
        self.report(DeployProgress {
            id,
            stage: "failed".into(),
            error: Some(error),
            ..DeployProgress::default()
        })
        .await;
    }

    async fn manifest(&mut self, payload: &[u8]) {
        let manifest = match check_manifest(&self.trusted, payload) {
            Ok(m) => m,
            Err((id, error)) => return self.fail(id, error).await,
        };
        tracing::info!(deployment = %manifest.id, app = %manifest.app, bytes = manifest.size, "cloud deployment accepted; receiving");
        let (id, chunks) = (manifest.id.clone(), manifest.chunks);
        self.transfers.insert(id.clone(), Transfer::new(manifest));
        self.report(DeployProgress {
            id: Some(id),
            stage: "receiving".into(),
            chunks,
            ..DeployProgress::default()
        })
        .await;
    }

    async fn chunk(&mut self, id: String, index: &str, payload: Vec<u8>) {
        let Some(transfer) = self.transfers.get_mut(&id) else {
            // Unknown or already refused: nothing to do but say so.
            return self
                .fail(
                    Some(id.clone()),
                    format!("chunk {index} of an unknown deployment {id}"),
                )
                .await;
        };
        let received = match transfer.accept(index, payload) {
            Ok(received) => received,
            Err(error) => {
                self.transfers.remove(&id);
                return self.fail(Some(id), error).await;
            }
        };
        let chunks = transfer.manifest.chunks;
        if received < chunks {
            // Progress at every tenth of the way.
            if received % (chunks / 10).max(1) == 0 {
                self.report(DeployProgress {
                    id: Some(id),
                    stage: "receiving".into(),
                    received,
                    chunks,
                    ..DeployProgress::default()
                })
                .await;
            }
            return;
        }
        let Some(transfer) = self.transfers.remove(&id) else {
            return;
        };
        let (manifest, component) = match transfer.assemble() {
            Ok(done) => done,
            Err(error) => return self.fail(Some(id), error).await,
        };
        let request = DeployRequest {
            app: manifest.app,
            component,
            model: manifest.model,
            config: manifest.config,
            spec: None,
            source: "cloud".into(),
        };
        match self.deploy.deploy(request).await {
            Ok(message) => {
                self.report(DeployProgress {
                    id: Some(id),
                    stage: "deployed".into(),
                    received,
                    chunks,
                    message: Some(message),
                    ..DeployProgress::default()
                })
                .await
            }
            Err(error) => self.fail(Some(id), error.to_string()).await,
        }
    }
}
