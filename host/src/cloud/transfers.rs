//! The operator's end of content transfers: `wasmgate cloud send` (a file
//! to a device: a download, seen from the gateway) and `wasmgate cloud
//! receive` (the uploads of a device). Both speak `content::transfer`'s
//! protocol and keep going through a broker restart: they reconnect,
//! subscribe again, and the protocol's probes pick the transfer up where the
//! other side is.

use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::operator::Session;
use super::topics;
use crate::content::transfer::{self, Ack, Incoming, Manifest, Outgoing};

/// The next event, or `None` after `wait`; a lost connection is reported
/// once, and the event loop reconnects on the next poll.
async fn poll(events: &mut EventLoop, wait: Duration, lost: &mut bool) -> Option<Event> {
    match tokio::time::timeout(wait, events.poll()).await {
        Err(_) => None,
        Ok(Ok(event)) => {
            if *lost && matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                eprintln!("connected to the broker again");
                *lost = false;
            }
            Some(event)
        }
        Ok(Err(e)) => {
            if !*lost {
                eprintln!("lost the broker ({e}); reconnecting");
                *lost = true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            None
        }
    }
}

/// Subscribe without waiting (the answer comes through the event loop).
fn subscribe(client: &AsyncClient, filters: &[String]) {
    for filter in filters {
        let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
    }
}

/// How `send` sends.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The name the file gets on the gateway.
    pub name: String,
    pub chunk_bytes: u64,
    /// At most this many bytes a second (0: as fast as it goes).
    pub bytes_per_s: u64,
    pub give_up: Duration,
}

/// Send `file` to `gateway/device`; `Ok(false)` if the gateway refused it.
pub async fn send(
    session: &mut Session,
    gateway: &str,
    device: &str,
    file: &Path,
    options: &SendOptions,
) -> anyhow::Result<bool> {
    let SendOptions {
        name,
        chunk_bytes,
        bytes_per_s,
        give_up,
    } = options.clone();
    let name = name.as_str();
    let size = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        .len();
    let sha256 = transfer::sha256_of(file)?;
    let id = format!(
        "down-{}-{:08x}",
        crate::value::now_ns() / 1_000_000,
        crate::value::random_u64() as u32
    );
    let manifest = Manifest::new(id.clone(), name.to_string(), size, sha256, chunk_bytes);
    manifest
        .check(u64::MAX)
        .map_err(|e| anyhow::anyhow!("cannot send {}: {e}", file.display()))?;
    let base = topics::topic(gateway, device, &format!("content/down/{id}"));
    let filters = vec![format!("{base}/ack")];
    let (client, events) = session.parts();
    subscribe(client, &filters);
    let started = Instant::now();
    let mut sender = Outgoing::new(manifest.clone(), 0, Instant::now());
    let mut lost = false;
    let mut shown = u64::MAX;
    let pace = transfer::pace(bytes_per_s, chunk_bytes);
    eprintln!(
        "sending {} ({size} bytes, {} chunks) to {gateway}/{device} as {name}, transfer {id}",
        file.display(),
        manifest.chunks
    );
    loop {
        if started.elapsed() > give_up {
            eprintln!("giving up after {} s", give_up.as_secs());
            return Ok(false);
        }
        let now = Instant::now();
        // While the broker is away nothing is sent; the probes resume after.
        if !lost {
            while let Some(message) = sender.next_message(now, file, pace.as_ref()) {
                let (suffix, payload) = message?;
                // A full request queue (a long outage) drops this one; the
                // protocol's next probe asks again.
                let topic = format!("{base}/{suffix}");
                let _ = client.try_publish(topic, QoS::AtLeastOnce, false, payload);
            }
        }
        let Some(event) = poll(events, Duration::from_millis(50), &mut lost).await else {
            continue;
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => subscribe(client, &filters),
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(ack) = serde_json::from_slice::<Ack>(&p.payload) else {
                    continue;
                };
                if ack.id != id {
                    continue;
                }
                if let Some(error) = ack.error {
                    eprintln!("the gateway refused {name}: {error}");
                    return Ok(false);
                }
                if ack.done {
                    println!(
                        "sent {name}: {size} bytes in {:.1} s; the gateway checked its sha256",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(true);
                }
                sender.heard(ack.have, Instant::now());
                if sender.have != shown {
                    shown = sender.have;
                    eprintln!("{name}: {shown}/{} chunks confirmed", manifest.chunks);
                }
            }
            _ => {}
        }
    }
}

/// Receive uploads from `gateway/device` into `out` until `count` arrived;
/// `Ok(false)` if one was corrupt.
pub async fn receive(
    session: &mut Session,
    gateway: &str,
    device: &str,
    out: &Path,
    count: usize,
    give_up: Duration,
) -> anyhow::Result<bool> {
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let base = topics::topic(gateway, device, "content/up");
    let filters = vec![format!("{base}/+/manifest"), format!("{base}/+/chunk/+")];
    let (client, events) = session.parts();
    subscribe(client, &filters);
    let started = Instant::now();
    let mut incoming: HashMap<String, Incoming> = HashMap::new();
    let mut finished: HashMap<String, Ack> = HashMap::new();
    let mut received = 0;
    let mut lost = false;
    let mut ok = true;
    let answer = |client: &AsyncClient, ack: &Ack| {
        let topic = format!("{base}/{}/ack", ack.id);
        let _ = client.try_publish(
            topic,
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(ack).unwrap_or_default(),
        );
    };
    while received < count {
        if started.elapsed() > give_up {
            eprintln!("giving up after {} s", give_up.as_secs());
            return Ok(false);
        }
        let Some(event) = poll(events, Duration::from_millis(200), &mut lost).await else {
            continue;
        };
        let message: Publish = match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                subscribe(client, &filters);
                continue;
            }
            Event::Incoming(Packet::Publish(p)) => p,
            _ => continue,
        };
        let Some(parsed) = topics::parse(&message.topic) else {
            continue;
        };
        match parsed.kind {
            topics::Kind::UploadManifest(id) => {
                if let Some(ack) = finished.get(id) {
                    answer(client, ack);
                    continue;
                }
                if let Some(transfer) = incoming.get(id) {
                    answer(
                        client,
                        &Ack {
                            id: id.to_string(),
                            have: transfer.have,
                            ..Ack::default()
                        },
                    );
                    continue;
                }
                let manifest: Manifest = match serde_json::from_slice(&message.payload) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("ignoring a malformed manifest: {e}");
                        continue;
                    }
                };
                let checked = manifest.check(u64::MAX).map_err(|e| e.to_string());
                if let Err(e) = checked.and_then(|()| {
                    (manifest.id == id)
                        .then_some(())
                        .ok_or("the id is not the topic's".to_string())
                }) {
                    answer(
                        client,
                        &Ack {
                            id: id.to_string(),
                            error: Some(e),
                            ..Ack::default()
                        },
                    );
                    continue;
                }
                let part = out.join(format!(".{id}.part"));
                let transfer = Incoming::open(manifest.clone(), &part, 0)?;
                eprintln!(
                    "receiving {} ({} bytes, {} chunks), transfer {id}",
                    manifest.name, manifest.size, manifest.chunks
                );
                answer(
                    client,
                    &Ack {
                        id: id.to_string(),
                        ..Ack::default()
                    },
                );
                incoming.insert(id.to_string(), transfer);
            }
            topics::Kind::UploadChunk(id, index) => {
                let Some(transfer) = incoming.get_mut(id) else {
                    continue;
                };
                let outcome = match transfer.chunk(index, &message.payload) {
                    Err(e) => Err(e),
                    Ok(None) => continue,
                    Ok(Some(have)) if !transfer.complete() => {
                        eprintln!(
                            "{}: {have}/{} chunks",
                            transfer.manifest.name, transfer.manifest.chunks
                        );
                        answer(
                            client,
                            &Ack {
                                id: id.to_string(),
                                have,
                                ..Ack::default()
                            },
                        );
                        continue;
                    }
                    Ok(Some(_)) => transfer.verify().map_err(|e| e.to_string()),
                };
                let Some(transfer) = incoming.remove(id) else {
                    continue;
                };
                let m = &transfer.manifest;
                let ack = match outcome.and_then(|()| {
                    std::fs::rename(&transfer.path, out.join(&m.name)).map_err(|e| e.to_string())
                }) {
                    Ok(()) => {
                        println!(
                            "received {}: {} bytes, sha256 {} checked",
                            m.name, m.size, m.sha256
                        );
                        Ack::done(m)
                    }
                    Err(e) => {
                        eprintln!("refused {}: {e}", m.name);
                        let _ = std::fs::remove_file(&transfer.path);
                        ok = false;
                        Ack {
                            id: id.to_string(),
                            error: Some(e),
                            ..Ack::default()
                        }
                    }
                };
                answer(client, &ack);
                finished.insert(id.to_string(), ack);
                received += 1;
            }
            _ => {}
        }
    }
    // Let the last acknowledgements reach the broker.
    let flush = Instant::now() + Duration::from_millis(500);
    while Instant::now() < flush {
        poll(events, Duration::from_millis(50), &mut lost).await;
    }
    Ok(ok)
}
