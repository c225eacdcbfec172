//! Test guest: a wasmgate app that also imports WASI's standard interfaces,
//! bound with wit-bindgen from their upstream WIT (`wit/deps`), as a
//! library written for Spin or wasmCloud would:
//!
//! - at `init` it reads its config through `wasi:config/store`, Spin's
//!   version and wasmCloud's, and logs through `wasi:logging` whether both
//!   agree with the config `init` was given;
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
            }
        ",
        path: [
            "../../../../wit/deps/logging",
            "../../../../wit/deps/config-draft-2024-09-27",
            "../../../../wit/deps/config-draft",
        ],
        world: "wasmgate-test:standard/imports",
        generate_all,
    });
}

use standard::wasi::config0_2_0_draft::store as wasmcloud_config;
use standard::wasi::config0_2_0_draft_2024_09_27::store as spin_config;
use standard::wasi::logging::logging::{Level, log};

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
