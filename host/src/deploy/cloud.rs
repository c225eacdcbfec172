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

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DeployClient, DeployRequest, MAX_ARTIFACT_BYTES, registry, signing};
use crate::config::{TrustedKey, key_id};
use crate::model::check_name;
use crate::store::Database;
use crate::wire::protocol::{
    DEPLOY_FORMAT, DeployManifest, DeployProgress, DeployTarget, KeyRotation, RollbackOrder,
    RotatedKey,
};
use crate::wire::selector::Selector;
use crate::wire::topics;
use crate::wire::topics::Kind;
use crate::wire::{Inbound, Reply};

/// The largest chunk taken.
pub const MAX_CHUNK_BYTES: u64 = 1 << 20;

/// The most chunks a deployment may come in (as a content transfer).
pub use crate::content::transfer::MAX_CHUNKS;

/// A transfer that stops receiving chunks for this long is dropped.
const STALE: Duration = Duration::from_secs(600);

/// What a manifest is checked against: who this gateway is, the keys it
/// trusts and how many must sign.
#[derive(Debug, Clone)]
pub struct Trust {
    pub gateway: String,
    pub labels: BTreeMap<String, String>,
    pub keys: Vec<TrustedKey>,
    pub threshold: usize,
    /// `[allow]`: what a deployment may grant at most.
    pub allow: crate::grants::Grants,
}

impl Trust {
    /// The trust in force: gateway.toml's keys, or the set a signed
    /// rotation put in their place, unless gateway.toml's keys changed
    /// since (the owner's edit of the file wins, and the rotation is
    /// forgotten). Also the digest of gateway.toml's keys, which a
    /// rotation records.
    pub fn load(
        config: &crate::config::Config,
        conn: &rusqlite::Connection,
    ) -> anyhow::Result<(Trust, String)> {
        let base = keys_digest(&config.deploy.trusted_keys, config.deploy.threshold);
        let mut trust = Trust {
            gateway: config.gateway_id.clone(),
            labels: config.labels.clone(),
            keys: config.deploy.trusted_keys.clone(),
            threshold: config.deploy.threshold,
            allow: config.allow.clone(),
        };
        match registry::key_set(conn)? {
            Some(set) if set.base == base => {
                trust.keys = trusted_keys(&set.keys)
                    .map_err(|e| anyhow::anyhow!("the rotated key set in the registry: {e}"))?;
                trust.threshold = set.threshold;
                tracing::info!(
                    "trusted deployment keys: the rotated set {} ({} key(s), {} to sign)",
                    set.version,
                    trust.keys.len(),
                    trust.threshold
                );
            }
            Some(set) => {
                tracing::warn!(
                    "gateway.toml's trusted keys changed since key rotation {}: the file's keys are in force, the rotation is forgotten",
                    set.version
                );
                registry::drop_key_set(conn)?;
            }
            None => {}
        }
        Ok((trust, base))
    }

    /// Whether a signed message for `target`, expiring at `expires`, is for
    /// this gateway and still valid at `now`.
    fn check_target(&self, target: &DeployTarget, expires: u64, now: u64) -> Result<(), String> {
        match target {
            DeployTarget::Gateway(gateway) if *gateway != self.gateway => {
                return Err(format!(
                    "the manifest is for gateway {gateway}, not this one ({})",
                    self.gateway
                ));
            }
            DeployTarget::Gateway(_) => {}
            DeployTarget::Selector(text) => {
                if !Selector::parse(text)?.matches(&self.labels) {
                    let labels: Vec<String> = self
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    return Err(format!(
                        "the manifest is for gateways matching {text}, and this one's labels ({}) do not",
                        if labels.is_empty() {
                            "none".to_string()
                        } else {
                            labels.join(",")
                        }
                    ));
                }
            }
        }
        if now > expires {
            return Err(format!(
                "the manifest expired at {}",
                signing::format_time(expires)
            ));
        }
        Ok(())
    }
}

/// The digest of a set of trusted keys and its threshold.
fn keys_digest(keys: &[TrustedKey], threshold: usize) -> String {
    use sha2::{Digest as _, Sha256};
    let text: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{:?}", hex::encode(k.public), k.expires))
        .collect();
    hex::encode(Sha256::digest(
        format!("{};{threshold}", text.join(",")).as_bytes(),
    ))
}

/// The most keys a rotation may trust.
pub const MAX_ROTATED_KEYS: usize = 16;

/// A rotation's keys as trusted keys; refuses bad hex and duplicates.
fn trusted_keys(keys: &[RotatedKey]) -> Result<Vec<TrustedKey>, String> {
    let mut out: Vec<TrustedKey> = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let public = hex::decode(key.public.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("keys[{i}] is not a hex ed25519 public key"))?;
        let id = key_id(&public);
        if out.iter().any(|k| k.id == id) {
            return Err(format!("key {id} is listed twice"));
        }
        out.push(TrustedKey {
            id,
            public,
            expires: key.expires,
        });
    }
    Ok(out)
}

/// The `id` of a message refused before it could be read whole, if it has
/// a valid one, so that the refusal can name it.
fn readable_id(message: &serde_json::Value) -> Option<String> {
    let id = message.get("id")?.as_str()?;
    check_name(id).is_ok().then(|| id.to_string())
}

/// Read a `deploy/keys` payload and check it at `now` against the trust in
/// force: format, id, target, expiry, the new keys and threshold, and
/// enough signatures by the keys in force. (Replays are the registry's to
/// refuse.) The new keys, or the id if one could be read and why not.
pub fn check_rotation(
    trust: &Trust,
    payload: &[u8],
    now: u64,
) -> Result<(KeyRotation, Vec<TrustedKey>), (Option<String>, String)> {
    let rotation: KeyRotation = serde_json::from_slice(payload).map_err(|e| {
        let id = serde_json::from_slice(payload)
            .ok()
            .and_then(|v| readable_id(&v));
        (id, format!("malformed key rotation: {e}"))
    })?;
    check_name(&rotation.id).map_err(|m| (None, format!("rotation id: {m}")))?;
    let id = Some(rotation.id.clone());
    if rotation.format != DEPLOY_FORMAT {
        return Err((
            id,
            format!(
                "format {} is not one this gateway takes ({DEPLOY_FORMAT})",
                rotation.format
            ),
        ));
    }
    if rotation.version == 0 || i64::try_from(rotation.version).is_err() {
        return Err((
            id,
            format!("version {} is not between 1 and 2^63 - 1", rotation.version),
        ));
    }
    if rotation.keys.is_empty() || rotation.keys.len() > MAX_ROTATED_KEYS {
        return Err((id, format!("a key set has 1 to {MAX_ROTATED_KEYS} keys")));
    }
    let keys = trusted_keys(&rotation.keys).map_err(|e| (id.clone(), e))?;
    if rotation.threshold == 0 || rotation.threshold > keys.len() {
        return Err((
            id,
            format!(
                "{} signatures cannot be required of {} key(s)",
                rotation.threshold,
                keys.len()
            ),
        ));
    }
    trust
        .check_target(&rotation.target, rotation.expires, now)
        .map_err(|e| (id.clone(), e))?;
    signing::verify(&trust.keys, trust.threshold, &rotation, now).map_err(|e| (id, e))?;
    Ok((rotation, keys))
}

/// Read a `deploy/rollback` payload and check it at `now`: format, names,
/// the digest's shape, target, expiry and enough signatures by trusted keys.
/// On refusal: the id, if one could be read, and why.
pub fn check_rollback(
    trust: &Trust,
    payload: &[u8],
    now: u64,
) -> Result<RollbackOrder, (Option<String>, String)> {
    let order: RollbackOrder = serde_json::from_slice(payload).map_err(|e| {
        let id = serde_json::from_slice(payload)
            .ok()
            .and_then(|v| readable_id(&v));
        (id, format!("malformed rollback order: {e}"))
    })?;
    check_name(&order.id).map_err(|m| (None, format!("rollback id: {m}")))?;
    let id = Some(order.id.clone());
    if order.format != DEPLOY_FORMAT {
        return Err((
            id,
            format!(
                "format {} is not one this gateway takes ({DEPLOY_FORMAT})",
                order.format
            ),
        ));
    }
    check_name(&order.app).map_err(|m| (id.clone(), m))?;
    if order.sha256.len() != 64 || !order.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((id, "sha256 is not 64 hex digits".into()));
    }
    trust
        .check_target(&order.target, order.expires, now)
        .map_err(|e| (id.clone(), e))?;
    signing::verify(&trust.keys, trust.threshold, &order, now).map_err(|e| (id, e))?;
    Ok(order)
}

/// Read a `deploy/req` payload and check it at `now` (unix seconds): the
/// format, names, sizes that add up, the target, the expiry, and enough
/// signatures by trusted keys. (Whether its id or version was taken before
/// is the registry's to say.) On refusal: the id, if one could be read,
/// and why.
pub fn check_manifest(
    trust: &Trust,
    payload: &[u8],
    now: u64,
) -> Result<DeployManifest, (Option<String>, String)> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| (None, format!("malformed deployment request: {e}")))?;
    let id = readable_id(&value);
    if value.get("format").is_none() && value.get("signature").is_some() {
        return Err((
            id,
            "a wasmgate-deploy-v1 manifest (one signature; no version, target or expiry), which this gateway no longer takes: sign it again with this wasmgate's `wasmgate cloud deploy` (format 2)".into(),
        ));
    }
    let manifest: DeployManifest = serde_json::from_value(value)
        .map_err(|e| (id.clone(), format!("malformed deployment request: {e}")))?;
    if manifest.format != DEPLOY_FORMAT {
        return Err((
            id,
            format!(
                "manifest format {} is not one this gateway takes ({DEPLOY_FORMAT})",
                manifest.format
            ),
        ));
    }
    if let Err(m) = check_name(&manifest.id) {
        return Err((None, format!("deployment id: {m}")));
    }
    let id = Some(manifest.id.clone());
    check_name(&manifest.app).map_err(|m| (id.clone(), m))?;
    if manifest.version == 0 || i64::try_from(manifest.version).is_err() {
        return Err((
            id,
            format!("version {} is not between 1 and 2^63 - 1", manifest.version),
        ));
    }
    // At most MAX_CHUNKS chunks: the chunking is not signed, and 67 million
    // one-byte chunks would cost as many messages and their bookkeeping.
    // (For the largest component that is chunks of at least 1 KiB.)
    let sized = manifest.size > 0
        && manifest.size <= MAX_ARTIFACT_BYTES as u64
        && (1..=MAX_CHUNK_BYTES).contains(&manifest.chunk_size)
        && manifest.chunks == manifest.size.div_ceil(manifest.chunk_size)
        && manifest.chunks <= MAX_CHUNKS;
    if !sized {
        return Err((
            id,
            format!(
                "size {} in {} chunks of {} bytes does not add up (at most {} MiB, in at most {MAX_CHUNKS} chunks of at most {} KiB)",
                manifest.size,
                manifest.chunks,
                manifest.chunk_size,
                MAX_ARTIFACT_BYTES >> 20,
                MAX_CHUNK_BYTES >> 10
            ),
        ));
    }
    trust
        .check_target(&manifest.target, manifest.expires, now)
        .map_err(|e| (id.clone(), e))?;
    signing::verify(&trust.keys, trust.threshold, &manifest, now).map_err(|e| (id.clone(), e))?;
    // What it grants, signed as it is, must still lie within [allow]: only
    // gateway.toml widens what apps may reach.
    if let Some(grants) = &manifest.grants {
        grants
            .check(true)
            .and_then(|()| grants.check_within(&trust.allow))
            .map_err(|(field, message)| (id, format!("grants.{field}: {message}")))?;
    }
    Ok(manifest)
}

/// Unix seconds now (the wall clock: expiry is a date).
fn unix_now() -> u64 {
    crate::value::now_ns() / 1_000_000_000
}

/// A deployment being received: its checked manifest and the chunks so far.
/// Memory follows what has arrived, not what was announced: the chunking is
/// not signed, so an announced million chunks must cost nothing until they
/// come.
pub struct Transfer {
    pub manifest: DeployManifest,
    chunks: std::collections::BTreeMap<u64, Vec<u8>>,
    received: u64,
    touched: Instant,
}

impl Transfer {
    /// Start receiving what a checked manifest announced.
    pub fn new(manifest: DeployManifest) -> Transfer {
        Transfer {
            chunks: std::collections::BTreeMap::new(),
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
        if self.chunks.insert(index, payload).is_none() {
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
        let component: Vec<u8> = self.chunks.into_values().flatten().collect();
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
    trust: Trust,
    base: String,
    db: Database,
    deploy: DeployClient,
    replies: mpsc::Sender<Reply>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> mpsc::Sender<Inbound> {
    let (tx, rx) = mpsc::channel(64);
    let handler = Handler {
        trust,
        base,
        db,
        deploy,
        replies,
        transfers: HashMap::new(),
    };
    tasks.spawn(handler.run(rx, cancel));
    tx
}

struct Handler {
    trust: Trust,
    /// The digest of gateway.toml's keys, which a rotation records.
    base: String,
    /// For the registry's record of the deployments taken.
    db: Database,
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
            if parsed.device != self.trust.gateway {
                tracing::warn!(topic = %message.topic, "ignoring a deployment message: deployments come on the gateway's own device");
                continue;
            }
            match parsed.kind {
                Kind::DeployRequest => self.manifest(&message.payload).await,
                Kind::DeployKeys => self.rotation(&message.payload).await,
                Kind::DeployRollback => self.rollback(&message.payload).await,
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
            topic: topics::topic(&self.trust.gateway, &self.trust.gateway, "deploy/res"),
            payload: serde_json::to_vec(&progress).unwrap_or_default(),
            correlation: None,
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
        let manifest = match check_manifest(&self.trust, payload, unix_now()) {
            Ok(m) => m,
            Err((id, error)) => return self.fail(id, error).await,
        };
        // Taken for good before a chunk is: a replay of this id, or of any
        // version not above it, is refused from now on.
        let accepted = self
            .db
            .open()
            .map_err(|e| registry::Replay::Registry(e.to_string()))
            .and_then(|mut conn| {
                registry::accept_deployment(
                    &mut conn,
                    &manifest.id,
                    &manifest.app,
                    manifest.version,
                )
            });
        let taken = match accepted {
            Ok(taken) => taken,
            Err(refusal) => return self.fail(Some(manifest.id), refusal.to_string()).await,
        };
        let (id, chunks) = (manifest.id.clone(), manifest.chunks);
        // Offered again while it is being received (the sender heard
        // nothing for a while): say how far it is, and keep what came.
        if let Some(transfer) = self.transfers.get(&id) {
            let received = transfer.received;
            return self.receiving(id, received, chunks).await;
        }
        match taken {
            registry::Taken::New => {
                tracing::info!(deployment = %id, app = %manifest.app, bytes = manifest.size, "cloud deployment accepted; receiving")
            }
            registry::Taken::Resumed => {
                tracing::info!(deployment = %id, app = %manifest.app, bytes = manifest.size, "cloud deployment offered again after it was cut off; receiving it anew")
            }
        }
        self.transfers.insert(id.clone(), Transfer::new(manifest));
        self.receiving(id, 0, chunks).await;
    }

    /// Say how far the receive of deployment `id` is.
    async fn receiving(&self, id: String, received: u64, chunks: u64) {
        self.report(DeployProgress {
            id: Some(id),
            stage: "receiving".into(),
            received,
            chunks,
            ..DeployProgress::default()
        })
        .await;
    }

    /// A taken deployment failed after its manifest: recorded as ended (it
    /// is never taken again), then refused.
    async fn fail_taken(&self, id: String, error: String) {
        self.end(&id, "failed");
        self.fail(Some(id), error).await;
    }

    /// Record that deployment `id` ended, so it is never taken again.
    fn end(&self, id: &str, outcome: &str) {
        let ended = self
            .db
            .open()
            .and_then(|conn| registry::end_deployment(&conn, id, outcome));
        if let Err(e) = ended {
            tracing::error!(deployment = id, "cannot record the deployment's end: {e}");
        }
    }

    /// A signed key rotation: checked, recorded, and in force at once.
    async fn rotation(&mut self, payload: &[u8]) {
        let (rotation, keys) = match check_rotation(&self.trust, payload, unix_now()) {
            Ok(checked) => checked,
            Err((id, error)) => return self.fail(id, error).await,
        };
        let set = registry::KeySet {
            version: rotation.version,
            base: self.base.clone(),
            keys: rotation.keys.clone(),
            threshold: rotation.threshold,
        };
        let recorded = self
            .db
            .open()
            .map_err(|e| registry::Replay::Registry(e.to_string()))
            .and_then(|mut conn| registry::rotate_keys(&mut conn, &rotation.id, &set));
        if let Err(refusal) = recorded {
            return self.fail(Some(rotation.id), refusal.to_string()).await;
        }
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        let message = format!(
            "trusted keys rotated to set {}: {} ({} to sign)",
            rotation.version,
            ids.join(", "),
            rotation.threshold
        );
        tracing::warn!(rotation = %rotation.id, "{message}");
        self.trust.keys = keys;
        self.trust.threshold = rotation.threshold;
        self.report(DeployProgress {
            id: Some(rotation.id),
            stage: "deployed".into(),
            message: Some(message),
            ..DeployProgress::default()
        })
        .await;
    }

    /// A signed rollback order: the app goes back to its previous version
    /// if it runs the named component, and nothing happens if it does not.
    async fn rollback(&mut self, payload: &[u8]) {
        let order = match check_rollback(&self.trust, payload, unix_now()) {
            Ok(order) => order,
            Err((id, error)) => return self.fail(id, error).await,
        };
        tracing::info!(rollback = %order.id, app = %order.app, "cloud rollback order taken; rolling back");
        match self
            .deploy
            .rollback_from(order.app.clone(), order.sha256.clone())
            .await
        {
            Ok(message) => {
                tracing::warn!(rollback = %order.id, app = %order.app, "cloud rollback order: {message}");
                self.report(DeployProgress {
                    id: Some(order.id),
                    stage: "rolled-back".into(),
                    message: Some(message),
                    ..DeployProgress::default()
                })
                .await
            }
            Err(error) => self.fail(Some(order.id), error.to_string()).await,
        }
    }

    async fn chunk(&mut self, id: String, index: &str, payload: Vec<u8>) {
        let Some(transfer) = self.transfers.get_mut(&id) else {
            // Unknown, already refused, or cut off by a restart: say so,
            // as `unknown` (not `failed`: the sender may offer it again).
            return self
                .report(DeployProgress {
                    id: Some(id.clone()),
                    stage: "unknown".into(),
                    error: Some(format!("chunk {index} of an unknown deployment {id}")),
                    ..DeployProgress::default()
                })
                .await;
        };
        let received = match transfer.accept(index, payload) {
            Ok(received) => received,
            Err(error) => {
                self.transfers.remove(&id);
                return self.fail_taken(id, error).await;
            }
        };
        let chunks = transfer.manifest.chunks;
        if received < chunks {
            // Progress at every tenth of the way.
            if received % (chunks / 10).max(1) == 0 {
                self.receiving(id, received, chunks).await;
            }
            return;
        }
        let Some(transfer) = self.transfers.remove(&id) else {
            return;
        };
        let (manifest, component) = match transfer.assemble() {
            Ok(done) => done,
            Err(error) => return self.fail_taken(id, error).await,
        };
        let request = DeployRequest {
            app: manifest.app,
            component,
            model: manifest.model,
            config: manifest.config,
            grants: manifest.grants,
            spec: None,
            source: "cloud".into(),
        };
        match self.deploy.deploy(request).await {
            Ok(message) => {
                self.end(&id, "deployed");
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
            Err(error) => self.fail_taken(id, error.to_string()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> Trust {
        Trust {
            gateway: "gw".into(),
            labels: BTreeMap::new(),
            keys: Vec::new(),
            threshold: 1,
            allow: Default::default(),
        }
    }

    fn manifest(size: u64, chunk_size: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format": DEPLOY_FORMAT, "id": "d1", "app": "a", "version": 1,
            "target": {"gateway": "gw"}, "expires": 2_000_000_000u64,
            "size": size, "sha256": "00", "chunk_size": chunk_size,
            "chunks": size.div_ceil(chunk_size), "signatures": []
        }))
        .expect("json")
    }

    #[test]
    fn a_rollback_order_is_taken_only_signed_by_a_trusted_key_for_this_gateway() {
        use ring::signature::KeyPair as _;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).expect("key");
        let public: [u8; 32] = pair.public_key().as_ref().try_into().expect("32 bytes");
        let mut trust = trust();
        trust.labels.insert("ring".into(), "canary".into());
        trust.keys.push(TrustedKey {
            id: key_id(&public),
            public,
            expires: None,
        });
        let order = |target: DeployTarget, sha256: &str, signed: bool| {
            let mut order = RollbackOrder {
                format: DEPLOY_FORMAT,
                id: "r1".into(),
                app: "a".into(),
                sha256: sha256.into(),
                target,
                expires: 2_000_000_000,
                signatures: Vec::new(),
            };
            if signed {
                order.signatures.push(signing::sign(&pair, &order));
            }
            serde_json::to_vec(&order).expect("json")
        };
        let now = 1_900_000_000;
        let good = "ab".repeat(32);
        let canary = DeployTarget::Selector("ring=canary".into());
        assert!(check_rollback(&trust, &order(canary.clone(), &good, true), now).is_ok());
        let refused =
            |payload: Vec<u8>| check_rollback(&trust, &payload, now).expect_err("refused");
        let (id, why) = refused(order(canary.clone(), &good, false));
        assert_eq!(id.as_deref(), Some("r1"));
        assert!(why.contains("signature"), "{why}");
        let (_, why) = refused(order(DeployTarget::Gateway("other".into()), &good, true));
        assert!(why.contains("not this one"), "{why}");
        let (_, why) = refused(order(
            DeployTarget::Selector("ring=stable".into()),
            &good,
            true,
        ));
        assert!(why.contains("do not"), "{why}");
        let (_, why) = refused(order(canary, "abc", true));
        assert!(why.contains("64 hex"), "{why}");
        let (id, why) = refused(b"{\"id\": \"r2\", \"format\": 2}".to_vec());
        assert_eq!(id.as_deref(), Some("r2"));
        assert!(why.contains("malformed"), "{why}");
    }

    #[test]
    fn tiny_chunks_are_refused_before_anything_is_allocated() {
        let (id, error) = check_manifest(&trust(), &manifest(64 << 20, 1), 0).unwrap_err();
        assert_eq!(id.as_deref(), Some("d1"));
        assert!(error.contains("in at most 65536 chunks"), "{error}");
        let (_, error) = check_manifest(&trust(), &manifest(64 << 20, 1023), 0).unwrap_err();
        assert!(error.contains("does not add up"), "{error}");
        // 1 KiB chunks of the largest component, and small chunks of a small
        // one, pass the sizes (and stop at the keys).
        for (size, chunk) in [(64 << 20, 1024), (100, 3)] {
            let (_, error) = check_manifest(&trust(), &manifest(size, chunk), 0).unwrap_err();
            assert!(error.contains("trusts no keys"), "past the sizes: {error}");
        }
    }

    #[test]
    fn a_transfer_holds_only_what_arrived() {
        let m: DeployManifest =
            serde_json::from_slice(&manifest(64 << 20, MAX_CHUNK_BYTES)).expect("manifest");
        let mut transfer = Transfer::new(m);
        assert_eq!(
            transfer.chunks.len(),
            0,
            "nothing held for what was announced"
        );
        transfer
            .accept("3", vec![0; MAX_CHUNK_BYTES as usize])
            .expect("chunk 3");
        assert_eq!(transfer.chunks.len(), 1);
        assert!(transfer.accept("64", vec![0; 10]).is_err(), "past the end");
        assert!(transfer.assemble().unwrap_err().contains("1 of 64 chunks"));
    }
}
