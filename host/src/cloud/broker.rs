//! The embedded MQTT broker (rumqttd), for development and the demo: with
//! `[cloud] embedded = true` the gateway runs a broker in-process on a
//! loopback address and connects to it, so no external service is needed
//! and an operator can still watch with `wasmgate cloud watch`.
//!
//! It keeps nothing across restarts of the gateway (no persistent store),
//! which is fine for its purpose; production gateways use a real broker.

use anyhow::Context as _;
use std::net::SocketAddr;

/// Start the broker on `listen`; it runs on its own threads for the life of
/// the process.
pub fn start(listen: SocketAddr) -> anyhow::Result<()> {
    // Fail with a clear message now rather than inside rumqttd's threads.
    std::net::TcpListener::bind(listen)
        .with_context(|| format!("the embedded broker cannot listen on {listen}"))?;
    let config: rumqttd::Config = serde_json::from_value(serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": 1000,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104857600,
            "max_segment_count": 10
        },
        "v4": {
            "1": {
                "name": "wasmgate-embedded",
                "listen": listen.to_string(),
                "next_connection_delay_ms": 1,
                "connections": {
                    "connection_timeout_ms": 60000,
                    "max_payload_size": super::MAX_PACKET_BYTES,
                    "max_inflight_count": 1000,
                    "dynamic_filters": true
                }
            }
        }
    }))
    .context("configuring the embedded broker")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("wasmgate-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("the embedded broker stopped: {e}");
            }
        })
        .context("starting the embedded broker")?;
    // Wait until it accepts connections, so the link's first try succeeds.
    // The probe says a proper hello and goodbye, so the broker has nothing
    // to complain about.
    for _ in 0..200 {
        if let Ok(mut probe) = std::net::TcpStream::connect(listen) {
            use std::io::Write as _;
            let _ = probe.write_all(PROBE);
            tracing::info!(listen = %listen, "embedded MQTT broker running");
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    anyhow::bail!("the embedded broker did not start listening on {listen}")
}

/// An MQTT 3.1.1 CONNECT (clean session, client id "probe") and DISCONNECT.
const PROBE: &[u8] = &[
    0x10, 17, // CONNECT, remaining length
    0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0,
    10, // protocol, level, clean session, keep alive
    0, 5, b'p', b'r', b'o', b'b', b'e', // client id
    0xe0, 0, // DISCONNECT
];
