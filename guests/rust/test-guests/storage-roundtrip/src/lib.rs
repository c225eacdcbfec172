//! Test guest: keeps a counter in storage across restarts, records it as the
//! `count` series and reports it, and checks set / get / keys / delete on
//! every tick, logging what it saw so a test can read it.

use wasmgate_guest::{App, Config, Timestamp, field, info, storage, this_device, warn};

struct StorageRoundtrip {
    counter: i64,
}

fn load_counter() -> Result<i64, String> {
    match storage::get("counter").map_err(|e| e.message().to_string())? {
        None => Ok(0),
        Some(bytes) => {
            let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
            text.parse()
                .map_err(|e| format!("bad counter {text:?}: {e}"))
        }
    }
}

impl App for StorageRoundtrip {
    fn init(_config: Config, previous: Option<Vec<u8>>) -> Result<Self, String> {
        let counter = load_counter()?;
        // A kill -9 between a tick's `set` of its scratch key and its
        // `delete` leaves the key behind; the round trip expects only
        // `tmp/keep` under `tmp/`.
        for key in storage::keys("tmp/").map_err(|e| e.message().to_string())? {
            if key != "tmp/keep" {
                storage::delete(&key).map_err(|e| e.message().to_string())?;
            }
        }
        let last = this_device().reported("counter");
        info!(
            "storage-roundtrip started: counter={counter} previous={} reported={last:?}",
            previous.is_some()
        );
        Ok(StorageRoundtrip { counter })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        self.counter += 1;
        let n = self.counter;
        if let Err(e) = storage::set("counter", n.to_string().as_bytes()) {
            warn!("set counter failed: {}: {}", e.kind(), e.message());
            return;
        }
        // A round trip through every call; the result goes to the log.
        let ok = (|| -> Result<bool, wasmgate_guest::Error> {
            storage::set(&format!("tmp/{n}"), b"x")?;
            storage::set("tmp/keep", b"y")?;
            let before = storage::keys("tmp/")?;
            storage::delete(&format!("tmp/{n}"))?;
            let after = storage::keys("tmp/")?;
            // A page of one, after the last key: only "tmp/keep" is left.
            let page = storage::keys_page("tmp/", "", 1)?;
            let past = storage::keys_page("tmp/", "tmp/keep", 10)?;
            Ok(page == ["tmp/keep"]
                && past.is_empty()
                && before.contains(&format!("tmp/{n}"))
                && !after.contains(&format!("tmp/{n}"))
                && after.contains(&"tmp/keep".to_string())
                && storage::get("missing")?.is_none())
        })();
        let device = this_device();
        let recorded = device.record("count", None, &[field("n", n)]);
        let reported = device.report(&[field("counter", n)]);
        info!(
            "counter={n} roundtrip={} record={} report={}",
            matches!(ok, Ok(true)),
            recorded.is_ok(),
            reported.is_ok()
        );
    }
}

wasmgate_guest::app!(StorageRoundtrip);
