//! The artifact store: component files in `<data dir>/artifacts`, named by
//! their sha256, written atomically, and removed when no registered version
//! uses them any more.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct Artifacts {
    dir: PathBuf,
}

/// The sha256 of some bytes, hex.
pub fn digest(bytes: &[u8]) -> String {
    crate::engine::component_digest(bytes)
}

impl Artifacts {
    pub fn open(dir: &Path) -> std::io::Result<Artifacts> {
        std::fs::create_dir_all(dir)?;
        Ok(Artifacts {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// Keep `bytes`; returns their digest.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let digest = digest(bytes);
        self.put_hashed(bytes, &digest)?;
        Ok(digest)
    }

    /// [`Artifacts::put`] for bytes whose `digest` the caller has just
    /// taken.
    pub fn put_hashed(&self, bytes: &[u8], digest: &str) -> std::io::Result<()> {
        let path = self.path(digest);
        if !path.exists() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    pub fn get(&self, digest: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(digest))
    }

    /// Remove every artifact not in `keep`.
    pub fn collect_garbage(&self, keep: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(digest) = name.strip_suffix(".wasm")
                && !keep.contains(digest)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_content_addressed_and_collected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Artifacts::open(dir.path()).expect("open");
        let a = store.put(b"one").expect("put");
        let b = store.put(b"two").expect("put");
        assert_eq!(a, digest(b"one"));
        assert_eq!(store.put(b"one").expect("again"), a);
        assert_eq!(store.get(&a).expect("get"), b"one");
        store.collect_garbage(&HashSet::from([b.clone()]));
        assert!(store.get(&a).is_err() && store.get(&b).is_ok());
    }
}
