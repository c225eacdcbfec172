//! The gateway's end of content transfers: one task that sends the apps'
//! uploads and receives the cloud's downloads (see [`super::transfer`] for
//! the protocol). It runs with the cloud link, publishes through the link's
//! reply channel (the link stays the only publisher), and keeps each
//! transfer's progress in SQLite, so a restart resumes where the other side
//! is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::transfer::{Ack, InProgress, Incoming, Manifest, Outgoing};
use super::{Progress, TransferRow, Way, store_path};
use crate::config::ContentConfig;
use crate::store::Database;
use crate::wire::topics;
use crate::wire::topics::Kind;
use crate::wire::{Inbound, Reply};

/// How often the service looks at its uploads even when nothing woke it.
const TICK: Duration = Duration::from_millis(50);

/// What the service needs.
pub struct ServiceSpec {
    pub gateway: String,
    pub data_dir: PathBuf,
    pub db: Database,
    pub config: ContentConfig,
    /// Which app speaks for which device.
    pub directory: Arc<dyn crate::registration::Routes>,
    pub replies: mpsc::Sender<Reply>,
    /// Woken when an app queues an upload.
    pub signal: Arc<Notify>,
    /// Counts the chunks of what it resumes.
    pub resumed: Arc<super::Resumed>,
}

/// Start the service on `tasks`; the returned sender is for the downlink.
pub fn spawn(
    spec: ServiceSpec,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> mpsc::Sender<Inbound> {
    let (tx, rx) = mpsc::channel(256);
    tasks.spawn(async move {
        match Service::new(spec) {
            Ok(service) => service.run(rx, cancel).await,
            Err(e) => tracing::error!("content transfers are off: {e}"),
        }
    });
    tx
}

struct Upload {
    row: TransferRow,
    sender: Outgoing,
}

struct Service {
    spec: ServiceSpec,
    db: rusqlite::Connection,
    uploads: HashMap<String, Upload>,
    downloads: HashMap<String, (TransferRow, Incoming)>,
    /// When each download in hand last took a chunk (or was taken up), on
    /// tokio's clock: one idle for `download_idle` fails.
    heard: HashMap<String, tokio::time::Instant>,
    /// The pace of uploads (`upload_kib_per_s`), if any.
    pace: Option<crate::rate::SharedLimit>,
    /// Refusals are answered one by one but logged at this rate at most:
    /// a flood of manifests must not become a flood of log lines.
    refusal_log: crate::rate::SharedLimit,
}

impl Service {
    fn new(spec: ServiceSpec) -> anyhow::Result<Service> {
        std::fs::create_dir_all(super::store_dir(&spec.data_dir))?;
        let db = spec.db.open()?;
        let pace = super::transfer::pace(spec.config.upload_bytes_per_s, spec.config.chunk_bytes);
        Ok(Service {
            db,
            spec,
            uploads: HashMap::new(),
            downloads: HashMap::new(),
            heard: HashMap::new(),
            pace,
            refusal_log: crate::rate::refusal_warnings(),
        })
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Inbound>, cancel: CancellationToken) {
        let signal = self.spec.signal.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.load_uploads();
        self.load_downloads();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                message = inbox.recv() => match message {
                    Some(message) => self.handle(message).await,
                    None => return,
                },
                _ = signal.notified() => self.load_uploads(),
                _ = tick.tick() => self.expire_idle_downloads().await,
            }
            self.pump().await;
        }
    }

    async fn publish(&mut self, device: &str, suffix: &str, payload: Vec<u8>) {
        let topic = topics::topic(&self.spec.gateway, device, suffix);
        let _ = self
            .spec
            .replies
            .send(Reply {
                topic,
                payload,
                correlation: None,
            })
            .await;
    }

    /// Pick up uploads that are in the table but not in hand.
    fn load_uploads(&mut self) {
        let rows = super::running(&self.db, Way::Up).unwrap_or_else(|e| {
            tracing::error!("cannot read the uploads: {e}");
            Vec::new()
        });
        let now = Instant::now();
        for row in rows {
            self.uploads
                .entry(row.manifest.id.clone())
                .or_insert_with(|| {
                    if row.have > 0 {
                        self.spec.resumed.add(&row.app, Way::Up, row.have);
                        tracing::info!(transfer = %row.manifest.id, name = %row.manifest.name, "upload resumed at chunk {} of {}", row.have, row.manifest.chunks);
                    }
                    Upload {
                        sender: Outgoing::new(row.manifest.clone(), row.have, now),
                        row,
                    }
                });
        }
    }

    /// Send what the uploads' windows and the pace allow.
    async fn pump(&mut self) {
        let now = Instant::now();
        let mut out = Vec::new();
        for upload in self.uploads.values_mut() {
            let id = &upload.row.manifest.id;
            let source = store_path(&self.spec.data_dir, id, Way::Up);
            while let Some(message) = upload.sender.next_message(now, &source, self.pace.as_ref()) {
                match message {
                    Ok((suffix, payload)) => out.push((
                        upload.row.device.clone(),
                        (format!("content/up/{id}/{suffix}"), payload),
                    )),
                    Err(e) => {
                        tracing::error!(transfer = %id, "cannot read the upload: {e}");
                        break;
                    }
                }
            }
        }
        for (device, (suffix, payload)) in out {
            self.publish(&device, &suffix, payload).await;
        }
    }

    async fn handle(&mut self, message: Inbound) {
        let Some(parsed) = topics::parse(&message.topic) else {
            return;
        };
        let (device, payload) = (parsed.device, &message.payload);
        match parsed.kind {
            Kind::UploadAck(_) => self.upload_ack(device, payload),
            Kind::DownloadManifest(id) => {
                self.download_manifest(device, id.to_string(), payload)
                    .await
            }
            Kind::DownloadChunk(id, index) => self.download_chunk(device, id, index, payload).await,
            _ => {
                tracing::warn!(topic = %message.topic, "the content service takes no message of this kind")
            }
        }
    }

    fn upload_ack(&mut self, device: &str, payload: &[u8]) {
        let ack: Ack = match serde_json::from_slice(payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(device, "ignoring a malformed upload acknowledgement: {e}");
                return;
            }
        };
        let Some(upload) = self
            .uploads
            .get_mut(&ack.id)
            .filter(|u| u.row.device == device)
        else {
            return;
        };
        let id = ack.id.clone();
        let outcome = if let Some(error) = &ack.error {
            Some(Err(error.clone()))
        } else if upload.sender.confirms_done(&ack) {
            Some(Ok(upload.row.manifest.chunks))
        } else {
            if ack.done && self.refusal_log.allow() {
                tracing::warn!(device, transfer = %id, "not believing an upload's \"done\": it claims chunks not yet sent, or not the content's sha256");
            }
            upload.sender.heard(ack.have, Instant::now());
            if let Err(e) = super::set_have(&self.db, &id, Way::Up, upload.sender.have) {
                tracing::warn!(transfer = %id, "cannot record the upload's progress: {e}");
            }
            None
        };
        let Some(outcome) = outcome else {
            return;
        };
        let Some(upload) = self.uploads.remove(&id) else {
            return;
        };
        let m = &upload.row.manifest;
        match &outcome {
            Ok(_) => {
                tracing::info!(app = %upload.row.app, transfer = %id, name = %m.name, bytes = m.size, "upload done: the receiver confirmed its sha256")
            }
            Err(e) => {
                tracing::warn!(app = %upload.row.app, transfer = %id, name = %m.name, "upload failed: {e}")
            }
        }
        if let Err(e) = super::finish(
            &self.db,
            &id,
            Way::Up,
            outcome.as_ref().map(|h| *h).map_err(String::as_str),
        ) {
            tracing::error!(transfer = %id, "cannot record the upload's outcome: {e}");
        }
        let _ = std::fs::remove_file(store_path(&self.spec.data_dir, &id, Way::Up));
    }

    async fn answer(&mut self, device: &str, ack: Ack) {
        let suffix = format!("content/down/{}/ack", ack.id);
        self.publish(
            device,
            &suffix,
            serde_json::to_vec(&ack).unwrap_or_default(),
        )
        .await;
    }

    async fn refuse(&mut self, device: &str, id: String, error: String) {
        if self.refusal_log.allow() {
            tracing::warn!(device, transfer = %id, "download refused: {error}");
        }
        self.answer(
            device,
            Ack {
                id,
                error: Some(error),
                ..Ack::default()
            },
        )
        .await;
    }

    async fn download_manifest(&mut self, device: &str, id: String, payload: &[u8]) {
        if crate::model::check_name(&id).is_err() {
            tracing::warn!(device, "ignoring a download whose id is not a plain name");
            return;
        }
        let manifest: Manifest = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .refuse(device, id, format!("malformed manifest: {e}"))
                    .await;
            }
        };
        if manifest.id != id {
            return self
                .refuse(device, id, "the manifest's id is not the topic's".into())
                .await;
        }
        if let Err(e) = manifest.check(self.spec.config.max_download_bytes) {
            return self.refuse(device, id, e.to_string()).await;
        }
        // Asked again: say where the transfer is.
        let known = super::get(&self.db, &id, Way::Down).unwrap_or(None);
        if let Some(row) = known {
            if row.device != device || row.manifest != manifest {
                return self
                    .refuse(device, id, "another transfer has this id".into())
                    .await;
            }
            let ack = match &row.progress {
                Progress::Done => Ack::done(&row.manifest),
                Progress::Failed(why) => Ack {
                    id,
                    error: Some(why.clone()),
                    ..Ack::default()
                },
                Progress::Running => match self.resume(row) {
                    Ok(have) => Ack {
                        id,
                        have,
                        ..Ack::default()
                    },
                    Err(e) => {
                        return self.refuse(device, id, e).await;
                    }
                },
            };
            return self.answer(device, ack).await;
        }
        if let Err(e) = self.admit(manifest.size) {
            return self.refuse(device, id, e).await;
        }
        let Some(app) = self.spec.directory.owner(device) else {
            return self
                .refuse(
                    device,
                    id,
                    format!(
                        "no app on gateway {} speaks for device {device}",
                        self.spec.gateway
                    ),
                )
                .await;
        };
        let row = TransferRow {
            manifest,
            app,
            device: device.to_string(),
            way: Way::Down,
            have: 0,
            progress: Progress::Running,
        };
        if let Err(e) = super::insert(&self.db, &row) {
            return self
                .refuse(device, id, format!("the gateway could not record it: {e}"))
                .await;
        }
        tracing::info!(app = %row.app, device, transfer = %id, name = %row.manifest.name, bytes = row.manifest.size, "download started");
        match self.resume(row) {
            Ok(have) => {
                self.answer(
                    device,
                    Ack {
                        id,
                        have,
                        ..Ack::default()
                    },
                )
                .await
            }
            Err(e) => self.refuse(device, id, e).await,
        }
    }

    /// Whether a new download of `size` bytes fits next to those in
    /// progress (their count, their announced bytes, the free disk).
    fn admit(&self, size: u64) -> Result<(), String> {
        let rows = super::running(&self.db, Way::Down)
            .map_err(|e| format!("the gateway cannot read its downloads: {e}"))?;
        let in_progress: Vec<InProgress> = rows
            .iter()
            .map(|r| InProgress {
                size: r.manifest.size,
                written: r.manifest.bytes_in(r.have),
            })
            .collect();
        let free = super::transfer::free_bytes(&super::store_dir(&self.spec.data_dir));
        super::transfer::admit(&self.spec.config, &in_progress, size, free)
            .map_err(|e| e.to_string())
    }

    /// At start: take up every download the table says is in progress, so
    /// that each is either continued or expires, and delete files in the
    /// store that no transfer in progress owns (left by a crash between
    /// a transfer's end and its file's removal).
    fn load_downloads(&mut self) {
        let rows = super::running(&self.db, Way::Down).unwrap_or_else(|e| {
            tracing::error!("cannot read the downloads: {e}");
            Vec::new()
        });
        let Ok(uploads) = super::running(&self.db, Way::Up) else {
            return;
        };
        let owned: std::collections::HashSet<PathBuf> = rows
            .iter()
            .map(|r| store_path(&self.spec.data_dir, &r.manifest.id, Way::Down))
            .chain(
                uploads
                    .iter()
                    .map(|r| store_path(&self.spec.data_dir, &r.manifest.id, Way::Up)),
            )
            .collect();
        let store = super::store_dir(&self.spec.data_dir);
        for entry in std::fs::read_dir(&store).into_iter().flatten().flatten() {
            let path = entry.path();
            if !owned.contains(&path) && self.stale(&path) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), "deleted a stale file of a finished transfer")
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), "cannot delete a stale transfer file: {e}")
                    }
                }
            }
        }
        for row in rows {
            let id = row.manifest.id.clone();
            if let Err(e) = self.resume(row) {
                // Failed, so that it no longer counts as in progress.
                tracing::warn!(transfer = %id, "cannot take up the download: {e}");
                if let Err(e) = super::finish(&self.db, &id, Way::Down, Err(&e)) {
                    tracing::error!(transfer = %id, "cannot record the download's outcome: {e}");
                }
            }
        }
    }

    /// Whether a store file that no transfer in progress owned a moment ago
    /// is stale. An app may be queueing an upload right now (its copy is
    /// made before its row is written), so a file is stale only if its
    /// transfer is finished, or if it has no transfer and is older than a
    /// minute.
    fn stale(&self, path: &std::path::Path) -> bool {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let way = match name.rsplit_once('.') {
            Some((_, "up")) => Some(Way::Up),
            Some((_, "down")) => Some(Way::Down),
            _ => None,
        };
        let id = name.rsplit_once('.').map_or(name, |(id, _)| id);
        let row = way.and_then(|way| super::get(&self.db, id, way).ok().flatten());
        match row {
            Some(row) => row.progress != Progress::Running,
            None => path
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(60)),
        }
    }

    /// Fail the downloads that took no chunk for `download_idle`: their
    /// sender went away, and their partial files must not stay.
    async fn expire_idle_downloads(&mut self) {
        let idle = self.spec.config.download_idle;
        let now = tokio::time::Instant::now();
        let expired: Vec<(String, String)> = self
            .heard
            .iter()
            .filter(|(_, heard)| now.duration_since(**heard) >= idle)
            .filter_map(|(id, _)| {
                let (row, _) = self.downloads.get(id)?;
                Some((row.device.clone(), id.clone()))
            })
            .collect();
        for (device, id) in expired {
            let error = format!(
                "expired: no chunk came for {} s (content.download_idle_s)",
                idle.as_secs()
            );
            self.fail_download(&device, &id, error).await;
        }
    }

    /// Hold a running download's receiving end (opening its file again after
    /// a restart); how many chunks it has.
    fn resume(&mut self, row: TransferRow) -> Result<u64, String> {
        if let Some((_, incoming)) = self.downloads.get(&row.manifest.id) {
            return Ok(incoming.have);
        }
        self.heard
            .insert(row.manifest.id.clone(), tokio::time::Instant::now());
        let path = store_path(&self.spec.data_dir, &row.manifest.id, Way::Down);
        let incoming = Incoming::open(row.manifest.clone(), &path, row.have)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let have = incoming.have;
        if have > 0 {
            self.spec.resumed.add(&row.app, Way::Down, have);
            tracing::info!(transfer = %row.manifest.id, name = %row.manifest.name, "download resumed at chunk {have} of {}", row.manifest.chunks);
        }
        self.downloads
            .insert(row.manifest.id.clone(), (row, incoming));
        Ok(have)
    }

    async fn download_chunk(&mut self, device: &str, id: &str, index: &str, payload: &[u8]) {
        if !self.downloads.contains_key(id) {
            // After a restart the manifest may come later: resume now.
            match super::get(&self.db, id, Way::Down) {
                Ok(Some(row)) if row.progress == Progress::Running && row.device == device => {
                    if let Err(e) = self.resume(row) {
                        return self.refuse(device, id.to_string(), e).await;
                    }
                }
                // Unknown, or already finished: the sender's next manifest
                // gets the answer.
                _ => return,
            }
        }
        let Some((_, incoming)) = self.downloads.get_mut(id) else {
            return;
        };
        self.heard
            .insert(id.to_string(), tokio::time::Instant::now());
        match incoming.chunk(index, payload) {
            Err(e) => self.fail_download(device, id, e).await,
            Ok(None) => {}
            Ok(Some(have)) if !incoming.complete() => {
                if let Err(e) = super::set_have(&self.db, id, Way::Down, have) {
                    tracing::warn!(transfer = %id, "cannot record the download's progress: {e}");
                }
                self.answer(
                    device,
                    Ack {
                        id: id.to_string(),
                        have,
                        ..Ack::default()
                    },
                )
                .await;
            }
            Ok(Some(_)) => self.complete_download(device, id).await,
        }
    }

    async fn fail_download(&mut self, device: &str, id: &str, error: String) {
        self.heard.remove(id);
        if let Some((row, incoming)) = self.downloads.remove(id) {
            let _ = std::fs::remove_file(&incoming.path);
            tracing::warn!(app = %row.app, device, transfer = %id, name = %row.manifest.name, "download failed: {error}");
        }
        if let Err(e) = super::finish(&self.db, id, Way::Down, Err(&error)) {
            tracing::error!(transfer = %id, "cannot record the download's outcome: {e}");
        }
        self.answer(
            device,
            Ack {
                id: id.to_string(),
                error: Some(error),
                ..Ack::default()
            },
        )
        .await;
    }

    async fn complete_download(&mut self, device: &str, id: &str) {
        let Some((row, mut incoming)) = self.downloads.remove(id) else {
            return;
        };
        self.heard.remove(id);
        if let Err(e) = incoming.verify() {
            self.downloads.insert(id.to_string(), (row, incoming));
            return self.fail_download(device, id, e.to_string()).await;
        }
        let files_dir = crate::config::app_files_dir(&self.spec.data_dir, &row.app);
        let placed = super::app_dir::place_download(&files_dir, &incoming.path, &row.manifest.name);
        if let Err(e) = placed {
            self.downloads.insert(id.to_string(), (row, incoming));
            return self
                .fail_download(
                    device,
                    id,
                    format!("cannot place the file in the app's directory: {e}"),
                )
                .await;
        }
        tracing::info!(app = %row.app, device, transfer = %id, name = %row.manifest.name, bytes = row.manifest.size, "download done: sha256 checked, in the app's downloads/");
        let chunks = row.manifest.chunks;
        if let Err(e) = super::finish(&self.db, id, Way::Down, Ok(chunks)) {
            tracing::error!(transfer = %id, "cannot record the download's outcome: {e}");
        }
        self.answer(device, Ack::done(&row.manifest)).await;
    }
}
