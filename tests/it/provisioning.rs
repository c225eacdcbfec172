//! Provisioning by claim, with Mosquitto over mutual TLS whose ACL keys
//! on the certificate's common name, `serve` on SQLite holding the fleet
//! CA, and real gateways that hold only a claim certificate: one is issued
//! its identity, reconnects as itself, starts with the version its
//! allow-list entry names and keeps its identity across a restart; the
//! claim reaches nothing but its provisioning topics; and a replayed
//! request, a revoked claim, an unknown claim, a serial not on the
//! allow-list and a second gateway claiming a taken id are each refused,
//! on both sides.

use crate::common::browser::Browser;
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

    // The issued identity is confined to its own subtree: with its
    // certificate, its own retained status comes, the member's does not.
    let own = "wg/v1/plant1-gw-7/plant1-gw-7";
    observer.publish(&format!("{own}/marker"), "{\"marker\": true}", true);
    let mut as_gateway = login(&pki, &broker, "plant1-gw-7", "as-gateway");
    as_gateway.cert_file = Some(fresh.data_dir().join("identity/cert.pem"));
    as_gateway.key_file = Some(fresh.data_dir().join("identity/key.pem"));
    let snoop = Consumer::connect(&as_gateway, &["wg/v1/#", &format!("{own}/marker")]);
    snoop.wait_json(&format!("{own}/marker"), T, |_| true);
    let seen: Vec<String> = snoop.messages().into_iter().map(|m| m.topic).collect();
    assert!(seen.contains(&format!("{own}/status")), "{seen:?}");
    assert!(
        seen.iter().all(|t| t.starts_with("wg/v1/plant1-gw-7/")),
        "{seen:?}"
    );
    observer.publish(&format!("{own}/marker"), "", true);

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
        .rfind(|m| m.topic.ends_with("/request"))
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

    // The console's provisioning page lists it all, and revokes a claim.
    let console = serve.base.replace("/api/v1", "/console/");
    let mut page = Browser::start();
    page.goto(&format!("{console}#/provisioning"));
    page.wait_text(
        "#claims tr[data-claim=\"batch-old\"] td.state",
        "revoked",
        T,
    );
    page.wait_text("#claims tr[data-claim=\"batch-1\"] td.state", "accepted", T);
    page.wait_text("#allow tr[data-serial=\"SN-0001\"]", "plant1-gw-7", T);
    page.wait_text(
        "#allow tr[data-serial=\"SN-0001\"]",
        "ring=field, site=plant-1",
        T,
    );
    page.wait_text("#provisioning-log", "replayed request", T);
    page.wait_text("#provisioning-log", "is already taken", T);
    page.click("#claims button[data-revoke=\"batch-1\"]");
    page.wait_text("#revoke-result", "Claim batch-1 revoked", T);
    page.wait_text("#claims tr[data-claim=\"batch-1\"] td.state", "revoked", T);
    drop(page);
    let claims = serve.get("/provisioning")["claims"].clone();
    assert!(
        claims
            .as_array()
            .expect("claims")
            .iter()
            .all(|c| c["revoked_at"].is_i64()),
        "{claims}"
    );
    assert!(run.stop().success());
    assert!(member_run.stop().success());
}

/// A provisioning request as a gateway makes it: its key, and the request
/// with a CSR for it.
fn request(serial: &str) -> (rcgen::KeyPair, String, Value) {
    let key = rcgen::KeyPair::generate().expect("key");
    let id = format!("{:016x}", rand_u64());
    let csr = csr(&key, &id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as u64;
    let request = serde_json::json!({ "request": id, "serial": serial, "csr": csr, "time": now });
    (key, id, request)
}

/// A CSR for `key` whose common name is request `id`, as a gateway makes it.
fn csr(key: &rcgen::KeyPair, id: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Claims and the allow-list through the API (checked against the OpenAPI
/// document), and requests answered by `serve` as stored in its database
/// (run on SQLite and on PostgreSQL by the API scenario). `serve` knows
/// `test-gw` already, and has the fleet CA.
pub(crate) fn through_the_api(serve: &Serve, broker: &Mosquitto) {
    use crate::common::serve::OPERATOR;
    use crate::serve::conforms;
    let post = |path: &str, body: Option<Value>| {
        serve.request(
            "POST",
            &format!("/provisioning{path}"),
            body.as_ref(),
            Some(OPERATOR),
        )
    };
    let (status, answer) = post("/claims", Some(serde_json::json!({ "name": "batch-api" })));
    assert_eq!(status, 201, "{answer}");
    conforms("/api/v1/provisioning/claims", "post", 201, &answer);
    let (status, answer) = post("/claims", Some(serde_json::json!({ "name": "batch-api" })));
    assert_eq!(status, 200, "accepted twice is accepted: {answer}");
    let (status, answer) = post("/claims", Some(serde_json::json!({ "name": "a/b" })));
    assert_eq!(status, 422, "{answer}");
    conforms("/api/v1/provisioning/claims", "post", 422, &answer);
    let (status, answer) = post("/claims/nobody/revoke", None);
    assert_eq!(status, 404, "{answer}");
    conforms(
        "/api/v1/provisioning/claims/{name}/revoke",
        "post",
        404,
        &answer,
    );
    // A reader may look, not change.
    let (status, _) = serve.request(
        "POST",
        "/provisioning/claims",
        Some(&serde_json::json!({ "name": "x" })),
        Some(crate::common::serve::READER),
    );
    assert_eq!(status, 403);
    for (entry, why) in [
        (
            serde_json::json!({ "serial": "SN A", "gateway": "gw-a" }),
            "serial",
        ),
        (
            serde_json::json!({ "serial": "SN-A", "gateway": "gw/a" }),
            "gateway",
        ),
        (
            serde_json::json!({ "serial": "SN-A", "gateway": "gw-a", "deploy": ["ro-none"] }),
            "no rollout",
        ),
    ] {
        let (status, answer) = post("/allow", Some(entry));
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(why)),
            "{answer}"
        );
        conforms("/api/v1/provisioning/allow", "post", 422, &answer);
    }
    let (status, answer) = post(
        "/allow",
        Some(
            serde_json::json!({ "serial": "SN-A", "gateway": "gw-a", "labels": { "site": "lab" } }),
        ),
    );
    assert_eq!(status, 200, "{answer}");
    conforms("/api/v1/provisioning/allow", "post", 200, &answer);
    let (status, answer) = post(
        "/allow",
        Some(serde_json::json!({ "serial": "SN-B", "gateway": "gw-a" })),
    );
    assert_eq!(status, 422, "one gateway id, one serial: {answer}");
    assert_eq!(
        post(
            "/allow",
            Some(serde_json::json!({ "serial": "SN-KNOWN", "gateway": "test-gw" }))
        )
        .0,
        200
    );

    // Requests, as a gateway with claim batch-api sends them.
    let consumer = Consumer::connect(
        &broker.settings("api-claim"),
        &[
            "wg/provision/v1/batch-api/+/response",
            "wg/provision/v1/batch-flood/+/response",
        ],
    );
    // The answer that comes after those already received on its topic.
    let ask = |request: &Value| {
        let id = request["request"].as_str().expect("id");
        let topic = format!("wg/provision/v1/batch-api/{id}/response");
        let before = consumer.on(&topic).len();
        consumer.publish(
            &format!("wg/provision/v1/batch-api/{id}/request"),
            serde_json::to_vec(request).expect("json"),
            false,
        );
        let deadline = std::time::Instant::now() + T;
        loop {
            if let Some(answer) = consumer.on(&topic).get(before) {
                return answer.json();
            }
            assert!(std::time::Instant::now() < deadline, "no answer on {topic}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (key, _, first) = request("SN-A");
    let issued = ask(&first);
    assert_eq!(issued["outcome"], "issued", "{issued}");
    assert_eq!(issued["gateway"], "gw-a");
    assert_eq!(issued["labels"], serde_json::json!({ "site": "lab" }));
    let pem = issued["certificate"].as_str().expect("certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("certificate");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|n| n.as_str().ok()),
        Some("gw-a")
    );
    let replayed = ask(&first);
    assert!(
        replayed["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("replayed request")),
        "{replayed}"
    );
    let (_, _, known) = request("SN-KNOWN");
    let refused = ask(&known);
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("\"test-gw\" is already in use")),
        "{refused}"
    );
    let (_, _, mut stale) = request("SN-A");
    stale["time"] = serde_json::json!(1_000_000_000_000u64);
    assert!(
        ask(&stale)["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("the request is stale"))
    );
    let (_, _, mut forged) = request("SN-A");
    forged["csr"] = request("SN-A").2["csr"].clone();
    assert_eq!(ask(&forged)["reason"], "the CSR is not for this request");

    let all = serve.get("/provisioning");
    conforms("/api/v1/provisioning", "get", 200, &all);
    assert_eq!(all["issued"].as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(all["log"].as_array().map(Vec::len), Some(5), "{all}");
    assert_eq!(all["log"][0]["outcome"], "refused");

    // gw-a's data is wiped: it asks with a new key, and its id is taken
    // until the operator releases it; then it is issued to the new key.
    let (new_key, _, again) = request("SN-A");
    let taken = ask(&again);
    assert!(
        taken["reason"]
            .as_str()
            .is_some_and(|r| r.contains("already taken")),
        "{taken}"
    );
    let (status, answer) = post("/issued/gw-a/release", None);
    assert_eq!(status, 200, "{answer}");
    conforms(
        "/api/v1/provisioning/issued/{gateway}/release",
        "post",
        200,
        &answer,
    );
    let (status, answer) = post("/issued/nobody/release", None);
    assert_eq!(status, 404, "{answer}");
    conforms(
        "/api/v1/provisioning/issued/{gateway}/release",
        "post",
        404,
        &answer,
    );
    // A new request (ids are used once) by the same new key.
    let (_, id, mut renewed) = request("SN-A");
    renewed["csr"] = serde_json::json!(csr(&new_key, &id));
    let reissued = ask(&renewed);
    assert_eq!(reissued["outcome"], "issued", "{reissued}");
    let pem = reissued["certificate"].as_str().expect("certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("certificate");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        new_key.public_key_raw()
    );
    // A flood on one claim (its own, so the others keep their rate) is
    // held to its rate: past the burst, requests are refused as too many,
    // before any other check is made.
    assert_eq!(
        post(
            "/claims",
            Some(serde_json::json!({ "name": "batch-flood" }))
        )
        .0,
        201
    );
    let flood: Vec<Value> = (0..100).map(|_| request("SN-FLOOD").2).collect();
    for r in &flood {
        let id = r["request"].as_str().expect("id");
        consumer.publish(
            &format!("wg/provision/v1/batch-flood/{id}/request"),
            serde_json::to_vec(r).expect("json"),
            false,
        );
    }
    let answers = |prefix: &str| {
        flood
            .iter()
            .filter(|r| {
                let id = r["request"].as_str().unwrap_or_default();
                consumer
                    .on(&format!("wg/provision/v1/batch-flood/{id}/response"))
                    .first()
                    .is_some_and(|m| {
                        m.json()["reason"]
                            .as_str()
                            .is_some_and(|w| w.starts_with(prefix))
                    })
            })
            .count()
    };
    let deadline = std::time::Instant::now() + T;
    while answers("") < flood.len() {
        assert!(std::time::Instant::now() < deadline, "the flood unanswered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (limited, checked) = (answers("too many requests"), answers("serial \"SN-FLOOD\""));
    assert_eq!(limited + checked, flood.len());
    // The burst (20, less what the requests above used) and a second or
    // so of its rate (10/s) are checked; the rest is refused.
    assert!(
        limited >= 40 && (1..=60).contains(&checked),
        "{limited} limited, {checked} checked"
    );

    assert_eq!(post("/claims/batch-api/revoke", None).0, 200);
    let (_, _, late) = request("SN-A");
    assert_eq!(ask(&late)["reason"], "claim \"batch-api\" is revoked");
}
