//! A misbehaving guest costs only itself: a trap (a panic), an endless
//! loop, endless recursion and a memory bomb are each stopped, restarted
//! with backoff and finally quarantined, while a healthy app beside them
//! keeps ticking and the process's memory stays bounded.

use crate::common::{Gateway, guest, last_counter, model};
use std::time::Duration;

const HEALTHY: &str = "tick_interval_ms = 50";
const QUICK_RESTARTS: &str =
    "[app.restart]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\nmax_crashes = 3\nwindow_s = 60";

/// Start `name` (with `extra` TOML) next to the healthy counter app, wait
/// for it to be quarantined, and check the healthy app never stopped.
fn quarantined_beside_a_healthy_app(
    name: &str,
    extra: &str,
    expected_error: &str,
) -> serde_json::Value {
    let gw = Gateway::new()
        .app(
            "counter",
            &guest("storage-roundtrip"),
            &model("counter"),
            HEALTHY,
        )
        .app(
            name,
            &guest(name),
            &model("empty"),
            &format!("{extra}\n{QUICK_RESTARTS}"),
        );
    let mut run = gw.start();
    let quarantined = run.wait_app(name, Duration::from_secs(60), "quarantined", |a| {
        a["state"] == "quarantined"
    });
    assert!(
        quarantined["error"]
            .as_str()
            .is_some_and(|e| e.contains(expected_error)),
        "{quarantined}"
    );
    assert_eq!(
        quarantined["restarts"], 2,
        "two restarts before the third crash quarantines: {quarantined}"
    );

    // The healthy app keeps its pace after the quarantine as well.
    let before = last_counter(&run.lines()).expect("the healthy app ticked");
    assert!(before >= 1);
    run.wait_for(
        &format!("counter={} roundtrip=true", before + 10),
        Duration::from_secs(20),
    );

    let status = gw.status();
    let apps = status["apps"].as_array().expect("apps").clone();
    let bad = apps
        .iter()
        .find(|a| a["name"] == name)
        .expect("the bad app's status");
    assert_eq!(bad["state"], "quarantined");
    assert_eq!(bad["restarts"], 2);
    assert!(
        bad["error"]
            .as_str()
            .expect("error")
            .contains(expected_error),
        "{bad}"
    );
    let good = apps
        .iter()
        .find(|a| a["name"] == "counter")
        .expect("counter status");
    assert_eq!(good["state"], "running");
    assert_eq!(good["restarts"], 0);
    // The process's memory (the guests' included) stayed bounded.
    let peak = run.peak_rss_mib();
    assert!(peak < 250, "peak RSS {peak} MiB");
    assert!(run.stop().success());
    bad.clone()
}

#[test]
fn a_trapping_app_is_restarted_then_quarantined_while_a_healthy_app_keeps_ticking() {
    let bad = quarantined_beside_a_healthy_app(
        "trap-on-tick",
        "tick_interval_ms = 20",
        "on-tick trapped",
    );
    // The panic message the guest printed is part of the report.
    assert!(
        bad["error"]
            .as_str()
            .expect("error")
            .contains("boom on tick 1"),
        "{bad}"
    );
}

#[test]
fn an_endless_loop_is_interrupted_by_the_call_deadline() {
    let bad = quarantined_beside_a_healthy_app(
        "loop-forever",
        "tick_interval_ms = 20\ncall_timeout_ms = 300",
        "on-tick: the call ran past its deadline of 300 ms",
    );
    assert_eq!(bad["state"], "quarantined");
}

#[test]
fn a_memory_bomb_hits_its_memory_limit() {
    quarantined_beside_a_healthy_app(
        "memory-bomb",
        "tick_interval_ms = 20\nmemory_limit_mib = 16",
        "on-tick: memory limit of 16 MiB reached",
    );
}

#[test]
fn endless_recursion_runs_out_of_stack_not_the_host() {
    let bad = quarantined_beside_a_healthy_app(
        "deep-recursion",
        "tick_interval_ms = 20",
        "on-tick trapped",
    );
    // A Rust guest keeps its frames' locals on a stack in linear memory,
    // which runs out first (an access below its start); a guest with small
    // frames exhausts wasmtime's own call stack instead. Either is a trap.
    let error = bad["error"].as_str().expect("error");
    assert!(
        error.contains("out of bounds memory access") || error.contains("call stack exhausted"),
        "{bad}"
    );
}

#[test]
fn a_looping_app_does_not_stall_the_healthy_app_while_it_spins() {
    // One long deadline: while the loop spins for 3 s the healthy app must
    // still tick, because a running guest yields every epoch tick.
    let gw = Gateway::new()
        .app(
            "counter",
            &guest("storage-roundtrip"),
            &model("counter"),
            HEALTHY,
        )
        .app(
            "loop-forever",
            &guest("loop-forever"),
            &model("empty"),
            "call_timeout_ms = 3000",
        );
    let mut run = gw.start();
    run.wait_for("loop-forever started", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let during = last_counter(&run.lines()).expect("ticks");
    std::thread::sleep(Duration::from_millis(1500));
    let later = last_counter(&run.lines()).expect("ticks");
    // 50 ms ticks: 30 expected in 1.5 s; demand a third of that.
    assert!(
        later - during >= 10,
        "the healthy app ticked only {} times while the loop ran",
        later - during
    );
    assert_eq!(
        run.count("app crashed:"),
        0,
        "the loop is still within its deadline"
    );
    run.wait_for(
        "the call ran past its deadline of 3000 ms",
        Duration::from_secs(10),
    );
    assert!(run.stop().success());
}
