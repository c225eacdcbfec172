//! Apps that serve HTTP: components of the `wasi:http/proxy` world (built
//! from source with the `wasi` crate, and with Spin's Rust SDK) run as
//! apps on the address their `serve_http` grant names, one instance per
//! request, under the app's limits, quotas and `[allow]`.

use crate::common::{Gateway, Running, free_port, guest, model, run_to_end, wasmgate};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A gateway with one HTTP app `page` on `127.0.0.1:port`, allowed there.
fn page_gateway(component: &std::path::Path, port: u16, extra: &str) -> Gateway {
    Gateway::new()
        .section(&format!(
            "[allow]\nserve_http = [{{ address = \"127.0.0.1:{port}\", max_in_flight = 2 }}]\n"
        ))
        .app(
            "page",
            component,
            &model("counter"),
            &format!(
                "call_timeout_ms = 1500\nstorage_quota_kib = 4\n{extra}\n[app.grants]\nserve_http = [{{ address = \"127.0.0.1:{port}\", max_in_flight = 2 }}]\n[app.config]\ngreeting = \"the boiler room\"\nversion = \"v1\"\n"
            ),
        )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

/// Status and body of `method path` on `port`, with `headers`.
fn request(
    agent: &ureq::Agent,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let response = match (method, body) {
        ("POST", Some(body)) => {
            let mut request = agent.post(&url);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            request.send(body)
        }
        _ => {
            let mut request = agent.get(&url);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            request.call()
        }
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let www = response
        .headers()
        .get("www-authenticate")
        .or_else(|| response.headers().get("retry-after"))
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let text = response
        .body_mut()
        .with_config()
        .limit(10 << 20)
        .read_to_string()
        .expect("body");
    (status, text, www)
}

fn get(agent: &ureq::Agent, port: u16, path: &str) -> (u16, String) {
    let (status, text, _) = request(agent, port, "GET", path, None, &[]);
    (status, text)
}

fn page_app(run: &mut Running) -> serde_json::Value {
    run.apps()
        .expect("apps")
        .into_iter()
        .find(|a| a["name"] == "page")
        .expect("page")
}

#[test]
fn a_wasi_http_component_serves_its_granted_address_with_an_instance_per_request() {
    let port = free_port();
    let gw = page_gateway(&guest("http-page"), port, "");
    let mut run = gw.start();
    run.wait_running("page", T);
    let agent = agent();

    // Its config, through wasi:config.
    assert_eq!(
        get(&agent, port, "/hello"),
        (200, "hello from the boiler room v1".into())
    );
    // What it keeps between requests (each in its own instance) is in
    // wasi:keyvalue: the app's durable storage.
    for n in 1..=3 {
        assert_eq!(get(&agent, port, "/visits"), (200, format!("visits {n}")));
    }
    // A request body in, the same body out (larger than one stream chunk).
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let (status, echoed, _) = request(&agent, port, "POST", "/echo", Some(&body), &[]);
    assert_eq!(status, 200);
    assert_eq!(echoed.as_bytes(), &body[..]);
    // Its quota holds here as through `storage`, with the same reason.
    let (status, refusal) = get(&agent, port, "/big?kib=8");
    assert_eq!(status, 507, "{refusal}");
    assert!(
        refusal.contains("limit: storage quota of 4096 bytes would be exceeded"),
        "{refusal}"
    );
    assert_eq!(get(&agent, port, "/nowhere").0, 404);

    // A trap costs that request only: 500, and the next request runs.
    let (status, text) = get(&agent, port, "/trap");
    assert_eq!(status, 500, "{text}");
    assert_eq!(get(&agent, port, "/hello").0, 200);

    // A request that runs past its deadline is cut off, and while it runs
    // another request is answered by another instance.
    let spinner = std::thread::spawn(move || {
        let started = Instant::now();
        let (status, _) = get(&self::agent(), port, "/spin");
        (status, started.elapsed())
    });
    let answered = loop {
        // Until the spinning request is admitted, this one may come first.
        let (status, text) = get(&agent, port, "/hello");
        assert_eq!(status, 200, "{text}");
        if !spinner.is_finished() {
            break true;
        }
    };
    assert!(answered);
    let (status, took) = spinner.join().expect("spinner");
    assert_eq!(status, 500);
    assert!(took < Duration::from_secs(10), "cut off after {took:?}");

    let app = page_app(&mut run);
    assert_eq!(app["state"], "running", "{app}");
    assert_eq!(app["restarts"], 0, "{app}");
    let serving = &app["capabilities"]["http_serve"];
    assert_eq!(serving["failed"], 2, "{app}");
    assert!(
        serving["requests"].as_u64().expect("requests") >= 9,
        "{app}"
    );
    assert_eq!(app["traps"], 2, "{app}");

    // Stopped, it no longer listens; what it stored outlives the restart.
    assert!(run.stop().success());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let mut run = gw.start();
    run.wait_running("page", T);
    assert_eq!(get(&agent, port, "/visits"), (200, "visits 4".into()));
    assert!(run.stop().success());
}

/// More requests at once than `max_in_flight` are answered 503 at once,
/// with Retry-After, rather than queued.
#[test]
fn requests_past_max_in_flight_are_answered_busy() {
    let port = free_port();
    let gw = page_gateway(&guest("http-page"), port, "");
    let mut run = gw.start();
    run.wait_running("page", T);
    // Two requests that hold both slots until their deadline. One that
    // arrives while a probe below holds a slot is itself answered 503: it
    // asks again.
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let agent = agent();
                loop {
                    let (status, _) = get(&agent, port, "/spin");
                    if status != 503 {
                        return status;
                    }
                }
            })
        })
        .collect();
    let agent = agent();
    let busy = loop {
        let (status, _, retry) = request(&agent, port, "GET", "/hello", None, &[]);
        if status == 503 {
            break retry;
        }
        assert_eq!(status, 200);
        assert!(
            !spinners.iter().all(|s| s.is_finished()),
            "both spinning requests ended before a request found both slots taken"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(busy.as_deref(), Some("1"));
    for spinner in spinners {
        assert_eq!(spinner.join().expect("spinner"), 500);
    }
    assert_eq!(get(&agent, port, "/hello").0, 200);
    let app = page_app(&mut run);
    assert!(
        app["capabilities"]["http_serve"]["busy"].as_u64() >= Some(1),
        "{app}"
    );
    assert!(run.stop().success());
}

/// Beyond loopback every request needs the `[allow]` entry's token, and an
/// address beyond loopback without one is refused when the config is read.
#[test]
fn serving_beyond_loopback_needs_the_token_from_allow() {
    let port = free_port();
    let gw = Gateway::new();
    let token = gw.dir.path().join("page.token");
    std::fs::write(&token, "tech-7f3a9c\n").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let gw = gw
        .section(&format!(
            "[allow]\nserve_http = [{{ address = \"0.0.0.0:{port}\", token_file = \"page.token\" }}]\n"
        ))
        .app(
            "page",
            &guest("http-page"),
            &model("counter"),
            &format!(
                "[app.grants]\nserve_http = [{{ address = \"0.0.0.0:{port}\" }}]\n[app.config]\ngreeting = \"the yard\"\n"
            ),
        );
    let mut run = gw.start();
    run.wait_running("page", T);
    let agent = agent();
    let (status, _, challenge) = request(&agent, port, "GET", "/hello", None, &[]);
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")));
    let wrong = [("authorization", "Bearer tech-7f3a9d")];
    assert_eq!(request(&agent, port, "GET", "/hello", None, &wrong).0, 401);
    let right = [("authorization", "Bearer tech-7f3a9c")];
    let (status, text, _) = request(&agent, port, "GET", "/hello", None, &right);
    assert_eq!((status, text.as_str()), (200, "hello from the yard "));
    let app = page_app(&mut run);
    assert_eq!(
        app["capabilities"]["http_serve"]["unauthorized"], 2,
        "{app}"
    );
    assert!(run.stop().success());
    assert!(
        !run.lines().iter().any(|l| l.contains("tech-7f3a9c")),
        "the token reached the log"
    );

    // No token for an address beyond loopback: the config is refused.
    let open = Gateway::new()
        .section(&format!(
            "[allow]\nserve_http = [{{ address = \"0.0.0.0:{port}\" }}]\n"
        ))
        .app("page", &guest("http-page"), &model("counter"), "");
    open.write_config();
    let (ok, out, err) = run_to_end(&["run", "--config"], &open.config_path());
    assert!(!ok, "{out}");
    assert!(
        err.contains("allow.serve_http[0].token_file")
            && err.contains("reaches beyond this machine"),
        "{err}"
    );
}

/// A component that serves HTTP but was granted no address does not start,
/// and says what grant it lacks.
#[test]
fn an_http_component_without_a_serve_http_grant_does_not_start() {
    let gw = Gateway::new().app(
        "page",
        &guest("http-page"),
        &model("counter"),
        "[app.restart]\nmax_crashes = 1\n",
    );
    let mut run = gw.start();
    let app = run.wait_app("page", T, "quarantined", |a| a["state"] == "quarantined");
    let error = app["error"].as_str().unwrap_or_default();
    assert!(error.contains("has no serve_http grant"), "{app}");
    assert!(run.stop().success());
}

/// A new version replaces only the component behind the listener: no
/// request fails across the swap, and the next ones run the new version.
#[test]
fn a_hot_swap_of_an_http_app_keeps_its_listener_and_loses_no_request() {
    let port = free_port();
    let gw = page_gateway(&guest("http-page"), port, "");
    let mut run = gw.start();
    run.wait_running("page", T);
    // Requests back to back, on one kept-alive connection, until the new
    // version answers: every one must succeed.
    let hammer = std::thread::spawn(move || {
        let agent = agent();
        let deadline = Instant::now() + T;
        let mut seen: Vec<String> = Vec::new();
        while seen.last().map(String::as_str) != Some("hello from the boiler room v2") {
            assert!(
                Instant::now() < deadline,
                "the new version never answered: {seen:?}"
            );
            let (status, text) = get(&agent, port, "/hello");
            assert_eq!(status, 200, "{text}");
            if seen.last() != Some(&text) {
                seen.push(text);
            }
        }
        seen
    });
    // The hammer is under way before the deploy.
    run.wait_app("page", T, "serving requests", |a| {
        a["capabilities"]["http_serve"]["requests"].as_u64() >= Some(5)
    });
    let (ok, out, err) = wasmgate(&[
        "deploy",
        "page",
        guest("http-page").to_str().expect("path"),
        "--config",
        "greeting=the boiler room",
        "--config",
        "version=v2",
        "--gateway",
        gw.config_path().to_str().expect("path"),
    ]);
    assert!(ok, "{out}{err}");
    run.wait_version("page", 2, T);
    let seen = hammer.join().expect("no request failed across the swap");
    assert_eq!(
        seen,
        [
            "hello from the boiler room v1",
            "hello from the boiler room v2"
        ]
    );
    let app = page_app(&mut run);
    assert_eq!(app["capabilities"]["http_serve"]["failed"], 0, "{app}");
    assert!(run.stop().success());
}

/// A component written with Spin's Rust SDK (`#[http_component]`, spin-sdk
/// from crates.io), unchanged, is served like any other.
#[test]
fn a_spin_sdk_http_component_runs_unchanged() {
    let port = free_port();
    let gw = page_gateway(&guest("spin-hello"), port, "");
    let mut run = gw.start();
    run.wait_running("page", T);
    assert_eq!(
        get(&agent(), port, "/rooms/3?x=1"),
        (200, "hello from spin: GET /rooms/3".into())
    );
    assert!(run.stop().success());
}
