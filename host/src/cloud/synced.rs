//! The gateway's side of the server's changes to synced tables: a service
//! of the downlink that takes each changeset `serve` sends down
//! (`{device}/synced/{table}/down`), checks it, and applies it to the app
//! that speaks for the device, through `Tables::apply_pulled` (the merge,
//! once by id, the keys the app is told of, and a pull when changesets are
//! missing before it).
//!
//! It runs beside the link, as the content service does, so that a large
//! changeset never holds up the link's own loop. What it cannot apply is
//! logged and left: a pull at the app's next start asks for it again.

use std::sync::Arc;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registration::Routes;
use crate::store::Database;
use crate::synced::Changeset;
use crate::synced::merge::Side;
use crate::wire::Inbound;
use crate::wire::topics::{self, Kind};

pub struct SyncedSpec {
    pub db: Database,
    /// The tables unit, whose tallies count what the server changes.
    pub tables: Arc<crate::tables::Tables>,
    /// Which app speaks for which device.
    pub directory: Arc<dyn Routes>,
    /// Woken when a pull was queued.
    pub outbox_signal: Arc<Notify>,
}

/// Start the service on `tasks`; the returned sender is for the downlink.
pub fn spawn(
    spec: SyncedSpec,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> mpsc::Sender<Inbound> {
    let (tx, rx) = mpsc::channel(256);
    tasks.spawn(run(spec, rx, cancel));
    tx
}

async fn run(spec: SyncedSpec, mut inbound: mpsc::Receiver<Inbound>, cancel: CancellationToken) {
    let mut conn = match spec.db.open() {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(
                "the server's synced-table changes are off: cannot open the database: {e}"
            );
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            message = inbound.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        // A changeset may merge thousands of rows: off the runtime's
        // workers' own tasks.
        let outcome = tokio::task::block_in_place(|| apply(&spec, &mut conn, &message));
        match outcome {
            Ok(true) => spec.outbox_signal.notify_one(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(topic = %message.topic, "a synced-table changeset from the server was not applied: {e}")
            }
        }
    }
}

/// Apply one message; `true` when it showed a gap, for which a pull was
/// queued.
fn apply(
    spec: &SyncedSpec,
    conn: &mut rusqlite::Connection,
    message: &Inbound,
) -> Result<bool, String> {
    let parsed = topics::parse(&message.topic).ok_or("not a protocol topic")?;
    let Kind::ChangesetDown(table) = parsed.kind else {
        return Err("not a changeset coming down".into());
    };
    let changeset: Changeset =
        serde_json::from_slice(&message.payload).map_err(|e| format!("unreadable: {e}"))?;
    changeset.check(table, Side::Server)?;
    let seq = changeset
        .seq
        .ok_or("a changeset from the server needs its number (seq)")?;
    let app = spec
        .directory
        .owner(parsed.device)
        .ok_or_else(|| format!("no app speaks for device {}", parsed.device))?;
    let pulled = spec
        .tables
        .apply_pulled(conn, &app, parsed.device, &changeset, seq)
        .map_err(|e| e.to_string())?;
    tracing::debug!(
        app,
        table,
        seq,
        duplicate = pulled.duplicate,
        changed = pulled.changed_keys.len(),
        "applied a changeset from the server"
    );
    Ok(pulled.gap)
}
