//! Large content: an upload from a guest and a download to it, each of
//! 3 MiB through a broker restart in the middle, with the sha256 checked at
//! the receiving end; a corrupt, an oversized and a malformed download
//! refused; the upload limit. The real binary (also as the operator's
//! `wasmgate cloud send` / `receive`) and a real Mosquitto.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, Running, binary, guest, model};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The content test guest on a gateway linked to `broker`, uploads paced at
/// 512 KiB/s in chunks of 32 KiB so that a transfer of 3 MiB takes seconds.
fn content_gateway(broker: &Mosquitto, upload_kib: u64, content: &str) -> Gateway {
    Gateway::new()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        ))
        .section(&format!(
            "[content]\nupload_kib_per_s = 512\nchunk_kib = 32\n{content}"
        ))
        .app(
            "content",
            &guest("content-transfer"),
            &model("content"),
            &format!("tick_interval_ms = 100\n[app.config]\nupload_kib = {upload_kib}"),
        )
}

/// `wasmgate cloud ARGS` against `broker`, its output collected.
fn cloud(broker: &Mosquitto, args: &[&str]) -> Running {
    let mut command = Command::new(binary());
    command
        .args(["cloud", "--broker", &broker.url()])
        .args(args);
    Running::spawn_command(command)
}

/// Wait for the CLI to finish: whether it succeeded, and what it printed.
fn finish(mut cli: Running) -> (bool, Vec<String>) {
    let status = cli.wait_exit(T);
    (status.success(), cli.lines())
}

/// `wasmgate cloud send` of `file` to the content app, paced like the
/// gateway's uploads.
fn send_paced(broker: &Mosquitto, file: &std::path::Path) -> Running {
    cloud(
        broker,
        &[
            "send",
            "test-gw/content",
            &file.display().to_string(),
            "--chunk-kib",
            "32",
            "--kib-per-s",
            "512",
        ],
    )
}

/// `wasmgate cloud receive` of the content app's uploads into `out`.
fn receive_into(broker: &Mosquitto, out: &std::path::Path) -> Running {
    cloud(
        broker,
        &[
            "receive",
            "test-gw/content",
            "--out",
            &out.display().to_string(),
        ],
    )
}

/// 3 MiB of bytes that differ from chunk to chunk, written to `dir/name`.
fn three_mib(dir: &std::path::Path, name: &str, factor: u32) -> (std::path::PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(factor) >> 11) as u8)
        .collect();
    let file = dir.join(name);
    std::fs::write(&file, &bytes).expect("write");
    (file, bytes)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Restart the broker once the transfer is under way and not yet done.
fn restart_broker_midway(broker: &mut Mosquitto, cli: &mut Running, progress: &str) {
    cli.wait_for(progress, T);
    broker.stop();
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
}

#[test]
fn an_upload_of_3_mib_survives_a_broker_restart_and_arrives_whole() {
    let mut broker = Mosquitto::start("");
    let out = tempfile::tempdir().expect("tempdir");
    let mut receiver = receive_into(&broker, out.path());
    let gw = content_gateway(&broker, 3072, "");
    let forger = Consumer::connect(
        &broker.settings("forger"),
        &["wg/v1/test-gw/content/content/up/+/manifest"],
    );
    let mut run = gw.start();
    run.wait_for("upload of data.bin queued", T);
    // Anyone on the broker can read the manifest and answer it: a forged
    // "done" (without the content's sha256, or with a wrong one) must not
    // make the gateway drop its copy of an upload nobody received.
    let deadline = std::time::Instant::now() + T;
    let manifest = loop {
        let seen = forger
            .messages()
            .iter()
            .map(|m| m.json())
            .find(|m| m["name"] == "data.bin");
        if let Some(manifest) = seen {
            break manifest;
        }
        assert!(std::time::Instant::now() < deadline, "no upload manifest");
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = manifest["id"].as_str().expect("upload id");
    let ack_topic = format!("wg/v1/test-gw/content/content/up/{id}/ack");
    for forged in [
        json!({"id": id, "have": 96, "done": true}),
        json!({"id": id, "have": 96, "done": true, "sha256": "00".repeat(32)}),
    ] {
        forger.publish(&ack_topic, forged.to_string(), false);
    }
    restart_broker_midway(&mut broker, &mut receiver, "data.bin: 16/96 chunks");
    let (ok, lines) = finish(receiver);
    assert!(ok, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("received data.bin: 3145728 bytes")),
        "{lines:?}"
    );
    let sent = std::fs::read(gw.data_dir().join("apps/content/files/data.bin")).expect("data.bin");
    let received = std::fs::read(out.path().join("data.bin")).expect("the received file");
    assert_eq!(sent.len(), 3 << 20);
    assert_eq!(sha256(&received), sha256(&sent));
    // The gateway and the guest both know it is done.
    run.wait_for("data.bin 3145728/3145728 done", T);
    // And it was paced: 3 MiB at 512 KiB/s, plus the outage.
    let link = run.link().expect("link");
    assert!(
        link["reconnects"].as_u64() >= Some(1),
        "the broker restart happened during the upload: {link}"
    );
    assert!(run.stop().success());
    let left: Vec<_> = std::fs::read_dir(gw.data_dir().join("content"))
        .expect("content store")
        .collect();
    assert!(left.is_empty(), "the upload's copy is gone: {left:?}");
}

#[test]
fn a_download_of_3_mib_survives_a_broker_restart_and_lands_in_the_apps_directory() {
    let mut broker = Mosquitto::start("");
    let gw = content_gateway(&broker, 0, "");
    let mut run: Running = gw.start();
    run.wait_connected(T);
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, bytes) = three_mib(dir.path(), "firmware.bin", 2654435761);
    let mut sender = send_paced(&broker, &file);
    restart_broker_midway(&mut broker, &mut sender, "16/96 chunks confirmed");
    let (ok, lines) = finish(sender);
    assert!(ok, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the gateway checked its sha256")),
        "{lines:?}"
    );
    let landed = std::fs::read(
        gw.data_dir()
            .join("apps/content/files/downloads/firmware.bin"),
    )
    .expect("the download in the app's directory");
    assert_eq!(sha256(&landed), sha256(&bytes));
    run.wait_for(
        "downloaded firmware.bin is in my directory: 3145728 bytes",
        T,
    );
    assert!(run.stop().success());
}

#[test]
fn corrupt_oversized_and_malformed_downloads_and_oversized_uploads_are_refused() {
    let broker = Mosquitto::start("");
    let gw = content_gateway(&broker, 0, "max_download_mib = 1\nmax_upload_mib = 0\n");
    let mut run = gw.start();
    run.wait_connected(T);
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let base = "wg/v1/test-gw/content/content/down";
    let ack = |id: &str| {
        consumer.wait_json(&format!("{base}/{id}/ack"), T, |a| {
            a["error"].is_string() || a["done"] == true
        })
    };

    // Chunks whose whole is not what the manifest's sha256 says.
    let content = b"0123456789abcdef0123".to_vec();
    let manifest = json!({"id": "bad-1", "name": "x.bin", "size": 20,
        "sha256": sha256(b"something else entirely"), "chunk_size": 8, "chunks": 3});
    consumer.publish(
        &format!("{base}/bad-1/manifest"),
        manifest.to_string(),
        false,
    );
    consumer.wait_json(&format!("{base}/bad-1/ack"), T, |a| a["have"] == 0);
    for (i, chunk) in content.chunks(8).enumerate() {
        consumer.publish(&format!("{base}/bad-1/chunk/{i}"), chunk.to_vec(), false);
    }
    let refused = ack("bad-1");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused as corrupt"),
        "{refused}"
    );
    run.wait_for("transfer download bad-1 x.bin 0/20 failed", T);
    assert!(
        !gw.data_dir()
            .join("apps/content/files/downloads/x.bin")
            .exists()
    );

    // Over [content] max_download_mib.
    let manifest = json!({"id": "big-1", "name": "big.bin", "size": 2u64 << 20,
        "sha256": sha256(b""), "chunk_size": 65536, "chunks": 32});
    consumer.publish(
        &format!("{base}/big-1/manifest"),
        manifest.to_string(),
        false,
    );
    let refused = ack("big-1");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("over the limit of 1048576"),
        "{refused}"
    );

    // A chunk of the wrong size ends the transfer.
    let manifest = json!({"id": "odd-1", "name": "odd.bin", "size": 20,
        "sha256": sha256(&content), "chunk_size": 8, "chunks": 3});
    consumer.publish(
        &format!("{base}/odd-1/manifest"),
        manifest.to_string(),
        false,
    );
    consumer.wait_json(&format!("{base}/odd-1/ack"), T, |a| a["have"] == 0);
    consumer.publish(&format!("{base}/odd-1/chunk/0"), b"123".to_vec(), false);
    let refused = ack("odd-1");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not fit the manifest"),
        "{refused}"
    );

    // Not a manifest at all; and one for a device no app speaks for.
    consumer.publish(
        &format!("{base}/junk-1/manifest"),
        "{\"id\": \"junk-1\"",
        false,
    );
    let refused = ack("junk-1");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("malformed manifest"),
        "{refused}"
    );
    let manifest = json!({"id": "who-1", "name": "a.bin", "size": 1,
        "sha256": sha256(b"a"), "chunk_size": 8, "chunks": 1});
    consumer.publish(
        "wg/v1/test-gw/nobody/content/down/who-1/manifest",
        manifest.to_string(),
        false,
    );
    let refused = consumer.wait_json("wg/v1/test-gw/nobody/content/down/who-1/ack", T, |a| {
        a["error"].is_string()
    });
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("speaks for device nobody"),
        "{refused}"
    );

    // And the guest's upload over [content] max_upload_mib.
    consumer.publish(
        "wg/v1/test-gw/content/action/upload-bytes/req",
        json!({"id": "u-1", "argument": "hello"}).to_string(),
        false,
    );
    let answer = consumer.wait_json("wg/v1/test-gw/content/action/upload-bytes/res", T, |r| {
        r["id"] == "u-1"
    });
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("limit: 5 bytes is over the upload limit of 0"),
        "{answer}"
    );
    assert!(run.stop().success());
}

#[test]
fn transfers_resume_where_they_were_after_the_gateway_is_killed() {
    let broker = Mosquitto::start("");
    let out = tempfile::tempdir().expect("tempdir");
    let mut receiver = receive_into(&broker, out.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, bytes) = three_mib(dir.path(), "config.tar", 40503);

    let gw = content_gateway(&broker, 3072, "");
    let mut run = gw.start();
    run.wait_connected(T);
    let mut sender = send_paced(&broker, &file);
    // Both ways under way, then kill -9.
    receiver.wait_for("data.bin: 16/96 chunks", T);
    sender.wait_for("16/96 chunks confirmed", T);
    // The receiver holding chunks is not yet the gateway knowing it: its
    // acknowledgements are still on their way. Kill only once the
    // gateway has recorded some (a download records before it confirms).
    wait_until_recorded(&gw, "up", T);
    run.kill9();
    let mut run = gw.start();
    run.wait_connected(T);
    // Resumed where the gateway had got to, not started over.
    run.wait_app("content", T, "resuming both ways", |a| {
        let content = &a["capabilities"]["content"];
        content["upload_chunks_resumed"].as_u64() > Some(0)
            && content["download_chunks_resumed"].as_u64() > Some(0)
    });

    let (ok, lines) = finish(sender);
    assert!(ok, "{lines:?}");
    let (ok, lines) = finish(receiver);
    assert!(ok, "{lines:?}");
    let landed = std::fs::read(
        gw.data_dir()
            .join("apps/content/files/downloads/config.tar"),
    )
    .expect("the download");
    assert_eq!(sha256(&landed), sha256(&bytes));
    let sent = std::fs::read(gw.data_dir().join("apps/content/files/data.bin")).expect("data.bin");
    let received = std::fs::read(out.path().join("data.bin")).expect("the upload");
    assert_eq!(sha256(&received), sha256(&sent));
    // Both finished, once each.
    let done = gw.count("SELECT COUNT(*) FROM transfers WHERE state = 'done'");
    assert_eq!(done, 2);
    assert!(run.stop().success());
}

/// Wait until the gateway has durably recorded chunks of its `direction`
/// transfer, which is what a restart resumes from.
fn wait_until_recorded(gw: &Gateway, direction: &str, timeout: Duration) {
    let sql =
        format!("SELECT COALESCE(MAX(have), 0) FROM transfers WHERE direction = '{direction}'");
    let deadline = std::time::Instant::now() + timeout;
    while gw.count(&sql) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway recorded no {direction} chunk in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
