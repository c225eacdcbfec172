//! Bad input gets a clear error and nothing of it is stored: values a guest
//! reports against its device model, a malformed gateway.toml, a malformed
//! model file, and a file that is not a component.

use crate::common::{Gateway, guest, model, run_to_end};
use std::time::Duration;

#[test]
fn values_outside_the_model_are_refused_with_clear_errors_and_never_stored() {
    let gw = Gateway::new().app(
        "level",
        &guest("invalid-report"),
        &model("level"),
        "tick_interval_ms = 100",
    );
    let mut run = gw.start();
    run.wait_for("valid: accepted", Duration::from_secs(30));
    let expect = [
        "out-of-range: refused (invalid: attribute `level`: 250 is out of range [0, 100])",
        "wrong-type: refused (invalid: attribute `level`: expected number, got text)",
        "unknown: refused (invalid: unknown attribute `colour` (the model declares: enabled, level))",
        "not-finite: refused (invalid: attribute `level`: NaN is not a finite number)",
        "mixed: refused (invalid: attribute `enabled`: expected boolean, got integer)",
        "series-field: refused (invalid: unknown field of series `levels`: `depth` (the model declares: level))",
        "series-unknown: refused (invalid: unknown series `nope` (the model declares: levels))",
        "alert-unknown: refused (invalid: unknown alert `meltdown` (the model declares: high))",
        "batch-mixed: refused (invalid: device level: attribute `level`: 250 is out of range [0, 100])",
        "record-batch-mixed: refused (invalid: point 1: series `levels` field `level`: 101 is out of range [0, 100])",
        "batch-too-many: refused (invalid: 1001 reports in one call: at most 1000)",
        "batch-valid: accepted",
    ];
    for line in expect {
        run.wait_for(line, Duration::from_secs(5));
    }
    // The host logs each refusal too, naming the app.
    let refusal = run.wait_for(
        "report refused: attribute `level`: 250 is out of range",
        Duration::from_secs(5),
    );
    assert!(refusal.contains("level"), "{refusal}");
    assert!(run.stop().success());

    // Only the valid reports reached the twin and the outbox (the batch's
    // valid first report, 10, was not stored with its refused second, nor
    // the record batch's valid first point).
    let db = gw.db();
    let pairs = |sql: &str| -> Vec<(String, String)> {
        db.prepare(sql)
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect(sql)
    };
    let twin = pairs("SELECT name, reported FROM twin WHERE device = 'level' ORDER BY name");
    assert_eq!(twin, vec![("level".to_string(), "42.0".to_string())]);
    // The outbox holds the device's one waiting twin row (a mark: the
    // state it sends is the twin's, checked above) and no telemetry or
    // alert of the refused records and alerts.
    let rows = pairs("SELECT kind, device FROM outbox WHERE kind != 'model' ORDER BY seq");
    assert_eq!(
        rows,
        vec![("twin".to_string(), "level".to_string())],
        "nothing refused was stored"
    );
}

#[test]
fn a_malformed_gateway_toml_fails_naming_the_file_line_and_key() {
    let gw = Gateway::new();
    let path = gw.config_path();
    std::fs::write(
        &path,
        "[gateway]\nid = \"gw\"\n\n[[app]]\nname = \"a\"\ncomponnet = \"a.wasm\"\n",
    )
    .expect("write");
    let (ok, _, err) = run_to_end(&["run", "--config"], &path);
    assert!(!ok);
    assert!(
        err.contains(&path.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("line 6"), "names the line: {err}");
    assert!(
        err.contains("unknown field `componnet`"),
        "names the key: {err}"
    );

    std::fs::write(
        &path,
        "[gateway]\nid = \"gw\"\nflush_interval_ms = \"soon\"\n",
    )
    .expect("write");
    let (ok, _, err) = run_to_end(&["run", "--config"], &path);
    assert!(
        !ok && err.contains("line 3") && err.contains("flush_interval_ms"),
        "{err}"
    );

    let (ok, _, err) = run_to_end(&["run", "--config"], &gw.dir.path().join("missing.toml"));
    assert!(
        !ok && err.contains("missing.toml: cannot read the config"),
        "{err}"
    );
}

#[test]
fn a_malformed_model_fails_naming_the_file_and_the_problem() {
    let gw = Gateway::new();
    let bad = gw.dir.path().join("bad.model.json");
    std::fs::write(
        &bad,
        r#"{"attributes": {"speed": {"type": "number", "range": [10, 1]}}}"#,
    )
    .expect("write");
    let gw = gw.app("a", &guest("storage-roundtrip"), &bad, "");
    gw.write_config();
    let (ok, _, err) = run_to_end(&["run", "--config"], &gw.config_path());
    assert!(!ok);
    assert!(err.contains("bad.model.json"), "{err}");
    assert!(
        err.contains("attributes.speed.range: [10, 1] is not a range"),
        "{err}"
    );

    std::fs::write(
        &bad,
        "{\n  \"attributes\": {\n    \"speed\": {\"type\": \"number\",}\n  }\n}",
    )
    .expect("write");
    let (ok, _, err) = run_to_end(&["run", "--config"], &gw.config_path());
    assert!(
        !ok && err.contains("bad.model.json") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_refused_at_start() {
    let gw = Gateway::new();
    let junk = gw.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm this is not a component").expect("write");
    let gw = gw.app("junk", &junk, &model("empty"), "");
    gw.write_config();
    let (ok, _, err) = run_to_end(&["run", "--config"], &gw.config_path());
    assert!(!ok);
    assert!(
        err.contains("app junk") && err.contains("is not a valid WebAssembly component"),
        "{err}"
    );
    // The error names the file, on one line (no dump of the bytes).
    let error = err
        .lines()
        .find(|l| l.contains("app junk"))
        .expect("the error line");
    assert!(
        error.contains(&format!("the component {} is refused", junk.display())),
        "{error}"
    );
    // Nothing was recorded: the registry holds no version of it.
    assert_eq!(
        gw.count("SELECT COUNT(*) FROM app_versions WHERE app = 'junk'"),
        0
    );

    // 100 random bytes as a new version of an app that runs: refused, and
    // the running version stays current (and the one a rollback would go
    // back from).
    let good = Gateway::new();
    let component = good.dir.path().join("counter.wasm");
    std::fs::copy(guest("storage-roundtrip"), &component).expect("copy");
    let good = good.app("counter", &component, &model("counter"), "");
    let mut run = good.start();
    run.wait_running("counter", Duration::from_secs(30));
    assert!(run.stop().success());
    let random: Vec<u8> = (0..100u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&component, random).expect("write");
    let (ok, _, err) = run_to_end(&["run", "--config"], &good.config_path());
    assert!(!ok && err.contains("app counter: the component"), "{err}");
    assert_eq!(
        good.count("SELECT COUNT(*) FROM app_versions WHERE app = 'counter'"),
        1,
        "no junk version recorded"
    );
    assert_eq!(
        good.count("SELECT version FROM app_deployments WHERE app = 'counter'"),
        1
    );
    // Put back, it starts as before.
    std::fs::copy(guest("storage-roundtrip"), &component).expect("copy");
    let mut run = good.start();
    run.wait_running("counter", Duration::from_secs(30));
    assert!(run.stop().success());
}
