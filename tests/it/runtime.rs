//! The gateway runs real guests end to end: ticks become outbox entries and
//! twin state, key-value data and the twin survive restarts (clean and
//! `kill -9`), unchanged components come from the compile cache, and
//! `wasmgate status` tells what the data directory holds.

use crate::common::{Gateway, guest, last_counter, model, run_to_end};
use std::time::Duration;

const FAST: &str = "tick_interval_ms = 50";

fn counter_gateway() -> Gateway {
    Gateway::new().app(
        "counter",
        &guest("storage-roundtrip"),
        &model("counter"),
        FAST,
    )
}

/// Every point the guest recorded, in outbox order, as the `n` field.
fn recorded_counts(gw: &Gateway) -> Vec<i64> {
    gw.outbox_points(Some("count"))
        .iter()
        .map(|point| {
            assert!(
                point["time"].as_u64().expect("time") > 1_600_000_000_000_000_000,
                "time is in ns"
            );
            point["values"]["n"].as_i64().expect("n")
        })
        .collect()
}

fn reported(gw: &Gateway, device: &str, name: &str) -> Option<String> {
    gw.db()
        .query_row(
            "SELECT reported FROM twin WHERE device = ?1 AND name = ?2",
            [device, name],
            |r| r.get(0),
        )
        .ok()
}

#[test]
fn ticks_produce_outbox_entries_with_the_right_values() {
    let gw = counter_gateway();
    let mut run = gw.start();
    run.wait_for(
        "counter=10 roundtrip=true record=true report=true",
        Duration::from_secs(30),
    );
    assert!(run.stop().success());

    let last = last_counter(&run.lines()).expect("counter logged");
    let counts = recorded_counts(&gw);
    assert_eq!(
        counts,
        (1..=last).collect::<Vec<_>>(),
        "every tick's point, once, in order"
    );
    assert_eq!(reported(&gw, "counter", "counter"), Some(last.to_string()));

    // One twin report per tick: the waiting row (a report replaces the one
    // before it) is the last tick's, and its version counts every tick.
    let waiting: Vec<(i64, i64)> = gw
        .waiting_twins()
        .iter()
        .map(|json| {
            (
                json["version"].as_i64().expect("version"),
                json["attributes"]["counter"].as_i64().expect("counter"),
            )
        })
        .collect();
    assert_eq!(waiting, vec![(last, last)]);
}

#[test]
fn kv_data_and_twin_state_survive_clean_and_hard_restarts() {
    let gw = counter_gateway();
    let mut run = gw.start();
    run.wait_for("counter=5 roundtrip=true", Duration::from_secs(30));
    assert!(run.stop().success());
    let after_first = last_counter(&run.lines()).expect("counter");
    assert!(after_first >= 5);

    // A clean restart: the guest reads its counter and its reported twin back.
    let mut run = gw.start();
    let started = run.wait_for("storage-roundtrip started", Duration::from_secs(30));
    assert!(
        started.contains(&format!("counter={after_first} ")),
        "counter restored from storage: {started}"
    );
    assert!(
        started.contains(&format!("reported=Some(Value::Integer({after_first}))")),
        "{started}"
    );
    run.wait_for(
        &format!("counter={} roundtrip=true", after_first + 3),
        Duration::from_secs(30),
    );

    // kill -9: storage writes are durable when `set` returns, so the next
    // start sees at least the last counter the guest logged.
    let logged = last_counter(&run.lines()).expect("counter");
    run.kill9();
    let mut run = gw.start();
    let started = run.wait_for("storage-roundtrip started", Duration::from_secs(30));
    let restored =
        crate::common::field_after(&started, "counter").expect("counter in the start line");
    assert!(
        restored >= logged,
        "restored {restored} < logged {logged} after kill -9"
    );
    run.wait_for(
        &format!("counter={} roundtrip=true", restored + 1),
        Duration::from_secs(30),
    );
    assert!(run.stop().success());
}

#[test]
fn a_restart_with_unchanged_components_does_not_recompile() {
    let gw = counter_gateway();
    let mut run = gw.start();
    let first = run.wait_running("counter", Duration::from_secs(60));
    assert_eq!(first["load"], "compiled", "{first}");
    run.wait_for("counter=1 ", Duration::from_secs(30));
    assert!(run.stop().success());

    let mut run = gw.start();
    let second = run.wait_running("counter", Duration::from_secs(30));
    assert_eq!(
        second["load"], "cache",
        "nothing is compiled on the second start: {second}"
    );
    assert_eq!(second["component"], first["component"]);
    assert!(run.stop().success());
}

/// A start that compiles runs the compiler in a child process: the gateway
/// runs the component from the artifact the child wrote to the compile
/// cache, mapped from that file as on a restart, so the compiler's memory
/// never becomes the gateway's (BENCHMARKS.md, P6). Compiled in the
/// gateway, the code would be in anonymous memory, and no file mapped.
#[test]
fn a_start_that_compiles_runs_the_artifact_a_child_process_compiled() {
    let gw = counter_gateway();
    let mut run = gw.start();
    let status = run.wait_running("counter", Duration::from_secs(60));
    assert_eq!(status["load"], "compiled", "{status}");
    assert!(
        !cache_file_mappings(run.pid()).is_empty(),
        "the compiled component does not run from the compile cache's file"
    );
    // The artifact, and nothing the child or the gateway left half-written.
    let cache = crate::common::listing(&gw.data_dir().join("cache"));
    assert!(
        cache.len() == 1 && cache[0].ends_with(".cwasm"),
        "{cache:?}"
    );
    assert!(run.stop().success());
}

/// After an upgrade replaced the binary's file, a deployment is still
/// compiled in a child, by the binary that runs (`/proc/self/exe`): the
/// new file's artifacts would not load in this one, and here the new file
/// cannot even run.
#[test]
fn after_an_upgrade_replaced_the_binary_a_deployment_is_compiled_by_the_running_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let installed = dir.path().join("wasmgate");
    std::fs::copy(crate::common::binary(), &installed).expect("install a copy");
    let gw = counter_gateway();
    gw.write_config();
    let mut run = crate::common::Running::spawn_binary(&installed, &gw.config_path(), &[]);
    run.wait_running("counter", Duration::from_secs(60));

    // The upgrade: another file where the binary was, which runs nothing.
    std::fs::remove_file(&installed).expect("remove the binary");
    std::fs::write(&installed, "not a program").expect("replace the binary");

    // Other bytes, so the cache does not have it: compiled at the deployment.
    let component = dir.path().join("counter-2.wasm");
    let bytes = std::fs::read(guest("storage-roundtrip")).expect("guest");
    std::fs::write(
        &component,
        crate::deploy::with_custom_section(bytes, b"version 2"),
    )
    .expect("write");
    let (ok, out) = crate::deploy::deploy(&gw, &component, &[]);
    assert!(ok, "{out}");
    let status = run.wait_version("counter", 2, Duration::from_secs(60));
    assert_eq!(status["load"], "compiled", "{status}");
    let digest = status["component"].as_str().expect("digest");
    assert!(
        cache_file_mappings(run.pid())
            .iter()
            .any(|(path, _, _)| path.contains(digest)),
        "version 2 does not run from its artifact in the compile cache"
    );
    assert!(run.stop().success());
}

/// The compile cache's files mapped into process `pid` without write
/// access (the components' code and read-only data), as (path,
/// permissions, offset). Writable mappings are each instance's own
/// copy-on-write image of its linear memory.
fn cache_file_mappings(pid: u32) -> Vec<(String, String, String)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    maps.lines()
        .filter(|line| line.ends_with(".cwasm"))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.last().expect("a mapped file's path");
            (
                path.to_string(),
                fields[1].to_string(),
                fields[2].to_string(),
            )
        })
        .filter(|(_, permissions, _)| !permissions.contains('w'))
        .collect()
}

/// A start reads an app's kept component (its artifact) only when no
/// compile cache has it, and refuses one whose bytes no longer match the
/// digest the registry keeps it under, by name, rather than running them.
#[test]
fn a_kept_component_damaged_on_disk_is_refused_when_it_must_be_read() {
    let gw = counter_gateway();
    let mut run = gw.start();
    let first = run.wait_running("counter", Duration::from_secs(60));
    assert!(run.stop().success());
    let digest = first["component"].as_str().expect("digest").to_string();
    let artifacts = gw.data_dir().join("artifacts");
    let artifact = std::fs::read_dir(&artifacts)
        .expect("artifacts")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&digest)
        })
        .unwrap_or_else(|| panic!("no artifact of {digest} in {}", artifacts.display()));
    let mut bytes = std::fs::read(&artifact).expect("artifact");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&artifact, &bytes).expect("damage the artifact");

    // The compile cache has it: the artifact is not read.
    let mut run = gw.start();
    let second = run.wait_running("counter", Duration::from_secs(30));
    assert_eq!(second["load"], "cache", "{second}");
    assert!(run.stop().success());

    // Without the cache it must be read, and its bytes are not the digest's.
    std::fs::remove_dir_all(gw.data_dir().join("cache")).expect("remove the cache");
    let (ok, _, stderr) = crate::common::run_to_end(&["run", "--config"], &gw.config_path());
    assert!(!ok, "a damaged component must not start: {stderr}");
    assert!(
        stderr.contains("app counter: the artifact of version 1")
            && stderr.contains("was changed or damaged on disk"),
        "{stderr}"
    );
}

/// Three apps of one component: on the start that loads it from the
/// compile cache, the cache file is mapped once, not once an app.
#[test]
fn apps_of_one_component_share_one_loaded_copy_of_it() {
    let names = ["a", "b", "c"];
    let gw = names.iter().fold(Gateway::new(), |gw, name| {
        gw.app(name, &guest("storage-roundtrip"), &model("counter"), FAST)
    });
    let mut run = gw.start();
    for name in names {
        run.wait_running(name, Duration::from_secs(60));
    }
    assert!(run.stop().success());

    let mut run = gw.start();
    let statuses: Vec<_> = names
        .iter()
        .map(|name| run.wait_running(name, Duration::from_secs(30)))
        .collect();
    for status in &statuses {
        assert_eq!(status["load"], "cache", "{status}");
        assert_eq!(status["component"], statuses[0]["component"]);
    }
    // Each load maps the file's code and read-only data: a second load
    // would map those offsets again.
    let offsets = cache_file_mappings(run.pid());
    assert!(!offsets.is_empty(), "the cache file is not mapped");
    let mut unique = offsets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        offsets.len(),
        "the component is mapped more than once (permissions, offset): {offsets:?}"
    );
    assert!(run.stop().success());
}

/// The apps share one pool of database connections: a dozen apps that each
/// read and write storage keep a few connections open between them, not
/// one each. Each costs about 100 KiB of heap, and opening one per app was
/// the largest part of a start's CPU (BENCHMARKS.md, P4).
#[test]
fn apps_share_a_few_database_connections_rather_than_one_each() {
    let one = database_files_open_with_apps(1);
    let apps = 12;
    let many = database_files_open_with_apps(apps);
    assert!(one >= 1, "a gateway with one app has the database open");
    let more = many.saturating_sub(one);
    assert!(
        more < apps / 2,
        "{apps} apps opened {more} more connections than one app did ({one})"
    );
}

/// How many times a gateway running `apps` storage apps, each through its
/// `init` and ticking, has the database file open: its connections.
fn database_files_open_with_apps(apps: usize) -> usize {
    let names: Vec<String> = (0..apps).map(|i| format!("app{i}")).collect();
    let gw = names.iter().fold(Gateway::new(), |gw, name| {
        gw.app(name, &guest("storage-roundtrip"), &model("counter"), FAST)
    });
    let mut run = gw.start();
    for name in &names {
        run.wait_running(name, Duration::from_secs(60));
    }
    let database = gw.db_path().canonicalize().expect("the database file");
    let open = std::fs::read_dir(format!("/proc/{}/fd", run.pid()))
        .expect("the gateway's open files")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|file| *file == database)
        .count();
    assert!(run.stop().success());
    open
}

#[test]
fn the_thermostat_example_records_reports_and_alerts() {
    let gw = Gateway::new().app(
        "thermostat",
        &guest("thermostat"),
        &crate::common::root().join("examples/thermostat/thermostat.model.json"),
        "tick_interval_ms = 20\n[app.config]\nstart_temperature = 19.0\noverheat_at = 20.0",
    );
    let mut run = gw.start();
    run.wait_for("tick 40:", Duration::from_secs(30));
    assert!(run.stop().success());

    let points = gw.outbox_points(Some("climate"));
    assert!(points.len() >= 40, "a point per tick: {}", points.len());
    for p in &points {
        let t = p["values"]["temperature"].as_f64().expect("temperature");
        let h = p["values"]["humidity"].as_f64().expect("humidity");
        assert!(
            (10.0..30.0).contains(&t) && (30.0..60.0).contains(&h),
            "plausible reading {p}"
        );
    }
    // Heating from 19 °C towards 21 °C passes 20 °C: the overheat alert fires.
    let alerts = gw.outbox_rows("alert", Some("overheat"));
    assert!(!alerts.is_empty(), "overheat alerts raised");
    let heating = reported(&gw, "thermostat", "heating").expect("heating reported");
    assert!(heating == "true" || heating == "false");
    assert_eq!(
        reported(&gw, "thermostat", "setpoint").as_deref(),
        Some("21.0")
    );
}

#[test]
fn status_reports_apps_and_outbox_of_a_running_and_a_stopped_gateway() {
    let gw = counter_gateway();
    gw.write_config();
    let (ok, _, err) = run_to_end(&["status", "--config"], &gw.config_path());
    assert!(!ok && err.contains("has not run yet"), "{err}");

    let mut run = gw.start();
    run.wait_for("counter=3 ", Duration::from_secs(30));
    let status = gw.status();
    assert_eq!(status["running_pid"].as_u64(), Some(u64::from(run.pid())));
    assert_eq!(status["apps"][0]["name"], "counter");
    assert_eq!(status["apps"][0]["state"], "running");
    assert!(run.stop().success());

    let status = gw.status();
    assert!(status["running_pid"].is_null());
    assert_eq!(status["apps"][0]["state"], "stopped");
    let telemetry = status["outbox"]
        .as_array()
        .expect("outbox")
        .iter()
        .find(|o| o["kind"] == "telemetry" && o["name"] == "count")
        .expect("the count series is in the outbox")
        .clone();
    assert!(telemetry["points"].as_i64().expect("points") >= 3);

    let (ok, table, _) = run_to_end(&["status", "--config"], &gw.config_path());
    assert!(ok);
    assert!(
        table.contains("counter") && table.contains("stopped") && table.contains("count"),
        "{table}"
    );
}

#[test]
fn a_second_gateway_on_the_same_data_directory_is_refused() {
    let gw = counter_gateway();
    let mut first = gw.start();
    first.wait_running("counter", Duration::from_secs(30));
    let (ok, _, err) = run_to_end(&["run", "--config"], &gw.config_path());
    assert!(!ok);
    assert!(
        err.contains("another wasmgate") && err.contains(&first.pid().to_string()),
        "{err}"
    );
    assert!(first.stop().success());
}
