//! Host-side file operations inside an app's directory.
//!
//! The app owns its directory: it can plant symlinks there (WASI lets it
//! make relative ones), replace a directory with a file, or point
//! `downloads` at `../../..`. The host must never follow what the app
//! planted out of the directory. So every host-side operation here goes
//! through a capability-confined directory handle (cap-std `Dir`, which
//! resolves each path beneath its root and refuses to leave it), never
//! through a path string joined onto the app's directory.

use cap_std::fs::Dir;
use std::io;
use std::path::Path;

/// The folder that downloads land in, inside the app's directory.
pub const DOWNLOADS: &str = "downloads";

/// A handle on the app's own directory.
fn open_root(files_dir: &Path) -> io::Result<Dir> {
    Dir::open_ambient_dir(files_dir, cap_std::ambient_authority())
}

/// The app's `downloads/` as a handle, created if missing. Anything at that
/// name that is not a real directory (a symlink, to anywhere, or a file) is
/// refused: the host does not guess what the app meant by it.
fn open_downloads(root: &Dir) -> io::Result<Dir> {
    match root.symlink_metadata(DOWNLOADS) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) => {
            let what = if meta.is_symlink() {
                "a symlink"
            } else {
                "not a directory"
            };
            return Err(io::Error::other(format!(
                "{DOWNLOADS} in the app's directory is {what}: refused (it must be a real directory)"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => root.create_dir(DOWNLOADS)?,
        Err(e) => return Err(e),
    }
    // The app runs beside this and may swap the directory for a link after
    // the check above: the handle still resolves only beneath its root.
    root.open_dir(DOWNLOADS)
}

/// Move the finished download at `from` (in the gateway's content store)
/// to `downloads/{name}` in the app's directory at `files_dir`.
///
/// The rename replaces whatever entry has that name, a planted symlink
/// included, and never writes through it. A directory at that name makes
/// the rename fail, which is reported.
pub fn place_download(files_dir: &Path, from: &Path, name: &str) -> io::Result<()> {
    let (Some(store), Some(file)) = (from.parent(), from.file_name()) else {
        return Err(io::Error::other(format!(
            "{} is not a file in the content store",
            from.display()
        )));
    };
    let store = Dir::open_ambient_dir(store, cap_std::ambient_authority())?;
    let downloads = open_downloads(&open_root(files_dir)?)?;
    store.rename(file, &downloads, name)
}

/// Open `path`, relative to the app's directory, for reading: symlinks are
/// followed only while they stay inside the directory. The result must be a
/// regular file.
pub fn open_file(files_dir: &Path, path: &str) -> io::Result<std::fs::File> {
    let file = open_root(files_dir)?.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file.into_std())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Setup {
        _tmp: tempfile::TempDir,
        files: std::path::PathBuf,
        store: std::path::PathBuf,
        outside: std::path::PathBuf,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = tmp.path().join("apps/a/files");
        let store = tmp.path().join("content");
        let outside = tmp.path().join("outside");
        for dir in [&files, &store, &outside] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(outside.join("gateway.toml"), "the operator's").expect("write");
        Setup {
            _tmp: tmp,
            files,
            store,
            outside,
        }
    }

    fn incoming(s: &Setup) -> std::path::PathBuf {
        let path = s.store.join("t.down");
        std::fs::write(&path, "downloaded").expect("write");
        path
    }

    #[test]
    fn a_download_lands_in_a_new_downloads_directory() {
        let s = setup();
        place_download(&s.files, &incoming(&s), "x.bin").expect("placed");
        let placed = std::fs::read_to_string(s.files.join("downloads/x.bin")).expect("read");
        assert_eq!(placed, "downloaded");
    }

    #[test]
    fn downloads_as_a_symlink_is_refused_relative_or_absolute() {
        // `None` stands for an absolute link to the outside directory.
        for relative in [Some("../../../outside"), Some(".."), None] {
            let s = setup();
            let link = s.files.join(DOWNLOADS);
            let target = relative.map_or(s.outside.clone(), std::path::PathBuf::from);
            symlink(&target, &link).expect("symlink");
            let from = incoming(&s);
            let error = place_download(&s.files, &from, "gateway.toml").expect_err("refused");
            assert!(error.to_string().contains("is a symlink"), "{error}");
            let kept = std::fs::read_to_string(s.outside.join("gateway.toml")).expect("read");
            assert_eq!(kept, "the operator's", "through {target:?}");
            assert!(from.exists(), "the download stays in the store");
        }
    }

    #[test]
    fn downloads_as_a_file_is_refused() {
        let s = setup();
        std::fs::write(s.files.join(DOWNLOADS), "x").expect("write");
        let error = place_download(&s.files, &incoming(&s), "a.bin").expect_err("refused");
        assert!(error.to_string().contains("not a directory"), "{error}");
    }

    #[test]
    fn a_symlink_at_the_files_own_name_is_replaced_not_followed() {
        let s = setup();
        let downloads = s.files.join(DOWNLOADS);
        std::fs::create_dir(&downloads).expect("mkdir");
        symlink(
            "../../../../outside/gateway.toml",
            downloads.join("rel.toml"),
        )
        .expect("link");
        symlink(s.outside.join("gateway.toml"), downloads.join("abs.toml")).expect("link");
        for name in ["rel.toml", "abs.toml"] {
            place_download(&s.files, &incoming(&s), name).expect("placed");
            let placed = downloads.join(name);
            assert!(!placed.symlink_metadata().expect("meta").is_symlink());
            assert_eq!(
                std::fs::read_to_string(&placed).expect("read"),
                "downloaded"
            );
        }
        let kept = std::fs::read_to_string(s.outside.join("gateway.toml")).expect("read");
        assert_eq!(kept, "the operator's");
    }

    #[test]
    fn names_that_lead_out_are_refused() {
        let s = setup();
        for name in ["..", "../x", "/etc/x"] {
            assert!(
                place_download(&s.files, &incoming(&s), name).is_err(),
                "{name}"
            );
        }
    }

    #[test]
    fn open_file_stays_inside() {
        let s = setup();
        std::fs::write(s.files.join("mine.txt"), "mine").expect("write");
        symlink("mine.txt", s.files.join("inner")).expect("link");
        symlink("../../../outside/gateway.toml", s.files.join("rel")).expect("link");
        symlink(s.outside.join("gateway.toml"), s.files.join("abs")).expect("link");
        std::fs::create_dir(s.files.join("sub")).expect("mkdir");
        assert!(open_file(&s.files, "mine.txt").is_ok());
        assert!(open_file(&s.files, "inner").is_ok());
        for path in ["rel", "abs", "../../../outside/gateway.toml", "sub"] {
            assert!(open_file(&s.files, path).is_err(), "{path}");
        }
    }
}
