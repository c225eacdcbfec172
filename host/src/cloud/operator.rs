//! `wasmgate cloud ...`: the operator's (the enterprise's) side of the
//! protocol, through any broker: watch what gateways send, read and set
//! twins, invoke actions, list gateways.

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use std::time::Duration;
use tokio::time::Instant;

use super::protocol::{Ack, ActionRequest, ActionResponse, Desired, Status};
use super::topics::{self, Kind};
use crate::config::BrokerSettings;

/// A short-lived operator connection.
pub struct Session {
    client: AsyncClient,
    events: EventLoop,
    timeout: Duration,
    url: String,
}

impl Session {
    /// Connect (clean session) or fail within `timeout` with the reason.
    pub async fn connect(settings: &BrokerSettings, timeout: Duration) -> anyhow::Result<Session> {
        let options = super::mqtt_options(settings, true)?;
        let (client, mut events) = AsyncClient::new(options, 64);
        super::no_delay(&mut events);
        let url = settings.url();
        let connected = tokio::time::timeout(timeout, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(())) => Ok(Session {
                client,
                events,
                timeout,
                url,
            }),
            Ok(Err(e)) => anyhow::bail!("cannot connect to the broker {url}: {e}"),
            Err(_) => anyhow::bail!(
                "cannot connect to the broker {url}: no answer within {} s",
                timeout.as_secs()
            ),
        }
    }

    /// Subscribe and wait for the broker to confirm.
    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("the connection to {} failed: {e}", self.url),
                Err(_) => anyhow::bail!("the broker did not confirm the subscription to {filter}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        Ok(())
    }

    /// The next message, or `None` at `deadline`.
    pub async fn next(&mut self, deadline: Option<Instant>) -> anyhow::Result<Option<Publish>> {
        loop {
            let event = match deadline {
                Some(d) => match tokio::time::timeout_at(d, self.events.poll()).await {
                    Ok(e) => e,
                    Err(_) => return Ok(None),
                },
                None => self.events.poll().await,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => return Ok(Some(p)),
                Ok(_) => {}
                Err(e) => anyhow::bail!("the connection to {} failed: {e}", self.url),
            }
        }
    }

    /// The client and its event loop, for commands that run their own loop
    /// (content transfers, which live through broker restarts).
    pub fn parts(&mut self) -> (&AsyncClient, &mut EventLoop) {
        (&self.client, &mut self.events)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }
}

/// `GATEWAY/DEVICE` into its two parts.
pub fn split_target(target: &str) -> anyhow::Result<(&str, &str)> {
    match target.split_once('/') {
        Some((g, d)) if !g.is_empty() && !d.is_empty() && !d.contains('/') => Ok((g, d)),
        _ => anyhow::bail!("{target:?} is not GATEWAY/DEVICE"),
    }
}

/// A command-line value: JSON if it parses (`21.5`, `true`, `"x"`), else text.
pub fn parse_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// `watch`: print every message under `wg/v1/[GATEWAY/]#` until interrupted.
pub async fn watch(session: &mut Session, gateway: Option<&str>) -> anyhow::Result<()> {
    let filter = match gateway {
        Some(g) => format!("{}/{g}/#", topics::ROOT),
        None => format!("{}/#", topics::ROOT),
    };
    session.subscribe(&filter).await?;
    eprintln!("watching {filter} on {} (Ctrl-C to stop)", session.url);
    while let Some(message) = session.next(None).await? {
        println!("{}", describe(&message));
    }
    Ok(())
}

/// One line for a message: what it is, where from, and its payload.
pub fn describe(message: &Publish) -> String {
    let payload = String::from_utf8_lossy(&message.payload);
    let payload: String = if payload.len() > 2000 {
        format!("{}...", &payload[..payload.floor_char_boundary(2000)])
    } else {
        payload.into_owned()
    };
    match topics::parse(&message.topic) {
        Some(t) => {
            let what = match t.kind {
                Kind::Status => "status".to_string(),
                Kind::Registration if message.payload.is_empty() => "unregistered".to_string(),
                Kind::Registration => "registered".to_string(),
                Kind::Model => "model".to_string(),
                Kind::Reported => "reported".to_string(),
                Kind::Desired => "desired".to_string(),
                Kind::Ack => "ack".to_string(),
                Kind::Telemetry(s) => format!("telemetry {s}"),
                Kind::Alert(a) => format!("alert {a}"),
                Kind::Changeset(t) => format!("changeset of table {t}"),
                Kind::ChangesetDown(t) => format!("server changeset of table {t}"),
                Kind::Pull(t) => format!("pull of table {t}"),
                Kind::ActionRequest(a) => format!("action {a} request"),
                Kind::ActionResponse(a) => format!("action {a} response"),
                Kind::DeployRequest => "deployment request".to_string(),
                Kind::DeployRollback => "rollback order".to_string(),
                Kind::DeployChunk(id, i) => {
                    return format!(
                        "{}/{} deployment {id} chunk {i} ({} bytes)",
                        t.gateway,
                        t.device,
                        message.payload.len()
                    );
                }
                Kind::DeployResponse => "deployment".to_string(),
                Kind::DeployKeys => "key rotation".to_string(),
                Kind::UploadChunk(id, i) | Kind::DownloadChunk(id, i) => {
                    let way = if matches!(t.kind, Kind::UploadChunk(..)) {
                        "upload"
                    } else {
                        "download"
                    };
                    return format!(
                        "{}/{} {way} {id} chunk {i} ({} bytes)",
                        t.gateway,
                        t.device,
                        message.payload.len()
                    );
                }
                Kind::UploadManifest(id) => format!("upload {id}"),
                Kind::UploadAck(id) => format!("upload {id} ack"),
                Kind::DownloadManifest(id) => format!("download {id}"),
                Kind::DownloadAck(id) => format!("download {id} ack"),
            };
            format!("{}/{} {what}: {payload}", t.gateway, t.device)
        }
        None => format!("{}: {payload}", message.topic),
    }
}

/// `twin get`: the retained reported state, pretty-printed.
pub async fn twin_get(session: &mut Session, gateway: &str, device: &str) -> anyhow::Result<()> {
    let topic = topics::topic(gateway, device, "twin/reported");
    session.subscribe(&topic).await?;
    let deadline = session.deadline();
    while let Some(message) = session.next(Some(deadline)).await? {
        if message.topic == topic {
            let json: serde_json::Value = serde_json::from_slice(&message.payload)
                .context("the reported state is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&json)?);
            return Ok(());
        }
    }
    anyhow::bail!("no reported state for {gateway}/{device} (has it reported yet?)")
}

/// `twin set`: send desired values, wait for the gateway's ack, print it.
/// Returns whether everything was accepted.
pub async fn twin_set(
    session: &mut Session,
    gateway: &str,
    device: &str,
    values: &[String],
) -> anyhow::Result<bool> {
    let mut attributes = serde_json::Map::new();
    for pair in values {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not NAME=VALUE"))?;
        attributes.insert(name.to_string(), parse_value(value));
    }
    // Milliseconds since the epoch: grows with every change an operator makes.
    let version = crate::value::now_ns() / 1_000_000;
    let ack_topic = topics::topic(gateway, device, "twin/ack");
    session.subscribe(&ack_topic).await?;
    let desired = Desired {
        version,
        attributes,
    };
    session
        .publish(
            &topics::topic(gateway, device, "twin/desired"),
            true,
            serde_json::to_vec(&desired)?,
        )
        .await?;
    let deadline = session.deadline();
    while let Some(message) = session.next(Some(deadline)).await? {
        if message.topic != ack_topic {
            continue;
        }
        let Ok(ack) = serde_json::from_slice::<Ack>(&message.payload) else {
            continue;
        };
        if ack.version != Some(version) {
            continue;
        }
        if let Some(error) = &ack.error {
            println!("error: {error}");
            return Ok(false);
        }
        if ack.duplicate {
            println!("version {version} was already applied");
        }
        for name in &ack.accepted {
            println!("accepted: {name}");
        }
        for (name, reason) in &ack.rejected {
            println!("rejected: {name}: {reason}");
        }
        return Ok(ack.rejected.is_empty());
    }
    anyhow::bail!(
        "no acknowledgement from {gateway}/{device} within {} s (is the gateway online? the desired state is retained and will be applied when it connects)",
        session.timeout.as_secs()
    )
}

/// `call`: invoke an action, print the result or the error. Returns whether
/// the action succeeded.
pub async fn call(
    session: &mut Session,
    gateway: &str,
    device: &str,
    action: &str,
    argument: Option<&str>,
) -> anyhow::Result<bool> {
    let id = format!("cli-{:016x}", crate::value::random_u64());
    let res_topic = topics::topic(gateway, device, &format!("action/{action}/res"));
    session.subscribe(&res_topic).await?;
    let request = ActionRequest {
        id: id.clone(),
        argument: argument.map(parse_value),
    };
    session
        .publish(
            &topics::topic(gateway, device, &format!("action/{action}/req")),
            false,
            serde_json::to_vec(&request)?,
        )
        .await?;
    let deadline = session.deadline();
    while let Some(message) = session.next(Some(deadline)).await? {
        if message.topic != res_topic {
            continue;
        }
        let Ok(response) = serde_json::from_slice::<ActionResponse>(&message.payload) else {
            continue;
        };
        if response.id.as_deref() != Some(id.as_str()) {
            continue;
        }
        return Ok(match (response.result, response.error) {
            (_, Some(error)) => {
                println!("error: {error}");
                false
            }
            (result, None) => {
                println!("{}", result.unwrap_or(serde_json::Value::Null));
                true
            }
        });
    }
    anyhow::bail!(
        "no response from {gateway}/{device} within {} s (is the gateway online?)",
        session.timeout.as_secs()
    )
}

/// `deploy`: send a signed deployment in chunks and wait for the outcome.
/// How `wasmgate cloud deploy` signs a manifest.
pub struct DeploySigning {
    /// One signature per key (as many as the gateway's threshold asks).
    pub keys: Vec<ring::signature::Ed25519KeyPair>,
    pub version: u64,
    pub target: crate::wire::protocol::DeployTarget,
    /// Unix seconds.
    pub expires: u64,
}

/// A deployment manifest for `component`, signed by every key of `signing`.
pub fn signed_manifest(
    app: &str,
    component: &[u8],
    model: Option<serde_json::Value>,
    config: Option<Vec<(String, String)>>,
    grants: Option<crate::grants::Grants>,
    signing: &DeploySigning,
    chunk_size: u64,
) -> crate::cloud::protocol::DeployManifest {
    use crate::cloud::protocol::{DEPLOY_FORMAT, DeployManifest};
    let chunk_size = chunk_size.clamp(1024, crate::deploy::cloud::MAX_CHUNK_BYTES);
    let size = component.len() as u64;
    let mut manifest = DeployManifest {
        format: DEPLOY_FORMAT,
        id: format!("d-{:016x}", crate::value::random_u64()),
        app: app.to_string(),
        version: signing.version,
        target: signing.target.clone(),
        expires: signing.expires,
        size,
        sha256: crate::deploy::artifacts::digest(component),
        chunk_size,
        chunks: size.div_ceil(chunk_size),
        model,
        config,
        grants,
        signatures: Vec::new(),
    };
    manifest.signatures = crate::deploy::signing::sign_all(&signing.keys, &manifest);
    manifest
}

/// An order to leave the component `sha256` of `app` (roll back to the
/// version before it), signed like the manifest that brought it, for the
/// same target and expiry.
pub fn signed_rollback(
    app: &str,
    sha256: &str,
    signing: &DeploySigning,
) -> crate::wire::protocol::RollbackOrder {
    let mut order = crate::wire::protocol::RollbackOrder {
        format: crate::cloud::protocol::DEPLOY_FORMAT,
        id: format!("r-{:016x}", crate::value::random_u64()),
        app: app.to_string(),
        sha256: sha256.to_string(),
        target: signing.target.clone(),
        expires: signing.expires,
        signatures: Vec::new(),
    };
    order.signatures = crate::deploy::signing::sign_all(&signing.keys, &order);
    order
}

/// Returns whether the gateway deployed it.
#[allow(clippy::too_many_arguments)]
pub async fn deploy(
    session: &mut Session,
    gateway: &str,
    app: &str,
    component: &[u8],
    model: Option<serde_json::Value>,
    config: Option<Vec<(String, String)>>,
    grants: Option<crate::grants::Grants>,
    signing: &DeploySigning,
    chunk_size: u64,
) -> anyhow::Result<bool> {
    use crate::cloud::protocol::DeployProgress;
    let manifest = signed_manifest(app, component, model, config, grants, signing, chunk_size);
    let (id, size, chunk_size) = (manifest.id.clone(), manifest.size, manifest.chunk_size);
    let res_topic = topics::topic(gateway, gateway, "deploy/res");
    session.subscribe(&res_topic).await?;
    let offer_topic = topics::topic(gateway, gateway, "deploy/req");
    let offer = serde_json::to_vec(&manifest)?;
    session.publish(&offer_topic, false, offer.clone()).await?;
    // The manifest is offered again whenever the gateway has said nothing
    // for OFFER_AGAIN: a gateway that restarted while receiving takes it
    // anew and answers `receiving` with nothing received, and then every
    // chunk goes again. We give up after `timeout` of silence (at least
    // 120 s once the chunks went: compiling a large component takes a while).
    const OFFER_AGAIN: Duration = Duration::from_secs(5);
    let mut send_chunks = true;
    let mut sent = false;
    let mut heard = tokio::time::Instant::now();
    let mut offered = heard;
    loop {
        let patience = if sent {
            session.timeout.max(Duration::from_secs(120))
        } else {
            session.timeout
        };
        let give_up = heard + patience;
        let wake = give_up.min(heard.max(offered) + OFFER_AGAIN);
        let Some(message) = session.next(Some(wake)).await? else {
            if tokio::time::Instant::now() >= give_up {
                break;
            }
            eprintln!(
                "{id}: no word from {gateway} for {} s; offering the deployment again",
                OFFER_AGAIN.as_secs()
            );
            session.publish(&offer_topic, false, offer.clone()).await?;
            send_chunks = true;
            offered = tokio::time::Instant::now();
            continue;
        };
        if message.topic != res_topic {
            continue;
        }
        let Ok(progress) = serde_json::from_slice::<DeployProgress>(&message.payload) else {
            continue;
        };
        if progress.id.as_deref() != Some(id.as_str()) {
            continue;
        }
        match progress.stage.as_str() {
            // Chunks the gateway no longer knows (it restarted): the next
            // offer starts the deployment again.
            "unknown" => {}
            "receiving" if send_chunks && progress.received == 0 => {
                heard = tokio::time::Instant::now();
                send_chunks = false;
                eprintln!(
                    "{id}: sending {} bytes in {} chunks{}",
                    size,
                    manifest.chunks,
                    if sent { ", again" } else { "" }
                );
                for (i, chunk) in component.chunks(chunk_size as usize).enumerate() {
                    session
                        .publish(
                            &topics::topic(gateway, gateway, &format!("deploy/{id}/chunk/{i}")),
                            false,
                            chunk.to_vec(),
                        )
                        .await?;
                }
                sent = true;
            }
            "receiving" => {
                heard = tokio::time::Instant::now();
                send_chunks = false;
                eprintln!(
                    "{id}: {} of {} chunks received",
                    progress.received, progress.chunks
                );
            }
            "deployed" => {
                println!("deployed: {}", progress.message.unwrap_or_default());
                return Ok(true);
            }
            _ => {
                println!("error: {}", progress.error.unwrap_or(progress.stage));
                return Ok(false);
            }
        }
    }
    anyhow::bail!("no answer from {gateway} about deployment {id} (is the gateway online?)")
}

/// `rotate-keys`: publish a key rotation signed by the keys in force, and
/// wait for the gateway's answer. Returns whether it took it.
pub async fn rotate_keys(
    session: &mut Session,
    gateway: &str,
    mut rotation: crate::wire::protocol::KeyRotation,
    keys: &[ring::signature::Ed25519KeyPair],
) -> anyhow::Result<bool> {
    use crate::cloud::protocol::DeployProgress;
    rotation.signatures = crate::deploy::signing::sign_all(keys, &rotation);
    let res_topic = topics::topic(gateway, gateway, "deploy/res");
    session.subscribe(&res_topic).await?;
    session
        .publish(
            &topics::topic(gateway, gateway, "deploy/keys"),
            false,
            serde_json::to_vec(&rotation)?,
        )
        .await?;
    let deadline = session.deadline();
    while let Some(message) = session.next(Some(deadline)).await? {
        let Ok(progress) = serde_json::from_slice::<DeployProgress>(&message.payload) else {
            continue;
        };
        if message.topic != res_topic || progress.id.as_deref() != Some(rotation.id.as_str()) {
            continue;
        }
        if progress.stage == "deployed" {
            println!("rotated: {}", progress.message.unwrap_or_default());
            return Ok(true);
        }
        println!("error: {}", progress.error.unwrap_or(progress.stage));
        return Ok(false);
    }
    anyhow::bail!(
        "no answer from {gateway} about key rotation {} (is the gateway online?)",
        rotation.id
    )
}

/// `devices`: every gateway's retained status: online or not, its apps and
/// the devices they speak for.
pub async fn devices(session: &mut Session) -> anyhow::Result<()> {
    session
        .subscribe(&format!("{}/+/+/status", topics::ROOT))
        .await?;
    // Retained statuses arrive right after the subscription; wait a moment.
    let deadline = Instant::now() + Duration::from_millis(1000).min(session.timeout);
    let mut seen = std::collections::BTreeMap::new();
    while let Some(message) = session.next(Some(deadline)).await? {
        if let Some(t) = topics::parse(&message.topic)
            && t.kind == Kind::Status
            && t.gateway == t.device
            && let Ok(status) = serde_json::from_slice::<Status>(&message.payload)
        {
            seen.insert(t.gateway.to_string(), status);
        }
    }
    if seen.is_empty() {
        println!("no gateway has published a status on {}", session.url);
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<20} {:<20} {:<12}",
        "GATEWAY", "ONLINE", "DEVICE", "APP", "STATE"
    );
    for (gateway, status) in &seen {
        let online = if status.online { "yes" } else { "no" };
        if status.apps.is_empty() {
            println!("{gateway:<20} {online:<8}");
        }
        for app in &status.apps {
            println!(
                "{gateway:<20} {online:<8} {:<20} {:<20} {:<12}",
                app.device, app.name, app.state
            );
            // Devices the app registered: indented under it, with their
            // hardware id and metadata.
            for device in &app.devices {
                let metadata: Vec<String> = device
                    .metadata
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{gateway:<20} {online:<8}   {:<18} {:<20} registered: hardware id {}, model {}{}",
                    device.id,
                    app.name,
                    device.hardware_id,
                    device.model,
                    if metadata.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", metadata.join(" "))
                    }
                );
            }
            if app.devices_omitted > 0 {
                println!(
                    "{gateway:<20} {online:<8}   ... and {} more registered device(s), not listed in the status message (`wasmgate apps` on the gateway lists them all)",
                    app.devices_omitted
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_values_parse() {
        assert_eq!(split_target("gw/dev").expect("ok"), ("gw", "dev"));
        assert!(
            split_target("gw").is_err()
                && split_target("gw/a/b").is_err()
                && split_target("/d").is_err()
        );
        assert_eq!(parse_value("21.5"), serde_json::json!(21.5));
        assert_eq!(parse_value("true"), serde_json::json!(true));
        assert_eq!(parse_value("auto"), serde_json::json!("auto"));
        assert_eq!(parse_value("\"7\""), serde_json::json!("7"));
    }
}
