//! The fleet test: 100 real gateway processes (each running the swap
//! counter), one Mosquitto and `serve` on SQLite, on one machine. A good
//! version rolls out in waves to all 100, through a `kill -9` of `serve`
//! in the middle (which resumes it) and with five gateways offline during
//! their wave (which catch up when they return); then a version that traps
//! five seconds after its swap halts the rollout after its first wave, and
//! every gateway that took it is back on the version before.
//!
//! The rollout tests (`rollout.rs`) check each behaviour on a handful of
//! gateways; this one checks they hold at a fleet's scale. Times and memory
//! at this scale are measured by the fleet benchmark, not here.

use crate::common::mqtt::Mosquitto;
use crate::common::serve::Serve;
use crate::common::{Gateway, Running, fleet_member, guest};
use crate::rollout::{create, keygen, second_version, states};
use std::time::Duration;

const GATEWAYS: usize = 100;

/// Generous: 100 processes share two cores with serve and the broker.
const T: Duration = Duration::from_secs(300);

/// Gateway `gw-I`: the swap counter at one tick a second (a hundred of them
/// tick a hundred times a second together), labelled `ring = "fleet"`.
fn member(broker: &Mosquitto, i: usize, public: &str) -> Gateway {
    fleet_member(&broker.url(), &format!("gw-{i}"), "fleet", public, 1000)
}

/// The component each gateway's app runs, as serve has it.
fn components(serve: &Serve) -> Vec<(String, String)> {
    serve.get("/gateways")["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["gateway"].as_str().unwrap_or("?").to_string(),
                g["apps"][0]["component"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn a_fleet_of_100_gateways_takes_a_good_version_in_waves_and_a_bad_one_is_halted_and_rolled_back() {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let start = || Serve::start(&broker.url(), &database, &[]);
    let mut serve = start();
    let gateways: Vec<Gateway> = (1..=GATEWAYS)
        .map(|i| member(&broker, i, &public))
        .collect();
    let mut runs: Vec<Running> = gateways.iter().map(Gateway::start).collect();
    for run in &mut runs {
        run.wait_running("counter", T);
    }
    let online = serve.wait_get(
        "/gateways?selector=ring%3Dfleet",
        T,
        "the fleet online",
        |g| {
            g["gateways"].as_array().is_some_and(|a| {
                a.len() == GATEWAYS
                    && a.iter()
                        .all(|g| g["online"] == true && g["apps"][0]["state"] == "running")
            })
        },
    );
    let first = online["gateways"][0]["apps"][0]["component"]
        .as_str()
        .expect("component")
        .to_string();

    // Five are away when the rollout starts: gw-95 to gw-99, which sort
    // into the last wave (an offline gateway holds its wave until it
    // returns, with the default `--offline wait`).
    let away: Vec<usize> = (95..=99).collect();
    for &i in &away {
        assert!(runs[i - 1].stop().success());
    }

    let v2 = second_version(dir.path());
    let id = create(
        &serve,
        &v2,
        &key,
        "fleet",
        &[
            "--waves",
            "5%:5:1s,30%:0:1s,100%:0:1s",
            "--config",
            "generation=two",
        ],
    );
    let path = format!("/rollouts/{id}");
    // Killed once the first wave is under way, serve resumes on restart.
    serve.wait_get(&path, T, "the first wave deployed", |r| {
        states(r)
            .iter()
            .filter(|(_, s)| s == "deployed" || s == "healthy")
            .count()
            >= 4
    });
    serve.running.kill9();
    serve = start();
    // The ones away are offered their version and wait; the rest go on.
    let waiting = serve.wait_get(&path, T, "all but the five away healthy", |r| {
        let states = states(r);
        states.iter().filter(|(_, s)| s == "healthy").count() == GATEWAYS - away.len()
    });
    assert_eq!(waiting["state"], "running", "{waiting}");
    for &i in &away {
        runs[i - 1] = gateways[i - 1].start();
    }
    let done = serve.wait_get(&path, T, "the rollout completed", |r| {
        r["state"] == "completed"
    });
    assert!(states(&done).iter().all(|(_, s)| s == "healthy"), "{done}");
    assert_eq!(done["gateways"].as_array().map(Vec::len), Some(GATEWAYS));
    let second = done["sha256"].as_str().expect("sha256").to_string();
    let on_second = serve.wait_get(
        "/gateways?selector=ring%3Dfleet",
        T,
        "all on the new version",
        |g| {
            g["gateways"].as_array().is_some_and(|a| {
                a.iter().all(|g| {
                    g["apps"][0]["component"] == second.as_str()
                        && g["apps"][0]["state"] == "running"
                })
            })
        },
    );
    assert_eq!(
        on_second["gateways"].as_array().map(Vec::len),
        Some(GATEWAYS)
    );
    assert_ne!(first, second);

    // A version that runs five ticks (5 s, past its 1 s probation) after
    // its swap and then traps: the first wave takes it, fails its soak, the
    // rollout halts, and those five go back to the second version.
    let bad = create(
        &serve,
        &guest("trap-on-tick"),
        &key,
        "fleet",
        &[
            "--waves",
            "5%:5:15s,100%:0:1s",
            "--config",
            "healthy_ticks=5",
        ],
    );
    let aborted = serve.wait_get(
        &format!("/rollouts/{bad}"),
        T,
        "the bad rollout aborted",
        |r| {
            r["state"] == "aborted"
                && states(r)
                    .iter()
                    .all(|(_, s)| s == "waiting" || s == "rolled-back")
        },
    );
    let states = states(&aborted);
    let rolled_back: Vec<&str> = states
        .iter()
        .filter(|(_, s)| s == "rolled-back")
        .map(|(g, _)| g.as_str())
        .collect();
    assert_eq!(rolled_back.len(), 5, "{aborted}");
    assert_eq!(aborted["waves"][0]["reach"], 5, "{aborted}");
    serve.wait_get(
        "/gateways?selector=ring%3Dfleet",
        T,
        "all back on the second version",
        |g| {
            g["gateways"].as_array().is_some_and(|a| {
                a.len() == GATEWAYS
                    && a.iter().all(|g| {
                        g["apps"][0]["component"] == second.as_str()
                            && g["apps"][0]["state"] == "running"
                    })
            })
        },
    );
    assert!(components(&serve).iter().all(|(_, c)| *c == second));
    for run in &mut runs {
        assert!(run.stop().success());
    }
}
