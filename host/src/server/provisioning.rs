//! Provisioning by claim, `serve`'s side: a gateway that holds only a claim
//! credential asks for an identity (`wire::provision`); `serve` checks the
//! request and, if all is well, signs a client certificate for the
//! gateway's own key with the fleet CA (rcgen), and answers with the
//! gateway's id and labels. The gateway's first versions follow as
//! one-gateway rollouts of the rollouts its allow-list entry names.
//!
//! In order, a request is refused when:
//! 0. its claim asked more than [`CLAIM_REQUESTS_PER_S`] times a second
//!    (bursts of [`CLAIM_REQUEST_BURST`]), before any other work;
//! 1. it cannot be read, or its id is not the topic's;
//! 2. its id was seen before (a replay), or it is older or newer than
//!    [`MAX_REQUEST_AGE_MS`] (a replay from before `serve` remembers);
//! 3. its claim is unknown or revoked;
//! 4. its CSR is not signed by its key, or is not for this request;
//! 5. its serial is not on the allow-list;
//! 6. its gateway id was issued to another key (a second gateway claiming
//!    an id that is taken; an operator may release it), or is in use by a
//!    gateway not provisioned by claim.
//!
//! Every request is logged (`provisioning_log`, `GET /api/v1/provisioning`)
//! with its outcome, and a refusal also in `serve`'s log.

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row as _;
use std::collections::BTreeMap;
use std::path::Path;

use super::db::{Col, Db, now_ms, rows_json};
use crate::wire::provision::{MAX_REQUEST_AGE_MS, Request, Response};

/// How long an issued certificate is valid.
pub const CERTIFICATE_DAYS: u64 = 365;

/// Log entries `GET /api/v1/provisioning` returns, newest first.
const LOG_LIMIT: i64 = 200;

/// The fleet CA: what signs the gateways' certificates. The broker trusts
/// it for client certificates.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
}

impl FleetCa {
    /// The CA's certificate and its key (the key `serve`'s user's alone).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<FleetCa> {
        crate::permissions::check_private(key, "the fleet CA's key").map_err(anyhow::Error::msg)?;
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("the fleet CA {}: {e}", path.display()))
        };
        let key = KeyPair::from_pem(&read(key)?)
            .map_err(|e| anyhow::anyhow!("the fleet CA's key {}: {e}", key.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&read(cert)?, key)
            .map_err(|e| anyhow::anyhow!("the fleet CA {}: {e}", cert.display()))?;
        Ok(FleetCa { issuer })
    }

    /// A client certificate for `gateway`, for the key `csr` holds; and when
    /// it expires (ms).
    fn issue(
        &self,
        gateway: &str,
        public_key: rcgen::PublicKey,
        now_ms: u64,
    ) -> Result<(String, u64), String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, gateway);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        serial[..8].copy_from_slice(&crate::value::random_u64().to_be_bytes());
        serial[8..].copy_from_slice(&crate::value::random_u64().to_be_bytes());
        serial[0] &= 0x7f; // positive
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now_s = (now_ms / 1000) as i64;
        let not_after_s = now_s + (CERTIFICATE_DAYS * 86_400) as i64;
        // A few minutes' grace for a gateway whose clock runs behind.
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(now_s - 300).map_err(|e| e.to_string())?;
        params.not_after =
            time::OffsetDateTime::from_unix_timestamp(not_after_s).map_err(|e| e.to_string())?;
        let cert = CertificateSigningRequestParams { params, public_key }
            .signed_by(&self.issuer)
            .map_err(|e| e.to_string())?;
        Ok((cert.pem(), not_after_s as u64 * 1000))
    }
}

/// What a request came to, before it is answered and logged.
struct Outcome {
    serial: Option<String>,
    gateway: Option<String>,
    answer: Result<Issued, String>,
}

struct Issued {
    labels: BTreeMap<String, String>,
    certificate: String,
    not_after: u64,
}

/// Requests a second one claim may make on average, and in a burst: a
/// batch powered on at once is served at this pace (its gateways ask
/// again), and a claim that floods costs `serve` no more than this.
pub const CLAIM_REQUESTS_PER_S: u32 = 10;
pub const CLAIM_REQUEST_BURST: u32 = 20;

pub struct Provisioning {
    pub db: Db,
    pub ca: FleetCa,
    /// One bucket per claim the broker let ask (its ACL names the users).
    pub limits: std::sync::Mutex<std::collections::HashMap<String, crate::rate::SharedLimit>>,
}

impl Provisioning {
    pub fn new(db: Db, ca: FleetCa) -> Provisioning {
        Provisioning {
            db,
            ca,
            limits: Default::default(),
        }
    }

    /// Whether claim `claim` may make one more request now.
    fn within_limit(&self, claim: &str) -> bool {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits
            .entry(claim.to_string())
            .or_insert_with(|| {
                crate::rate::SharedLimit::new(CLAIM_REQUESTS_PER_S, CLAIM_REQUEST_BURST)
            })
            .allow()
    }

    /// Answer the request `payload` on claim `claim`'s topic for request id
    /// `request`, at `now_ms`.
    pub async fn handle(
        &self,
        claim: &str,
        request: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Response, sqlx::Error> {
        let outcome = self.decide(claim, request, payload, now_ms).await?;
        let (outcome_name, reason) = match &outcome.answer {
            Ok(_) => ("issued", None),
            Err(reason) => ("refused", Some(reason.clone())),
        };
        sqlx::query(
            "INSERT INTO provisioning_log (id, at, claim, serial, request, outcome, reason, gateway)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(format!("{:016x}", crate::value::random_u64()))
        .bind(now_ms as i64)
        .bind(claim)
        .bind(outcome.serial.as_deref())
        .bind(request)
        .bind(outcome_name)
        .bind(reason.as_deref())
        .bind(outcome.gateway.as_deref())
        .execute(self.db.pool())
        .await?;
        let serial = outcome.serial.as_deref().unwrap_or("?");
        Ok(match outcome.answer {
            Ok(issued) => {
                let gateway = outcome.gateway.unwrap_or_default();
                tracing::info!(%claim, %serial, %gateway, "provisioned");
                Response::Issued {
                    request: request.to_string(),
                    gateway,
                    labels: issued.labels,
                    certificate: issued.certificate,
                    not_after: issued.not_after,
                }
            }
            Err(reason) => {
                tracing::warn!(%claim, %serial, %request, "provisioning refused: {reason}");
                Response::Refused {
                    request: request.to_string(),
                    reason,
                }
            }
        })
    }

    async fn decide(
        &self,
        claim: &str,
        request_id: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Outcome, sqlx::Error> {
        let mut outcome = Outcome {
            serial: None,
            gateway: None,
            answer: Err(String::new()),
        };
        let refuse = |mut outcome: Outcome, reason: String| {
            outcome.answer = Err(reason);
            Ok(outcome)
        };
        // Before any work a request costs (the database, the signature): a
        // claim the broker let in can flood, even one revoked or unknown.
        if !self.within_limit(claim) {
            return refuse(
                outcome,
                format!(
                    "too many requests with claim {claim:?} (more than {CLAIM_REQUESTS_PER_S} a second): ask again later"
                ),
            );
        }
        let request: Request = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => return refuse(outcome, format!("the request cannot be read: {e}")),
        };
        outcome.serial = Some(request.serial.clone());
        if request.request != request_id {
            return refuse(outcome, "the request's id is not its topic's".into());
        }
        // Ids older than a request may be are of no use against a replay
        // (such a request is refused as stale anyway).
        sqlx::query("DELETE FROM provisioning_requests WHERE at < $1")
            .bind(now_ms.saturating_sub(2 * MAX_REQUEST_AGE_MS) as i64)
            .execute(self.db.pool())
            .await?;
        let first_time = sqlx::query(
            "INSERT INTO provisioning_requests (request, claim, at) VALUES ($1, $2, $3)
             ON CONFLICT (request) DO NOTHING",
        )
        .bind(request_id)
        .bind(claim)
        .bind(now_ms as i64)
        .execute(self.db.pool())
        .await?
        .rows_affected()
            == 1;
        if !first_time {
            return refuse(outcome, format!("replayed request {request_id}"));
        }
        if request.time.abs_diff(now_ms) > MAX_REQUEST_AGE_MS {
            return refuse(
                outcome,
                format!(
                    "the request is stale: made {} s from serve's clock, more than {} s",
                    request.time.abs_diff(now_ms) / 1000,
                    MAX_REQUEST_AGE_MS / 1000
                ),
            );
        }
        let revoked: Option<Option<i64>> =
            sqlx::query("SELECT revoked_at FROM provisioning_claims WHERE name = $1")
                .bind(claim)
                .fetch_optional(self.db.pool())
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        match revoked {
            None => return refuse(outcome, format!("unknown claim {claim:?}")),
            Some(Some(_)) => return refuse(outcome, format!("claim {claim:?} is revoked")),
            Some(None) => {}
        }
        let csr = match CertificateSigningRequestParams::from_pem(&request.csr) {
            Ok(csr) => csr,
            Err(e) => return refuse(outcome, format!("the CSR: {e}")),
        };
        let names: Vec<String> = csr
            .params
            .distinguished_name
            .iter()
            .filter(|(t, _)| **t == DnType::CommonName)
            .map(|(_, v)| dn_text(v))
            .collect();
        if names != [request_id] {
            return refuse(outcome, "the CSR is not for this request".into());
        }
        let key_digest =
            crate::deploy::artifacts::digest(rcgen::PublicKeyData::der_bytes(&csr.public_key));
        let Some(allowed) =
            sqlx::query("SELECT gateway, labels, deploy FROM provisioning_allow WHERE serial = $1")
                .bind(&request.serial)
                .fetch_optional(self.db.pool())
                .await?
        else {
            return refuse(
                outcome,
                format!("serial {:?} is not on the allow-list", request.serial),
            );
        };
        let gateway: String = allowed.try_get(0)?;
        let labels: BTreeMap<String, String> =
            serde_json::from_str(&allowed.try_get::<String, _>(1)?).unwrap_or_default();
        let deploy: Vec<String> =
            serde_json::from_str(&allowed.try_get::<String, _>(2)?).unwrap_or_default();
        outcome.gateway = Some(gateway.clone());
        let holder: Option<String> =
            sqlx::query("SELECT public_key FROM provisioned WHERE gateway = $1")
                .bind(&gateway)
                .fetch_optional(self.db.pool())
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        // Empty: released by the operator (its key forgotten), and issued
        // afresh to whichever key asks next, as to a new gateway.
        if holder
            .as_deref()
            .is_some_and(|h| !h.is_empty() && h != key_digest)
        {
            return refuse(
                outcome,
                format!("gateway id {gateway:?} is already taken by another gateway's key"),
            );
        }
        let reissue = holder.as_deref() == Some(key_digest.as_str());
        if holder.is_none() {
            let seen = sqlx::query("SELECT 1 FROM gateways WHERE gateway = $1")
                .bind(&gateway)
                .fetch_optional(self.db.pool())
                .await?
                .is_some();
            if seen {
                return refuse(
                    outcome,
                    format!("gateway id {gateway:?} is already in use by a gateway serve knows"),
                );
            }
        }
        let (certificate, not_after) = match self.ca.issue(&gateway, csr.public_key, now_ms) {
            Ok(issued) => issued,
            Err(e) => return refuse(outcome, format!("cannot sign a certificate: {e}")),
        };
        sqlx::query(
            "INSERT INTO provisioned (gateway, serial, claim, public_key, issued_at, not_after)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (gateway) DO UPDATE
             SET serial = $2, claim = $3, public_key = $4, issued_at = $5, not_after = $6",
        )
        .bind(&gateway)
        .bind(&request.serial)
        .bind(claim)
        .bind(&key_digest)
        .bind(now_ms as i64)
        .bind(not_after as i64)
        .execute(self.db.pool())
        .await?;
        // A gateway issued again (it lost the answer) already has its
        // first versions on the way.
        if !reissue {
            for rollout in &deploy {
                match super::rollouts::for_new_gateway(&self.db, rollout, &gateway).await? {
                    Ok(id) => {
                        tracing::info!(%gateway, from = %rollout, rollout = %id, "first version on its way")
                    }
                    Err(e) => tracing::warn!(%gateway, from = %rollout, "no first version: {e}"),
                }
            }
        }
        outcome.answer = Ok(Issued {
            labels,
            certificate,
            not_after,
        });
        Ok(outcome)
    }
}

/// A distinguished name's value as text (empty if it is not text).
fn dn_text(value: &rcgen::DnValue) -> String {
    match value {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        _ => String::new(),
    }
}

/// Everything the provisioning page shows: claims, the allow-list, the
/// identities issued, and the latest requests.
pub async fn list(db: &Db) -> Result<Value, sqlx::Error> {
    let claims =
        sqlx::query("SELECT name, created_at, revoked_at FROM provisioning_claims ORDER BY name")
            .fetch_all(db.pool())
            .await?;
    let allow = sqlx::query(
        "SELECT serial, gateway, labels, deploy, created_at FROM provisioning_allow ORDER BY serial",
    )
    .fetch_all(db.pool())
    .await?;
    let issued = sqlx::query(
        "SELECT gateway, serial, claim, issued_at, not_after FROM provisioned ORDER BY gateway",
    )
    .fetch_all(db.pool())
    .await?;
    let log = sqlx::query(
        "SELECT at, claim, serial, request, outcome, reason, gateway FROM provisioning_log
         ORDER BY at DESC, id LIMIT $1",
    )
    .bind(LOG_LIMIT)
    .fetch_all(db.pool())
    .await?;
    Ok(json!({
        "claims": rows_json(&claims, &[("name", Col::Text), ("created_at", Col::Int), ("revoked_at", Col::OptInt)])?,
        "allow": rows_json(&allow, &[("serial", Col::Text), ("gateway", Col::Text), ("labels", Col::Json), ("deploy", Col::Json), ("created_at", Col::Int)])?,
        "issued": rows_json(&issued, &[("gateway", Col::Text), ("serial", Col::Text), ("claim", Col::Text), ("issued_at", Col::Int), ("not_after", Col::Int)])?,
        "log": rows_json(&log, &[("at", Col::Int), ("claim", Col::Text), ("serial", Col::OptText), ("request", Col::Text), ("outcome", Col::Text), ("reason", Col::OptText), ("gateway", Col::OptText)])?,
    }))
}

/// Accept a claim: `Ok(false)` if it was accepted before (a revoked claim
/// stays revoked).
pub async fn add_claim(db: &Db, name: &str) -> Result<Result<bool, String>, sqlx::Error> {
    if let Err(m) = crate::model::check_name(name) {
        return Ok(Err(format!("claim: {m}")));
    }
    let added = on_claim(
        db,
        "INSERT INTO provisioning_claims (name, created_at) VALUES ($1, $2)
         ON CONFLICT (name) DO NOTHING",
        name,
        "claim accepted",
    )
    .await?;
    Ok(Ok(added))
}

/// Run `sql` on claim `name` (`$1`) at the time now (`$2`): whether it
/// changed a row (then logged as `done`).
async fn on_claim(db: &Db, sql: &'static str, name: &str, done: &str) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(sql)
        .bind(name)
        .bind(now_ms())
        .execute(db.pool())
        .await?
        .rows_affected()
        == 1;
    if changed {
        tracing::info!(claim = %name, "{done}");
    }
    Ok(changed)
}

/// Revoke a claim: `None` if there is no such claim.
pub async fn revoke_claim(db: &Db, name: &str) -> Result<Option<()>, sqlx::Error> {
    let found = on_claim(
        db,
        "UPDATE provisioning_claims SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1",
        name,
        "claim revoked",
    )
    .await?;
    Ok(found.then_some(()))
}

/// Release gateway `gateway`'s id from the key it was issued for, so that
/// the next request for it (a gateway whose data was wiped, with a new
/// key) is issued again: `None` if it was never issued.
pub async fn release(db: &Db, gateway: &str) -> Result<Option<()>, sqlx::Error> {
    let found = sqlx::query("UPDATE provisioned SET public_key = '' WHERE gateway = $1")
        .bind(gateway)
        .execute(db.pool())
        .await?
        .rows_affected()
        == 1;
    if found {
        tracing::info!(%gateway, "released: the next request for it is issued afresh");
    }
    Ok(found.then_some(()))
}

/// An allow-list entry, as `POST /api/v1/provisioning/allow` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub serial: String,
    pub gateway: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Rollouts (by id, each with a label-selector target) whose version
    /// the gateway starts with.
    #[serde(default)]
    pub deploy: Vec<String>,
}

/// Add (or replace) an allow-list entry; why not, if it is refused.
pub async fn allow(db: &Db, entry: AllowEntry) -> Result<Result<(), String>, sqlx::Error> {
    if let Err(m) = crate::config::check_serial(&entry.serial) {
        return Ok(Err(format!("serial: {m}")));
    }
    if let Err(m) = crate::model::check_name(&entry.gateway) {
        return Ok(Err(format!("gateway: {m}")));
    }
    if let Err((key, m)) = crate::wire::selector::check_labels(&entry.labels) {
        return Ok(Err(format!("{key}: {m}")));
    }
    for rollout in &entry.deploy {
        if let Err(why) = super::rollouts::first_version_source(db, rollout).await? {
            return Ok(Err(format!("deploy: {why}")));
        }
    }
    let taken: Option<String> =
        sqlx::query("SELECT serial FROM provisioning_allow WHERE gateway = $1 AND serial <> $2")
            .bind(&entry.gateway)
            .bind(&entry.serial)
            .fetch_optional(db.pool())
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
    if let Some(other) = taken {
        return Ok(Err(format!(
            "gateway {:?} is already allowed for serial {other:?}",
            entry.gateway
        )));
    }
    sqlx::query(
        "INSERT INTO provisioning_allow (serial, gateway, labels, deploy, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (serial) DO UPDATE SET gateway = $2, labels = $3, deploy = $4",
    )
    .bind(&entry.serial)
    .bind(&entry.gateway)
    .bind(serde_json::to_string(&entry.labels).unwrap_or_default())
    .bind(serde_json::to_string(&entry.deploy).unwrap_or_default())
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    tracing::info!(serial = %entry.serial, gateway = %entry.gateway, "allowed");
    Ok(Ok(()))
}
