//! The gateway's side of provisioning by claim: a gateway that holds only a
//! claim credential makes its own key, asks `serve` for an identity with a
//! CSR over the claim's topics (`wire::provision`), checks what comes back
//! and keeps it (`config::Identity::store`). From then on it loads as the
//! gateway it was issued.
//!
//! The key never leaves the gateway, and is kept before the first request
//! goes out: a gateway that dies between `serve` issuing and it storing asks
//! again with the same key, and `serve` issues the same identity again.

use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::config::{Identity, Unprovisioned};
use crate::wire::provision::{self, Request, Response};

/// Why an attempt gave no identity.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// `serve` said no; the reason is its own.
    #[error("serve refused to provision {serial} with claim {claim}: {reason}")]
    Refused {
        claim: String,
        serial: String,
        reason: String,
    },
    /// No answer, or no broker: asking again may work.
    #[error("{0}")]
    Unanswered(String),
    /// An answer this gateway cannot use, or its own storage failed.
    #[error("{0}")]
    Failed(String),
}

/// Ask until an identity is issued (or `cancel`), waiting longer after each
/// refusal or silence: an operator may add the serial to the allow-list
/// later, and `serve` may be down for a while.
pub async fn until_issued(
    plan: &Unprovisioned,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Identity>> {
    let mut wait = Duration::from_secs(2);
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            attempt = provision(plan) => attempt,
        };
        match attempt {
            Ok(identity) => return Ok(Some(identity)),
            Err(ProvisionError::Failed(e)) => anyhow::bail!(e),
            Err(e) => tracing::error!("{e}; asking again in {} s", wait.as_secs()),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(300));
    }
}

/// One request: the identity `serve` issued, now stored, or why not.
pub async fn provision(plan: &Unprovisioned) -> Result<Identity, ProvisionError> {
    // The key and the identity are the gateway's alone, as its data
    // directory is (the gateway itself does the same before it starts).
    crate::permissions::restrict_new_files();
    let key = pending_key(plan).map_err(ProvisionError::Failed)?;
    let request = format!(
        "{:016x}{:016x}",
        crate::value::random_u64(),
        crate::value::random_u64()
    );
    let csr = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| ProvisionError::Failed(format!("a CSR: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, request.as_str());
        params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| ProvisionError::Failed(format!("a CSR: {e}")))?
    };
    let message = Request {
        request: request.clone(),
        serial: plan.serial.clone(),
        csr,
        time: crate::value::now_ns() / 1_000_000,
    };
    tracing::info!(claim = %plan.claim, serial = %plan.serial, %request, "asking serve for an identity");
    let response = exchange(plan, &request, &message).await?;
    match response {
        Response::Refused { reason, .. } => {
            tracing::error!(claim = %plan.claim, serial = %plan.serial, %request, %reason, "provisioning refused");
            Err(ProvisionError::Refused {
                claim: plan.claim.clone(),
                serial: plan.serial.clone(),
                reason,
            })
        }
        Response::Issued {
            gateway,
            labels,
            certificate,
            not_after,
            ..
        } => {
            check_certificate(&certificate, &gateway, &key).map_err(|e| {
                ProvisionError::Failed(format!(
                    "serve issued a certificate this gateway cannot use: {e}"
                ))
            })?;
            crate::model::check_name(&gateway)
                .map_err(|m| ProvisionError::Failed(format!("serve issued gateway id {m}")))?;
            let identity = Identity {
                gateway,
                labels,
                claim: plan.claim.clone(),
                serial: plan.serial.clone(),
                issued_at: crate::value::now_ns() / 1_000_000,
                not_after,
            };
            identity
                .store(&plan.data_dir, &certificate, &key.serialize_pem())
                .map_err(|e| {
                    ProvisionError::Failed(format!(
                        "cannot keep the identity in {}: {e}",
                        plan.data_dir.display()
                    ))
                })?;
            tracing::info!(gateway = %identity.gateway, labels = ?identity.labels, "provisioned");
            Ok(identity)
        }
    }
}

/// The key of the pending request, made and kept the first time.
fn pending_key(plan: &Unprovisioned) -> Result<rcgen::KeyPair, String> {
    let path = Identity::pending_key_file(&plan.data_dir);
    match std::fs::read_to_string(&path) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate().map_err(|e| format!("a key: {e}"))?;
            std::fs::create_dir_all(&plan.data_dir)
                .and_then(|()| crate::config::write_private(&path, &key.serialize_pem()))
                .map_err(|e| format!("cannot keep the key in {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The certificate must be for this key and name this gateway.
fn check_certificate(pem: &str, gateway: &str, key: &rcgen::KeyPair) -> Result<(), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err("it is not for this gateway's key".into());
    }
    let names: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|n| n.as_str().ok())
        .collect();
    if names != [gateway] {
        return Err(format!("it names {names:?}, not {gateway:?}"));
    }
    Ok(())
}

/// Send the request over the claim's login and wait for its answer.
async fn exchange(
    plan: &Unprovisioned,
    request: &str,
    message: &Request,
) -> Result<Response, ProvisionError> {
    let mut broker = plan.broker.clone();
    broker.client_id = format!("provision-{request}");
    let options = crate::mqtt::mqtt_options(&broker, true)
        .map_err(|e| ProvisionError::Failed(format!("{e:#}")))?;
    let (client, mut events) = AsyncClient::new(options, 16);
    let response_topic = provision::response_topic(&plan.claim, request);
    let payload = serde_json::to_vec(message).unwrap_or_default();
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(&response_topic, QoS::AtLeastOnce)
                        .map_err(|e| ProvisionError::Unanswered(e.to_string()))?;
                }
                // Subscribed before asking, so the answer cannot be missed.
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        return Err(ProvisionError::Unanswered(format!(
                            "the broker refused claim {:?} its provisioning topics (check the broker's ACL)",
                            plan.claim
                        )));
                    }
                    client
                        .try_publish(
                            provision::request_topic(&plan.claim, request),
                            QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                        )
                        .map_err(|e| ProvisionError::Unanswered(e.to_string()))?;
                }
                Ok(Event::Incoming(Packet::Publish(publish)))
                    if publish.topic == response_topic =>
                {
                    let response: Response = serde_json::from_slice(&publish.payload)
                        .map_err(|e| ProvisionError::Failed(format!("serve's answer: {e}")))?;
                    if response.request() != request {
                        return Err(ProvisionError::Failed(
                            "serve answered another request".into(),
                        ));
                    }
                    return Ok(response);
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(ProvisionError::Unanswered(format!(
                        "cannot reach the broker {}:{} with claim {:?}: {e}",
                        broker.host, broker.port, plan.claim
                    )));
                }
            }
        }
    };
    let answer = tokio::time::timeout(plan.timeout, wait)
        .await
        .unwrap_or_else(|_| {
            Err(ProvisionError::Unanswered(format!(
                "serve did not answer within {} s",
                plan.timeout.as_secs()
            )))
        });
    let _ = client.try_disconnect();
    answer
}
