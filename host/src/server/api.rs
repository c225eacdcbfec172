//! `serve`'s HTTP API (JSON, described by `openapi.json`, served at
//! `/api/v1/openapi.json`). Reads come from the database; a desired change
//! or an action is checked against the device's model, as its gateway
//! announced it, before anything is published.
//!
//! Tokens: with a tokens file, every request needs `Authorization: Bearer
//! TOKEN`; a `reader` token may read, an `operator` token may also change
//! things. Refusals are logged without the token.

use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::answers::Answers;
use super::auth::{Role, Tokens};
use super::db::Db;
use super::ingest::Counters;
use crate::model::DeviceModel;
use crate::wire::selector::Selector;
use crate::wire::topics;
use std::collections::BTreeMap;

/// The API's description, checked against the real responses by the tests.
pub const OPENAPI: &str = include_str!("openapi.json");

/// How long an action call waits for the app's answer.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest rollout request: a component of the largest size a gateway
/// takes, base64, with its manifests.
const ROLLOUT_BODY_LIMIT: usize = crate::deploy::MAX_ARTIFACT_BYTES / 3 * 4 + (1 << 20);

/// Points a query returns at most without `limit`.
const DEFAULT_POINT_LIMIT: i64 = 10_000;

#[derive(Clone)]
pub struct Api {
    pub db: Db,
    pub client: AsyncClient,
    pub answers: Arc<Answers>,
    pub counters: Arc<Counters>,
    pub tokens: Option<Arc<Tokens>>,
}

/// An error answer: a status and what went wrong.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        tracing::error!("database: {e}");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database cannot answer now".into(),
        )
    }
}

type Answer = Result<Json<Value>, ApiError>;

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/gateways", get(gateways))
        .route("/api/v1/gateways/{gateway}", get(gateway))
        .route("/api/v1/gateways/{gateway}/devices", get(devices))
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/twin",
            get(twin),
        )
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/model",
            get(model),
        )
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/twin/desired",
            put(set_desired),
        )
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/series/{series}",
            get(series),
        )
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/actions/{action}",
            post(call_action),
        )
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/tables/{table}",
            get(synced_rows),
        )
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/tables/{table}/overwritten",
            get(synced_overwritten),
        )
        .route(
            "/api/v1/gateways/{gateway}/devices/{device}/tables/{table}/edits",
            post(edit_table),
        )
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/deployments", get(deployments))
        .route(
            "/api/v1/rollouts",
            get(rollouts)
                .post(create_rollout)
                .layer(axum::extract::DefaultBodyLimit::max(ROLLOUT_BODY_LIMIT)),
        )
        .route("/api/v1/rollouts/{id}", get(rollout))
        .route("/api/v1/rollouts/{id}/abort", post(abort_rollout))
        .route("/api/v1/provisioning", get(provisioning))
        .route("/api/v1/provisioning/claims", post(add_claim))
        .route(
            "/api/v1/provisioning/claims/{name}/revoke",
            post(revoke_claim),
        )
        .route("/api/v1/provisioning/allow", post(allow))
        .route(
            "/api/v1/provisioning/issued/{gateway}/release",
            post(release),
        )
        .fallback(|| async { ApiError::not_found("no such API path (see /api/v1/openapi.json)") })
        .layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api)
}

/// Tokens and roles, before anything else is done.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(tokens) = &api.tokens else {
        return next.run(request).await;
    };
    let needed = if request.method() == Method::GET || request.method() == Method::HEAD {
        Role::Reader
    } else {
        Role::Operator
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refusal = match presented.map(|t| tokens.role(t)) {
        None => Some((StatusCode::UNAUTHORIZED, "a bearer token is needed")),
        Some(None) => Some((StatusCode::UNAUTHORIZED, "the token is not known")),
        Some(Some(role)) if !role.may(needed) => Some((
            StatusCode::FORBIDDEN,
            "the token's role may only read (an operator token may change things)",
        )),
        Some(Some(_)) => None,
    };
    match refusal {
        None => next.run(request).await,
        Some((status, why)) => {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), "refused: {why}");
            ApiError(status, why.to_string()).into_response()
        }
    }
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn stats(State(api): State<Api>) -> Answer {
    let (batches, points) = api.db.totals().await?;
    let c = &api.counters;
    Ok(Json(json!({
        "database": match api.db.backend {
            super::db::Backend::Sqlite => "sqlite",
            super::db::Backend::Postgres => "postgres",
        },
        "stored_batches": batches,
        "stored_points": points,
        "messages": c.messages.load(Ordering::Relaxed),
        "points": c.points.load(Ordering::Relaxed),
        "duplicates": c.duplicates.load(Ordering::Relaxed),
        "refused": c.refused.load(Ordering::Relaxed),
        "commits": c.commits.load(Ordering::Relaxed),
        "commit_failures": c.commit_failures.load(Ordering::Relaxed),
        "drives_rollouts": c.drives_rollouts.load(Ordering::Relaxed),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayQuery {
    /// A label selector (`site=plant-1,ring!=canary`), as deployments use.
    selector: Option<String>,
}

async fn gateways(
    State(api): State<Api>,
    query: Result<Query<GatewayQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let selector = q
        .selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| ApiError::bad(format!("selector: {e}")))?;
    let mut gateways = api.db.gateways().await?;
    if let Some(selector) = selector {
        gateways.retain(|g| {
            serde_json::from_value::<BTreeMap<String, String>>(g["labels"].clone())
                .is_ok_and(|labels| selector.matches(&labels))
        });
    }
    Ok(Json(json!({ "gateways": gateways })))
}

async fn gateway(State(api): State<Api>, Path(gateway): Path<String>) -> Answer {
    let mut found = api
        .db
        .gateway(&gateway)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no gateway {gateway:?} has reported")))?;
    found["history"] = Value::Array(api.db.history(&gateway).await?);
    Ok(Json(found))
}

async fn devices(State(api): State<Api>, Path(gateway): Path<String>) -> Answer {
    Ok(Json(json!({ "devices": api.db.devices(&gateway).await? })))
}

async fn twin(State(api): State<Api>, Path((gateway, device)): Path<(String, String)>) -> Answer {
    api.db
        .twin(&gateway, &device)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no twin of {gateway}/{device} is stored")))
}

/// The device's model as its gateway announced it: what the console builds
/// its forms, charts and buttons from.
async fn model(State(api): State<Api>, Path((gateway, device)): Path<(String, String)>) -> Answer {
    let text = announced_model(&api, &gateway, &device).await?;
    serde_json::from_str(&text).map(Json).map_err(|e| {
        ApiError(
            StatusCode::CONFLICT,
            format!("the stored model of {gateway}/{device} is not JSON: {e}"),
        )
    })
}

/// The device's model, or why there is none to check against.
async fn model_of(api: &Api, gateway: &str, device: &str) -> Result<DeviceModel, ApiError> {
    let text = announced_model(api, gateway, device).await?;
    DeviceModel::parse(&text).map_err(|e| {
        ApiError(
            StatusCode::CONFLICT,
            format!("the stored model of {gateway}/{device} is not valid: {e}"),
        )
    })
}

/// The model's text, or why there is none.
async fn announced_model(api: &Api, gateway: &str, device: &str) -> Result<String, ApiError> {
    let announced = api.db.model(gateway, device).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "gateway {gateway:?} has announced no device {device:?}"
        ))
    })?;
    announced.ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            format!("gateway {gateway:?} has not announced the model of {device:?}, so nothing can be checked or sent"),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredBody {
    attributes: serde_json::Map<String, Value>,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("{what}: {e}")))
}

async fn set_desired(
    State(api): State<Api>,
    Path((gateway, device)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let desired: DesiredBody = body(&bytes, "the desired change")?;
    if desired.attributes.is_empty() {
        return Err(ApiError::bad("the desired change names no attribute"));
    }
    let model = model_of(&api, &gateway, &device).await?;
    let rejected: serde_json::Map<String, Value> = desired
        .attributes
        .iter()
        .filter_map(|(name, value)| {
            model
                .check_desired(name, value)
                .err()
                .map(|e| (name.clone(), Value::String(e)))
        })
        .collect();
    if !rejected.is_empty() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the device's model refuses: {}",
                serde_json::to_string(&rejected).unwrap_or_default()
            ),
        ));
    }
    // Versions only grow: the time in milliseconds, or one past the last.
    let last = api
        .db
        .twin(&gateway, &device)
        .await?
        .and_then(|t| t["desired_version"].as_i64())
        .unwrap_or(0);
    let version = ((crate::value::now_ns() / 1_000_000) as i64).max(last + 1);
    let message = json!({ "version": version, "attributes": desired.attributes });
    let topic = topics::topic(&gateway, &device, "twin/desired");
    api.client
        .publish(topic, QoS::AtLeastOnce, true, message.to_string())
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot publish: {e}"),
            )
        })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "version": version }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    from: Option<i64>,
    to: Option<i64>,
    field: Option<String>,
    bucket_ms: Option<i64>,
    limit: Option<i64>,
}

async fn series(
    State(api): State<Api>,
    Path((gateway, device, series)): Path<(String, String, String)>,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(i64::MAX);
    if from >= to {
        return Err(ApiError::bad(format!(
            "from ({from}) must be before to ({to})"
        )));
    }
    match (q.bucket_ms, q.field) {
        (Some(ms), Some(field)) => {
            if !(1..=i64::MAX / 1_000_000).contains(&ms) {
                return Err(ApiError::bad("bucket_ms must be at least 1"));
            }
            if q.from.is_none() {
                return Err(ApiError::bad("buckets need a from time"));
            }
            let buckets = api
                .db
                .buckets(&gateway, &device, &series, &field, from, to, ms * 1_000_000)
                .await?;
            Ok(Json(
                json!({ "field": field, "bucket_ms": ms, "buckets": buckets }),
            ))
        }
        (Some(_), None) => Err(ApiError::bad("bucket_ms needs a field")),
        (None, _) => {
            let limit = q.limit.unwrap_or(DEFAULT_POINT_LIMIT);
            if limit < 1 {
                return Err(ApiError::bad("limit must be at least 1"));
            }
            let points = api
                .db
                .points(&gateway, &device, &series, from, to, limit)
                .await?;
            Ok(Json(json!({ "points": points })))
        }
    }
}

/// The most rows or records one read of a synced table returns.
const MAX_TABLE_PAGE: i64 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableQuery {
    /// Rows after this key (a page's last key).
    after: Option<String>,
    limit: Option<i64>,
}

fn table_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(1_000) {
        n if (1..=MAX_TABLE_PAGE).contains(&n) => Ok(n),
        n => Err(ApiError::bad(format!(
            "limit must be between 1 and {MAX_TABLE_PAGE}, not {n}"
        ))),
    }
}

/// A synced table's rows, a page at a time in key order.
async fn synced_rows(
    State(api): State<Api>,
    Path((gateway, device, table)): Path<(String, String, String)>,
    query: Result<Query<TableQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let limit = table_limit(q.limit)?;
    let after = q.after.unwrap_or_default();
    let rows = api
        .db
        .synced_rows(&gateway, &device, &table, &after, limit)
        .await?;
    Ok(Json(json!({ "table": table, "rows": rows })))
}

/// What the merge of a synced table overwrote, newest first.
async fn synced_overwritten(
    State(api): State<Api>,
    Path((gateway, device, table)): Path<(String, String, String)>,
    query: Result<Query<TableQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    if q.after.is_some() {
        return Err(ApiError::bad("overwritten records take a limit only"));
    }
    let limit = table_limit(q.limit)?;
    let records = api
        .db
        .synced_overwritten(&gateway, &device, &table, limit)
        .await?;
    Ok(Json(json!({ "table": table, "overwritten": records })))
}

/// One edit of a synced table, as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum TableEdit {
    Put(EditRow),
    Update(EditRow),
    Delete(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditRow {
    key: String,
    columns: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditsBody {
    edits: Vec<TableEdit>,
}

/// The most edits one request makes (as one changeset down).
const MAX_TABLE_EDITS: usize = 1_000;

/// The server's edits to a synced table: checked against the device's
/// model as its gateway announced it (the table, its columns, their types
/// and ranges), made all or none as the server's side, and sent down.
async fn edit_table(
    State(api): State<Api>,
    Path((gateway, device, table)): Path<(String, String, String)>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: EditsBody = body(&bytes, "the edits")?;
    if body.edits.is_empty() || body.edits.len() > MAX_TABLE_EDITS {
        return Err(ApiError::bad(format!(
            "give 1 to {MAX_TABLE_EDITS} edits, not {}",
            body.edits.len()
        )));
    }
    let model = model_of(&api, &gateway, &device).await?;
    let unprocessable = |m: String| ApiError(StatusCode::UNPROCESSABLE_ENTITY, m);
    let spec = model.table(&table).map_err(unprocessable)?;
    let columns = |row: &EditRow, whole: bool| -> Result<_, ApiError> {
        if row.key.is_empty() || row.key.len() > crate::synced::MAX_KEY_BYTES {
            return Err(unprocessable(format!(
                "a key must be 1 to {} bytes",
                crate::synced::MAX_KEY_BYTES
            )));
        }
        spec.columns_from_json(&table, &row.columns, whole)
            .map_err(unprocessable)
    };
    let mut edits = Vec::with_capacity(body.edits.len());
    for edit in &body.edits {
        edits.push(match edit {
            TableEdit::Put(row) => crate::synced::store::Edit::Put {
                key: row.key.clone(),
                columns: columns(row, true)?,
            },
            TableEdit::Update(row) if row.columns.is_empty() => {
                return Err(unprocessable("an update needs at least one column".into()));
            }
            TableEdit::Update(row) => crate::synced::store::Edit::Update {
                key: row.key.clone(),
                columns: columns(row, false)?,
            },
            TableEdit::Delete(key) => crate::synced::store::Edit::Delete { key: key.clone() },
        });
    }
    let changeset = super::tables::edit(&api.db, &gateway, &device, &table, spec.rules(), &edits)
        .await
        .map_err(|e| match e {
            super::tables::EditError::Database(e) => ApiError::from(e),
            other => ApiError(StatusCode::CONFLICT, other.to_string()),
        })?;
    // Committed: a send that fails now is made good by the gateway's next
    // pull, so the answer says so rather than failing.
    let sent = super::tables::send_down(&api.client, &gateway, &device, &changeset).await;
    if let Err(e) = &sent {
        tracing::warn!(
            gateway,
            device,
            table,
            "a changeset down was not sent now: {e}"
        );
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": changeset.id, "seq": changeset.seq, "sent": sent.is_ok() })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    argument: Option<Value>,
}

async fn call_action(
    State(api): State<Api>,
    Path((gateway, device, action)): Path<(String, String, String)>,
    bytes: axum::body::Bytes,
) -> Answer {
    let call: ActionBody = if bytes.is_empty() {
        ActionBody { argument: None }
    } else {
        body(&bytes, "the action call")?
    };
    let model = model_of(&api, &gateway, &device).await?;
    model
        .check_action(&action, call.argument.as_ref())
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let id = format!("serve-{:016x}", crate::value::random_u64());
    let answer = api.answers.expect(&gateway, &device, &action, &id);
    let request = crate::wire::protocol::ActionRequest {
        id: id.clone(),
        argument: call.argument,
    };
    let topic = topics::topic(&gateway, &device, &format!("action/{action}/req"));
    let published = api
        .client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&request).unwrap_or_default(),
        )
        .await;
    if let Err(e) = published {
        api.answers.forget(&gateway, &device, &action, &id);
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot publish: {e}"),
        ));
    }
    match tokio::time::timeout(ACTION_TIMEOUT, answer).await {
        Ok(Ok(response)) => match response.error {
            Some(error) => Err(ApiError(StatusCode::BAD_GATEWAY, error)),
            None => Ok(Json(json!({ "id": id, "result": response.result }))),
        },
        _ => {
            api.answers.forget(&gateway, &device, &action, &id);
            Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no answer from {gateway}/{device} within {} s",
                    ACTION_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    gateway: Option<String>,
    device: Option<String>,
    limit: Option<i64>,
}

async fn alerts(
    State(api): State<Api>,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(1000);
    if limit < 1 {
        return Err(ApiError::bad("limit must be at least 1"));
    }
    let alerts = api
        .db
        .alerts(q.gateway.as_deref(), q.device.as_deref(), limit)
        .await?;
    Ok(Json(json!({ "alerts": alerts })))
}

async fn rollouts(State(api): State<Api>) -> Answer {
    Ok(Json(
        json!({ "rollouts": super::rollouts::list(&api.db).await? }),
    ))
}

async fn rollout(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    super::rollouts::get(&api.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id:?}")))
}

async fn create_rollout(
    State(api): State<Api>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: super::rollouts::NewRollout = body(&bytes, "the rollout")?;
    match super::rollouts::create(&api.db, new).await? {
        Ok(created) => Ok((StatusCode::CREATED, Json(created))),
        Err(why) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, why)),
    }
}

async fn abort_rollout(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    match super::rollouts::abort(&api.db, &id).await? {
        Some(true) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "state": "aborting" })),
        )),
        Some(false) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("rollout {id} is not running: nothing to abort"),
        )),
        None => Err(ApiError::not_found(format!("no rollout {id:?}"))),
    }
}

async fn provisioning(State(api): State<Api>) -> Answer {
    Ok(Json(super::provisioning::list(&api.db).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClaim {
    name: String,
}

async fn add_claim(
    State(api): State<Api>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let claim: NewClaim = body(&bytes, "the claim")?;
    match super::provisioning::add_claim(&api.db, &claim.name).await? {
        Ok(true) => Ok((StatusCode::CREATED, Json(json!({ "name": claim.name })))),
        Ok(false) => Ok((StatusCode::OK, Json(json!({ "name": claim.name })))),
        Err(why) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, why)),
    }
}

async fn revoke_claim(State(api): State<Api>, Path(name): Path<String>) -> Answer {
    match super::provisioning::revoke_claim(&api.db, &name).await? {
        Some(()) => Ok(Json(json!({ "name": name, "revoked": true }))),
        None => Err(ApiError::not_found(format!("no claim {name:?}"))),
    }
}

async fn release(State(api): State<Api>, Path(gateway): Path<String>) -> Answer {
    match super::provisioning::release(&api.db, &gateway).await? {
        Some(()) => Ok(Json(json!({ "gateway": gateway, "released": true }))),
        None => Err(ApiError::not_found(format!(
            "no identity issued to {gateway:?}"
        ))),
    }
}

async fn allow(State(api): State<Api>, bytes: axum::body::Bytes) -> Answer {
    let entry: super::provisioning::AllowEntry = body(&bytes, "the allow-list entry")?;
    let (serial, gateway) = (entry.serial.clone(), entry.gateway.clone());
    match super::provisioning::allow(&api.db, entry).await? {
        Ok(()) => Ok(Json(json!({ "serial": serial, "gateway": gateway }))),
        Err(why) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, why)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentQuery {
    gateway: Option<String>,
}

async fn deployments(
    State(api): State<Api>,
    query: Result<Query<DeploymentQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    Ok(Json(
        json!({ "deployments": api.db.deployments(q.gateway.as_deref()).await? }),
    ))
}
