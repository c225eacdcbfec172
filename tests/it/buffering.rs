//! The outbox keeps its promises: limits with both policies, age limits,
//! alerts and states first, alerts last to go, a full database that recovers, and the
//! device policies of a model, each with exact expected outputs.

use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::{Gateway, guest, model};
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn recorder(extra: &str) -> Gateway {
    Gateway::new().app(
        "seq",
        &guest("sequence-recorder"),
        &model("sequence"),
        extra,
    )
}

/// The `n` of every telemetry point in the outbox, in order.
fn stored(gw: &Gateway) -> Vec<i64> {
    gw.outbox_points(None)
        .iter()
        .map(|p| p["values"]["n"].as_i64().expect("n"))
        .collect()
}

fn stream<'a>(status: &'a Value, kind: &str, name: &str) -> &'a Value {
    status["outbox"]
        .as_array()
        .expect("outbox")
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {status}"))
}

fn last_recorded(lines: &[String]) -> i64 {
    lines
        .iter()
        .filter_map(|l| l.split("recorded through ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn drop_oldest_keeps_the_newest_points_within_the_limit_and_counts_the_rest() {
    let gw = recorder(
        "tick_interval_ms = 20\n[app.config]\nper_tick = 50\nalert_every = 100\nstop_after = 3000",
    )
    .section("[outbox]\nmax_kib = 16\n");
    let mut run = gw.start();
    run.wait_for("recorded through 3000", T);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(run.stop().success());

    let kept = stored(&gw);
    assert!(!kept.is_empty());
    // A contiguous run of the newest points.
    assert_eq!(
        kept,
        (kept[0]..=3000).collect::<Vec<_>>(),
        "the oldest went first"
    );
    let status = gw.status();
    let seq = stream(&status, "telemetry", "seq");
    assert!(seq["bytes"].as_i64().expect("bytes") <= 16 * 1024);
    assert_eq!(
        seq["dropped"].as_i64().expect("dropped") + kept.len() as i64,
        3000,
        "every point is kept or counted"
    );
    // Alerts are the last to go: all 30 are still there.
    assert_eq!(stream(&status, "alert", "milestone")["entries"], 30);
    let (ok, table, _) = crate::common::run_to_end(&["status", "--config"], &gw.config_path());
    assert!(ok && table.contains("DROPPED"), "{table}");
}

#[test]
fn reject_newest_refuses_new_points_with_a_limit_error_and_keeps_the_oldest() {
    let gw = recorder("tick_interval_ms = 20\n[app.config]\nper_tick = 50\nstop_after = 2000")
        .section("[outbox.series.seq]\nmax_kib = 8\nwhen_full = \"reject-newest\"\n");
    let mut run = gw.start();
    let refused = run.wait_for("record refused (", T);
    assert!(
        refused.contains("limit: outbox full: series `seq` holds")
            && refused.contains("when_full = reject-newest"),
        "{refused}"
    );
    // The last batch may be refused too: wait for whichever comes.
    run.wait_until(T, "the guest to reach 2000", |lines| {
        lines
            .iter()
            .any(|l| l.contains("recorded through 2000") || l.contains("..=2000)"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(run.stop().success());

    let kept = stored(&gw);
    assert_eq!(
        kept,
        (1..=kept.len() as i64).collect::<Vec<_>>(),
        "the oldest points stay"
    );
    let seq = stream(&gw.status(), "telemetry", "seq").clone();
    assert!(seq["rejected"].as_i64().expect("rejected") > 0);
    assert_eq!(seq["dropped"], 0);
}

#[test]
fn points_older_than_max_age_expire_unsent() {
    let gw = recorder("tick_interval_ms = 20\n[app.config]\nper_tick = 10\nstop_after = 100")
        .section("[outbox]\nmax_age_s = 1\n");
    let mut run = gw.start();
    run.wait_for("recorded through 100", T);
    assert!(!stored(&gw).is_empty() || run.count("recorded through") > 0);
    std::thread::sleep(Duration::from_millis(3000));
    assert!(run.stop().success());
    assert_eq!(stored(&gw), Vec::<i64>::new());
    assert_eq!(stream(&gw.status(), "telemetry", "seq")["expired"], 100);
}

#[test]
fn alerts_and_the_reported_state_leave_the_outbox_before_telemetry() {
    // Fill the outbox offline, then connect. The state is reported last,
    // after every batch of points.
    let offline = recorder(
        "tick_interval_ms = 10\n[app.config]\nper_tick = 100\nalert_every = 100\nstop_after = 2000\nreport_last = true",
    );
    let mut run = offline.start();
    run.wait_for("recorded through 2000", T);
    assert!(run.stop().success());

    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(&broker.settings("consumer"), &["wg/v1/test-gw/seq/#"]);
    let online = offline
        .reconfigure()
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .app(
            "seq",
            &guest("sequence-recorder"),
            &model("sequence"),
            "[app.config]\nstop_after = 2000",
        );
    let mut run = online.start();
    consumer.wait_json("wg/v1/test-gw/seq/alert/milestone", T, |j| {
        j["values"]["n"] == 2000
    });
    consumer.wait_json("wg/v1/test-gw/seq/telemetry/seq", T, |j| {
        j["points"]
            .as_array()
            .and_then(|p| p.last())
            .is_some_and(|p| p["values"]["n"] == 2000)
    });
    assert!(run.stop().success());
    let topics: Vec<String> = consumer.messages().into_iter().map(|m| m.topic).collect();
    let last_alert = topics
        .iter()
        .rposition(|t| t.contains("/alert/"))
        .expect("alerts");
    let first_telemetry = topics
        .iter()
        .position(|t| t.contains("/telemetry/"))
        .expect("telemetry");
    assert_eq!(topics.iter().filter(|t| t.contains("/alert/")).count(), 20);
    assert!(last_alert < first_telemetry, "alerts first: {topics:?}");
    // The state the app reported after its last batch goes before the
    // batches: the cloud sees a device's state without waiting for the
    // backlog of its history.
    let reported = consumer
        .messages()
        .into_iter()
        .position(|m| {
            m.topic == "wg/v1/test-gw/seq/twin/reported"
                && serde_json::from_slice::<Value>(&m.payload)
                    .is_ok_and(|j| j["attributes"]["recorded"] == 2000)
        })
        .unwrap_or_else(|| panic!("the reported state: {topics:?}"));
    assert!(
        reported < first_telemetry,
        "the state before telemetry: {topics:?}"
    );
}

#[test]
fn a_full_database_refuses_writes_clearly_and_recovers_when_space_returns() {
    let app = "tick_interval_ms = 20\n[app.config]\nper_tick = 200";
    let gw = recorder(app).section("[outbox]\ndatabase_max_mib = 1\n");
    let mut run = gw.start();
    let full = run.wait_for("record refused (", T);
    assert!(
        full.contains("unavailable: the gateway cannot store points right now")
            && full.contains("full"),
        "{full}"
    );
    let deadline = std::time::Instant::now() + T;
    let write_error = loop {
        if let Some(error) = run
            .outbox()
            .and_then(|o| o["write_error"].as_str().map(str::to_string))
        {
            break error;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no write error reported: {:?}",
            run.outbox()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(write_error.contains("full"), "{write_error}");
    let stuck_at = last_recorded(&run.lines());
    // The app goes on calling `record` and hearing "unavailable".
    let refusals = run.count("record refused (");
    run.wait_until(T, "more refusals", |lines| {
        let now = lines
            .iter()
            .filter(|l| l.contains("record refused ("))
            .count();
        (now >= refusals + 5).then_some(())
    });
    let seq = run.wait_running("seq", T);
    assert_eq!(
        seq["restarts"], 0,
        "a full disk is not the app's crash: {seq}"
    );
    assert!(
        run.stop().success(),
        "the gateway stays up and stops cleanly"
    );

    // Space returns: a broker takes the backlog away.
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/seq/telemetry/#"],
    );
    let gw = gw
        .reconfigure()
        .section("[outbox]\ndatabase_max_mib = 1\n")
        .section(&format!("[cloud]\nurl = \"{}\"\n", broker.url()))
        .app("seq", &guest("sequence-recorder"), &model("sequence"), app);
    let mut run = gw.start();
    run.wait_until(
        T,
        "recording well past where the database was full",
        |lines| (last_recorded(lines) > stuck_at + 2000).then_some(()),
    );
    assert!(run.stop().success());
    let integrity: String = gw
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(integrity, "ok");
    assert!(!consumer.on("wg/v1/test-gw/seq/telemetry/seq").is_empty());
}

/// A waiting twin row: (version, level).
type TwinRow = (u64, f64);

/// Run `values` through a model whose `readings` series and `level`
/// attribute carry the given policies; what reached the outbox:
/// (points as (ms from start, v), the waiting twin row as (version, level), alerts as v).
fn replay(
    series_policies: &str,
    level_policies: &str,
    values: &str,
    step_ms: u64,
) -> (Vec<(u64, f64)>, Vec<TwinRow>, Vec<f64>) {
    let gw = Gateway::new();
    let model_path = gw.dir.path().join("policies.json");
    std::fs::write(
        &model_path,
        format!(
            r#"{{
                "attributes": {{"level": {{"type": "number", "policies": {level_policies}}}}},
                "series": {{"readings": {{"fields": {{"v": {{"type": "number"}}}}, "policies": {series_policies}}}}},
                "alerts": {{"high": {{"fields": {{"v": {{"type": "number"}}}}}},
                            "level_high": {{"fields": {{"level": {{"type": "number"}}}}}}}}
            }}"#
        ),
    )
    .expect("write model");
    let start_ms: u64 = 1_700_000_000_000;
    let gw = gw.app(
        "replay",
        &guest("replay-values"),
        &model_path,
        &format!("tick_interval_ms = 10\n[app.config]\nvalues = \"{values}\"\nstep_ms = {step_ms}\nstart_ms = {start_ms}"),
    );
    let mut run = gw.start();
    run.wait_for("replayed", T);
    assert!(run.stop().success());

    let rows = |kind: &str| gw.outbox_rows(kind, None);
    let points = rows("telemetry")
        .iter()
        .flat_map(|batch| batch.as_array().expect("array").clone())
        .map(|p| {
            (
                (p["time"].as_u64().expect("time") / 1_000_000) - start_ms,
                p["values"]["v"].as_f64().expect("v"),
            )
        })
        .collect();
    // A report replaces its device's waiting twin row, so the outbox holds
    // the last one stored, whose version counts every report stored.
    let levels = gw
        .waiting_twins()
        .iter()
        .map(|r| {
            (
                r["version"].as_u64().expect("version"),
                r["attributes"]["level"].as_f64().expect("level"),
            )
        })
        .collect();
    let alerts = rows("alert")
        .iter()
        .map(|r| {
            r["values"]
                .as_object()
                .and_then(|v| v.values().next())
                .and_then(Value::as_f64)
                .expect("a value")
        })
        .collect();
    (points, levels, alerts)
}

#[test]
fn a_range_filter_and_a_count_window_send_the_mean_of_the_values_in_range() {
    let (points, _, _) = replay(
        r#"[{"filter": {"field": "v", "min": 0, "max": 100}}, {"window": {"function": "mean", "count": 3}}]"#,
        "[]",
        "1,200,2,3,-5,4,5,6,7",
        100,
    );
    assert_eq!(points, vec![(300, 2.0), (700, 5.0)]);
}

#[test]
fn delta_elimination_then_sampling_every_second_value() {
    let (points, _, _) = replay(
        r#"[{"deduplicate": {"field": "v", "delta": 0.5}}, {"sample": {"every": 2}}]"#,
        "[]",
        "10,10.2,11,11.1,12,15,15.3",
        100,
    );
    assert_eq!(points, vec![(0, 10.0), (400, 12.0)]);
}

#[test]
fn sampling_by_interval_and_a_time_window_use_the_points_own_times() {
    let (points, _, _) = replay(
        r#"[{"sample": {"interval_ms": 250}}]"#,
        "[]",
        "0,1,2,3,4,5,6,7,8,9",
        100,
    );
    assert_eq!(points, vec![(0, 0.0), (300, 3.0), (600, 6.0), (900, 9.0)]);
    let (points, _, _) = replay(
        r#"[{"window": {"function": "max", "interval_ms": 500}}]"#,
        "[]",
        "3,1,4,1,5,9,2,6,5,3",
        100,
    );
    // [0, 500 ms) closes when the point at 500 ms arrives; the last window never closes.
    assert_eq!(points, vec![(400, 5.0)]);
    let (points, _, _) = replay(
        r#"[{"window": {"function": "min", "count": 5}}]"#,
        "[]",
        "3,1,4,1,5,9,2,6,5,3",
        100,
    );
    assert_eq!(points, vec![(400, 1.0), (900, 2.0)]);
    let (points, _, _) = replay(
        r#"[{"window": {"function": "stddev", "count": 4}}]"#,
        "[]",
        "1,1,3,3",
        100,
    );
    assert_eq!(points, vec![(300, 1.0)]);
}

#[test]
fn alert_conditions_raise_the_model_alert_when_a_value_crosses_the_threshold() {
    let (points, _, alerts) = replay(
        r#"[{"alert": {"field": "v", "above": 50, "raise": "high", "severity": "critical"}}]"#,
        "[]",
        "10,60,70,40,80",
        100,
    );
    assert_eq!(
        alerts,
        vec![60.0, 80.0],
        "raised when the condition starts to hold"
    );
    assert_eq!(points.len(), 5, "an alert stage passes every value on");
}

#[test]
fn attribute_policies_thin_reports() {
    let (_, levels, alerts) = replay(
        "[]",
        r#"[{"deduplicate": {"delta": 1}}, {"alert": {"above": 11, "raise": "level_high"}}]"#,
        "10,10.5,12,12.2,9",
        100,
    );
    // 10, 12 and 9 are stored (3 reports of 5; 12 raised the alert), and
    // the state is the last of them.
    assert_eq!(levels, vec![(3, 9.0)]);
    assert_eq!(alerts, vec![12.0]);
}

#[test]
fn an_invalid_policy_stops_the_gateway_at_start_naming_it() {
    let gw = Gateway::new();
    let model_path = gw.dir.path().join("bad.json");
    std::fs::write(
        &model_path,
        r#"{"series": {"readings": {"fields": {"v": {"type": "number"}}, "policies": [{"sample": {"every": 0}}]}}}"#,
    )
    .expect("write");
    let gw = gw.app("replay", &guest("replay-values"), &model_path, "");
    gw.write_config();
    let (ok, _, err) = crate::common::run_to_end(&["run", "--config"], &gw.config_path());
    assert!(!ok);
    assert!(
        err.contains("bad.json")
            && err.contains("series.readings.policies[0]: sample needs exactly one of"),
        "{err}"
    );
}
