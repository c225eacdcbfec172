//! The operator's side: `wasmgate cloud` commands against a gateway running
//! the embedded broker (the README demo's set-up), so nothing but the
//! wasmgate binary is involved.

use crate::common::{Gateway, free_port, guest, root, wasmgate, wasmgate_for};
use std::time::Duration;

#[test]
fn operator_commands_watch_set_call_and_list_through_the_embedded_broker() {
    let port = free_port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let gw = Gateway::new()
        .section(&format!(
            "[cloud]\nembedded = true\nembedded_listen = \"127.0.0.1:{port}\"\n"
        ))
        .app(
            "thermostat",
            &guest("thermostat"),
            &root().join("examples/thermostat/thermostat.model.json"),
            "tick_interval_ms = 100",
        );
    let mut run = gw.start();
    run.wait_connected(Duration::from_secs(30));
    run.wait_for("tick 3:", Duration::from_secs(30));
    let cloud = |rest: &[&str]| {
        let mut args = vec!["cloud", "--broker", broker.as_str(), "--timeout", "10"];
        args.extend_from_slice(rest);
        wasmgate(&args)
    };

    let watched = wasmgate_for(
        &["cloud", "--broker", &broker, "watch", "test-gw"],
        Duration::from_millis(1500),
    );
    assert!(
        watched.contains("test-gw/thermostat telemetry climate: {\"batch\":\"test-gw-"),
        "{watched}"
    );
    assert!(
        watched.contains("test-gw/test-gw status: {\"online\":true"),
        "{watched}"
    );

    let (ok, out, err) = cloud(&["twin", "set", "test-gw/thermostat", "setpoint=23.5"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "accepted: setpoint");
    run.wait_for("setpoint changed 21.0 -> 23.5", Duration::from_secs(10));

    let (ok, out, _) = cloud(&[
        "twin",
        "set",
        "test-gw/thermostat",
        "setpoint=99",
        "heating=true",
    ]);
    assert!(!ok, "a rejected change fails");
    assert!(
        out.contains("rejected: setpoint: 99 is out of range [5, 30]"),
        "{out}"
    );
    assert!(
        out.contains("rejected: heating: attribute `heating` is read-only"),
        "{out}"
    );

    let (ok, out, _) = cloud(&["call", "test-gw/thermostat", "reset"]);
    assert!(ok);
    assert!(
        out.trim().parse::<i64>().expect("the old tick count") >= 3,
        "{out}"
    );
    let (ok, out, _) = cloud(&["call", "test-gw/thermostat", "explode"]);
    assert!(!ok);
    assert!(out.starts_with("error: unknown action `explode`"), "{out}");

    run.wait_for("tick 2:", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out, _) = cloud(&["twin", "get", "test-gw/thermostat"]);
    assert!(ok);
    let twin: serde_json::Value = serde_json::from_str(&out).expect("twin get prints JSON");
    assert_eq!(twin["attributes"]["setpoint"], 23.5);

    let (ok, out, _) = cloud(&["devices"]);
    assert!(ok);
    let row = out
        .lines()
        .find(|l| l.starts_with("test-gw"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("yes") && row.contains("thermostat") && row.contains("running"),
        "{row}"
    );

    assert!(run.stop().success());
    let (ok, _, err) = cloud(&["devices"]);
    assert!(
        !ok && err.contains("cannot connect to the broker"),
        "the broker went with the gateway: {err}"
    );
}

#[test]
fn operator_commands_fail_clearly() {
    let (ok, _, err) = wasmgate(&["cloud", "--broker", "http://x", "devices"]);
    assert!(
        !ok && err.contains("is not an mqtt:// or mqtts:// URL"),
        "{err}"
    );
    let port = free_port().to_string();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let (ok, _, err) = wasmgate(&["cloud", "--broker", &broker, "--timeout", "2", "devices"]);
    assert!(
        !ok && err.contains(&format!("cannot connect to the broker {broker}")),
        "{err}"
    );
    let (ok, _, err) = wasmgate(&["cloud", "--broker", &broker, "call", "no-slash", "reset"]);
    assert!(!ok && err.contains("is not GATEWAY/DEVICE"), "{err}");
}

/// The shell completions and man pages come from the same definitions as
/// the commands: bash completes `wasmgate cloud roll` to `rollout`, and
/// every subcommand has its page.
#[test]
fn completions_complete_subcommands_and_every_subcommand_has_a_man_page() {
    let (ok, script, err) = wasmgate(&["completions", "bash"]);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wasmgate.bash");
    std::fs::write(&path, &script).expect("write");
    let completed = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(wasmgate cloud roll); COMP_CWORD=2; \
             COMP_LINE='wasmgate cloud roll'; COMP_POINT=${{#COMP_LINE}}; \
             _wasmgate wasmgate roll cloud; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .expect("bash runs");
    assert_eq!(
        String::from_utf8_lossy(&completed.stdout).trim(),
        "rollout",
        "{}",
        String::from_utf8_lossy(&completed.stderr)
    );
    let (ok, _, err) = wasmgate(&["completions", "tcsh"]);
    assert!(!ok && err.contains("possible values"), "{err}");

    let (ok, _, err) = wasmgate(&["man", "--out", dir.path().to_str().expect("path")]);
    assert!(ok, "{err}");
    for page in [
        "wasmgate.1",
        "wasmgate-run.1",
        "wasmgate-cloud-serve.1",
        "wasmgate-cloud-rollout-create.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.contains(".TH") && text.contains(".SH NAME"),
            "{page}: {text}"
        );
    }
    let create =
        std::fs::read_to_string(dir.path().join("wasmgate-cloud-rollout-create.1")).expect("page");
    assert!(create.contains("max\\-failures"), "{create}");
}

/// The systemd unit (`packaging/wasmgate.service`) passes `systemd-analyze
/// verify` (with its ExecStart pointed at the built binary, and the man
/// pages its Documentation= names made by `wasmgate man`), and its
/// hardening scores as systemd's own "OK" or better.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(root().join("packaging/wasmgate.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/wasmgate run --config /etc/wasmgate/gateway.toml"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wasmgate.service");
    let binary = crate::common::binary();
    std::fs::write(
        &path,
        unit.replace("/usr/bin/wasmgate", binary.to_str().expect("path")),
    )
    .expect("write");
    let man = dir.path().join("man");
    std::fs::create_dir_all(man.join("man1")).expect("mkdir");
    let (ok, _, err) = wasmgate(&["man", "--out", man.join("man1").to_str().expect("path")]);
    assert!(ok, "{err}");
    let analyze = |args: &[&str]| {
        let out = std::process::Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .env("MANPATH", &man)
            .output()
            .expect("systemd-analyze runs (cargo xtask setup installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = analyze(&["verify"]);
    assert!(ok && err.trim().is_empty(), "{err}");
    let (_, out, err) = analyze(&["security", "--offline=true"]);
    let level: f64 = out
        .lines()
        .chain(err.lines())
        .find_map(|l| {
            l.split_once("Overall exposure level for wasmgate.service: ")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no exposure level: {out}{err}"));
    // systemd calls up to 1.9 "OK"; 10 is unprotected.
    assert!(level <= 1.9, "exposure {level}: {out}");

    // A unit that leaves its hardening out scores worse: the check bites.
    let bare: String = unit
        .lines()
        .filter(|l| {
            l.starts_with('[') || l.starts_with("ExecStart") || l.starts_with("Description")
        })
        .map(|l| {
            format!(
                "{}\n",
                l.replace("/usr/bin/wasmgate", binary.to_str().expect("path"))
            )
        })
        .collect();
    std::fs::write(&path, bare).expect("write");
    let (_, out, _) = analyze(&["security", "--offline=true"]);
    assert!(
        out.contains("Overall exposure level for wasmgate.service: 9."),
        "{out}"
    );
}

/// Run `command`; panic with its output unless it succeeds; return stdout.
fn succeeds(command: &mut std::process::Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{command:?}: {stdout}{stderr}");
    stdout
}

#[test]
fn the_debian_package_installs_into_a_throwaway_root_and_purges_cleanly() {
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;
    // The package is built by the script `cargo xtask deb` runs, from the
    // wasmgate binary this test run already has (no second build).
    let binary = crate::common::binary();
    let target = binary.ancestors().nth(2).expect("target dir");
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("out");
    succeeds(
        Command::new(root().join("packaging/build-deb"))
            .args(["--profile", "dev", "--fast", "--out"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", target),
    );
    let deb = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");

    // A throwaway root whose dpkg database knows only what the package
    // depends on, copied from this machine's, so dpkg checks the package's
    // Depends for real. Maintainer scripts run outside a chroot with
    // DPKG_ROOT set (what they are written for).
    let depends = succeeds(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends"),
    );
    assert!(depends.contains("systemd"), "{depends}");
    let names: Vec<&str> = depends
        .split(',')
        .map(|d| d.split_whitespace().next().expect("a name"))
        .collect();
    let system = work.path().join("root");
    let admin = system.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(dir)).expect("mkdir");
    }
    std::fs::create_dir_all(system.join("var/log")).expect("mkdir");
    let status = succeeds(Command::new("dpkg-query").arg("-s").args(&names));
    std::fs::write(admin.join("status"), status).expect("status");
    let qualified = succeeds(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${binary:Package}\\n"])
            .args(&names),
    );
    for package in qualified.lines() {
        std::fs::write(admin.join(format!("info/{package}.list")), "").expect("list");
    }
    let dpkg = |args: &[&str]| {
        let mut command = Command::new("dpkg");
        command
            .arg(format!("--root={}", system.display()))
            .args(["--force-not-root", "--force-script-chrootless"])
            .args(args);
        command
    };
    succeeds(dpkg(&["--install"]).arg(&deb));

    // The binary runs and says its version.
    let installed = system.join("usr/bin/wasmgate");
    let version = succeeds(Command::new(&installed).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("wasmgate {}", env!("CARGO_PKG_VERSION"))
    );
    // bash's completion script registers itself for wasmgate.
    let completion = system.join("usr/share/bash-completion/completions/wasmgate");
    let complete = succeeds(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p wasmgate",
        completion.display()
    )));
    assert!(complete.contains("wasmgate"), "{complete}");
    for file in [
        "usr/share/zsh/vendor-completions/_wasmgate",
        "usr/share/fish/vendor_completions.d/wasmgate.fish",
        "usr/share/man/man1/wasmgate.1.gz",
        "usr/share/man/man1/wasmgate-cloud-rollout-create.1.gz",
    ] {
        assert!(system.join(file).is_file(), "{file} is installed");
    }
    // The unit is the hardened one the other test checks, and verifies in
    // the installed tree (where its ExecStart now exists).
    let unit = std::fs::read_to_string(system.join("usr/lib/systemd/system/wasmgate.service"))
        .expect("the unit is installed");
    assert_eq!(
        unit,
        std::fs::read_to_string(root().join("packaging/wasmgate.service")).expect("unit")
    );
    // The service's user exists in the new root, and the config (which may
    // hold a password) is readable by root and that group only.
    let group = std::fs::read_to_string(system.join("etc/group")).expect("group");
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("wasmgate:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("a wasmgate group: {group}"));
    let passwd = std::fs::read_to_string(system.join("etc/passwd")).expect("passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("wasmgate:x:")
                && l.ends_with(":/var/lib/wasmgate:/usr/sbin/nologin")),
        "{passwd}"
    );
    let config = system.join("etc/wasmgate/gateway.toml");
    let meta = std::fs::metadata(&config).expect("the config is installed");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, gid, 0o640)
    );
    // The starter config is one the gateway accepts: the installed binary
    // runs (offline, with no apps) on it, given a data directory it may
    // write, until SIGTERM stops it cleanly.
    let data = work.path().join("data");
    let local = work.path().join("gateway.toml");
    std::fs::write(
        &local,
        std::fs::read_to_string(&config)
            .expect("config")
            .replace("/var/lib/wasmgate", data.to_str().expect("path")),
    )
    .expect("write");
    let mut gateway = Command::new(&installed)
        .args(["run", "--config"])
        .arg(&local)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the installed wasmgate starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let out = Command::new(&installed)
            .args(["status", "--json", "--config"])
            .arg(&local)
            .output()
            .expect("status runs");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if report["running_pid"] == gateway.id() {
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not come up: {report} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["gateway"], "my-gateway", "{report}");
    succeeds(Command::new("kill").args(["-TERM", &gateway.id().to_string()]));
    assert!(gateway.wait().expect("wait").success());

    // Purged, it leaves nothing of its own behind.
    succeeds(&mut dpkg(&["--purge", "wasmgate"]));
    for gone in [
        "usr/bin/wasmgate",
        "usr/share/bash-completion/completions/wasmgate",
        "usr/share/man/man1/wasmgate.1.gz",
        "usr/lib/systemd/system/wasmgate.service",
        "usr/lib/sysusers.d/wasmgate.conf",
        "etc/wasmgate/gateway.toml",
    ] {
        assert!(!system.join(gone).exists(), "{gone} is removed");
    }
    let listed = dpkg(&["--status", "wasmgate"]).output().expect("dpkg runs");
    assert!(!listed.status.success(), "dpkg no longer knows wasmgate");
}
