//! Rollouts through `serve`, with real gateways, Mosquitto and `serve` on
//! SQLite, driven by `wasmgate cloud rollout`: a good version goes out wave
//! by wave, through a `kill -9` of `serve` (which resumes it) and to a
//! gateway that was offline in its wave (which catches up when it returns);
//! a version that traps after its swap halts the rollout after the first
//! wave, and the gateway that took it is rolled back by a signed order.

use crate::common::browser::Browser;
use crate::common::mqtt::Mosquitto;
use crate::common::serve::{Postgres, Serve};
use crate::common::{Gateway, Running, fleet_member, guest, wasmgate};
use crate::deploy::with_custom_section;
use crate::serve::conforms;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// An operator's key pair: the private key's path, the public key.
pub(crate) fn keygen(dir: &Path) -> (PathBuf, String) {
    crate::common::operator_key(dir)
}

/// A gateway `id` labelled `ring`, trusting `public`, running the swap
/// counter at ten ticks a second.
fn gateway(broker: &Mosquitto, id: &str, ring: &str, public: &str) -> Gateway {
    fleet_member(&broker.url(), id, ring, public, 100)
}

/// `wasmgate cloud rollout --server SERVE ARGS...`
pub(crate) fn rollout(serve: &Serve, args: &[&str]) -> (bool, String, String) {
    let server = serve.base.trim_end_matches("/api/v1").to_string();
    let mut all = vec!["cloud", "rollout", "--server", server.as_str()];
    all.extend_from_slice(args);
    wasmgate(&all)
}

/// The component `counter` runs on `gateway`, as serve has it.
pub(crate) fn component_on(serve: &Serve, gateway: &str) -> String {
    let g = serve.get(&format!("/gateways/{gateway}"));
    g["apps"][0]["component"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn states(rollout: &Value) -> Vec<(String, String)> {
    rollout["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["gateway"].as_str().unwrap_or("?").to_string(),
                g["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// Gateways `gw-1` to `gw-N` labelled `ring`, started, and running as
/// `serve` has them.
fn fleet(
    broker: &Mosquitto,
    serve: &Serve,
    ring: &str,
    n: usize,
    public: &str,
) -> (Vec<Gateway>, Vec<Running>) {
    let gateways: Vec<Gateway> = (1..=n)
        .map(|i| gateway(broker, &format!("gw-{i}"), ring, public))
        .collect();
    let mut runs: Vec<Running> = gateways.iter().map(Gateway::start).collect();
    for run in &mut runs {
        run.wait_running("counter", T);
    }
    serve.wait_get(
        &format!("/gateways?selector=ring%3D{ring}"),
        T,
        "the gateways running",
        |g| {
            g["gateways"].as_array().is_some_and(|a| {
                a.len() == n && a.iter().all(|g| g["apps"][0]["state"] == "running")
            })
        },
    );
    (gateways, runs)
}

/// The swap counter with a custom section: the same app, another component.
pub(crate) fn second_version(dir: &Path) -> PathBuf {
    let path = dir.join("v2.wasm");
    let bytes = with_custom_section(std::fs::read(guest("swap-counter")).expect("read"), b"v2");
    std::fs::write(&path, bytes).expect("write");
    path
}

/// `rollout create counter COMPONENT --key KEY --selector ring=RING MORE...`:
/// the rollout's id.
pub(crate) fn create(
    serve: &Serve,
    component: &Path,
    key: &Path,
    ring: &str,
    more: &[&str],
) -> String {
    let selector = format!("ring={ring}");
    let mut args = vec![
        "create",
        "counter",
        component.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
        "--selector",
        &selector,
    ];
    args.extend_from_slice(more);
    let (ok, out, err) = rollout(serve, &args);
    assert!(ok, "{out}{err}");
    out.trim().to_string()
}

#[test]
fn on_sqlite_a_good_version_rolls_out_in_waves_through_a_serve_restart_and_to_a_gateway_that_was_away()
 {
    good_rollout(false);
}

/// On PostgreSQL with two instances: the one driving is killed, and the
/// other takes over.
#[test]
fn on_postgres_a_good_version_rolls_out_in_waves_while_the_driving_instance_is_killed() {
    good_rollout(true);
}

fn good_rollout(postgres: bool) {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    let pg = postgres.then(Postgres::start);
    let database = match &pg {
        Some(pg) => pg.database("fleet"),
        None => format!("sqlite://{}", dir.path().join("serve.db").display()),
    };
    let start = |id: &str| {
        Serve::start(
            &broker.url(),
            &database,
            &["--share", "fleet", "--client-id", id],
        )
    };
    let mut serve = start("serve-a");
    let (gateways, mut runs) = fleet(&broker, &serve, "a", 4, &public);
    // gw-4 is away when the rollout starts.
    assert!(runs[3].stop().success());
    serve.wait_get("/gateways/gw-4", T, "gw-4 offline", |g| {
        g["online"] == false
    });

    let v2 = second_version(dir.path());
    let id = create(
        &serve,
        &v2,
        &key,
        "a",
        &[
            "--waves",
            "25%:1:1s,50%:0:1s,100%:0:1s",
            "--config",
            "generation=two",
        ],
    );
    let path = format!("/rollouts/{id}");

    // The first wave is one gateway; once it is healthy serve is killed
    // mid-rollout, and started again on its database it carries on.
    let first = serve.wait_get(&path, T, "the first wave healthy", |r| {
        r["gateways"][0]["state"] == "healthy"
    });
    conforms("/api/v1/rollouts/{id}", "get", 200, &first);
    assert_eq!(first["waves"][0]["reach"], 1, "{first}");
    assert!(
        states(&first)[2..]
            .iter()
            .all(|(_, s)| s == "waiting" || s == "offered"),
        "{first}"
    );
    assert_eq!(serve.get("/stats")["drives_rollouts"], true);
    let mut standby = None;
    if postgres {
        // A second instance stands by; the driving one is killed, and the
        // second takes over. The first comes back, for its session holds
        // its share of the fleet's events, and stands by in turn.
        let b = start("serve-b");
        serve.running.kill9();
        b.wait_get("/stats", T, "the second instance drives", |s| {
            s["drives_rollouts"] == true
        });
        standby = Some(start("serve-a"));
        serve = b;
    } else {
        serve.running.kill9();
        serve = start("serve-a");
    }

    // The three that are here end healthy; the one away waits, offered.
    let waiting = serve.wait_get(&path, T, "three healthy, one waiting", |r| {
        states(r)
            == [
                ("gw-1".into(), "healthy".into()),
                ("gw-2".into(), "healthy".into()),
                ("gw-3".into(), "healthy".into()),
                ("gw-4".into(), "offered".into()),
            ]
    });
    assert_eq!(waiting["state"], "running", "{waiting}");
    runs[3] = gateways[3].start();
    let done = serve.wait_get(&path, T, "the rollout completed", |r| {
        r["state"] == "completed"
    });
    assert!(states(&done).iter().all(|(_, s)| s == "healthy"), "{done}");
    let sha256 = done["sha256"].as_str().expect("sha256").to_string();
    for i in 1..=4 {
        let gateway = format!("gw-{i}");
        serve.wait_get(
            &format!("/gateways/{gateway}"),
            T,
            "the new component",
            |g| g["apps"][0]["component"] == sha256.as_str(),
        );
    }
    runs[3].wait_for("generation two started", T);

    if let Some(standby) = &standby {
        assert_eq!(standby.get("/stats")["drives_rollouts"], false);
    }
    let list = serve.get("/rollouts");
    conforms("/api/v1/rollouts", "get", 200, &list);
    assert_eq!(list["rollouts"][0]["counts"]["healthy"], 4, "{list}");

    // The CLI says the same.
    let (ok, out, err) = rollout(&serve, &["status", &id]);
    assert!(ok, "{err}");
    assert!(out.contains(": completed"), "{out}");
    assert_eq!(out.matches("  healthy  ").count(), 4, "{out}");
    // Aborting what has ended is refused, and says why; so are a rollout
    // nobody knows and one that matches no gateway.
    let (ok, _, err) = rollout(&serve, &["abort", &id]);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("not running"), "{err}");
    let (status, answer) = serve.request("POST", &format!("{path}/abort"), None, None);
    assert_eq!(status, 409, "{answer}");
    conforms("/api/v1/rollouts/{id}/abort", "post", 409, &answer);
    let (status, answer) = serve.request("GET", "/rollouts/ro-nobody", None, None);
    assert_eq!(status, 404, "{answer}");
    let (ok, _, err) = rollout(
        &serve,
        &[
            "create",
            "counter",
            v2.to_str().expect("path"),
            "--key",
            key.to_str().expect("path"),
            "--selector",
            "ring=nowhere",
        ],
    );
    assert!(!ok && err.contains("no gateway"), "{err}");
    let (status, answer) = serve.request(
        "POST",
        "/rollouts",
        Some(&serde_json::json!({"app": "x"})),
        None,
    );
    assert_eq!(status, 400, "{answer}");
    conforms("/api/v1/rollouts", "post", 400, &answer);
    for run in &mut runs {
        assert!(run.stop().success());
    }
}

#[test]
fn a_version_that_traps_after_its_swap_halts_the_rollout_and_is_rolled_back() {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = Serve::start(&broker.url(), &database, &[]);
    let (_gateways, mut runs) = fleet(&broker, &serve, "b", 3, &public);
    let before = component_on(&serve, "gw-1");

    // Runs 20 ticks (2 s) after its swap, past the 1 s probation, then traps.
    let bad = guest("trap-on-tick");
    let id = create(
        &serve,
        &bad,
        &key,
        "b",
        &[
            "--waves",
            "1%:1:10s,100%:0:1s",
            "--config",
            "healthy_ticks=20",
        ],
    );
    let path = format!("/rollouts/{id}");
    let aborted = serve.wait_get(&path, T, "the rollout aborted", |r| r["state"] == "aborted");
    assert!(
        aborted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("1 of the 1 gateways")),
        "{aborted}"
    );
    // gw-1 failed its soak and was sent back; the others never got it.
    let gw1 = &aborted["gateways"][0];
    assert_eq!(gw1["state"], "rolled-back", "{aborted}");
    assert!(
        gw1["detail"]
            .as_str()
            .is_some_and(|d| d.contains("unhealthy") && d.contains("then rolled back")),
        "{aborted}"
    );
    assert_eq!(
        states(&aborted)[1..],
        [
            ("gw-2".to_string(), "waiting".to_string()),
            ("gw-3".to_string(), "waiting".to_string()),
        ]
    );
    serve.wait_get("/gateways/gw-1", T, "gw-1 back on its old component", |g| {
        g["apps"][0]["component"] == before.as_str() && g["apps"][0]["state"] == "running"
    });
    for g in ["gw-2", "gw-3"] {
        assert_eq!(component_on(&serve, g), before, "{g} never took it");
    }
    let (ok, out, _) = rollout(&serve, &["list"]);
    assert!(ok && out.contains(&id) && out.contains("aborted"), "{out}");
    for run in &mut runs {
        assert!(run.stop().success());
    }
}

/// The console lists rollouts with their waves and gateways, and its abort
/// button halts a running one: the gateway that took the version is rolled
/// back, the other never gets it.
#[test]
fn the_consoles_abort_button_halts_a_rollout_and_the_gateway_that_took_it_is_rolled_back() {
    let broker = Mosquitto::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, public) = keygen(dir.path());
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = Serve::start(&broker.url(), &database, &[]);
    let (_gateways, mut runs) = fleet(&broker, &serve, "c", 2, &public);
    let before = component_on(&serve, "gw-1");
    let v2 = second_version(dir.path());
    // A long soak: the rollout sits in its first wave until it is aborted.
    let id = create(&serve, &v2, &key, "c", &["--waves", "50%:1:10m,100%"]);
    serve.wait_get(
        &format!("/rollouts/{id}"),
        T,
        "gw-1 on the new version",
        |r| r["gateways"][0]["state"] == "deployed",
    );

    let console = serve.base.replace("/api/v1", "/console/");
    let mut page = Browser::start();
    page.goto(&format!("{console}#/rollouts"));
    let row = format!("#rollouts tr[data-rollout=\"{id}\"]");
    page.wait_text(&format!("{row} td.state"), "running", T);
    page.wait_text(&format!("{row} td.counts"), "1 deployed", T);
    page.click(&format!("{row} a"));
    page.wait_text("#waves tr[data-wave=\"0\"] td.counts", "1 deployed", T);
    page.wait_text("#waves tr[data-wave=\"0\"]", "50% (1 gateways)", T);
    page.wait_text(
        "#rollout-gateways tr[data-gateway=\"gw-2\"] td.state",
        "waiting",
        T,
    );
    page.click("#abort");
    page.wait_text("#abort-result", "Aborted", T);
    page.wait_text("#rollout-state .state", "aborted", T);
    page.wait_text(
        "#rollout-gateways tr[data-gateway=\"gw-1\"] td.state",
        "rolled-back",
        T,
    );
    drop(page);

    let done = serve.get(&format!("/rollouts/{id}"));
    assert_eq!(done["state"], "aborted", "{done}");
    assert_eq!(done["reason"], "aborted by the operator", "{done}");
    serve.wait_get("/gateways/gw-1", T, "gw-1 back on its old component", |g| {
        g["apps"][0]["component"] == before.as_str()
    });
    assert_eq!(component_on(&serve, "gw-2"), before, "gw-2 never took it");
    for run in &mut runs {
        assert!(run.stop().success());
    }
}
