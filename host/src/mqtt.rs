//! MQTT client options shared by everything in the gateway that connects to
//! a broker: the cloud link, the operator's `wasmgate cloud` commands and
//! the local bus. A leaf: it knows rumqttc and the broker settings, not who
//! uses them.

use anyhow::Context as _;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::Duration;

use crate::config::BrokerSettings;
use secrecy::ExposeSecret as _;

/// The largest packet the link sends (and the embedded broker takes).
pub const MAX_PACKET_BYTES: usize = 16 << 20;

/// The largest packet the link reads: MQTT's own maximum. A packet rumqttc
/// refuses ends the connection, and the broker delivers it again on every
/// reconnect of the persistent session, so one oversized message would keep
/// the gateway off the broker for good. So every packet is read, and the
/// downlink refuses an oversized one by size (answering where its topic
/// has an answer) and counts it. The cost is one transient buffer of at
/// most this size per such message.
pub const MAX_INCOMING_PACKET_BYTES: usize = 268_435_455;

/// rumqttc options for `settings`, with TLS set up from its PEM files.
pub fn mqtt_options(settings: &BrokerSettings, clean_session: bool) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_session(clean_session)
        .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some((user, password)) = credentials(settings) {
        options.set_credentials(user, password);
    }
    if let Some(transport) = transport(settings)? {
        options.set_transport(transport);
    }
    Ok(options)
}

/// rumqttc's MQTT 5 options for `settings`: no clean start, and a session
/// the broker keeps for `session_expiry` after a disconnect.
pub fn mqtt5_options(
    settings: &BrokerSettings,
    session_expiry: Duration,
) -> anyhow::Result<rumqttc::v5::MqttOptions> {
    let mut options =
        rumqttc::v5::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            u32::try_from(session_expiry.as_secs()).unwrap_or(u32::MAX),
        ))
        .set_max_packet_size(Some(MAX_INCOMING_PACKET_BYTES as u32))
        .set_network_options(network);
    if let Some((user, password)) = credentials(settings) {
        options.set_credentials(user, password);
    }
    if let Some(transport) = transport(settings)? {
        options.set_transport(transport);
    }
    Ok(options)
}

/// The user name and password to log in with, if any.
fn credentials(settings: &BrokerSettings) -> Option<(String, String)> {
    let user = settings.username.clone()?;
    let password = settings
        .password
        .as_ref()
        .map(|p| p.expose_secret().to_string())
        .unwrap_or_default();
    Some((user, password))
}

/// TLS from the settings' PEM files, for an `mqtts://` broker.
fn transport(settings: &BrokerSettings) -> anyhow::Result<Option<Transport>> {
    if !settings.tls {
        return Ok(None);
    }
    Ok(Some(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        tls_config(settings)?,
    )))))
}

/// Turn off Nagle's algorithm on the connection: request/response traffic
/// (an action and its answer, a PUBACK and the next publish) otherwise
/// waits for delayed ACKs, tens of milliseconds per exchange.
pub fn no_delay(eventloop: &mut rumqttc::EventLoop) {
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
}

/// A rustls client config: the CAs from `ca_file`, and the client
/// certificate and key for mutual TLS if given. Uses the ring provider.
fn tls_config(settings: &BrokerSettings) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let ca_file = settings
        .ca_file
        .as_ref()
        .context("TLS needs a CA file (ca_file)")?;
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading CA certificates from {}", ca_file.display()))?;
    anyhow::ensure!(
        !cas.is_empty(),
        "{} holds no certificates",
        ca_file.display()
    );
    for ca in cas {
        roots
            .add(ca)
            .with_context(|| format!("using a CA certificate from {}", ca_file.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("setting up TLS")?
    .with_root_certificates(roots);
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!("reading the client certificate {}", cert_file.display())
                })?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .with_context(|| format!("reading the client key {}", key_file.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not go together")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Reconnect delays: a step that doubles from `initial` up to `max`, each
/// wait a random ¾ to 1½ of its step so that a fleet does not reconnect in
/// lockstep (backon adds up to 100 % on top of its delay, so its delays are
/// ¾ of the steps).
pub fn reconnect_backoff(initial: Duration, max: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::new()
        .with_min_delay(initial.mul_f64(0.75))
        .with_max_delay(max.mul_f64(0.75))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}
