//! Test guest: before any download arrives, it plants in its own directory
//! what would redirect the host's writes if the host followed it. Its config
//! says what, each entry `path=what` separated by `;`:
//!
//! - `link:TARGET` a symlink at `path` to TARGET (relative: WASI refuses
//!   absolute targets, so the test plants those itself);
//! - `dir` a directory;
//! - `file` a regular file.
//!
//! It logs `planted PATH` for each. Then it tries `upload-file` of each path
//! in `upload` (separated by `;`) and logs `upload PATH: refused (...)` or
//! `upload PATH: queued`, then `planting done`. On every tick it logs the
//! state of each transfer once it changes.

use std::collections::HashMap;
use wasmgate_guest::content::{self, State};
use wasmgate_guest::{App, Config, Timestamp, info};

struct LinkPlanter {
    seen: HashMap<String, String>,
}

/// `soft_link` is the one std call that makes a symlink on wasm32-wasip2
/// (the WASI extension trait is unstable).
#[allow(deprecated)]
fn symlink(target: &str, path: &str) -> std::io::Result<()> {
    std::fs::soft_link(target, path)
}

fn plant(path: &str, what: &str) -> Result<(), String> {
    let result = match what.split_once(':') {
        Some(("link", target)) => symlink(target, path),
        None if what == "dir" => std::fs::create_dir_all(path),
        None if what == "file" => std::fs::write(path, "planted"),
        _ => return Err(format!("unknown plant {what:?}")),
    };
    result.map_err(|e| format!("{path}: {e}"))
}

impl App for LinkPlanter {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        for entry in config.get("plant").unwrap_or("").split(';') {
            let Some((path, what)) = entry.split_once('=') else {
                continue;
            };
            plant(path, what)?;
            info!("planted {path}");
        }
        for path in config.get("upload").unwrap_or("").split(';') {
            if path.is_empty() {
                continue;
            }
            match content::upload_file(path, path) {
                Ok(_) => info!("upload {path}: queued"),
                Err(e) => info!("upload {path}: refused ({}: {})", e.kind(), e.message()),
            }
        }
        info!("planting done");
        Ok(LinkPlanter {
            seen: HashMap::new(),
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        for t in content::transfers() {
            let state = match &t.state {
                State::Running => "running".to_string(),
                State::Done => "done".to_string(),
                State::Failed(why) => format!("failed: {why}"),
            };
            if self.seen.get(&t.id) != Some(&state) {
                info!("transfer {} {}: {state}", t.id, t.name);
                self.seen.insert(t.id.clone(), state);
            }
        }
    }
}

wasmgate_guest::app!(LinkPlanter);
