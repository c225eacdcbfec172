//! Provisioning by claim, with Mosquitto over mutual TLS whose ACL keys
//! on the certificate's common name, `serve` on SQLite holding the fleet
//! CA, and real gateways that hold only a claim certificate: one is issued
//! its identity, reconnects as itself, starts with the version its
//! allow-list entry names and keeps its identity across a restart; the
//! claim reaches nothing but its provisioning topics; and a replayed
//! request, a revoked claim, an unknown claim, a serial not on the
//! allow-list and a second gateway claiming a taken id are each refused,
//! on both sides.

use crate::common::mqtt::{Consumer, Mosquitto, Pki};
use crate::common::serve::Serve;
use crate::common::{Gateway, guest, model, wasmgate};
use crate::rollout::{component_on, create, keygen, second_version};
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The broker's ACL: `serve` (and the test's observer) sees everything; a
/// gateway, only its own subtree; a claim, only its provisioning topics.
const ACL: &str = "user serve\n\
topic readwrite wg/v1/#\n\
topic readwrite wg/provision/v1/#\n\
\n\
pattern readwrite wg/v1/%u/#\n\
pattern write wg/provision/v1/%u/+/request\n\
pattern read wg/provision/v1/%u/+/response\n";

/// TLS settings for a client of `broker` logging in as `name`'s certificate.
fn login(
    pki: &Pki,
    broker: &Mosquitto,
    name: &str,
    client_id: &str,
) -> wasmgate::config::BrokerSettings {
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let mut settings = wasmgate::config::BrokerSettings::from_url(&url, client_id).expect("url");
    settings.ca_file = Some(pki.path("ca.pem"));
    settings.cert_file = Some(pki.path(&format!("{name}.pem")));
    settings.key_file = Some(pki.path(&format!("{name}.key")));
    settings
}

/// A gateway running the swap counter, trusting `public`, with `cloud`
/// (and `more`) as its other tables.
fn counter(cloud: &str, public: &str, more: &str) -> Gateway {
    Gateway::new()
        .section(cloud)
        .section(&format!(
            "[deploy]\ntrusted_keys = [\"{public}\"]\nprobation_s = 1\n"
        ))
        .section(more)
        .app(
            "counter",
            &guest("swap-counter"),
            &model("swap"),
            "tick_interval_ms = 100\n[app.config]\ngeneration = \"one\"\n",
        )
}

/// `[provisioning]` with `claim`'s certificate and `serial`.
fn claim_section(pki: &Pki, claim: &str, serial: &str) -> String {
    format!(
        "[provisioning]\nclaim = \"{claim}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nserial = \"{serial}\"\ntimeout_s = 20\n",
        pki.path(&format!("{claim}.pem")).display(),
        pki.path(&format!("{claim}.key")).display()
    )
}

/// `wasmgate cloud provisioning --server SERVE ARGS...`
fn provisioning(serve: &Serve, args: &[&str]) -> String {
    let server = serve.base.trim_end_matches("/api/v1").to_string();
    let mut all = vec!["cloud", "provisioning", "--server", server.as_str()];
    all.extend_from_slice(args);
    let (ok, out, err) = wasmgate(&all);
    assert!(ok, "wasmgate {all:?}: {out}{err}");
    out
}

/// The log entries serve keeps for `serial`.
fn log_of(serve: &Serve, serial: &str) -> Vec<Value> {
    serve.get("/provisioning")["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["serial"] == serial)
        .cloned()
        .collect()
}

#[test]
fn a_gateway_with_only_a_claim_is_issued_its_identity_and_every_refusal_is_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(dir.path());
    for name in [
        "serve",
        "plant1-gw-1",
        "batch-1",
        "batch-old",
        "batch-stolen",
    ] {
        pki.client(name);
    }
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("acl");
    let broker = Mosquitto::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nacl_file {}\n",
        pki.path("ca.pem").display(),
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
        acl.display()
    ));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let path = |name: &str| pki.path(name).to_str().expect("path").to_string();
    let database = format!("sqlite://{}", dir.path().join("serve.db").display());
    let serve = Serve::start_with(
        &[
            "--broker",
            &url,
            "--ca",
            &path("ca.pem"),
            "--cert",
            &path("serve.pem"),
            "--key",
            &path("serve.key"),
        ],
        &database,
        &[
            "--fleet-ca",
            &path("ca.pem"),
            "--fleet-ca-key",
            &path("ca.key"),
        ],
    );
    let cloud = |cert: &str| {
        let login = if cert.is_empty() {
            String::new()
        } else {
            format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                path(&format!("{cert}.pem")),
                path(&format!("{cert}.key"))
            )
        };
        format!(
            "[cloud]\nurl = \"{url}\"\nca_file = \"{}\"\n{login}backoff_initial_ms = 100\nbackoff_max_ms = 500\n",
            path("ca.pem")
        )
    };

    // The fleet as it is: one gateway, and the version it runs, rolled out
    // to the label selector new gateways of the ring will match.
    let (key, public) = keygen(dir.path());
    let member = counter(&cloud("plant1-gw-1"), &public, "")
        .with_id("plant1-gw-1")
        .gateway("labels = { ring = \"field\" }");
    let mut member_run = member.start();
    member_run.wait_running("counter", T);
    serve.wait_get("/gateways/plant1-gw-1", T, "the member online", |g| {
        g["online"] == true
    });
    let v2 = second_version(dir.path());
    let rollout = create(&serve, &v2, &key, "field", &["--waves", "100%:1:1s"]);
    let done = serve.wait_get(&format!("/rollouts/{rollout}"), T, "the rollout", |r| {
        r["state"] == "completed"
    });
    let sha256 = done["sha256"].as_str().expect("sha256").to_string();

    // The operator accepts the claims, revokes one, and allows a serial.
    provisioning(&serve, &["claim", "batch-1"]);
    provisioning(&serve, &["claim", "batch-old"]);
    provisioning(&serve, &["revoke", "batch-old"]);
    provisioning(
        &serve,
        &[
            "allow",
            "SN-0001",
            "--gateway",
            "plant1-gw-7",
            "--label",
            "ring=field",
            "--label",
            "site=plant-1",
            "--deploy",
            &rollout,
        ],
    );

    // A new gateway with only the claim: it asks, is issued, reconnects as
    // itself with the issued labels, and takes the fleet's version.
    let fresh = counter(
        &cloud(""),
        &public,
        &claim_section(&pki, "batch-1", "SN-0001"),
    )
    .without_id();
    let mut run = fresh.start();
    run.wait_running("counter", T);
    let gateway = serve.wait_get("/gateways/plant1-gw-7", T, "the new gateway online", |g| {
        g["online"] == true
    });
    assert_eq!(gateway["labels"]["site"], "plant-1", "{gateway}");
    serve.wait_get("/gateways/plant1-gw-7", T, "the first version", |g| {
        g["apps"][0]["component"] == sha256.as_str()
    });
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(fresh.data_dir().join("identity/identity.json"))
            .expect("identity"),
    )
    .expect("json");
    assert_eq!(identity["gateway"], "plant1-gw-7");
    assert_eq!(identity["claim"], "batch-1");
    assert!(!fresh.data_dir().join("identity.key.pending").exists());
    let issued = log_of(&serve, "SN-0001");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["outcome"], "issued");
    assert_eq!(issued[0]["gateway"], "plant1-gw-7");

    // A restart keeps the identity: no second request.
    assert!(run.stop().success());
    let mut run = fresh.start();
    run.wait_running("counter", T);
    run.wait_connected(T);
    assert_eq!(log_of(&serve, "SN-0001").len(), 1);
    assert_eq!(component_on(&serve, "plant1-gw-7"), sha256);

    // The claim reaches nothing but its own provisioning topics: the
    // gateway's retained status would come before the retained marker on
    // the claim's response topic, had the ACL let it through.
    let observer = Consumer::connect(
        &login(&pki, &broker, "serve", "observer"),
        &["wg/provision/v1/#"],
    );
    observer.publish(
        "wg/provision/v1/batch-1/marker/response",
        "{\"marker\": true}",
        true,
    );
    let snoop = Consumer::connect(
        &login(&pki, &broker, "batch-1", "snoop"),
        &["wg/v1/#", "wg/provision/v1/batch-1/marker/response"],
    );
    snoop.wait_json("wg/provision/v1/batch-1/marker/response", T, |_| true);
    let seen: Vec<String> = snoop.messages().into_iter().map(|m| m.topic).collect();
    assert_eq!(seen, ["wg/provision/v1/batch-1/marker/response"]);
    observer.publish("wg/provision/v1/batch-1/marker/response", "", true);

    // Refusals: `wasmgate provision` says why (exit status 1), and serve
    // logs each.
    let refused = |claim: &str, serial: &str, reason: &str| {
        let gw = counter(&cloud(""), &public, &claim_section(&pki, claim, serial)).without_id();
        gw.write_config();
        let (ok, out, err) = wasmgate(&[
            "provision",
            "--config",
            gw.config_path().to_str().expect("path"),
        ]);
        assert!(!ok, "{out}{err}");
        assert!(
            err.contains("serve refused") && err.contains(reason),
            "{err}"
        );
        assert!(!gw.data_dir().join("identity").exists());
        let entry = serve.wait_get("/provisioning", T, "the refusal logged", |p| {
            p["log"].as_array().is_some_and(|log| {
                log.iter().any(|e| {
                    e["serial"] == serial
                        && e["reason"].as_str().is_some_and(|r| r.contains(reason))
                })
            })
        });
        assert!(
            entry["log"]
                .as_array()
                .expect("log")
                .iter()
                .all(|e| e["serial"] != serial || e["outcome"] == "refused")
        );
    };
    refused("batch-stolen", "SN-0002", "unknown claim \"batch-stolen\"");
    refused("batch-old", "SN-0003", "claim \"batch-old\" is revoked");
    refused(
        "batch-1",
        "SN-9999",
        "serial \"SN-9999\" is not on the allow-list",
    );
    // A second device with the first one's serial, and its own key.
    let clone = counter(
        &cloud(""),
        &public,
        &claim_section(&pki, "batch-1", "SN-0001"),
    )
    .without_id();
    clone.write_config();
    let (ok, _, err) = wasmgate(&[
        "provision",
        "--config",
        clone.config_path().to_str().expect("path"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("gateway id \"plant1-gw-7\" is already taken"),
        "{err}"
    );

    // A replay of that request, word for word, on the claim's own topic.
    let request = observer
        .messages()
        .into_iter()
        .filter(|m| m.topic.ends_with("/request"))
        .last()
        .expect("the clone's request, as the broker carried it");
    let answer_topic = request.topic.replace("/request", "/response");
    let replayer = Consumer::connect(
        &login(&pki, &broker, "batch-1", "replayer"),
        &[&answer_topic],
    );
    replayer.publish(&request.topic, request.payload.clone(), false);
    let answer = replayer.wait_json(&answer_topic, T, |a| {
        a["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("replayed request"))
    });
    assert_eq!(answer["outcome"], "refused");
    // Nothing of this touched the issued gateway.
    let issued = serve.get("/provisioning")["issued"].clone();
    assert_eq!(issued.as_array().map(Vec::len), Some(1), "{issued}");
    assert!(run.stop().success());
    assert!(member_run.stop().success());
}
