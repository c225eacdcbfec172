//! The transfer protocol both ends speak, for uploads (gateway → cloud) and
//! downloads (cloud → gateway) alike (see docs/protocol.md, "Content"):
//!
//! - the sender publishes a manifest (id, name, size, sha256, chunk size),
//!   then chunks, at most [`WINDOW`] ahead of what the receiver confirmed;
//! - the receiver writes each chunk at its place in a file and acknowledges
//!   how many chunks it holds from the start (`have`), every `WINDOW / 2`
//!   chunks, on every manifest, and at the end with `done` once the whole
//!   file's sha256 matches the manifest's (or an `error` if it does not);
//! - a sender that hears nothing for [`PROBE`] sends the manifest again and
//!   resumes from the receiver's `have`. That one rule recovers from lost
//!   chunks, a broker restart, and a restart of either end.
//!
//! No I/O here but the receiver's file, so the gateway and the operator CLI
//! share it and it is tested on its own.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Chunks a sender may have out beyond what the receiver confirmed.
pub const WINDOW: u64 = 16;

/// A sender that hears nothing for this long asks again.
pub const PROBE: Duration = Duration::from_secs(2);

/// The largest chunk either end takes.
pub const MAX_CHUNK_BYTES: u64 = 1 << 20;

/// The most chunks a transfer (or a deployment, chunked the same way) may
/// come in: for 64 MiB, chunks of at least 1 KiB.
pub const MAX_CHUNKS: u64 = 65_536;

pub use crate::config::DEFAULT_CHUNK_BYTES;

/// What is coming: sent first, and again whenever the sender asks where the
/// receiver is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Names the transfer (1 to 64 characters from A-Z a-z 0-9 _ - .).
    pub id: String,
    /// The file's name (same characters).
    pub name: String,
    pub size: u64,
    /// sha256 of the whole content, hex.
    pub sha256: String,
    pub chunk_size: u64,
    pub chunks: u64,
}

impl Manifest {
    /// A manifest for `size` bytes with this digest, in chunks of
    /// `chunk_size`, or larger ones where that would make more than
    /// [`MAX_CHUNKS`].
    pub fn new(id: String, name: String, size: u64, sha256: String, chunk_size: u64) -> Manifest {
        let chunk_size = chunk_size.max(size.div_ceil(MAX_CHUNKS)).max(1);
        Manifest {
            chunks: size.div_ceil(chunk_size).max(1),
            id,
            name,
            size,
            sha256,
            chunk_size,
        }
    }

    /// Check a manifest that came from the other side against `max_bytes`.
    pub fn check(&self, max_bytes: u64) -> Result<(), TransferError> {
        crate::model::check_name(&self.id).map_err(TransferError::Id)?;
        crate::model::check_name(&self.name).map_err(TransferError::Name)?;
        if self.size > max_bytes {
            return Err(TransferError::TooLarge {
                size: self.size,
                max: max_bytes,
            });
        }
        // At most MAX_CHUNKS chunks: what a transfer keeps per chunk (its
        // place among those that came out of order) is then bounded too.
        if !(1..=MAX_CHUNK_BYTES).contains(&self.chunk_size)
            || self.chunks != self.size.div_ceil(self.chunk_size).max(1)
            || self.chunks > MAX_CHUNKS
        {
            return Err(TransferError::Sizes {
                size: self.size,
                chunks: self.chunks,
                chunk_size: self.chunk_size,
            });
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TransferError::Sha256Format);
        }
        Ok(())
    }

    /// How many bytes chunk `index` holds.
    pub fn chunk_len(&self, index: u64) -> u64 {
        chunk_len(self.size, self.chunk_size, self.chunks, index)
    }

    /// Bytes in the first `have` chunks.
    pub fn bytes_in(&self, have: u64) -> u64 {
        (have * self.chunk_size).min(self.size)
    }
}

/// How many bytes chunk `index` of `size` bytes in `chunks` chunks of
/// `chunk_size` holds: `chunk_size`, but the last one the rest. (Deployments
/// are chunked the same way.)
pub fn chunk_len(size: u64, chunk_size: u64, chunks: u64, index: u64) -> u64 {
    if index + 1 == chunks {
        size - chunk_size * index
    } else {
        chunk_size
    }
}

/// The receiver's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub id: String,
    /// Chunks held from the start.
    pub have: u64,
    /// The whole content arrived and its sha256 matched.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
    /// With `done`: the sha256 the receiver computed of what it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The transfer is refused or corrupt; the sender stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Ack {
    /// The whole content arrived and its sha256 is the manifest's.
    pub fn done(manifest: &Manifest) -> Ack {
        Ack {
            id: manifest.id.clone(),
            have: manifest.chunks,
            done: true,
            sha256: Some(manifest.sha256.to_ascii_lowercase()),
            error: None,
        }
    }
}

/// What a sender does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Manifest,
    Chunk(u64),
}

/// The sending end of one transfer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub manifest: Manifest,
    /// Chunks the receiver confirmed.
    pub have: u64,
    next: u64,
    /// Chunks sent from the start (the highest index sent, plus one): a
    /// receiver cannot confirm more than this, so an acknowledgement from
    /// someone who never received the chunks is not believed.
    sent_through: u64,
    heard: Instant,
    asked: Option<Instant>,
}

impl Outgoing {
    pub fn new(manifest: Manifest, have: u64, now: Instant) -> Outgoing {
        Outgoing {
            manifest,
            have,
            next: have,
            sent_through: have,
            heard: now,
            asked: None,
        }
    }

    /// The receiver said how far it is; what it claims beyond the chunks
    /// sent so far is not believed.
    ///
    /// Its latest word counts, even when it is behind an earlier one: an
    /// acknowledgement that someone else on the broker forged, or one the
    /// broker redelivered after a restart, may have claimed chunks the
    /// receiver lost with the broker. Were `have` only to grow, those
    /// chunks would never go again and the transfer would wait for ever;
    /// going back costs at most a window of chunks sent twice.
    pub fn heard(&mut self, have: u64, now: Instant) {
        self.heard = now;
        let have = have.min(self.sent_through);
        if have < self.have {
            self.next = have;
        }
        self.have = have;
        self.next = self.next.max(self.have);
    }

    /// Whether `ack` is a believable "done": it claims every chunk, with
    /// the content's sha256, and every chunk was sent.
    pub fn confirms_done(&self, ack: &Ack) -> bool {
        ack.done
            && ack.have >= self.manifest.chunks
            && self.sent_through >= self.manifest.chunks
            && ack
                .sha256
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(&self.manifest.sha256))
    }

    /// The next message to publish, within the window and `pace`: its topic
    /// suffix under `.../{id}/` (`manifest` or `chunk/{index}`) and its
    /// payload, the chunk read from `source`.
    pub fn next_message(
        &mut self,
        now: Instant,
        source: &Path,
        pace: Option<&crate::rate::SharedLimit>,
    ) -> Option<std::io::Result<(String, Vec<u8>)>> {
        let step = self.next_step(now)?;
        // Chunks go at the pace; a manifest is a few hundred bytes.
        if let (Some(pace), Step::Chunk(i)) = (pace, step)
            && !pace.allow_n(self.manifest.chunk_len(i))
        {
            return None;
        }
        self.took(step, now);
        let message = match step {
            Step::Manifest => serde_json::to_vec(&self.manifest)
                .map(|json| ("manifest".to_string(), json))
                .map_err(std::io::Error::other),
            Step::Chunk(i) => {
                read_chunk(source, &self.manifest, i).map(|bytes| (format!("chunk/{i}"), bytes))
            }
        };
        Some(message)
    }

    /// What to send now, if anything: the manifest first and whenever the
    /// receiver has been silent for [`PROBE`] (then chunks again from its
    /// `have`), otherwise the next chunk within the window.
    pub fn step(&mut self, now: Instant) -> Option<Step> {
        let step = self.next_step(now)?;
        self.took(step, now);
        Some(step)
    }

    /// What [`step`](Self::step) would send now, without taking it.
    pub fn next_step(&self, now: Instant) -> Option<Step> {
        let silent = now.duration_since(self.heard) >= PROBE;
        let due = self.asked.is_none_or(|at| now.duration_since(at) >= PROBE);
        if self.asked.is_none() || (silent && due) {
            return Some(Step::Manifest);
        }
        (self.next < self.manifest.chunks && self.next < self.have + WINDOW)
            .then_some(Step::Chunk(self.next))
    }

    /// `step` was sent.
    fn took(&mut self, step: Step, now: Instant) {
        match step {
            Step::Manifest => {
                self.asked = Some(now);
                self.next = self.have;
            }
            Step::Chunk(index) => {
                self.next = index + 1;
                self.sent_through = self.sent_through.max(index + 1);
            }
        }
    }
}

/// The receiving end of one transfer: the content goes into `path` as it
/// arrives.
#[derive(Debug)]
pub struct Incoming {
    pub manifest: Manifest,
    pub path: PathBuf,
    /// Chunks held from the start.
    pub have: u64,
    /// Chunks held beyond `have` (they came out of order).
    ahead: std::collections::BTreeSet<u64>,
    file: std::fs::File,
}

impl Incoming {
    /// Start (`have` 0) or resume a transfer into `path`.
    pub fn open(manifest: Manifest, path: &Path, have: u64) -> std::io::Result<Incoming> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(have == 0)
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Incoming {
            have: have.min(manifest.chunks),
            manifest,
            path: path.to_path_buf(),
            ahead: Default::default(),
            file,
        })
    }

    /// Take chunk `index` (as it came in the topic). `Ok(Some(have))` when
    /// it is time to acknowledge; an error means the transfer is corrupt.
    pub fn chunk(&mut self, index: &str, bytes: &[u8]) -> Result<Option<u64>, String> {
        let m = &self.manifest;
        let index: u64 = match index.parse() {
            Ok(i) if i < m.chunks && bytes.len() as u64 == m.chunk_len(i) => i,
            _ => {
                return Err(format!(
                    "chunk {index} ({} bytes) does not fit the manifest",
                    bytes.len()
                ));
            }
        };
        if index < self.have || self.ahead.contains(&index) {
            return Ok(None);
        }
        self.file
            .seek(SeekFrom::Start(index * m.chunk_size))
            .and_then(|_| self.file.write_all(bytes))
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        self.ahead.insert(index);
        let before = self.have;
        while self.ahead.remove(&self.have) {
            self.have += 1;
        }
        let step = (WINDOW / 2).max(1);
        let crossed = self.have / step > before / step;
        Ok((self.have > before && (crossed || self.complete())).then_some(self.have))
    }

    pub fn complete(&self) -> bool {
        self.have == self.manifest.chunks
    }

    /// Once complete: whether the file's sha256 is the manifest's.
    pub fn verify(&mut self) -> Result<(), TransferError> {
        let write = |error| TransferError::Write {
            path: self.path.clone(),
            error,
        };
        self.file
            .flush()
            .and_then(|()| self.file.sync_all())
            .and_then(|()| self.file.set_len(self.manifest.size))
            .map_err(write)?;
        let digest = sha256_of(&self.path).map_err(write)?;
        if digest == self.manifest.sha256.to_ascii_lowercase() {
            Ok(())
        } else {
            Err(TransferError::Corrupt {
                actual: digest,
                announced: self.manifest.sha256.clone(),
            })
        }
    }
}

/// Why a transfer's manifest or content is refused (the content layer's
/// error type; its text goes to the other side as the refusal).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("transfer id: {0}")]
    Id(String),
    #[error("name: {0}")]
    Name(String),
    #[error("{size} bytes is over the limit of {max}")]
    TooLarge { size: u64, max: u64 },
    #[error(
        "size {size} in {chunks} chunks of {chunk_size} bytes does not add up (at most {MAX_CHUNKS} chunks of at most {} KiB)",
        MAX_CHUNK_BYTES >> 10
    )]
    Sizes {
        size: u64,
        chunks: u64,
        chunk_size: u64,
    },
    #[error("sha256 is not 64 hex digits")]
    Sha256Format,
    #[error("cannot write {}: {error}", path.display())]
    Write {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("the content's sha256 is {actual}, not the announced {announced}: refused as corrupt")]
    Corrupt { actual: String, announced: String },
    #[error(
        "busy: {running} downloads are in progress, the most the gateway takes at once (content.max_downloads); send it again later"
    )]
    Busy { running: u64 },
    #[error(
        "busy: {size} more bytes would put the downloads in progress over their budget of {max} bytes (content.downloads_max_mib); send it again later"
    )]
    OverBudget { size: u64, max: u64 },
    #[error(
        "not enough disk: {size} bytes would leave less than the {reserve} bytes kept free for the outbox (content.disk_reserve_mib); {free} bytes are free and downloads in progress still need {owed}"
    )]
    Disk {
        size: u64,
        free: u64,
        owed: u64,
        reserve: u64,
    },
}

/// A download in progress, as admission counts it.
#[derive(Debug, Clone, Copy)]
pub struct InProgress {
    /// Its announced size.
    pub size: u64,
    /// Bytes it has written so far.
    pub written: u64,
}

/// Whether a new download of `size` bytes may start next to those in
/// progress, with `free` bytes free on the data directory's filesystem
/// (`None` when that cannot be read: the other limits still hold).
pub fn admit(
    config: &crate::config::ContentConfig,
    in_progress: &[InProgress],
    size: u64,
    free: Option<u64>,
) -> Result<(), TransferError> {
    let running = in_progress.len() as u64;
    if running >= config.max_downloads {
        return Err(TransferError::Busy { running });
    }
    let announced: u64 = in_progress.iter().map(|d| d.size).sum();
    if announced.saturating_add(size) > config.downloads_max_bytes {
        return Err(TransferError::OverBudget {
            size,
            max: config.downloads_max_bytes,
        });
    }
    if let Some(free) = free {
        let owed: u64 = in_progress
            .iter()
            .map(|d| d.size.saturating_sub(d.written))
            .sum();
        let needed = owed
            .saturating_add(size)
            .saturating_add(config.disk_reserve_bytes);
        if free < needed {
            return Err(TransferError::Disk {
                size,
                free,
                owed,
                reserve: config.disk_reserve_bytes,
            });
        }
    }
    Ok(())
}

/// Bytes free to this process on the filesystem that holds `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// sha256 of a file, hex.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A pace of `bytes_per_s` for a sender (`None`: as fast as it goes): at most
/// a second's worth at once, and always room for one chunk.
pub fn pace(bytes_per_s: u64, chunk_bytes: u64) -> Option<crate::rate::SharedLimit> {
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    (bytes_per_s > 0).then(|| {
        crate::rate::SharedLimit::new(clamp(bytes_per_s), clamp(bytes_per_s.max(chunk_bytes)))
    })
}

/// Read chunk `index` of `manifest` from `path`.
pub fn read_chunk(path: &Path, manifest: &Manifest, index: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(index * manifest.chunk_size))?;
    let mut bytes = vec![0u8; manifest.chunk_len(index) as usize];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_count_budget_and_disk() {
        let config = crate::config::ContentConfig {
            max_downloads: 2,
            downloads_max_bytes: 100,
            disk_reserve_bytes: 10,
            ..Default::default()
        };
        let one = [InProgress {
            size: 60,
            written: 20,
        }];
        assert!(admit(&config, &[], 100, Some(110)).is_ok());
        assert!(admit(&config, &one, 40, None).is_ok());
        // Two at once at most.
        let two = [one[0], one[0]];
        assert!(matches!(
            admit(&config, &two, 1, None),
            Err(TransferError::Busy { running: 2 })
        ));
        // 60 announced + 41 > 100.
        assert!(matches!(
            admit(&config, &one, 41, None),
            Err(TransferError::OverBudget { .. })
        ));
        // 40 still owed + 30 + 10 kept free > 79.
        let refused = admit(&config, &one, 30, Some(79)).expect_err("the disk is short");
        assert!(
            matches!(refused, TransferError::Disk { owed: 40, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("content.disk_reserve_mib"));
        assert!(admit(&config, &one, 30, Some(80)).is_ok());
    }

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn manifest_of(bytes: &[u8], chunk: u64) -> Manifest {
        Manifest::new(
            "t-1".into(),
            "f.bin".into(),
            bytes.len() as u64,
            hex::encode(Sha256::digest(bytes)),
            chunk,
        )
    }

    /// Run a transfer through a lossy channel: every `drop_every`th message
    /// from the sender is lost; time moves on when nothing is to send.
    fn run(bytes: &[u8], chunk: u64, drop_every: usize) -> (Vec<u8>, usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        std::fs::write(&source, bytes).expect("write");
        let manifest = manifest_of(bytes, chunk);
        let mut now = Instant::now();
        let mut sender = Outgoing::new(manifest.clone(), 0, now);
        let mut receiver: Option<Incoming> = None;
        let target = dir.path().join("target");
        let mut sent = 0;
        for _ in 0..100_000 {
            let Some(step) = sender.step(now) else {
                now += PROBE;
                continue;
            };
            sent += 1;
            if drop_every > 0 && sent % drop_every == 0 {
                continue;
            }
            let ack = match step {
                Step::Manifest => {
                    let r = receiver.get_or_insert_with(|| {
                        Incoming::open(manifest.clone(), &target, 0).expect("open")
                    });
                    Some(r.have)
                }
                Step::Chunk(i) => {
                    let data = read_chunk(&source, &manifest, i).expect("read");
                    let r = receiver.as_mut().expect("a manifest came first");
                    r.chunk(&i.to_string(), &data).expect("a good chunk")
                }
            };
            if let Some(have) = ack {
                sender.heard(have, now);
            }
            if let Some(r) = receiver.as_mut()
                && r.complete()
            {
                r.verify().expect("the digest matches");
                return (std::fs::read(&target).expect("read"), sent);
            }
        }
        panic!("the transfer did not finish");
    }

    #[test]
    fn a_transfer_arrives_whole_even_when_messages_are_lost() {
        let bytes = content(100_000);
        for drop_every in [0, 3, 7, 50] {
            let (arrived, sent) = run(&bytes, 1000, drop_every);
            assert_eq!(arrived, bytes, "dropping every {drop_every}th message");
            assert!(sent >= 101, "{sent}");
        }
        // One chunk, and an empty file.
        assert_eq!(run(&content(10), 1000, 0).0, content(10));
        assert_eq!(run(&[], 1000, 0).0, Vec::<u8>::new());
    }

    #[test]
    fn a_sender_stays_within_its_window_until_it_hears_back() {
        let bytes = content(100 * 1000);
        let now = Instant::now();
        let mut sender = Outgoing::new(manifest_of(&bytes, 1000), 0, now);
        assert_eq!(sender.step(now), Some(Step::Manifest));
        let chunks: Vec<_> = std::iter::from_fn(|| sender.step(now)).collect();
        assert_eq!(chunks.len() as u64, WINDOW);
        sender.heard(5, now);
        assert_eq!(sender.step(now), Some(Step::Chunk(WINDOW)));
        // Silence: the manifest again, then from the confirmed chunk on.
        let later = now + PROBE;
        assert_eq!(sender.step(later), Some(Step::Manifest));
        assert_eq!(sender.step(later), Some(Step::Chunk(5)));
    }

    #[test]
    fn a_receiver_cannot_confirm_chunks_it_was_never_sent() {
        let bytes = content(10 * 1000);
        let manifest = manifest_of(&bytes, 1000);
        let now = Instant::now();
        let mut sender = Outgoing::new(manifest.clone(), 0, now);
        assert_eq!(sender.step(now), Some(Step::Manifest));
        // A forged "done" before any chunk went: not believed, and its
        // `have` counts only what was sent.
        let forged = Ack::done(&manifest);
        assert!(!sender.confirms_done(&forged));
        sender.heard(forged.have, now);
        assert_eq!(sender.have, 0);
        while let Some(step) = sender.step(now) {
            if let Step::Chunk(i) = step {
                sender.heard(i + 1, now);
            }
        }
        assert_eq!(sender.have, manifest.chunks);
        // Every chunk went: a "done" with the content's digest is believed,
        // one without it or with another is not.
        assert!(sender.confirms_done(&forged));
        let without = Ack {
            sha256: None,
            ..forged.clone()
        };
        assert!(!sender.confirms_done(&without));
        let other = Ack {
            sha256: Some("00".repeat(32)),
            ..forged
        };
        assert!(!sender.confirms_done(&other));
    }

    #[test]
    fn chunks_a_false_acknowledgement_claimed_go_again_once_the_receiver_says_where_it_is() {
        let bytes = content(64 * 1000);
        let manifest = manifest_of(&bytes, 1000);
        let now = Instant::now();
        let mut sender = Outgoing::new(manifest.clone(), 0, now);
        assert_eq!(sender.step(now), Some(Step::Manifest));
        let first: Vec<_> = std::iter::from_fn(|| sender.step(now)).collect();
        assert_eq!(first.len() as u64, WINDOW);
        // A forged (or stale, redelivered) acknowledgement claims all that
        // went, but the receiver lost the second half of it.
        sender.heard(manifest.chunks, now);
        assert_eq!(sender.have, WINDOW);
        let second: Vec<_> = std::iter::from_fn(|| sender.step(now)).collect();
        assert_eq!(second.first(), Some(&Step::Chunk(WINDOW)));
        // Silence, a probe, and the receiver's true answer: the chunks it
        // lacks go again, not only those after the false claim.
        let later = now + PROBE;
        assert_eq!(sender.step(later), Some(Step::Manifest));
        sender.heard(WINDOW / 2, later);
        assert_eq!(sender.have, WINDOW / 2);
        assert_eq!(sender.step(later), Some(Step::Chunk(WINDOW / 2)));
    }

    #[test]
    fn a_wrong_chunk_or_digest_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = content(2500);
        let manifest = manifest_of(&bytes, 1000);
        let mut r = Incoming::open(manifest.clone(), &dir.path().join("t"), 0).expect("open");
        assert!(r.chunk("0", &bytes[..999]).is_err(), "short chunk");
        assert!(r.chunk("3", &bytes[..500]).is_err(), "past the end");
        assert!(r.chunk("x", &bytes[..1000]).is_err(), "not an index");
        r.chunk("0", &bytes[..1000]).expect("ok");
        r.chunk("2", &bytes[2000..]).expect("ok");
        let mut changed = bytes[1000..2000].to_vec();
        changed[10] ^= 1;
        assert_eq!(r.chunk("1", &changed).expect("ok"), Some(3));
        let err = r.verify().expect_err("corrupt");
        assert!(matches!(err, TransferError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("refused as corrupt"), "{err}");
    }

    #[test]
    fn manifests_from_outside_are_checked() {
        let good = manifest_of(&content(10), 4);
        assert!(good.check(100).is_ok());
        assert_eq!(
            good.check(5).unwrap_err().to_string(),
            "10 bytes is over the limit of 5"
        );
        let mut bad = good.clone();
        bad.chunks = 2;
        assert!(bad.check(100).is_err());
        let mut bad = good.clone();
        bad.name = "../x".into();
        assert!(bad.check(100).is_err());
        let mut bad = good;
        bad.sha256 = "zz".into();
        assert!(bad.check(100).is_err());
    }
}
