//! The web console in headless Chromium (Debian's, driven by playwright-core)
//! against a real gateway, Mosquitto and `serve` on SQLite with tokens: the
//! page asks for a token, shows the fleet, refuses out-of-range values
//! before sending them, sends a desired value that reaches the app, calls
//! actions with their arguments, draws exactly the points the gateway
//! recorded, and shows the gateway going offline when it is killed.

use crate::common::browser::Browser;
use crate::common::mqtt::{Consumer, Mosquitto};
use crate::common::serve::{OPERATOR, Serve, tokens_file};
use crate::common::{guest, model, root};
use crate::serve::{settled, thermostat};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn the_console_shows_the_fleet_sets_desired_values_calls_actions_and_charts_what_was_recorded() {
    let broker = Mosquitto::start("");
    let consumer = Consumer::connect(
        &broker.settings("consumer"),
        &["wg/v1/test-gw/+/telemetry/+"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = Serve::start(
        &broker.url(),
        &database,
        &["--tokens", tokens_file(dir.path()).to_str().expect("utf-8")],
    )
    .with_token(OPERATOR);
    // Overheated from the first tick, so that there are alerts to show.
    let gw = thermostat(&broker, 50, "[app.config]\noverheat_at = -100.0\n")
        .gateway(r#"labels = { site = "plant-1" }"#)
        .app(
            "actions",
            &guest("action-behaviours"),
            &model("actions"),
            "",
        );
    let mut run = gw.start();
    run.wait_running("thermostat", T);
    run.wait_running("actions", T);

    let console = serve.base.replace("/api/v1", "/console/");
    let mut page = Browser::start();
    page.goto(&console);
    // The API needs a token: the page asks for one before it shows anything.
    page.wait_text("#login", "needs a token", T);
    page.fill("#token", "not-a-known-token-000");
    page.click("#login button");
    page.wait_text("#login-error", "not known", T);
    page.fill("#token", OPERATOR);
    page.click("#login button");

    // The fleet: the gateway online, its apps running, its outbox.
    let row = r#"#gateways tr[data-gateway="test-gw"]"#;
    page.wait_text(&format!("{row} td.state"), "online", T);
    page.wait_text(&format!("{row} [data-app=thermostat]"), "running", T);
    page.wait_text(&format!("{row} [data-app=actions]"), "running", T);
    page.wait_text(&format!("{row} td.outbox"), "entries", T);
    page.wait_text(&format!("{row} td.labels"), "site=plant-1", T);

    // The thermostat's page: its twin as reported.
    page.click(&format!("{row} [data-app=thermostat] a"));
    let setpoint = "#twin tr[data-attribute=setpoint]";
    page.wait_text(&format!("{setpoint} td.reported"), "21", T);
    // A value the model refuses is not sent: the page says why.
    page.fill("#desired input[name=setpoint]", "40");
    page.click("#desired button[type=submit]");
    page.wait_text("#desired-status", "40 is out of range [5, 30]", T);
    page.fill("#desired input[name=setpoint]", "warm");
    page.click("#desired button[type=submit]");
    page.wait_text("#desired-status", "expected number", T);
    let twin = serve.get("/gateways/test-gw/devices/thermostat/twin");
    assert_eq!(twin["desired"], Value::Null, "nothing was sent: {twin}");
    // One it takes reaches the app, which reports it back, and its ack shows.
    page.fill("#desired input[name=setpoint]", "23.5");
    page.click("#desired button[type=submit]");
    page.wait_text("#ack", "accepted setpoint", T);
    page.wait_text(&format!("{setpoint} td.reported"), "23.5", T);
    page.wait_text(&format!("{setpoint} td.desired"), "23.5", T);
    let twin = serve.get("/gateways/test-gw/devices/thermostat/twin");
    assert_eq!(twin["desired"], json!({"setpoint": 23.5}), "{twin}");
    assert_eq!(twin["reported"]["setpoint"], json!(23.5), "{twin}");

    // Its alerts.
    page.wait_text("#alerts tbody tr", "overheat", T);

    // An action without an argument answers with the app's result: the
    // readings it counted before the reset.
    page.click("#actions form[data-action=reset] button");
    page.wait_text("#actions form[data-action=reset] .result", "→", T);
    let result = page.text("#actions form[data-action=reset] .result");
    let counted: u64 = result
        .trim_start_matches('→')
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("reset answered {result:?}: {e}"));
    assert!(counted > 0, "reset answered {result:?}");

    // The gateway's page: the broker it is on.
    page.goto(&format!("{console}#/gateways/test-gw"));
    page.wait_text(r#"tr[data-gateway="test-gw"] td.broker"#, &broker.url(), T);

    // The other app's page: actions with arguments, checked first.
    page.goto(&format!("{console}#/gateways/test-gw/devices/actions"));
    let double = "#actions form[data-action=double]";
    page.fill(&format!("{double} [name=argument]"), "5000");
    page.click(&format!("{double} button"));
    page.wait_text(
        &format!("{double} .result"),
        "5000 is out of range [-1000, 1000]",
        T,
    );
    page.fill(&format!("{double} [name=argument]"), "21");
    page.click(&format!("{double} button"));
    page.wait_text(&format!("{double} .result"), "→ 42", T);
    let echo = "#actions form[data-action=echo]";
    page.fill(&format!("{echo} [name=argument]"), "hello <b>there</b>");
    page.click(&format!("{echo} button"));
    // Text from the app is shown as text, never as markup.
    page.wait_text(&format!("{echo} .result"), "→ hello <b>there</b>", T);
    page.click("#actions form[data-action=fail] button");
    page.wait_text(
        "#actions form[data-action=fail] .result",
        "failed as asked",
        T,
    );
    // A desired value the app itself refuses: the ack says so.
    page.fill("#desired input[name=mode]", "refuse");
    page.click("#desired button[type=submit]");
    page.wait_text("#ack", "refused mode", T);

    // Killed: the broker publishes the gateway's will, and the fleet page
    // shows it offline.
    run.kill9();
    page.goto(&console);
    page.wait_text(&format!("{row} td.state"), "offline", T);

    // The chart draws exactly the points the gateway recorded and the
    // broker delivered, once each.
    let recorded = settled(&consumer, &serve);
    assert!(recorded.len() > 20, "{} points", recorded.len());
    page.goto(&format!("{console}#/gateways/test-gw/devices/thermostat"));
    page.wait_text("#charts p", &format!("{} points", recorded.len()), T);
    let drawn = page.eval("() => window.wasmgateCharts.climate");
    assert_eq!(drawn["mode"], "points", "{drawn}");
    let times: Vec<i64> = recorded
        .iter()
        .map(|p| (p["time"].as_f64().expect("time") / 1e6).round() as i64)
        .collect();
    let drawn_times: Vec<i64> = serde_json::from_value(drawn["times"].clone()).expect("times");
    assert_eq!(drawn_times, times);
    for field in ["temperature", "humidity"] {
        let values: Vec<Option<f64>> = recorded
            .iter()
            .map(|p| p["values"][field].as_f64())
            .collect();
        let drawn_values: Vec<Option<f64>> =
            serde_json::from_value(drawn["fields"][field].clone()).expect("values");
        assert_eq!(drawn_values, values, "{field}");
    }
    drop(page);

    // The page is served with a policy that keeps other origins' scripts out.
    let agent = ureq::Agent::new_with_defaults();
    let answer = agent.get(&console).call().expect("the console page");
    let policy = answer
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(policy.contains("default-src 'self'"), "{policy}");
}

/// The console's copy of uPlot is the one tests/browser/package.json pins.
#[test]
fn the_vendored_chart_library_is_the_pinned_version() {
    let pinned = root().join("tests/browser/node_modules/uplot/dist");
    let vendored = root().join("host/src/server/console/vendor");
    for file in ["uPlot.iife.min.js", "uPlot.min.css"] {
        let npm = std::fs::read(pinned.join(file))
            .unwrap_or_else(|e| panic!("{file} from npm (run `cargo xtask setup`): {e}"));
        let ours = std::fs::read(vendored.join(file)).expect("vendored file");
        assert!(
            npm == ours,
            "{file} differs from the pinned uplot's: copy it again"
        );
    }
}
