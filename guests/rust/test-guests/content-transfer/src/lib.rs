//! Test guest: large content. On its first start it writes `data.bin`
//! (`upload_kib` KiB of deterministic bytes) into its directory and uploads
//! it; on every tick it logs each transfer whose progress changed, and the
//! size of each finished download as it reads it from `downloads/`. The
//! action `upload-bytes(text)` uploads the text as `note.txt`.

use std::collections::HashMap;
use wasmgate_guest::content::{self, Direction, State};
use wasmgate_guest::{App, Config, Timestamp, Value, info, storage, warn};

struct ContentTransfer {
    seen: HashMap<String, String>,
}

fn data(len: usize) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

impl App for ContentTransfer {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let kib: usize = config.parse_or("upload_kib", 0)?;
        let uploaded = storage::get("uploaded").map_err(|e| e.message().to_string())?;
        if kib > 0 && uploaded.is_none() {
            std::fs::write("data.bin", data(kib << 10)).map_err(|e| format!("data.bin: {e}"))?;
            let id = content::upload_file("data.bin", "data.bin")
                .map_err(|e| format!("upload refused: {}: {}", e.kind(), e.message()))?;
            storage::set("uploaded", id.as_bytes()).map_err(|e| e.message().to_string())?;
            info!("upload of data.bin queued as {id}");
        }
        Ok(ContentTransfer {
            seen: HashMap::new(),
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        for t in content::transfers() {
            let way = match t.direction {
                Direction::Upload => "upload",
                Direction::Download => "download",
            };
            let state = match &t.state {
                State::Running => "running".to_string(),
                State::Done => "done".to_string(),
                State::Failed(why) => format!("failed: {why}"),
            };
            let line = format!(
                "{way} {} {} {}/{} {state}",
                t.id, t.name, t.transferred, t.size
            );
            if self.seen.get(&t.id) == Some(&line) {
                continue;
            }
            info!("transfer {line}");
            if matches!(t.direction, Direction::Download) && matches!(t.state, State::Done) {
                match std::fs::read(format!("downloads/{}", t.name)) {
                    Ok(bytes) => info!(
                        "downloaded {} is in my directory: {} bytes",
                        t.name,
                        bytes.len()
                    ),
                    Err(e) => warn!("cannot read downloads/{}: {e}", t.name),
                }
            }
            self.seen.insert(t.id.clone(), line);
        }
    }

    fn on_action(
        &mut self,
        _device: String,
        name: String,
        argument: Option<Value>,
    ) -> Result<Option<Value>, String> {
        match (name.as_str(), argument) {
            ("upload-bytes", Some(Value::Text(text))) => {
                content::upload_bytes("note.txt", text.as_bytes())
                    .map(|id| Some(Value::Text(id)))
                    .map_err(|e| format!("{}: {}", e.kind(), e.message()))
            }
            (other, _) => Err(format!("unknown action {other}")),
        }
    }
}

wasmgate_guest::app!(ContentTransfer);
