//! Test guest: fills the disk, 256 KiB a tick, either with files in its own
//! directory (`kind = "files"`), with uploads that wait for a link that
//! never comes (`kind = "uploads"`), or with storage until its quota refuses
//! more and then with files (`kind = "storage"`), and logs each refusal.

use wasmgate_guest::{App, Config, Timestamp, info};
use wasmgate_guest::{content, storage};

struct DiskFiller {
    uploads: bool,
    storage_first: bool,
    n: u64,
}

impl App for DiskFiller {
    fn init(config: Config, _previous: Option<Vec<u8>>) -> Result<Self, String> {
        let uploads = config.get("kind") == Some("uploads");
        let storage_first = config.get("kind") == Some("storage");
        info!("disk-filler started");
        Ok(DiskFiller {
            uploads,
            storage_first,
            n: 0,
        })
    }

    fn on_tick(&mut self, _now: Timestamp) {
        let chunk = vec![0x5a_u8; 256 << 10];
        self.n += 1;
        if self.storage_first {
            match storage::set(&format!("fill-{}", self.n), &chunk) {
                Ok(()) => return,
                Err(e) => {
                    info!("storage refused: {}", e.message());
                    self.storage_first = false;
                }
            }
        }
        if self.uploads {
            match content::upload_bytes(&format!("fill-{}.bin", self.n), &chunk) {
                Ok(_) => info!("upload {} queued", self.n),
                Err(e) => info!("upload refused: {}: {}", e.kind(), e.message()),
            }
        } else if let Err(e) = std::fs::write(format!("/fill-{}.bin", self.n), &chunk) {
            info!("write refused: {e}");
        }
    }
}

wasmgate_guest::app!(DiskFiller);
