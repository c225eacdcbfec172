//! Rollouts in the database, and the task that drives them: every
//! [`TICK`], it reads each running rollout and what the fleet said (stored
//! by the ingest: statuses, `deploy/res`), lets [`super::rollout::step`]
//! decide, writes the new state, and only then publishes what the step
//! asked for (manifests, chunks, rollback orders). A `serve` killed between
//! the two sends again on its next start: a gateway that heard nothing is
//! offered again, and one that answered is read from the database.
//!
//! With several `serve` instances on one PostgreSQL, exactly one drives:
//! the one holding a session advisory lock on its own connection. When it
//! dies, its connection and the lock go with it, and another instance takes
//! over on its next tick. On SQLite there is one instance, which drives.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Connection as _, Row as _};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::db::{Backend, Col, Db, now_ms, row_json, rows_json};
use super::rollout::{
    self, AppSeen, Observed, Policy, Progress, Rollout, RolloutState, Send, Target, TargetState,
};
use crate::wire::protocol::{DeployManifest, DeployTarget, RollbackOrder};
use crate::wire::selector::Selector;
use crate::wire::topics;

/// How often the driver looks at the rollouts.
pub const TICK: Duration = Duration::from_millis(500);

/// The PostgreSQL advisory lock the driving instance holds.
const DRIVER_LOCK: i64 = 0x7761_736d_6761_7465; // "wasmgate"

/// What `POST /api/v1/rollouts` takes: the signed manifests and rollback
/// orders (`wasmgate cloud rollout create` makes them), the component and
/// how to roll it out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    pub app: String,
    pub target: RolloutTarget,
    /// By gateway id, or `*` for a selector's one manifest.
    pub manifests: BTreeMap<String, DeployManifest>,
    pub rollbacks: BTreeMap<String, RollbackOrder>,
    /// The component, base64.
    pub component: String,
    pub policy: Policy,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RolloutTarget {
    Selector(String),
    Gateways(Vec<String>),
}

/// Check a new rollout and resolve its gateways: its gateways and its
/// component's digest, or why it is refused.
fn check(
    new: &NewRollout,
    known: &[(String, BTreeMap<String, String>)],
) -> Result<(Vec<String>, String), String> {
    new.policy.check()?;
    let component = BASE64
        .decode(&new.component)
        .map_err(|e| format!("component: not base64: {e}"))?;
    let sha256 = crate::deploy::artifacts::digest(&component);
    let (gateways, keys): (Vec<String>, Vec<String>) = match &new.target {
        RolloutTarget::Selector(text) => {
            let selector = Selector::parse(text).map_err(|e| format!("selector: {e}"))?;
            let matched: Vec<String> = known
                .iter()
                .filter(|(_, labels)| selector.matches(labels))
                .map(|(g, _)| g.clone())
                .collect();
            (matched, vec!["*".to_string()])
        }
        RolloutTarget::Gateways(ids) => {
            let mut ids = ids.clone();
            ids.sort();
            ids.dedup();
            (ids.clone(), ids)
        }
    };
    if gateways.is_empty() {
        return Err("no gateway that serve knows matches the target".into());
    }
    for key in &keys {
        let manifest = new
            .manifests
            .get(key)
            .ok_or_else(|| format!("no manifest for {key}"))?;
        let order = new
            .rollbacks
            .get(key)
            .ok_or_else(|| format!("no rollback order for {key}"))?;
        let wanted = match &new.target {
            RolloutTarget::Selector(text) => DeployTarget::Selector(text.clone()),
            RolloutTarget::Gateways(_) => DeployTarget::Gateway(key.clone()),
        };
        if manifest.app != new.app || order.app != new.app {
            return Err(format!(
                "the manifest or rollback order for {key} is for another app"
            ));
        }
        if manifest.sha256 != sha256 || manifest.size != component.len() as u64 {
            return Err(format!(
                "the manifest for {key} is signed for another component than the one given"
            ));
        }
        if order.sha256 != sha256 {
            return Err(format!(
                "the rollback order for {key} names another component"
            ));
        }
        if manifest.target != wanted || order.target != wanted {
            return Err(format!(
                "the manifest or rollback order for {key} is signed for {}, not {wanted}",
                manifest.target
            ));
        }
    }
    Ok((gateways, sha256))
}

/// Store a new rollout; its id and gateways, or why it is refused.
pub async fn create(db: &Db, new: NewRollout) -> Result<Result<Value, String>, sqlx::Error> {
    let known: Vec<(String, BTreeMap<String, String>)> =
        sqlx::query("SELECT gateway, labels FROM gateways ORDER BY gateway")
            .fetch_all(db.pool())
            .await?
            .iter()
            .map(|r| {
                let labels: String = r.try_get(1)?;
                Ok((
                    r.try_get::<String, _>(0)?,
                    serde_json::from_str(&labels).unwrap_or_default(),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
    let (gateways, sha256) = match check(&new, &known) {
        Ok(checked) => checked,
        Err(e) => return Ok(Err(e)),
    };
    let id = new_rollout_id();
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO rollouts (id, app, sha256, target, policy, manifests, rollbacks, component, state, wave, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', 0, $9, $9)",
    )
    .bind(&id)
    .bind(&new.app)
    .bind(&sha256)
    .bind(serde_json::to_string(&new.target).unwrap_or_default())
    .bind(serde_json::to_string(&new.policy).unwrap_or_default())
    .bind(serde_json::to_string(&new.manifests).unwrap_or_default())
    .bind(serde_json::to_string(&new.rollbacks).unwrap_or_default())
    .bind(&new.component)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    for (position, gateway) in gateways.iter().enumerate() {
        add_target(&mut tx, &id, gateway, position, now).await?;
    }
    tx.commit().await?;
    tracing::info!(rollout = %id, app = %new.app, gateways = gateways.len(), "rollout created");
    Ok(Ok(json!({ "id": id, "gateways": gateways })))
}

fn new_rollout_id() -> String {
    format!("ro-{:016x}", crate::value::random_u64())
}

/// Put `gateway` in rollout `rollout` at `position`, waiting.
async fn add_target(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    rollout: &str,
    gateway: &str,
    position: usize,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rollout_gateways (rollout, gateway, position, state, updated_at)
         VALUES ($1, $2, $3, 'waiting', $4)",
    )
    .bind(rollout)
    .bind(gateway)
    .bind(position as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether rollout `id` may give a newly provisioned gateway its first
/// version: it targets a label selector (whose signed manifest the new
/// gateway can check) and is running or completed. Why not, if not.
pub async fn first_version_source(db: &Db, id: &str) -> Result<Result<(), String>, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT target, state FROM rollouts WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?
    else {
        return Ok(Err(format!("no rollout {id:?}")));
    };
    let target: Option<RolloutTarget> = serde_json::from_str(&row.try_get::<String, _>(0)?).ok();
    let state: String = row.try_get(1)?;
    Ok(match (target, RolloutState::parse(&state)) {
        (
            Some(RolloutTarget::Selector(_)),
            Some(RolloutState::Running | RolloutState::Completed),
        ) => Ok(()),
        (Some(RolloutTarget::Selector(_)), _) => Err(format!(
            "rollout {id} is {state}; a new gateway starts only with a version that is rolling out or rolled out"
        )),
        _ => Err(format!(
            "rollout {id} targets gateways by id; a new gateway's first version comes from a rollout to a label selector"
        )),
    })
}

/// A newly provisioned gateway's first version: a rollout of `from`'s
/// signed version (a rollout to a label selector, whose manifest the new
/// gateway checks against its issued labels) to that gateway alone, in one
/// wave. It waits for the gateway to come online, and a failure there
/// aborts nothing (a new gateway has no older version to go back to).
/// Its id, or why not.
pub async fn for_new_gateway(
    db: &Db,
    from: &str,
    gateway: &str,
) -> Result<Result<String, String>, sqlx::Error> {
    let policy = Policy {
        waves: vec![super::rollout::Wave {
            percent: 100.0,
            min: 1,
            soak_s: 0,
        }],
        max_failures: 1.0,
        rate_per_minute: None,
        offline: super::rollout::Offline::Wait,
    };
    let id = new_rollout_id();
    let now = now_ms();
    if let Err(why) = first_version_source(db, from).await? {
        return Ok(Err(why));
    }
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO rollouts (id, app, sha256, target, policy, manifests, rollbacks, component, state, wave, created_at, updated_at)
         SELECT $1, app, sha256, target, $2, manifests, rollbacks, component, 'running', 0, $3, $3
         FROM rollouts WHERE id = $4",
    )
    .bind(&id)
    .bind(serde_json::to_string(&policy).unwrap_or_default())
    .bind(now)
    .bind(from)
    .execute(&mut *tx)
    .await?;
    add_target(&mut tx, &id, gateway, 0, now).await?;
    tx.commit().await?;
    Ok(Ok(id))
}

/// Every rollout, newest first, with its gateways counted by state.
pub async fn list(db: &Db) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, app, sha256, target, policy, state, wave, reason, created_at, updated_at
         FROM rollouts ORDER BY created_at DESC",
    )
    .fetch_all(db.pool())
    .await?;
    let mut rollouts = rows_json(&rows, SUMMARY)?;
    let counts = sqlx::query(
        "SELECT rollout, state, COUNT(*) FROM rollout_gateways GROUP BY rollout, state",
    )
    .fetch_all(db.pool())
    .await?;
    let mut by_rollout: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
    for r in counts {
        by_rollout
            .entry(r.try_get(0)?)
            .or_default()
            .insert(r.try_get(1)?, json!(r.try_get::<i64, _>(2)?));
    }
    for rollout in &mut rollouts {
        let id = rollout["id"].as_str().unwrap_or_default().to_string();
        rollout["counts"] = Value::Object(by_rollout.remove(&id).unwrap_or_default());
    }
    Ok(rollouts)
}

const SUMMARY: &[(&str, Col)] = &[
    ("id", Col::Text),
    ("app", Col::Text),
    ("sha256", Col::Text),
    ("target", Col::Json),
    ("policy", Col::Json),
    ("state", Col::Text),
    ("wave", Col::Int),
    ("reason", Col::OptText),
    ("created_at", Col::Int),
    ("updated_at", Col::Int),
];

/// One rollout: its summary, each wave's reach and counts, each gateway.
pub async fn get(db: &Db, id: &str) -> Result<Option<Value>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT id, app, sha256, target, policy, state, wave, reason, created_at, updated_at
         FROM rollouts WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(None);
    };
    let mut rollout = row_json(&row, SUMMARY)?;
    let rows = sqlx::query(
        "SELECT gateway, state, wave, detail, updated_at FROM rollout_gateways
         WHERE rollout = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    let gateways = rows_json(
        &rows,
        &[
            ("gateway", Col::Text),
            ("state", Col::Text),
            ("wave", Col::OptInt),
            ("detail", Col::OptText),
            ("updated_at", Col::Int),
        ],
    )?;
    let policy: Option<Policy> = serde_json::from_value(rollout["policy"].clone()).ok();
    let waves: Vec<Value> = policy
        .map(|p| {
            (0..p.waves.len())
                .map(|w| {
                    let mut counts = serde_json::Map::new();
                    for g in gateways
                        .iter()
                        .filter(|g| g["wave"].as_u64() == Some(w as u64))
                    {
                        let state = g["state"].as_str().unwrap_or("?").to_string();
                        let n = counts.get(&state).and_then(Value::as_u64).unwrap_or(0);
                        counts.insert(state, json!(n + 1));
                    }
                    json!({
                        "wave": w,
                        "percent": p.waves[w].percent,
                        "reach": p.reach(w, gateways.len()),
                        "soak_s": p.waves[w].soak_s,
                        "counts": counts,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    rollout["waves"] = Value::Array(waves);
    rollout["gateways"] = Value::Array(gateways);
    Ok(Some(rollout))
}

/// Abort a running rollout: `Ok(true)` if it was running, `Ok(false)` if
/// it had already ended, `None` if there is no such rollout.
pub async fn abort(db: &Db, id: &str) -> Result<Option<bool>, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE rollouts SET state = 'aborting', reason = 'aborted by the operator', updated_at = $2
         WHERE id = $1 AND state = 'running'",
    )
    .bind(id)
    .bind(now_ms())
    .execute(db.pool())
    .await?
    .rows_affected();
    if changed > 0 {
        tracing::warn!(rollout = %id, "rollout aborted by the operator");
        return Ok(Some(true));
    }
    let exists = sqlx::query("SELECT 1 FROM rollouts WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .is_some();
    Ok(exists.then_some(false))
}

/// The driving task.
pub struct Driver {
    pub db: Db,
    pub client: AsyncClient,
    /// Where `/stats` reads whether this instance drives.
    pub counters: Arc<super::ingest::Counters>,
}

impl Driver {
    pub async fn run(self, cancel: CancellationToken) {
        let mut lock: Option<sqlx::AnyConnection> = None;
        let mut components: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {}
            }
            let leads = match self.lead(&mut lock).await {
                Ok(leads) => leads,
                Err(e) => {
                    tracing::warn!("rollouts: cannot tell whether this instance drives: {e}");
                    lock = None;
                    false
                }
            };
            self.counters
                .drives_rollouts
                .store(leads, std::sync::atomic::Ordering::Relaxed);
            if !leads {
                continue;
            }
            if let Err(e) = self.tick(&mut components).await {
                tracing::error!("rollouts: {e}");
            }
        }
        if let Some(conn) = lock {
            let _ = conn.close().await;
        }
        self.counters
            .drives_rollouts
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this instance drives: always on SQLite; on PostgreSQL while
    /// it holds the advisory lock on its own connection.
    async fn lead(&self, lock: &mut Option<sqlx::AnyConnection>) -> Result<bool, sqlx::Error> {
        if self.db.backend == Backend::Sqlite {
            return Ok(true);
        }
        if let Some(conn) = lock.as_mut() {
            // Still connected, so still holding it.
            sqlx::query("SELECT 1").fetch_one(&mut *conn).await?;
            return Ok(true);
        }
        let mut conn = self.db.pool().acquire().await?.detach();
        let got: i64 = sqlx::query("SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END")
            .bind(DRIVER_LOCK)
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        if got == 1 {
            tracing::info!("rollouts: this instance drives them");
            *lock = Some(conn);
            Ok(true)
        } else {
            let _ = conn.close().await;
            Ok(false)
        }
    }

    async fn tick(&self, components: &mut HashMap<String, Arc<Vec<u8>>>) -> anyhow::Result<()> {
        let rows = sqlx::query(
            "SELECT id, app, sha256, policy, manifests, rollbacks, state, wave, reason
             FROM rollouts WHERE state IN ('running', 'aborting') ORDER BY created_at",
        )
        .fetch_all(self.db.pool())
        .await?;
        components.retain(|id, _| {
            rows.iter()
                .any(|r| r.try_get::<String, _>(0).ok().as_deref() == Some(id))
        });
        for row in rows {
            let id: String = row.try_get(0)?;
            if let Err(e) = self.drive(&row, components).await {
                tracing::error!(rollout = %id, "rollouts: {e}");
            }
        }
        Ok(())
    }

    async fn drive(
        &self,
        row: &sqlx::any::AnyRow,
        components: &mut HashMap<String, Arc<Vec<u8>>>,
    ) -> anyhow::Result<()> {
        let id: String = row.try_get(0)?;
        let app: String = row.try_get(1)?;
        let manifests: BTreeMap<String, DeployManifest> =
            serde_json::from_str(&row.try_get::<String, _>(4)?)?;
        let rollbacks: BTreeMap<String, RollbackOrder> =
            serde_json::from_str(&row.try_get::<String, _>(5)?)?;
        let mut rollout = Rollout {
            sha256: row.try_get(2)?,
            policy: serde_json::from_str(&row.try_get::<String, _>(3)?)?,
            state: RolloutState::parse(&row.try_get::<String, _>(6)?)
                .ok_or_else(|| anyhow::anyhow!("unknown rollout state"))?,
            wave: usize::try_from(row.try_get::<i64, _>(7)?).unwrap_or(0),
            reason: row.try_get(8)?,
        };
        let before = rollout.clone();
        let mut targets = self.targets(&id).await?;
        let earlier = targets.clone();
        let manifest_for = |g: &str| manifests.get(g).or_else(|| manifests.get("*"));
        let rollback_for = |g: &str| rollbacks.get(g).or_else(|| rollbacks.get("*"));
        let observed = self
            .observe(&id, &app, &targets, |g| {
                (
                    manifest_for(g).map(|m| m.id.clone()),
                    rollback_for(g).map(|r| r.id.clone()),
                )
            })
            .await?;
        let now = now_ms();
        let sends = rollout::step(&mut rollout, &mut targets, &observed, now);

        // The new state first: what is sent is on record before it goes.
        let mut tx = self.db.begin_write().await?;
        for (target, old) in targets.iter().zip(&earlier) {
            if target == old {
                continue;
            }
            sqlx::query(
                "UPDATE rollout_gateways SET state = $3, wave = $4, wave_at = $5, sent_at = $6,
                     first_offered_at = $7, chunks_sent = $8, deployed_at = $9, restarts = $10,
                     detail = $11, updated_at = $12
                 WHERE rollout = $1 AND gateway = $2",
            )
            .bind(&id)
            .bind(&target.gateway)
            .bind(target.state.as_str())
            .bind(target.wave.map(|w| w as i64))
            .bind(target.wave_at)
            .bind(target.sent_at)
            .bind(target.first_offered_at)
            .bind(i64::from(target.chunks_sent))
            .bind(target.deployed_at)
            .bind(target.restarts)
            .bind(target.detail.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if target.state != old.state {
                tracing::info!(rollout = %id, gateway = %target.gateway, state = target.state.as_str(), detail = target.detail.as_deref().unwrap_or(""), "rollout gateway");
            }
        }
        if rollout != before {
            sqlx::query("UPDATE rollouts SET state = $2, wave = $3, reason = $4, updated_at = $5 WHERE id = $1")
                .bind(&id)
                .bind(rollout.state.as_str())
                .bind(rollout.wave as i64)
                .bind(rollout.reason.as_deref())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if rollout.state != before.state {
                tracing::warn!(rollout = %id, state = rollout.state.as_str(), reason = rollout.reason.as_deref().unwrap_or(""), "rollout");
            }
        }
        tx.commit().await?;

        for send in sends {
            match send {
                Send::Offer(gateway) => {
                    if let Some(manifest) = manifest_for(&gateway) {
                        self.publish(&gateway, "deploy/req", serde_json::to_vec(manifest)?)
                            .await?;
                    }
                }
                Send::Rollback(gateway) => {
                    if let Some(order) = rollback_for(&gateway) {
                        self.publish(&gateway, "deploy/rollback", serde_json::to_vec(order)?)
                            .await?;
                    }
                }
                Send::Chunks(gateway) => {
                    let Some(manifest) = manifest_for(&gateway) else {
                        continue;
                    };
                    let component = match components.get(&id) {
                        Some(c) => c.clone(),
                        None => {
                            let text: String =
                                sqlx::query("SELECT component FROM rollouts WHERE id = $1")
                                    .bind(&id)
                                    .fetch_one(self.db.pool())
                                    .await?
                                    .try_get(0)?;
                            let bytes = Arc::new(BASE64.decode(text)?);
                            components.insert(id.clone(), bytes.clone());
                            bytes
                        }
                    };
                    for (i, chunk) in component
                        .chunks(manifest.chunk_size.max(1) as usize)
                        .enumerate()
                    {
                        self.publish(
                            &gateway,
                            &format!("deploy/{}/chunk/{i}", manifest.id),
                            chunk.to_vec(),
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, gateway: &str, suffix: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(
                topics::topic(gateway, gateway, suffix),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot publish to {gateway}: {e}"))
    }

    async fn targets(&self, id: &str) -> Result<Vec<Target>, sqlx::Error> {
        sqlx::query(
            "SELECT gateway, state, wave, wave_at, sent_at, first_offered_at, chunks_sent,
                    deployed_at, restarts, detail
             FROM rollout_gateways WHERE rollout = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(Target {
                gateway: r.try_get(0)?,
                state: TargetState::parse(&r.try_get::<String, _>(1)?)
                    .unwrap_or(TargetState::Failed),
                wave: r.try_get::<Option<i64>, _>(2)?.map(|w| w as usize),
                wave_at: r.try_get(3)?,
                sent_at: r.try_get(4)?,
                first_offered_at: r.try_get(5)?,
                chunks_sent: r.try_get::<i64, _>(6)? != 0,
                deployed_at: r.try_get(7)?,
                restarts: r.try_get(8)?,
                detail: r.try_get(9)?,
            })
        })
        .collect()
    }

    /// What the database says of each target: three queries, however many
    /// gateways.
    async fn observe(
        &self,
        id: &str,
        app: &str,
        targets: &[Target],
        ids_for: impl Fn(&str) -> (Option<String>, Option<String>),
    ) -> Result<HashMap<String, Observed>, sqlx::Error> {
        let mut observed: HashMap<String, Observed> = targets
            .iter()
            .map(|t| (t.gateway.clone(), Observed::default()))
            .collect();
        for r in sqlx::query(
            "SELECT gateway, CASE WHEN online THEN 1 ELSE 0 END FROM gateways
             WHERE gateway IN (SELECT gateway FROM rollout_gateways WHERE rollout = $1)",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?
        {
            if let Some(o) = observed.get_mut(&r.try_get::<String, _>(0)?) {
                o.online = r.try_get::<i64, _>(1)? != 0;
            }
        }
        for r in sqlx::query(
            "SELECT a.gateway, a.component, a.state, a.restarts, g.stored_at
             FROM apps a JOIN gateways g ON g.gateway = a.gateway
             WHERE a.name = $2
               AND a.gateway IN (SELECT gateway FROM rollout_gateways WHERE rollout = $1)",
        )
        .bind(id)
        .bind(app)
        .fetch_all(self.db.pool())
        .await?
        {
            if let Some(o) = observed.get_mut(&r.try_get::<String, _>(0)?) {
                o.app = Some(AppSeen {
                    component: r.try_get(1)?,
                    state: r.try_get(2)?,
                    restarts: r.try_get(3)?,
                    at: r.try_get::<i64, _>(4)? / 1_000_000,
                });
            }
        }
        for r in sqlx::query(
            "SELECT gateway, id, stage, received, message, error, updated_at FROM deployments
             WHERE gateway IN (SELECT gateway FROM rollout_gateways WHERE rollout = $1)",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?
        {
            let gateway: String = r.try_get(0)?;
            let (manifest, rollback) = ids_for(&gateway);
            let Some(o) = observed.get_mut(&gateway) else {
                continue;
            };
            let deployment: String = r.try_get(1)?;
            let progress = Progress {
                stage: r.try_get(2)?,
                received: r.try_get(3)?,
                said: r.try_get::<Option<String>, _>(5)?.or(r.try_get(4)?),
                at: r.try_get::<i64, _>(6)? / 1_000_000,
            };
            if manifest.as_deref() == Some(deployment.as_str()) {
                o.deployment = Some(progress);
            } else if rollback.as_deref() == Some(deployment.as_str()) {
                o.rollback = Some(progress);
            }
        }
        Ok(observed)
    }
}
