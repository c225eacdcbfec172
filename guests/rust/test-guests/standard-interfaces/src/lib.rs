//! Test guest: a wasmgate app that also imports WASI's standard interfaces,
//! bound with wit-bindgen from their upstream WIT (`wit/deps`), as a
//! library written for Spin or wasmCloud would:
//!
//! - at `init` it reads its config through `wasi:config/store`, Spin's
//!   version and wasmCloud's, and logs through `wasi:logging` whether both
//!   agree with the config `init` was given;
//! - through `wasi:keyvalue` (Spin's `0.2.0-draft2` and wasmCloud's
//!   `0.2.0-draft`) it sets, reads, counts, lists, batches and swaps keys
//!   in its storage, sees them through `wasmgate:device/storage` too, and
//!   logs what it saw, including what its quota refused;
//! - with `flood = "N"` in its config, its first tick logs N lines through
//!   `wasi:logging`, which the app's log rate limit must cut as it cuts
//!   `log`.

use wasmgate_guest::{App, Config, Timestamp};

mod standard {
    wit_bindgen::generate!({
        inline: "
            package wasmgate-test:standard;
            world imports {
                import wasi:logging/logging@0.1.0-draft;
                import wasi:config/store@0.2.0-draft-2024-09-27;
                import wasi:config/store@0.2.0-draft;
                include wasi:keyvalue/imports@0.2.0-draft2;
                include wasi:keyvalue/imports@0.2.0-draft;
            }
        ",
        path: [
            "../../../../wit/deps/logging",
            "../../../../wit/deps/config-draft-2024-09-27",
            "../../../../wit/deps/config-draft",
            "../../../../wit/deps/keyvalue-draft2",
            "../../../../wit/deps/keyvalue-draft",
        ],
        world: "wasmgate-test:standard/imports",
        generate_all,
    });
}

use standard::wasi::config0_2_0_draft::store as wasmcloud_config;
use standard::wasi::config0_2_0_draft_2024_09_27::store as spin_config;
use standard::wasi::logging::logging::{Level, log};

use standard::wasi::keyvalue0_2_0_draft::{atomics as atomics1, store as store1};
use standard::wasi::keyvalue0_2_0_draft2::{atomics, batch, store};

/// Everything `wasi:keyvalue` offers, once, on the app's storage; what it
/// saw, as one line. A value of `big` bytes goes past a small quota.
fn keyvalue(big: usize) -> Result<String, String> {
    let e = |e: store::Error| format!("{e:?}");
    let bucket = store::open("default").map_err(e)?;
    let no_such_store = matches!(store::open("elsewhere"), Err(store::Error::NoSuchStore));
    bucket.set("greeting", b"hello").map_err(e)?;
    let exists = bucket.exists("greeting").map_err(e)?;
    let visits = atomics::increment(&bucket, "visits", 1).map_err(e)?;
    batch::set_many(
        &bucket,
        &[
            ("batch/a".to_string(), b"1".to_vec()),
            ("batch/b".to_string(), b"2".to_vec()),
        ],
    )
    .map_err(e)?;
    let many = batch::get_many(&bucket, &["batch/a".into(), "batch/missing".into()]).map_err(e)?;
    let batch_ok = many
        == vec![
            ("batch/a".to_string(), Some(b"1".to_vec())),
            ("batch/missing".to_string(), None),
        ];
    batch::delete_many(&bucket, &["batch/a".into(), "batch/b".into()]).map_err(e)?;
    // A swap on what the handle saw succeeds; one after a change fails.
    let cas = atomics::Cas::new(&bucket, "greeting").map_err(e)?;
    let cas_ok = atomics::swap(cas, b"hi").is_ok();
    let stale = atomics::Cas::new(&bucket, "greeting").map_err(e)?;
    bucket.set("greeting", b"hey").map_err(e)?;
    let cas_conflict = matches!(
        atomics::swap(stale, b"lost"),
        Err(atomics::CasError::CasFailed(_))
    );
    bucket.set("greeting", b"hi").map_err(e)?;
    let keys = bucket.list_keys(None).map_err(e)?.keys;
    // wasmCloud's version: the same storage.
    let e1 = |e: store1::Error| format!("{e:?}");
    let bucket1 = store1::open("").map_err(e1)?;
    let greeting = bucket1.get("greeting").map_err(e1)?;
    let visits1 = atomics1::increment(&bucket1, "visits", 2).map_err(e1)?;
    // And wasmgate's own interface: the same storage again.
    let own = wasmgate_guest::storage::get("visits")
        .map_err(|e| e.message().to_string())?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let quota = match bucket.set("big", &vec![0u8; big]) {
        Ok(()) => "accepted".to_string(),
        Err(store::Error::Other(reason)) => reason,
        Err(other) => format!("{other:?}"),
    };
    Ok(format!(
        "keyvalue greeting={} visits={visits} visits-draft={visits1} own-visits={} exists={exists} \
         keys={} batch={batch_ok} cas-ok={cas_ok} cas-conflict={cas_conflict} \
         no-such-store={no_such_store} big={quota}",
        greeting.map_or("-".into(), |g| String::from_utf8_lossy(&g).into_owned()),
        own.unwrap_or_default(),
        keys.join(","),
    ))
}

struct Standard {
    flood: usize,
    flooded: bool,
}

impl App for Standard {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let spin = spin_config::get_all().map_err(|e| format!("wasi:config get-all: {e:?}"))?;
        let unit = wasmcloud_config::get("unit").map_err(|e| format!("wasi:config get: {e:?}"))?;
        let absent =
            spin_config::get("no-such-key").map_err(|e| format!("wasi:config get: {e:?}"))?;
        let same = spin.iter().all(|(k, v)| config.get(k) == Some(v.as_str()));
        log(
            Level::Info,
            "standard",
            &format!(
                "config unit={} keys={} same-as-init={same} absent={}",
                unit.as_deref().unwrap_or("-"),
                spin.len(),
                absent.is_none()
            ),
        );
        log(Level::Critical, "standard", "a critical line");
        match keyvalue(config.parse_or("big", 0)?) {
            Ok(line) => log(Level::Info, "standard", &line),
            Err(e) => log(Level::Error, "standard", &format!("keyvalue failed: {e}")),
        }
        Ok(Standard {
            flood: config.parse_or("flood", 0)?,
            flooded: false,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        if !self.flooded {
            self.flooded = true;
            for n in 0..self.flood {
                log(Level::Info, "flood", &format!("standard flood line {n}"));
            }
        }
    }
}

wasmgate_guest::app!(Standard);
