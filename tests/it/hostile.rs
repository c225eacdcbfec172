//! Hostile guests: apps that flood the host's calls, hand it values of
//! 100 MiB, or try to reach what is not theirs. Each is contained by a
//! documented limit while a healthy app beside it keeps its tick rate and
//! the gateway's memory stays bounded; the reason shows in `wasmgate apps`,
//! the `status` message and the log. Also: the metrics endpoint and
//! `wasmgate logs`.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{
    Gateway, Running, field_after, free_port, guest, last_counter, model, wasmgate,
};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The healthy neighbour: a counter that ticks every 50 ms and round-trips
/// storage, records and reports on each tick.
fn with_healthy_counter() -> Gateway {
    Gateway::new().app(
        "counter",
        &guest("storage-roundtrip"),
        &model("counter"),
        "tick_interval_ms = 50",
    )
}

/// Check the healthy counter over `window`: 50 ms ticks, of which an eighth
/// must happen.
///
/// What this shows is that the hostile app never stalls its neighbour (a
/// shared lock, a blocked runtime thread, a loop that starves the rest):
/// the neighbour keeps ticking all through the window. How close to its
/// pace it keeps is a timing, and the machine's load decides it, not the
/// hostile app (these tests run next to others that spin both cores), so
/// the bar is an eighth of the pace: a stall of most of the window fails.
fn healthy_keeps_pace(run: &mut Running, window: Duration) {
    let start = run.wait_until(T, "the healthy counter ticking", |lines| {
        last_counter(lines).filter(|n| *n >= 3)
    });
    std::thread::sleep(window);
    let end = last_counter(&run.lines()).expect("counter lines");
    let expected = window.as_millis() as i64 / 50;
    assert!(
        end - start >= expected / 8,
        "the healthy app ticked {} times in {window:?}; expected about {expected}",
        end - start
    );
}

/// The gateway's peak memory stayed under `mib`, and it stops cleanly.
fn stays_bounded(run: &mut Running, mib: u64) {
    let peak = run.peak_rss_mib();
    assert!(peak < mib, "peak RSS {peak} MiB");
    assert!(run.stop().success());
}

/// The app named `name` in `wasmgate apps --json`.
fn app_report(gw: &Gateway, name: &str) -> Value {
    gw.apps()
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} in wasmgate apps"))
}

/// The numbers of the `flood ... stopped after N calls: ...` lines.
fn flood_stops(run: &Running, kind: &str) -> Vec<(i64, String)> {
    run.lines()
        .iter()
        .filter(|l| l.contains(&format!("flood {kind} stopped after")))
        .map(|l| {
            let calls = l
                .split("stopped after ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .expect("a call count");
            (calls, l.clone())
        })
        .collect()
}

/// A flood of `kind` calls that a per-app rate limit refuses with
/// `error::limit` after its burst: the flooder is slowed, not crashed.
fn rate_limited_flood(kind: &str, burst: i64, per_second: i64) {
    // The first tick makes the whole burst of calls, which takes more than
    // the default 1 s deadline on a loaded machine (the report flood was
    // cut off there once in CI); the deadline is not what this tests, so
    // it is long, and it bounds what the rate refills during a tick.
    const DEADLINE_S: i64 = 5;
    let gw = with_healthy_counter().app(
        "flood",
        &guest("flood"),
        &model("flood"),
        &format!(
            "tick_interval_ms = 200\ncall_timeout_ms = {}\n[app.config]\nkind = \"{kind}\"",
            DEADLINE_S * 1000
        ),
    );
    let mut run = gw.start();
    healthy_keeps_pace(&mut run, Duration::from_secs(3));
    // Five ticks of the flooder (a slow first tick leaves fewer in those
    // 3 s on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(30);
    let stops = loop {
        let stops = flood_stops(&run, kind);
        if stops.len() >= 5 || Instant::now() >= deadline {
            break stops;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(stops.len() >= 5, "the flooder ticked: {stops:?}");
    for (_, line) in &stops {
        assert!(
            line.contains("limit: ") && line.contains("a second"),
            "each flood ends on the rate limit: {line}"
        );
    }
    // The first tick spends the burst, plus what the rate refilled while it
    // ran (at most its deadline's worth; a flood that was not limited
    // would run into the deadline and trap); the calls are cumulative, so
    // each later tick adds only what the rate refilled (200 ms of it, give
    // or take the scheduling of a loaded machine).
    let first = stops[0].0;
    assert!(
        (burst..=burst + DEADLINE_S * per_second).contains(&first),
        "first tick: {first} calls for a burst of {burst}"
    );
    let (last, _) = stops[stops.len() - 1];
    let elapsed_ticks = stops.len() as i64 - 1;
    assert!(
        last - first <= elapsed_ticks * per_second,
        "later ticks got {} calls in {elapsed_ticks} ticks of 200 ms at {per_second}/s",
        last - first
    );
    let flood = app_report(&gw, "flood");
    assert_eq!(flood["state"], "running", "{flood}");
    assert_eq!(flood["restarts"], 0, "{flood}");
    assert_eq!(flood["traps"], 0, "{flood}");
    stays_bounded(&mut run, 200);
}

#[test]
fn a_storage_flood_is_slowed_by_its_write_rate() {
    rate_limited_flood("storage", 5000, 1000);
}

#[test]
fn a_report_flood_is_slowed_by_its_report_rate() {
    rate_limited_flood("report", 5000, 1000);
}

#[test]
fn an_alert_flood_is_slowed_by_its_alert_rate() {
    rate_limited_flood("alert", 500, 100);
}

#[test]
fn registering_devices_without_end_stops_at_the_apps_cap() {
    let gw = with_healthy_counter().app(
        "flood",
        &guest("flood"),
        &model("flood"),
        &format!(
            "tick_interval_ms = 200\nmax_devices = 100\n[app.models]\nflood = \"{}\"\n\
             [app.config]\nkind = \"register\"",
            model("flood").display()
        ),
    );
    let mut run = gw.start();
    healthy_keeps_pace(&mut run, Duration::from_secs(2));
    let stops = flood_stops(&run, "register");
    assert!(stops.len() >= 3, "the flooder ticked: {stops:?}");
    // 100 registrations, then the 101st is refused; each later tick is
    // refused at its first call.
    assert_eq!(stops[0].0, 101, "{}", stops[0].1);
    for (i, (calls, line)) in stops.iter().enumerate() {
        assert!(
            line.contains(
                "limit: the app has registered 100 devices, its limit (max_devices = 100)"
            ),
            "{line}"
        );
        assert_eq!(*calls, 101 + i as i64, "{line}");
    }
    let flood = app_report(&gw, "flood");
    assert_eq!(flood["state"], "running", "{flood}");
    assert_eq!(flood["traps"], 0, "{flood}");
    assert!(run.stop().success());
    let registered = gw.count("SELECT COUNT(*) FROM registrations WHERE app = 'flood'");
    assert_eq!(registered, 100);
}

#[test]
fn a_log_flood_is_dropped_past_its_rate_and_the_drops_are_counted() {
    // `log` cannot fail, so the flooder spins until its call deadline.
    let gw = with_healthy_counter().app(
        "flood",
        &guest("flood"),
        &model("flood"),
        "tick_interval_ms = 200\ncall_timeout_ms = 500\n[app.config]\nkind = \"log\"\n\
         [app.restart]\nbackoff_initial_ms = 100\nmax_crashes = 100",
    );
    let mut run = gw.start();
    let started = Instant::now();
    healthy_keeps_pace(&mut run, Duration::from_secs(3));
    let flood = app_report(&gw, "flood");
    let seconds = started.elapsed().as_secs() as usize + 1;
    let kept = run.count("flood line");
    // 1000 lines of burst, then 200 a second.
    assert!(
        kept <= 1000 + 200 * seconds,
        "{kept} flood lines in {seconds} s"
    );
    assert!(kept >= 1000, "the burst is let through: {kept}");
    let dropped = flood["capabilities"]["log"]["dropped"]
        .as_u64()
        .expect("the log unit reports its drops");
    assert!(
        dropped > 10 * kept as u64,
        "the drops are counted: {dropped} dropped, {kept} kept"
    );
    // And the endless loop is what the deadline is for. The error shows
    // while the app waits to restart (a restart clears it), so wait for one
    // of those windows rather than read a single report.
    assert!(flood["traps"].as_u64().expect("traps") >= 1, "{flood}");
    run.wait_app(
        "flood",
        Duration::from_secs(10),
        "cut off at its deadline",
        |a| {
            a["error"]
                .as_str()
                .unwrap_or_default()
                .contains("ran past its deadline of 500 ms")
        },
    );
    stays_bounded(&mut run, 200);
}

#[test]
fn a_record_flood_is_cut_off_by_its_series_quota() {
    // A 1 MiB quota on the flooder's series, refusing when full.
    let gw = with_healthy_counter()
        .app(
            "flood",
            &guest("flood"),
            &model("flood"),
            "tick_interval_ms = 200\n[app.config]\nkind = \"record\"",
        )
        .section("[outbox.series.flood]\nmax_kib = 1024\nwhen_full = \"reject-newest\"");
    let mut run = gw.start();
    healthy_keeps_pace(&mut run, Duration::from_secs(3));
    let stops = flood_stops(&run, "record");
    assert!(!stops.is_empty(), "the flooder stopped on the quota");
    for (_, line) in &stops {
        assert!(line.contains("limit: "), "{line}");
    }
    let flood = app_report(&gw, "flood");
    assert_eq!(flood["state"], "running", "{flood}");
    assert_eq!(flood["traps"], 0, "{flood}");
    let peak = run.peak_rss_mib();
    assert!(run.stop().success());

    // The quota held, and the healthy app's points all arrived.
    let flooded =
        gw.count("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE name = 'flood'");
    assert!(
        flooded <= 1024 * 1024 + 300 * 1024,
        "{flooded} bytes of flood in the outbox for a 1 MiB quota"
    );
    let counts: Vec<i64> = gw
        .outbox_points(Some("count"))
        .iter()
        .filter_map(|p| p["values"]["n"].as_i64())
        .collect();
    let last = *counts.iter().max().expect("counter points");
    assert_eq!(
        counts.len() as i64,
        last,
        "every counter point 1..={last} is in the outbox"
    );
    assert!(peak < 200, "peak RSS {peak} MiB");
}

#[test]
fn values_of_100_mib_are_refused_and_the_gateway_stays_bounded() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    // The guest needs room for two 100 MiB values; the host copies one at
    // a time out of the guest's memory and refuses it.
    let gw = with_healthy_counter()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        ))
        .app(
            "huge",
            &guest("huge-values"),
            &model("huge"),
            // Copying 100 MiB in and out of the guest takes the debug build
            // a second or two: the call deadline covers the host's copying
            // of arguments too, so this guest gets a longer one.
            "tick_interval_ms = 100\nmemory_limit_mib = 512\ncall_timeout_ms = 20000\n\
             [app.config]\nsize_mib = 100",
        );
    let mut run = gw.start();
    let line = run.wait_for("huge: report", T);
    for part in [
        "report invalid: attribute `label`: text of 104857600 bytes is over the limit of 65536",
        "record invalid: series `blobs` field `blob`: 104857600 bytes is over the limit of 65536",
        "storage value invalid: value of 104857600 bytes is over the limit of 1048576",
        "storage key invalid: key of 104857600 bytes is over the limit of 512",
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    // The 100 MiB log line was cut.
    let longest = run.lines().iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 9 * 1024, "a log line of {longest} bytes");

    // An action result of 100 MiB is answered with an error.
    consumer.publish(
        "wg/v1/test-gw/huge/action/echo/req",
        json!({"id": "big"}).to_string(),
        false,
    );
    let response = consumer.wait_json("wg/v1/test-gw/huge/action/echo/res", T, |j| {
        j["id"] == "big"
    });
    assert!(
        response["error"]
            .as_str()
            .unwrap_or_default()
            .contains("over the limit of 65536"),
        "{response}"
    );
    healthy_keeps_pace(&mut run, Duration::from_secs(2));
    let huge = app_report(&gw, "huge");
    assert_eq!(huge["state"], "running", "{huge}");
    assert_eq!(huge["traps"], 0, "{huge}");
    // The guest's 512 MiB allowance is in the process; the host's own
    // copies come and go one value at a time.
    let peak = run.peak_rss_mib();
    assert!(peak < 800, "peak RSS {peak} MiB");

    // At stop, a 100 MiB saved state is not kept.
    assert!(run.stop().success());
    assert!(
        run.count("over the limit of 1048576: not kept") == 1,
        "the saved state is refused at stop"
    );
    let saved = gw.count("SELECT COUNT(*) FROM saved_state WHERE app = 'huge'");
    assert_eq!(saved, 0);
}

#[test]
fn an_app_cannot_reach_another_apps_files_storage_twin_environment_or_network() {
    // The victim runs first and leaves storage keys and a twin behind.
    let gw = Gateway::new().app(
        "victim",
        &guest("storage-roundtrip"),
        &model("counter"),
        "tick_interval_ms = 50",
    );
    let mut run = gw.start();
    run.wait_for("counter=3 ", T);
    assert!(run.stop().success());

    // Its files, and symlinks to them planted in the escape artist's own
    // directory (one relative, one absolute).
    let data = gw.data_dir();
    let victim_files = data.join("apps/victim/files");
    std::fs::create_dir_all(&victim_files).expect("victim dir");
    std::fs::write(victim_files.join("secret.txt"), "the victim's secret").expect("secret");
    let own = data.join("apps/escape/files");
    std::fs::create_dir_all(&own).expect("own dir");
    std::os::unix::fs::symlink("../../victim/files", own.join("link")).expect("symlink");
    std::os::unix::fs::symlink(&victim_files, own.join("abs-link")).expect("symlink");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();

    let gw = gw
        .reconfigure()
        .app(
            "victim",
            &guest("storage-roundtrip"),
            &model("counter"),
            "tick_interval_ms = 50",
        )
        .app(
            "escape",
            &guest("escape-artist"),
            &model("counter"),
            &format!("[app.config]\nother = \"victim\"\nport = \"{port}\""),
        );
    let mut run = gw.start();
    run.wait_for("escape attempts done", T);
    let lines = run.lines();
    for way in [
        "dotdot",
        "dotdot-deep",
        "absolute",
        "symlink",
        "symlink-absolute",
        "write-outside",
        "environment",
        "network",
        "storage",
        "twin",
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("escape {way}: ")))
            .unwrap_or_else(|| panic!("the escape artist tried {way}"));
        assert!(line.contains(": refused ("), "{line}");
    }
    assert_eq!(run.count("ESCAPED"), 0);
    // Its own directory works.
    assert!(run.count("own file: Ok(\"mine\")") == 1);
    assert!(own.join("mine.txt").exists());
    assert!(!victim_files.join("planted.txt").exists());
    assert!(matches!(
        listener.accept(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    ));
    // The victim is untouched and its counter went on from where it was.
    run.wait_for("counter=6 ", T);
    assert!(run.stop().success());
}

/// Download `bytes` as `name` to `device` through the content protocol and
/// return the gateway's last acknowledgement: done, or an error.
fn download(consumer: &Consumer, device: &str, id: &str, name: &str, bytes: &[u8]) -> Value {
    use sha2::{Digest, Sha256};
    let base = format!("wg/v1/test-gw/{device}/content/down/{id}");
    let manifest = json!({"id": id, "name": name, "size": bytes.len(),
        "sha256": hex::encode(Sha256::digest(bytes)), "chunk_size": 1024, "chunks": 1});
    consumer.publish(&format!("{base}/manifest"), manifest.to_string(), false);
    consumer.wait_json(&format!("{base}/ack"), T, |a| a["have"] == 0);
    consumer.publish(&format!("{base}/chunk/0"), bytes.to_vec(), false);
    consumer.wait_json(&format!("{base}/ack"), T, |a| {
        a["error"].is_string() || a["done"] == true
    })
}

/// The sandbox escape of issue 23: an app plants links in its own
/// directory, relative (as a guest can) and absolute (as the test plants
/// them), at `downloads`, at the file's own name, and towards its parent
/// directories. A download to it never writes through them: it is refused
/// when `downloads` is not a real directory, and replaces a link at the
/// file's name with the file. `upload-file` refuses the same links.
#[test]
fn a_download_never_writes_through_links_the_app_planted() {
    let broker = Mosquitto::start("");
    let gw = with_healthy_counter().section(&format!(
        "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
        broker.url()
    ));
    // What the links point at: the operator's gateway.toml, four levels
    // above an app's directory (data/apps/APP/files), and the healthy
    // app's own directory.
    let config_before = "# the operator's gateway.toml\n";
    let counter_files = gw.data_dir().join("apps/counter/files");
    std::fs::create_dir_all(&counter_files).expect("counter dir");
    let data = gw.data_dir();
    let files = |app: &str| {
        let dir = data.join("apps").join(app).join("files");
        std::fs::create_dir_all(&dir).expect("app dir");
        dir
    };
    std::os::unix::fs::symlink(&counter_files, files("abs").join("downloads")).expect("link");
    std::fs::create_dir_all(files("name").join("downloads")).expect("downloads");
    std::os::unix::fs::symlink(gw.config_path(), files("name").join("downloads/abs.toml"))
        .expect("link");
    // Made here, so owner-only as the gateway demands of its data directory.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod the data directory");
    let planter = |gw: Gateway, app: &str, plant: &str, upload: &str| {
        gw.app(
            app,
            &guest("link-planter"),
            &model("content"),
            &format!(
                "tick_interval_ms = 100\n[app.config]\nplant = \"{plant}\"\nupload = \"{upload}\""
            ),
        )
    };
    let gw = planter(
        gw,
        "rel",
        "downloads=link:../../../..",
        "downloads/gateway.toml",
    );
    let gw = planter(gw, "up", "downloads=link:..", "../../../../gateway.toml");
    let gw = planter(gw, "abs", "", "downloads");
    let gw = planter(
        gw,
        "name",
        "downloads/gateway.toml=link:../../../../../gateway.toml",
        "downloads/abs.toml",
    );
    let gw = planter(gw, "file", "downloads=file", "");
    gw.write_config();
    let mut config = std::fs::read_to_string(gw.config_path()).expect("config");
    config.insert_str(0, config_before);
    std::fs::write(gw.config_path(), &config).expect("config");

    let mut run = Running::spawn(&gw.config_path());
    run.wait_connected(T);
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/#"]);
    let evil = b"[gateway]\nid = \"owned\"\n";

    for (app, name, why) in [
        (
            "rel",
            "gateway.toml",
            "downloads in the app's directory is a symlink",
        ),
        (
            "up",
            "gateway.toml",
            "downloads in the app's directory is a symlink",
        ),
        (
            "abs",
            "planted.txt",
            "downloads in the app's directory is a symlink",
        ),
        (
            "file",
            "gateway.toml",
            "downloads in the app's directory is not a directory",
        ),
    ] {
        let ack = download(&consumer, app, &format!("{app}-1"), name, evil);
        let error = ack["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{app}: {ack}");
        // The app sees the refusal in its own list of transfers.
        run.wait_for(&format!("transfer {app}-1 {name}: failed: "), T);
    }
    // A link at the file's own name is replaced by the file, not followed.
    for (id, name) in [("name-1", "gateway.toml"), ("name-2", "abs.toml")] {
        let ack = download(&consumer, "name", id, name, evil);
        assert_eq!(ack["done"], true, "{ack}");
        let placed = files("name").join("downloads").join(name);
        assert!(!placed.symlink_metadata().expect("placed").is_symlink());
        assert_eq!(std::fs::read(&placed).expect("placed"), evil);
    }
    // Nothing outside the apps' own directories changed.
    assert_eq!(
        std::fs::read_to_string(gw.config_path()).expect("config"),
        config
    );
    assert_eq!(
        std::fs::read_dir(&counter_files)
            .expect("counter dir")
            .count(),
        0,
        "nothing landed in the healthy app's directory"
    );
    // upload-file refuses every planted way out.
    for (app, path) in [
        ("rel", "downloads/gateway.toml"),
        ("up", "../../../../gateway.toml"),
        ("abs", "downloads"),
        ("name", "downloads/abs.toml"),
    ] {
        let line = run.wait_for(&format!("upload {path}: "), T);
        assert!(line.contains(": refused (invalid: "), "{app}: {line}");
    }
    assert_eq!(run.count(": queued"), 0);
    healthy_keeps_pace(&mut run, Duration::from_secs(1));
    assert_eq!(app_report(&gw, "counter")["state"], "running");
    assert!(run.stop().success());
}

#[test]
fn two_apps_cannot_speak_for_the_same_device() {
    let gw = Gateway::new()
        .app(
            "a",
            &guest("storage-roundtrip"),
            &model("counter"),
            "device = \"boiler\"",
        )
        .app(
            "b",
            &guest("escape-artist"),
            &model("counter"),
            "device = \"boiler\"",
        );
    gw.write_config();
    let config = gw.config_path();
    let (ok, _, err) = wasmgate(&["run", "--config", config.to_str().expect("path")]);
    assert!(!ok);
    assert!(
        err.contains("app[1].device") && err.contains("device \"boiler\" belongs to two apps"),
        "{err}"
    );
}

/// The value of one sample in Prometheus text, by its full name and labels.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name_and_labels} in\n{text}"))
        .parse()
        .expect("a number")
}

fn scrape(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // Sent in two segments, as a client may.
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes())
        .expect("request");
    stream.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(20));
    stream
        .write_all(b"Host: localhost\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    (head.to_string(), body.to_string())
}

#[test]
fn the_metrics_endpoint_shows_what_the_apps_did() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/test-gw/status"],
    );
    let port = free_port();
    let gw = with_healthy_counter()
        .app(
            "trap-on-tick",
            &guest("trap-on-tick"),
            &model("empty"),
            "tick_interval_ms = 20\n[app.restart]\nbackoff_initial_ms = 50\nmax_crashes = 3",
        )
        .app(
            "flood",
            &guest("flood"),
            &model("flood"),
            "tick_interval_ms = 100\ncall_timeout_ms = 300\n[app.config]\nkind = \"log\"\n\
             [app.restart]\nmax_crashes = 1",
        )
        .section(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\""))
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            broker.url()
        ));
    let mut run = gw.start();
    run.wait_app("trap-on-tick", T, "quarantined", |a| {
        a["state"] == "quarantined"
    });
    run.wait_until(T, "20 counter ticks", |l| {
        last_counter(l).filter(|n| *n >= 20)
    });
    let (head, text) = scrape(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");

    let app = |metric: &str, app: &str| {
        sample(
            &text,
            &format!("{metric}{{gateway=\"test-gw\",app=\"{app}\"}}"),
        )
    };
    // The trapping app crashed three times: two restarts, then quarantine.
    assert_eq!(app("wasmgate_app_traps_total", "trap-on-tick"), 3.0);
    assert_eq!(app("wasmgate_app_restarts_total", "trap-on-tick"), 2.0);
    assert_eq!(app("wasmgate_app_traps_total", "counter"), 0.0);
    // The counter's ticks are events; each one a call in the histogram.
    let ticks = last_counter(&run.lines()).expect("ticks") as f64;
    let events = app("wasmgate_app_events_total", "counter");
    assert!(events >= ticks, "{events} events for {ticks} logged ticks");
    let calls = app("wasmgate_app_call_seconds_count", "counter");
    assert!(calls >= events, "{calls} calls, {events} events");
    let inf = sample(
        &text,
        "wasmgate_app_call_seconds_bucket{gateway=\"test-gw\",app=\"counter\",le=\"+Inf\"}",
    );
    assert_eq!(inf, calls);
    assert!(app("wasmgate_app_call_seconds_sum", "counter") > 0.0);
    assert!(app("wasmgate_app_memory_bytes", "counter") >= 65536.0);
    // The log flooder's drops.
    assert!(app("wasmgate_app_log_dropped_total", "flood") > 1000.0);
    // Each unit's figures: the counter keeps its count in storage and
    // registered no device; the flooder stores nothing.
    assert!(app("wasmgate_app_storage_keys", "counter") >= 1.0);
    assert!(app("wasmgate_app_storage_bytes", "counter") > 0.0);
    assert_eq!(app("wasmgate_app_storage_keys", "flood"), 0.0);
    assert_eq!(app("wasmgate_app_device_registered", "counter"), 0.0);
    assert_eq!(app("wasmgate_app_content_uploads", "counter"), 0.0);
    // The link: connected, and it sent what the counter recorded.
    let gw_metric = |metric: &str| sample(&text, &format!("{metric}{{gateway=\"test-gw\"}}"));
    assert_eq!(gw_metric("wasmgate_cloud_connected"), 1.0);
    assert!(gw_metric("wasmgate_cloud_messages_sent_total") >= 1.0);
    assert!(gw_metric("wasmgate_cloud_bytes_sent_total") > 100.0);
    assert_eq!(gw_metric("wasmgate_cloud_reconnects_total"), 0.0);

    // Anything but GET /metrics is a 404.
    let (head, _) = scrape(port, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // The status summary carries the same counters (live, from the running
    // gateway).
    let status = gw.status();
    let trap = status["live"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == "trap-on-tick")
        .expect("trap-on-tick status")
        .clone();
    assert_eq!(trap["traps"], 3, "{trap}");

    // So does the retained status message, with the reason.
    let status = consumer.wait_json("wg/v1/test-gw/test-gw/status", T, |s| {
        s["apps"].as_array().is_some_and(|apps| {
            apps.iter()
                .any(|a| a["name"] == "trap-on-tick" && a["state"] == "quarantined")
        })
    });
    let trap = status["apps"]
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["name"] == "trap-on-tick"))
        .expect("trap-on-tick in the status message");
    assert_eq!(trap["traps"], 3, "{trap}");
    assert!(
        trap["error"]
            .as_str()
            .unwrap_or_default()
            .contains("boom on tick 1"),
        "{trap}"
    );
    assert!(run.stop().success());
}

#[test]
fn the_metrics_endpoint_listens_only_on_loopback() {
    let gw = with_healthy_counter().section("[metrics]\nlisten = \"0.0.0.0:9464\"");
    gw.write_config();
    let config = gw.config_path();
    let (ok, _, err) = wasmgate(&["run", "--config", config.to_str().expect("path")]);
    assert!(!ok);
    assert!(
        err.contains("metrics.listen") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn wasmgate_logs_shows_an_apps_recent_lines() {
    let gw = with_healthy_counter().app(
        "trap-on-tick",
        &guest("trap-on-tick"),
        &model("empty"),
        "tick_interval_ms = 20\n[app.restart]\nbackoff_initial_ms = 50\nmax_crashes = 2",
    );
    let mut run = gw.start();
    run.wait_app("trap-on-tick", T, "quarantined", |a| {
        a["state"] == "quarantined"
    });
    run.wait_until(T, "ten ticks", |l| last_counter(l).filter(|n| *n >= 10));
    let config = gw.config_path();
    let config = config.to_str().expect("path");

    let (ok, out, err) = wasmgate(&["logs", "counter", "-n", "5", "--gateway", config]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines.iter().all(|l| l.contains("roundtrip=true")), "{out}");
    // Oldest first: the counter goes up.
    let counts: Vec<i64> = lines
        .iter()
        .filter_map(|l| field_after(l, "counter"))
        .collect();
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");

    // The crashed app's lines include its panic and the host's verdict,
    // and nothing of the other app's.
    let (ok, out, _) = wasmgate(&["logs", "trap-on-tick", "--gateway", config]);
    assert!(ok);
    assert!(out.contains("boom on tick 1"), "{out}");
    assert!(out.contains("app quarantined after 2 crashes"), "{out}");
    assert!(!out.contains("roundtrip="), "{out}");

    let (ok, out, _) = wasmgate(&["logs", "nobody", "--gateway", config]);
    assert!(!ok);
    assert!(out.contains("no app named \"nobody\""), "{out}");
    assert!(run.stop().success());
}

#[test]
fn a_guest_that_sleeps_in_a_host_call_is_cut_off_at_its_deadline_and_never_holds_up_control() {
    let gw = with_healthy_counter()
        .app(
            "sleeper",
            &guest("sleeper"),
            &model("empty"),
            "tick_interval_ms = 100\ncall_timeout_ms = 300\n[app.restart]\nbackoff_initial_ms = 2000\nmax_crashes = 2",
        )
        // Within a long deadline: each tick sleeps 8 s, and is let.
        .app(
            "dozer",
            &guest("sleeper"),
            &model("empty"),
            "tick_interval_ms = 10\ncall_timeout_ms = 20000\n[app.config]\nsleep_s = 8",
        );
    let mut run = gw.start();
    // Its first tick sleeps 90 s; the call is cut off at 300 ms plus the
    // grace, counted as a crash, and the app restarts.
    let crashed = run.wait_app("sleeper", T, "crashed once", |a| {
        a["restarts"].as_u64() >= Some(1) || a["state"] == "restarting"
    });
    let error = crashed["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("on-tick: the call ran past its deadline of 300 ms, waiting in a host call"),
        "{crashed}"
    );
    // Control does not wait on it: stopping it while it sleeps again is
    // answered within the bound of one call.
    run.wait_app("sleeper", T, "running again", |a| a["state"] == "running");
    let config = gw.config_path();
    let (ok, out, err) = wasmgate(&[
        "stop",
        "sleeper",
        "--gateway",
        config.to_str().expect("path"),
    ]);
    assert!(ok, "{out}{err}");
    let stopped = run.wait_app("sleeper", T, "stopped", |a| a["state"] == "stopped");
    // Each call it made took at most its deadline plus the grace (and the
    // init calls next to nothing).
    let calls = stopped["calls"].as_u64().expect("calls") as f64;
    let seconds = stopped["call_seconds"].as_f64().expect("call_seconds");
    assert!(
        seconds <= calls * 0.8 + 0.5,
        "{seconds} s in {calls} calls: {stopped}"
    );
    // A stop waits for the dozer's call in progress (up to 8 s), but no
    // one else does: `apps`, and a start of another app, are answered
    // while that stop is still pending. The stop goes just after a sleep
    // ended, so that the next one (10 ms later) has all of its 8 s to go:
    // under load, the two commands below may take seconds.
    let woke = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("sleeper woke up") && l.contains("dozer"))
            .count()
    };
    let woken = woke(&run.lines());
    run.wait_until(T, "the dozer waking up", |lines| {
        (woke(lines) > woken).then_some(())
    });
    let dozing = run.wait_app("dozer", T, "running", |a| a["state"] == "running");
    let calls_before = dozing["calls"].as_u64().expect("calls");
    let mut stopping = {
        let mut command = std::process::Command::new(crate::common::binary());
        command.args(["stop", "dozer", "--gateway", config.to_str().expect("path")]);
        Running::spawn_command(command)
    };
    let (ok, out, err) = wasmgate(&["apps", "--gateway", config.to_str().expect("path")]);
    assert!(ok && out.contains("dozer"), "{out}{err}");
    let (ok, out, err) = wasmgate(&[
        "start",
        "sleeper",
        "--gateway",
        config.to_str().expect("path"),
    ]);
    assert!(ok && out.contains("app sleeper started"), "{out}{err}");
    assert!(
        !stopping.exited(),
        "the dozer's stop was answered before its call ended"
    );
    assert!(stopping.wait_exit(T).success(), "{:?}", stopping.lines());
    let stopped = run.wait_app("dozer", T, "stopped", |a| a["state"] == "stopped");
    let calls = stopped["calls"].as_u64().expect("calls");
    // The tick in progress ended, and `save` ran; nothing else began.
    assert!(
        calls <= calls_before + 2,
        "{calls_before} calls before the stop: {stopped}"
    );
    healthy_keeps_pace(&mut run, Duration::from_secs(2));
    stays_bounded(&mut run, 512);
}

#[test]
fn as_many_busy_apps_as_cores_never_starve_a_neighbours_ticks() {
    let spinner = "tick_interval_ms = 1000\ncall_timeout_ms = 950\n[app.restart]\nbackoff_initial_ms = 50\nbackoff_max_ms = 50\nmax_crashes = 1000\nwindow_s = 60";
    let gw = with_healthy_counter()
        .app("spin-a", &guest("loop-forever"), &model("empty"), spinner)
        .app("spin-b", &guest("loop-forever"), &model("empty"), spinner);
    let mut run = gw.start();
    for name in ["spin-a", "spin-b"] {
        run.wait_app(name, T, "spinning and interrupted", |a| {
            a["traps"].as_u64() >= Some(1)
        });
    }
    // Both spin for 950 ms of every second on this 2-core machine; the
    // counter's 50 ms ticks go on.
    healthy_keeps_pace(&mut run, Duration::from_secs(3));
    stays_bounded(&mut run, 512);
}

/// The soft and hard limits on open files of process `pid`.
fn open_file_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..].split_whitespace();
    Some((numbers.next()?.to_string(), numbers.next()?.to_string()))
}

#[test]
fn the_gateway_raises_its_soft_open_file_limit_to_the_hard_one() {
    let gw = with_healthy_counter();
    gw.write_config();
    // Started with a soft limit of 256, as a service manager might.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -S -n 256 && exec '{}' run --config '{}'",
            crate::common::binary().display(),
            gw.config_path().display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sh runs");
    let deadline = Instant::now() + T;
    let (soft, hard) = loop {
        let limits = open_file_limits(child.id()).expect("/proc/PID/limits");
        if limits.0 != "256" {
            break limits;
        }
        assert!(Instant::now() < deadline, "the soft limit stayed at 256");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(soft, hard, "raised to the hard limit");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn registrations_without_end_never_make_the_status_message_unsendable() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("watcher"), &["wg/v1/test-gw/#"]);
    let gw = with_healthy_counter()
        .section(&format!(
            "[cloud]\nurl = \"{}\"\nstatus_interval_s = 1\n",
            broker.url()
        ))
        .app(
            "flood",
            &guest("flood"),
            &model("flood"),
            &format!(
                "tick_interval_ms = 200\ncall_timeout_ms = 20000\nmax_devices = 2000\n\
                 [app.models]\nflood = \"{}\"\n[app.config]\nkind = \"register-big\"",
                model("flood").display()
            ),
        );
    let mut run = gw.start();
    run.wait_connected(T);
    // 2,000 registrations of some 8.5 KiB each: 17 MB if the status listed
    // them all, over the broker's 16 MiB.
    // (Counted in the database: the app's report would list all 2,000.
    // Each tick registers up to the rate's burst of 1,000, which takes a
    // while on a loaded machine, hence the app's long call deadline.)
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let registered = gw.count("SELECT COUNT(*) FROM registrations WHERE app = 'flood'");
        if registered >= 2000 {
            break;
        }
        assert!(Instant::now() < deadline, "{registered} registered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let flood = app_report(&gw, "flood");
    assert_eq!(
        (flood["state"].as_str(), flood["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{}",
        flood["error"]
    );
    let status_topic = "wg/v1/test-gw/test-gw/status";
    let all_counted = |a: &Value| {
        a["devices"].as_array().map_or(0, Vec::len) as u64
            + a["devices_omitted"].as_u64().unwrap_or(0)
            == 2000
    };
    let status = consumer.wait_json(status_topic, T, |s| {
        s["apps"]
            .as_array()
            .is_some_and(|apps| apps.iter().any(all_counted))
    });
    let flood = status["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == "flood")
        .expect("flood in the status");
    assert!(
        flood["devices"].as_array().map_or(0, Vec::len) <= 100,
        "{flood}"
    );
    // Every status message stayed within its budget, and the link never
    // went down.
    let largest = consumer
        .on(status_topic)
        .iter()
        .map(|m| m.payload.len())
        .max()
        .expect("status messages");
    assert!(largest <= 256 << 10, "a status message of {largest} bytes");
    // Yet every one of the 2,000 is announced, each on its own topic.
    let deadline = Instant::now() + Duration::from_secs(60);
    let announced = || {
        consumer
            .messages()
            .iter()
            .filter(|m| m.topic.ends_with("/registration"))
            .map(|m| m.topic.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    while announced() < 2000 {
        assert!(Instant::now() < deadline, "{} announced", announced());
        std::thread::sleep(Duration::from_millis(100));
    }
    let link = run.link().expect("link");
    assert_eq!(link["reconnects"], 0, "{link}");
    healthy_keeps_pace(&mut run, Duration::from_secs(2));
    stays_bounded(&mut run, 512);
}

#[test]
fn an_app_cannot_use_up_the_hosts_file_descriptors() {
    let gw = with_healthy_counter().app(
        "fd-hoarder",
        &guest("fd-hoarder"),
        &model("empty"),
        "tick_interval_ms = 100\n[app.restart]\nbackoff_initial_ms = 50\nmax_crashes = 3",
    );
    let mut run = gw.start();
    run.wait_running("counter", T);
    let open = |run: &Running| {
        std::fs::read_dir(format!("/proc/{}/fd", run.pid()))
            .expect("/proc/PID/fd")
            .count()
    };
    let before = open(&run);
    // 300 more handles a tick, kept: the app's cap (256 WASI resources)
    // stops it, each time, and its handles go with its instance.
    let deadline = Instant::now() + T;
    let mut peak = before;
    let hoarder = loop {
        peak = peak.max(open(&run));
        let hoarder = app_report(&gw, "fd-hoarder");
        if hoarder["state"] == "quarantined" {
            break hoarder;
        }
        assert!(Instant::now() < deadline, "{hoarder}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let error = hoarder["error"].as_str().unwrap_or_default();
    assert!(error.contains("resource table"), "{hoarder}");
    assert!(
        peak <= before + 256 + 16,
        "{peak} files open at the peak, {before} before"
    );
    let after = open(&run);
    assert!(
        after <= before + 16,
        "{after} files open after, {before} before"
    );
    healthy_keeps_pace(&mut run, Duration::from_secs(2));
    stays_bounded(&mut run, 512);
}

#[test]
fn an_app_that_writes_while_the_disk_is_below_its_reserve_is_stopped_and_its_neighbour_runs_on() {
    // A reserve larger than any disk here: the disk is always "below" it.
    let gw = with_healthy_counter()
        .section("[content]\ndisk_reserve_mib = 1073741824\n")
        .app(
            "filler",
            &guest("disk-filler"),
            &model("empty"),
            "tick_interval_ms = 100\n[app.restart]\nbackoff_initial_ms = 50\nmax_crashes = 1\n[app.config]\nkind = \"files\"",
        );
    let mut run = gw.start();
    let filler = run.wait_app("filler", T, "quarantined", |a| a["state"] == "quarantined");
    let error = filler["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("disk reserve: the app's directory grew by")
            && error.contains("[content] disk_reserve_mib"),
        "{filler}"
    );
    // The counter writes only to its storage, in the database: it runs on.
    healthy_keeps_pace(&mut run, Duration::from_secs(2));
    assert_eq!(app_report(&gw, "counter")["restarts"], 0);
    stays_bounded(&mut run, 512);
}

#[test]
fn an_app_that_fills_the_disk_is_stopped_at_its_quota_and_its_uploads_are_capped() {
    let gw = with_healthy_counter()
        .section("[content]\nmax_pending_uploads = 3\n")
        .app(
            "filler",
            &guest("disk-filler"),
            &model("empty"),
            "tick_interval_ms = 50\ndisk_quota_mib = 4\nstorage_quota_kib = 1024\n[app.restart]\nbackoff_initial_ms = 50\nmax_crashes = 2\n[app.config]\nkind = \"files\"",
        )
        .app(
            "uploader",
            &guest("disk-filler"),
            &model("empty"),
            "tick_interval_ms = 50\n[app.config]\nkind = \"uploads\"",
        )
        .app(
            "hoarder",
            &guest("disk-filler"),
            &model("empty"),
            "tick_interval_ms = 500\ndisk_quota_mib = 2\nstorage_quota_kib = 1536\n[app.restart]\nbackoff_initial_ms = 50\nmax_crashes = 2\n[app.config]\nkind = \"storage\"",
        );
    let mut run = gw.start();
    // 256 KiB every 50 ms into its own directory: stopped at its 4 MiB
    // quota, measured each second, so at most a second's writing over it.
    let filler = run.wait_app("filler", T, "quarantined", |a| a["state"] == "quarantined");
    assert!(
        filler["error"]
            .as_str()
            .is_some_and(|e| e.contains("disk quota") && e.contains("disk_quota_mib of 4 MiB")),
        "{filler}"
    );
    let files: u64 = std::fs::read_dir(gw.data_dir().join("apps/filler/files"))
        .expect("the filler's files")
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    // The quota, and at most a second of writing (5 MiB) past it.
    assert!(
        files <= (4 << 20) + (6 << 20),
        "{files} bytes in the filler's directory"
    );
    // Storage counts too: 1.25 MiB of it (its own quota refuses more), and
    // then files until the two pass the 2 MiB disk quota (slowly, so that
    // the second between two checks adds at most 512 KiB).
    let hoarder = run.wait_app("hoarder", T, "quarantined", |a| a["state"] == "quarantined");
    let error = hoarder["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("disk_quota_mib of 2 MiB") && error.contains("its storage (13"),
        "{hoarder}"
    );
    let files: u64 = std::fs::read_dir(gw.data_dir().join("apps/hoarder/files"))
        .expect("the hoarder's files")
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    assert!(
        files < 2 << 20,
        "{files} bytes of files alone are under the quota"
    );
    // Uploads with no link to send them: three wait, the next is refused.
    let refused = run.wait_for("upload refused: limit: the app has 3 uploads waiting", T);
    assert!(refused.contains("max_pending_uploads"), "{refused}");
    assert_eq!(
        gw.count("SELECT COUNT(*) FROM transfers WHERE app = 'uploader' AND state = 'running'"),
        3
    );
    healthy_keeps_pace(&mut run, Duration::from_secs(2));
    stays_bounded(&mut run, 512);
}
